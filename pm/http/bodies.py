"""Request bodies: only JSON is accepted, and it is checked before msgspec parses it.

Pure functions, no I/O: the app hands them the headers and the bytes it read.

Why a content type is required: a browser sends a ``text/plain``, form or multipart POST to
any site without asking it first (a CORS "simple" request), so a body read whatever its type
would let any web page create jobs on a gateway its visitor can reach. An
``application/json`` body from another site needs a preflight, which only
``http.allowed_origins`` pass.
"""

from __future__ import annotations

import msgspec

from ..json_nesting import nesting_exceeds
from ..schemas import JobRequest

JSON_MEDIA_TYPE = "application/json"

_job_request_decoder = msgspec.json.Decoder(JobRequest)


class BodyRefused(Exception):
    """A body the API will not use; ``status`` and the message say why.

    ``limit`` names the configured limit that refused it, if one did (counted in /metrics).
    """

    def __init__(self, status: int, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.limit = limit


def check_json_media_type(mimetype: str, charset: str | None) -> None:
    """Refuse a body that is not declared ``application/json`` (UTF-8, if a charset is given).

    Args:
      mimetype: the ``Content-Type`` without parameters, lowercase ("" when absent).
      charset: its ``charset`` parameter, if any.

    Error handling: raises :class:`BodyRefused` with 415.
    """
    if mimetype != JSON_MEDIA_TYPE:
        declared = f"`{mimetype}`" if mimetype else "no Content-Type"
        raise BodyRefused(
            415, f"the body must be `Content-Type: {JSON_MEDIA_TYPE}`, not {declared}"
        )
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise BodyRefused(415, f"a JSON body must be UTF-8, not charset={charset}")


def decode_job_request(body: bytes, max_depth: int) -> JobRequest:
    """Parse and validate the body of ``POST /jobs``.

    Error handling: raises :class:`BodyRefused` with 400 and a message naming what is wrong:
    msgspec's (which names the field, ``... - at `$.batch[0].method```), malformed JSON or
    UTF-8, or nesting deeper than ``max_depth`` (``limits.max_json_depth``).
    """
    if nesting_exceeds(body, max_depth):
        raise BodyRefused(
            400,
            f"the JSON body is nested deeper than {max_depth} levels (limits.max_json_depth)",
            "max_json_depth",
        )
    try:
        return _job_request_decoder.decode(body)
    except msgspec.ValidationError as error:
        raise BodyRefused(400, str(error)) from None
    except msgspec.DecodeError as error:
        raise BodyRefused(400, f"malformed JSON: {error}") from None
    except UnicodeDecodeError as error:
        # Invalid UTF-8 inside a string reaches Python's codec, whose error is not msgspec's.
        raise BodyRefused(
            400, f"malformed JSON: a string is not valid UTF-8 ({error.reason})"
        ) from None
