"""Query strings as msgspec Structs: one definition validates requests and documents them.

``pm.http.openapi`` turns each Struct's fields into OpenAPI query parameters, so a limit or an
allowed value is written once, here.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from werkzeug.datastructures import MultiDict

from ..schemas import MAX_SQLITE_INTEGER, JobStatus

PageSize = Annotated[int, msgspec.Meta(ge=1, le=1000, description="jobs per page, 1-1000")]
PageOffset = Annotated[
    int, msgspec.Meta(ge=0, le=MAX_SQLITE_INTEGER, description="jobs to skip, newest first")
]


class _Query(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Unknown parameters are refused rather than ignored: a misspelt ``?stauts=`` that
    # silently returns every job is worse than a 400 that names it.
    pass


class ListJobsQuery(_Query):
    """``GET /jobs``."""

    # UNSET rather than None for "absent": non-strict conversion would read ?status=null as
    # None, silently listing every job.
    status: (
        Annotated[JobStatus, msgspec.Meta(description="only jobs in this status")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
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


def parse_query(args: MultiDict[str, str], query_type: type[QueryT]) -> QueryT:
    """Validate query parameters into ``query_type``.

    Error handling: raises :class:`InvalidQuery` with msgspec's message, which names the
    parameter (``Expected `int` >= 1 - at `$.limit```), or naming a parameter given twice
    (which of two values was meant cannot be guessed).
    """
    for name in args:
        if len(args.getlist(name)) > 1:
            raise InvalidQuery(f"invalid query string: `{name}` is given more than once")
    try:
        # strict=False: every query value is a string; let "10" become 10 and "true" True.
        return msgspec.convert({name: args[name] for name in args}, query_type, strict=False)
    except msgspec.ValidationError as error:
        raise InvalidQuery(f"invalid query string: {error}") from None
