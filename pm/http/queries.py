"""Query strings as msgspec Structs: one definition validates requests and documents them.

``pm.http.openapi`` turns each Struct's fields into OpenAPI query parameters, so a limit or an
allowed value is written once, here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, TypeVar

import msgspec

from ..schemas import JobStatus

PageSize = Annotated[int, msgspec.Meta(ge=1, le=1000, description="jobs per page, 1-1000")]
PageOffset = Annotated[int, msgspec.Meta(ge=0, description="jobs to skip, newest first")]


class _Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Unknown parameters are refused rather than ignored: a misspelt ``?stauts=`` that
    # silently returns every job is worse than a 400 that names it.
    pass


class ListJobsQuery(_Query):
    """``GET /jobs``."""

    status: Annotated[JobStatus, msgspec.Meta(description="only jobs in this status")] | None = None
    limit: PageSize = 100
    offset: PageOffset = 0


class GetJobQuery(_Query):
    """``GET /jobs/{id}``."""

    collection: Annotated[
        bool, msgspec.Meta(description="true: embed full task objects instead of task ids")
    ] = False


class InvalidQuery(ValueError):
    """The query string does not fit its Struct; the message names the parameter."""


QueryT = TypeVar("QueryT", bound=_Query)


def parse_query(args: Mapping[str, str], query_type: type[QueryT]) -> QueryT:
    """Validate query parameters (the first value of each) into ``query_type``.

    Error handling: raises :class:`InvalidQuery` with msgspec's message, which names the
    parameter (``Expected `int` >= 1 - at `$.limit```).
    """
    try:
        # strict=False: every query value is a string; let "10" become 10 and "true" True.
        return msgspec.convert({name: args[name] for name in args}, query_type, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidQuery(f"invalid query string: {error}") from None
