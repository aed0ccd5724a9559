"""The value types of the configuration keys and the base of its sections (``pm.config``):
each type carries its range, so a key's check is written once, where its type is."""

from __future__ import annotations

from typing import Annotated

import msgspec

BearerToken = Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9._~+/-]{16,}=*$")]
# A browser origin: scheme, host and optional port, nothing after them.
BrowserOrigin = Annotated[str, msgspec.Meta(pattern=r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")]

# A TCP port to listen on; 0 lets the system choose a free one (tests).
ListenPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
# A TCP port to connect to.
RemotePort = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# A host name or address: empty would mean different things to different libraries.
Host = Annotated[str, msgspec.Meta(min_length=1)]
# A count or size that must allow at least one of its things.
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
# Seconds that must pass before something happens (a timeout, a delay): 0 or less would
# make it happen at once, every time. inf is allowed where it means "never".
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# A rate or count where 0 is documented as "no limit" or "none".
ZeroOrMore = Annotated[float, msgspec.Meta(ge=0)]


# A PostgreSQL connection URL (libpq's form), or empty for none.
StoreUrl = Annotated[str, msgspec.Meta(pattern="^(postgres(ql)?://.*)?$")]


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A ``[section]`` of the configuration: unknown keys are refused, values never change."""
