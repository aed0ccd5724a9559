"""Device protocol v1: device ids, the Sanji request we publish and the answer we accept.

Pure functions and Structs, no I/O: the device actor and the MQTT adapter call into this.
``docs/protocol.md`` is the same contract written for firmware authors.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from .json_nesting import DEFAULT_MAX_JSON_DEPTH, nesting_exceeds

Method = Literal["get", "post", "put", "delete"]

_MAC_SEPARATED = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}$")
_MAC_BARE = re.compile(r"^[0-9A-Fa-f]{12}$")
_OTHER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Sanji's interim answer: the device is still working and reports data.progress.
PROGRESS_CODE = 206

# The pseudo device whose answer topic carries the gateway's own answer-path probe
# (pm.mqtt.AnswerPathProbe). "~" is outside every device id's alphabet, so no device, job
# destination or password-file entry can ever be this id; it does not start the topic level
# with "$", which MQTT wildcards would not match.
PROBE_DEVICE_ID = "~puppetmaster-probe"
# The answer template's gateway level (topics.response, pm.config_topics).
GATEWAY_PLACEHOLDER = "{gateway}"


class InvalidDeviceId(ValueError):
    """A destination that is neither MAC-shaped nor a plain id of the allowed characters."""


def normalize_device_id(raw: str) -> str:
    """Return the one canonical spelling of a device id.

    MAC-shaped ids (six hex octets separated by ``:`` or ``-``, or 12 hex digits) become
    lowercase colon form, so ``00-0C-29-1C-E8-01`` and ``000c291ce801`` are one device.
    Other ids are kept as they are if they match ``^[A-Za-z0-9._:-]{1,64}$``.

    Error handling: raises :class:`InvalidDeviceId` for anything else; such a destination is
    refused before any job exists.
    """
    if _MAC_SEPARATED.fullmatch(raw):
        return raw.replace("-", ":").lower()
    if _MAC_BARE.fullmatch(raw):
        lowered = raw.lower()
        return ":".join(lowered[i : i + 2] for i in range(0, 12, 2))
    if _OTHER_ID.fullmatch(raw):
        return raw
    raise InvalidDeviceId(
        f"invalid device id {raw!r}: expected a MAC address or 1-64 of A-Z a-z 0-9 . _ : -"
    )


class TopicTemplates:
    """Request, answer and status topics for a device, from the configured ``{device}``
    templates.

    Args:
      gateway: the id of the gateway that answers are for, put in place of the answer
        template's ``{gateway}`` once, here (the answer topic of a task costs the same with
        or without it); ``None`` for a user of the templates that receives no answers (the
        simulator, which answers on each request's ``tunnel``).

    Error handling: raises ValueError for a template without exactly one ``{device}``, and
    for an answer template with ``{gateway}`` given an empty ``gateway``.
    """

    def __init__(
        self,
        request: str,
        response: str,
        status: str = "/remote/{device}/status",
        *,
        gateway: str | None = None,
    ) -> None:
        if gateway is not None and GATEWAY_PLACEHOLDER in response:
            if not gateway:
                raise ValueError(f"topics.response {response!r} needs a gateway id")
            response = response.replace(GATEWAY_PLACEHOLDER, gateway)
        for name, template in (("request", request), ("response", response), ("status", status)):
            if template.count("{device}") != 1:
                raise ValueError(
                    f"topics.{name} must contain {{device}} exactly once: {template!r}"
                )
        self.request = request
        # With the gateway's id in place of {gateway}: this gateway's answers only.
        self.response = response
        self.status = status
        self._response_parts = response.partition("{device}")[::2]
        self._status_parts = status.partition("{device}")[::2]
        # Whether no topic is both an answer and a status topic (true of the defaults): then
        # an answer is recognized with one parse of its topic, the per-answer path.
        self.answers_never_statuses = _disjoint(self._response_parts, self._status_parts)

    def request_topic(self, device: str) -> str:
        return self.request.replace("{device}", device)

    def response_topic(self, device: str) -> str:
        return self.response.replace("{device}", device)

    def status_topic(self, device: str) -> str:
        return self.status.replace("{device}", device)

    @property
    def response_filter(self) -> str:
        """The one MQTT subscription that receives every device's answers."""
        return self.response.replace("{device}", "+")

    @property
    def status_filter(self) -> str:
        """The one MQTT subscription that receives every device's presence (protocol v1.1)."""
        return self.status.replace("{device}", "+")

    def device_of_response(self, topic: str) -> str | None:
        """The device id an answer topic belongs to, or ``None`` if it is not one."""
        return device_in_topic(topic, *self._response_parts)

    def device_of_status(self, topic: str) -> str | None:
        """The device id (as written, not normalized) a status topic belongs to, or ``None``."""
        return device_in_topic(topic, *self._status_parts)


def _disjoint(first: tuple[str, str], second: tuple[str, str]) -> bool:
    """Whether no topic matches both templates (each split at ``{device}``): it would have
    to start with both prefixes and end with both suffixes."""
    (prefix_a, suffix_a), (prefix_b, suffix_b) = first, second
    prefixes_agree = prefix_a.startswith(prefix_b) or prefix_b.startswith(prefix_a)
    suffixes_agree = suffix_a.endswith(suffix_b) or suffix_b.endswith(suffix_a)
    return not (prefixes_agree and suffixes_agree)


def device_in_topic(topic: str, prefix: str, suffix: str) -> str | None:
    """The one topic level between ``prefix`` and ``suffix`` (a template split at
    ``{device}``), or ``None`` if ``topic`` is not of that form."""
    if not (topic.startswith(prefix) and topic.endswith(suffix)):
        return None
    device = topic[len(prefix) : len(topic) - len(suffix)]
    if not device or "/" in device:
        return None
    return device


class SanjiRequest(msgspec.Struct, kw_only=True):
    """The Sanji DIRECT message published to ``/remote/{device}``."""

    id: int
    method: Method
    resource: str
    data: Any
    tunnel: str


class SanjiAnswer(msgspec.Struct, kw_only=True):
    """A Sanji RESPONSE from a device. Only ``id`` and ``code`` are required."""

    id: int
    code: int
    method: str | None = None
    resource: str | None = None
    sign: list[str] | None = None
    data: Any = None


_request_encoder = msgspec.json.Encoder()
_answer_decoder = msgspec.json.Decoder(SanjiAnswer)


def encode_request(request: SanjiRequest) -> bytes:
    return _request_encoder.encode(request)


class MalformedAnswer(ValueError):
    """A payload on an answer topic that is not a Sanji answer; ignored and counted."""


def decode_answer(payload: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> SanjiAnswer:
    """Parse a device answer.

    Args:
      payload: the MQTT message as received.
      max_depth: levels of nested arrays and objects allowed (``limits.max_json_depth``),
        checked on the raw bytes before parsing.

    Error handling: raises :class:`MalformedAnswer` for anything that is not a JSON object
    with an integer ``id`` and ``code``, that nests deeper than ``max_depth``, or that is not
    valid UTF-8; callers count it and drop it.
    """
    if nesting_exceeds(payload, max_depth):
        raise MalformedAnswer(f"nested deeper than {max_depth} levels")
    try:
        return _answer_decoder.decode(payload)
    except msgspec.DecodeError as error:
        raise MalformedAnswer(str(error)) from None
    except UnicodeDecodeError as error:
        # msgspec passes invalid UTF-8 inside a string through Python's codec, whose error
        # is not a DecodeError.
        raise MalformedAnswer(f"invalid UTF-8: {error}") from None


def answer_progress(answer: SanjiAnswer) -> int | None:
    """``data.progress`` of a 206 answer, clamped to 0-100, or ``None`` if absent or unusable."""
    data = answer.data
    if not isinstance(data, dict):
        return None
    progress = data.get("progress")
    if isinstance(progress, bool) or not isinstance(progress, int | float):
        return None
    return max(0, min(100, int(progress)))


def is_success(code: int) -> bool:
    return 200 <= code < 300 and code != PROGRESS_CODE


def error_result(answer: SanjiAnswer) -> dict[str, Any]:
    """The task result recorded for a non-2xx answer."""
    return {"code": answer.code, "resource": answer.resource, "data": answer.data}
