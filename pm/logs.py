"""Log output for ``pm serve``: human-readable text, or one JSON object per line.

The gateway's log calls put the ids they concern both in the message text (for people reading
text logs) and in ``extra=`` fields (``job_id``, ``task_id``, ``device``, ``status``...), so a
log pipeline can filter on them without parsing messages. :class:`JsonFormatter` writes those
fields as top-level keys of each line.
"""

from __future__ import annotations

import datetime
import logging
import typing
from typing import Any

import msgspec

LogFormat = typing.Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = typing.get_args(LogFormat)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Every attribute a bare LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

# Values msgspec cannot encode (an exception object passed as extra, say) become their repr
# instead of costing the log line.
_encoder = msgspec.json.Encoder(enc_hook=repr)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, every ``extra=`` field, and ``exception`` (the formatted traceback) if any.

    Extra fields never overwrite the four fixed keys: a clash is written as ``extra_<name>``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES:
                line[f"extra_{name}" if name in line else name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encoder.encode(line).decode()


def configure_logging(level: str, log_format: LogFormat = "text") -> logging.Handler:
    """Send every log record at ``level`` or above to stderr, as text or JSON lines.

    Returns the handler added to the root logger (remove it to undo).
    """
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
