"""Device protocol v1: device ids, topics, and the Sanji request and answer codecs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pm.protocol import (
    PROGRESS_CODE,
    InvalidDeviceId,
    MalformedAnswer,
    SanjiAnswer,
    SanjiRequest,
    TopicTemplates,
    answer_progress,
    decode_answer,
    encode_request,
    error_result,
    is_success,
    normalize_device_id,
)

# -- device ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    ["00:0C:29:1C:E8:01", "00-0C-29-1C-E8-01", "000C291CE801", "00:0c:29:1c:e8:01", "000c291ce801"],
)
def test_every_mac_spelling_becomes_lowercase_colon_form(raw: str) -> None:
    assert normalize_device_id(raw) == "00:0c:29:1c:e8:01"


@pytest.mark.parametrize(
    "raw",
    [
        "gateway-7",
        "Device.A_1",
        "a",
        "x" * 64,
        # Almost MACs are plain ids, kept as they are (case included).
        "00:0C:29:1C:E8",
        "00:0C-29:1C:E8:01",
        "000C291CE80",
        "000C291CE8012",
    ],
)
def test_other_valid_ids_are_kept_as_they_are(raw: str) -> None:
    assert normalize_device_id(raw) == raw


@pytest.mark.parametrize(
    "raw",
    ["", "x" * 65, "a/b", "+", "#", "a b", "dévice", "a+b", "a#"]
    # "$" alone would also match before a final newline.
    + ["device\n", "00:0C:29:1C:E8:01\n", "000C291CE801\n"],
)
def test_invalid_ids_are_refused(raw: str) -> None:
    with pytest.raises(InvalidDeviceId, match="invalid device id"):
        normalize_device_id(raw)
    assert issubclass(InvalidDeviceId, ValueError)


# -- topics --------------------------------------------------------------------------------


def test_topic_templates_build_request_and_response_topics() -> None:
    topics = TopicTemplates("/remote/{device}", "/remote/{device}/response")
    assert topics.request_topic("00:0c:29:1c:e8:01") == "/remote/00:0c:29:1c:e8:01"
    assert topics.response_topic("dev1") == "/remote/dev1/response"
    assert topics.response_filter == "/remote/+/response"


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("/remote/dev1/response", "dev1"),
        ("/remote/00:0c:29:1c:e8:01/response", "00:0c:29:1c:e8:01"),
        ("/remote/dev1", None),  # a request topic
        ("/remote//response", None),  # empty device
        ("/remote/a/b/response", None),  # more than one level
        ("/other/dev1/response", None),
        ("/remote/dev1/response/extra", None),
        ("remote/dev1/response", None),
        ("", None),
    ],
)
def test_device_of_response(topic: str, device: str | None) -> None:
    topics = TopicTemplates("/remote/{device}", "/remote/{device}/response")
    assert topics.device_of_response(topic) == device


def test_device_of_response_with_a_template_ending_in_device() -> None:
    topics = TopicTemplates("cmd/{device}", "answers/{device}")
    assert topics.device_of_response("answers/d-1") == "d-1"
    assert topics.device_of_response("answers/") is None
    assert topics.response_filter == "answers/+"


def test_the_gateway_id_is_put_in_the_answer_template_once() -> None:
    topics = TopicTemplates(
        "/remote/{device}", "/remote/{device}/response/{gateway}", gateway="gw-1"
    )
    assert topics.response == "/remote/{device}/response/gw-1"
    assert topics.response_topic("dev1") == "/remote/dev1/response/gw-1"
    assert topics.response_filter == "/remote/+/response/gw-1"
    assert topics.device_of_response("/remote/dev1/response/gw-1") == "dev1"
    # Another gateway's answer is not this gateway's.
    assert topics.device_of_response("/remote/dev1/response/gw-2") is None
    assert topics.device_of_response("/remote/dev1/response") is None


def test_an_answer_template_with_a_gateway_level_needs_a_gateway_id() -> None:
    with pytest.raises(ValueError, match="needs a gateway id"):
        TopicTemplates("/remote/{device}", "/remote/{device}/response/{gateway}", gateway="")
    # Without a {gateway} level the id changes nothing (a single gateway's default topics).
    plain = TopicTemplates("/remote/{device}", "/remote/{device}/response", gateway="gw-1")
    assert plain.response_filter == "/remote/+/response"


@pytest.mark.parametrize(
    ("request_template", "response_template"),
    [
        ("/remote/device", "/remote/{device}/response"),
        ("/remote/{device}", "/remote/response"),
        ("/remote/{device}/{device}", "/remote/{device}/response"),
    ],
)
def test_templates_must_contain_device_exactly_once(
    request_template: str, response_template: str
) -> None:
    with pytest.raises(ValueError, match=r"must contain \{device\} exactly once"):
        TopicTemplates(request_template, response_template)


# -- requests ------------------------------------------------------------------------------


def test_encode_request_has_the_sanji_direct_shape() -> None:
    request = SanjiRequest(
        id=7,
        method="post",
        resource="/system/reboot",
        data={"delay": 1},
        tunnel="/remote/dev1/response",
    )
    payload = encode_request(request)
    assert isinstance(payload, bytes)
    assert json.loads(payload) == {
        "id": 7,
        "method": "post",
        "resource": "/system/reboot",
        "data": {"delay": 1},
        "tunnel": "/remote/dev1/response",
    }


# -- answers -------------------------------------------------------------------------------


def test_decode_answer_with_every_field() -> None:
    payload = json.dumps(
        {
            "id": 3,
            "code": 200,
            "method": "get",
            "resource": "/system/status",
            "sign": ["a", "b"],
            "data": {"uptime": 5},
        }
    ).encode()
    answer = decode_answer(payload)
    assert answer == SanjiAnswer(
        id=3,
        code=200,
        method="get",
        resource="/system/status",
        sign=["a", "b"],
        data={"uptime": 5},
    )


def test_decode_answer_needs_only_id_and_code() -> None:
    answer = decode_answer(b'{"id": 1, "code": 404, "extra": true}')
    assert (answer.id, answer.code, answer.method, answer.resource) == (1, 404, None, None)
    assert (answer.sign, answer.data) == (None, None)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'"text"',
        b"{",
        b'{"code": 200}',
        b'{"id": 1}',
        b'{"id": "1", "code": 200}',
        b'{"id": 1, "code": "200"}',
        b'{"id": 1.5, "code": 200}',
        b'{"id": 1, "code": 200, "sign": "x"}',
        b'{"id": 1, "code": 200, "method": 5}',
        b"\xff\xfe",
        # Found by trying: invalid UTF-8 inside a string raised UnicodeDecodeError.
        b'{"id": 1, "code": 200, "data": "\xed\xa0\x80"}',
        b'{"id": 1, "code": 200, "resource": "\xff"}',
    ],
)
def test_malformed_answers_are_refused(payload: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        decode_answer(payload)


@pytest.mark.parametrize("levels", [65, 1_500, 100_000])
def test_an_answer_nested_deeper_than_the_limit_is_malformed(levels: int) -> None:
    # Found by trying: ~1,500 levels (3 KB) raised RecursionError out of the decoder.
    data = b"[" * (levels - 1) + b"]" * (levels - 1)
    payload = b'{"id": 1, "code": 200, "data": ' + data + b"}"
    with pytest.raises(MalformedAnswer, match="nested deeper than 64 levels"):
        decode_answer(payload)


def test_an_answer_at_the_depth_limit_decodes() -> None:
    data = b"[" * 63 + b"]" * 63
    answer = decode_answer(b'{"id": 1, "code": 200, "data": ' + data + b"}")
    assert answer.code == 200
    with pytest.raises(MalformedAnswer, match="nested deeper than 10 levels"):
        decode_answer(b'{"id": 1, "code": 200, "data": ' + data + b"}", max_depth=10)


@pytest.mark.parametrize(
    ("data", "progress"),
    [
        ({"progress": 40}, 40),
        ({"progress": 40.9}, 40),
        ({"progress": 0}, 0),
        ({"progress": 100}, 100),
        ({"progress": 250}, 100),
        ({"progress": -5}, 0),
        ({"progress": True}, None),
        ({"progress": False}, None),
        ({"progress": "50"}, None),
        ({"progress": None}, None),
        ({}, None),
        ([40], None),
        (None, None),
        ("progress", None),
    ],
)
def test_answer_progress(data: Any, progress: int | None) -> None:
    answer = SanjiAnswer(id=1, code=PROGRESS_CODE, data=data)
    assert answer_progress(answer) == progress


@pytest.mark.parametrize(
    ("code", "success"),
    [(200, True), (201, True), (204, True), (299, True), (206, False), (199, False)]
    + [(300, False), (400, False), (404, False), (500, False)],
)
def test_is_success(code: int, success: bool) -> None:
    assert is_success(code) is success


def test_error_result_keeps_code_resource_and_data() -> None:
    answer = SanjiAnswer(id=9, code=500, resource="/x", data={"message": "boom"}, sign=["s"])
    assert error_result(answer) == {"code": 500, "resource": "/x", "data": {"message": "boom"}}
    assert error_result(SanjiAnswer(id=9, code=404)) == {
        "code": 404,
        "resource": None,
        "data": None,
    }


@pytest.mark.parametrize(
    ("response", "status", "disjoint"),
    [
        ("/remote/{device}/response", "/remote/{device}/status", True),
        ("/a/{device}", "/b/{device}", True),
        # "/remote/a/x" is the answer topic of "a" and the status topic of "x".
        ("/remote/{device}/x", "/remote/a/{device}", False),
        ("/{device}/response", "/{device}/x/response", False),
    ],
)
def test_whether_an_answer_topic_can_also_be_a_status_topic(
    response: str, status: str, disjoint: bool
) -> None:
    assert TopicTemplates("/req/{device}", response, status).answers_never_statuses is disjoint
