"""Property-based tests of what devices and clients control: answer payloads, answer topics,
device ids, and ``POST /jobs`` bodies, including structures far deeper and wider than any
real one.

The examples per property are bounded so the suite stays fast; set ``PM_FUZZ_EXAMPLES`` for a
longer run (``PM_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz.py``).
"""

from __future__ import annotations

import os
import re
import string
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pm.devices import Fleet
from pm.http.bodies import BodyRefused, decode_job_request
from pm.json_nesting import DEFAULT_MAX_JSON_DEPTH
from pm.protocol import (
    InvalidDeviceId,
    MalformedAnswer,
    SanjiAnswer,
    TopicTemplates,
    decode_answer,
    normalize_device_id,
)
from tests.fakes import RecordingPublisher
from tests.hostile_json import deep_json, json_values, wide_json
from tests.job_api import job_body_with_data

EXAMPLES = int(os.environ.get("PM_FUZZ_EXAMPLES", "300"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The example database would make runs depend on earlier ones: keep them reproducible.
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

CANONICAL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
TOPICS = TopicTemplates("/remote/{device}", "/remote/{device}/response")

# Objects shaped like answers, right and wrong: the fields devices send, with any value.
answer_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.integers(),
        "code": json_values | st.integers(),
        "method": json_values,
        "resource": json_values,
        "sign": json_values,
        "data": json_values,
        "extra": json_values,
    },
)


hostile_json = st.one_of(deep_json(), wide_json)
payloads = st.one_of(
    st.binary(max_size=256),
    json_values.map(msgspec.json.encode),
    answer_like.map(msgspec.json.encode),
    # An answer of the right shape whose data is deep or wide.
    hostile_json.map(lambda data: b'{"id": 1, "code": 200, "data": ' + data + b"}"),
    # Invalid UTF-8 inside a string.
    st.binary(min_size=1, max_size=4).map(
        lambda raw: b'{"id": 1, "code": 200, "data": "' + raw + b'"}'
    ),
)


# -- decode_answer -----------------------------------------------------------------------------


@fuzz
@given(payloads)
@example(b"[" * 100_000)  # deeper than any parser's recursion limit
@example(b'{"id": 1e400, "code": 200}')
@example(b'{"id": 99999999999999999999999, "code": 200}')
@example(b'{"id": 1, "code": 200, "data": "\\ud800"}')  # a lone surrogate
@example(b"\xef\xbb\xbf{}")
@example(b'{"id": 1, "code": 200, "data": ' + b"[" * 1_500 + b"]" * 1_500 + b"}")
@example(b'{"id": 1, "code": 200, "data": "\xed\xa0\x80"}')
def test_decode_answer_returns_an_answer_or_raises_malformed(payload: bytes) -> None:
    try:
        answer = decode_answer(payload)
    except MalformedAnswer:
        return
    assert isinstance(answer, SanjiAnswer)
    assert isinstance(answer.id, int) and isinstance(answer.code, int)
    # What was accepted can be encoded again inside a bigger document (a stored result).
    msgspec.json.encode({"tasks": [{"result": answer.data}]})


# -- POST /jobs bodies -------------------------------------------------------------------------


@fuzz
@given(
    st.one_of(
        st.binary(max_size=256),
        json_values.map(msgspec.json.encode),
        hostile_json,
        hostile_json.map(job_body_with_data),
        st.binary(min_size=1, max_size=4).map(lambda raw: job_body_with_data(b'"' + raw + b'"')),
    )
)
@example(job_body_with_data(b"[" * 1_000 + b"]" * 1_000))
def test_a_job_body_decodes_or_is_refused_with_a_400(body: bytes) -> None:
    try:
        job_request = decode_job_request(body, DEFAULT_MAX_JSON_DEPTH)
    except BodyRefused as refused:
        assert refused.status == 400 and str(refused)
        return
    # What was accepted can be encoded again inside a bigger document (a job view's tasks).
    msgspec.json.encode({"collection": [{"data": entry.data} for entry in job_request.batch]})


@fuzz
@given(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-(2**63), 2**64 - 1),
    json_values,
    st.none() | st.text(max_size=16),
)
def test_a_valid_answer_decodes_to_what_was_sent(
    task_id: int, code: int, data: Any, resource: str | None
) -> None:
    payload = msgspec.json.encode({"id": task_id, "code": code, "data": data, "resource": resource})
    answer = decode_answer(payload)
    assert (answer.id, answer.code, answer.resource) == (task_id, code, resource)
    assert msgspec.json.encode(answer.data) == msgspec.json.encode(data)


# -- normalize_device_id -----------------------------------------------------------------------

id_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=string.hexdigits + ":-", min_size=11, max_size=18),
    st.text(alphabet=string.ascii_letters + string.digits + "._:-\n /", max_size=70),
)


@fuzz
@given(id_text)
@example("00:0c:29:1c:e8:01\n")
@example("a" * 64)
@example("a" * 65)
@example("")
def test_normalize_returns_a_canonical_id_or_raises_invalid(raw: str) -> None:
    try:
        device = normalize_device_id(raw)
    except InvalidDeviceId:
        return
    assert CANONICAL_ID.fullmatch(device)
    # Idempotent: the canonical spelling is its own canonical spelling.
    assert normalize_device_id(device) == device


@fuzz
@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-", ""]), st.booleans())
def test_every_mac_spelling_is_one_device(octets: bytes, separator: str, upper: bool) -> None:
    spelled = separator.join(f"{octet:02x}" for octet in octets)
    spelled = spelled.upper() if upper else spelled
    canonical = ":".join(f"{octet:02x}" for octet in octets)
    assert normalize_device_id(spelled) == canonical


# -- the answer router, fed garbage ----------------------------------------------------------

topics = st.one_of(
    st.text(max_size=40),
    id_text.map(TOPICS.response_topic),
    st.sampled_from(["/remote//response", "/remote/a/b/response", "/remote/a", ""]),
)


@pytest.mark.parametrize("max_answer_bytes", [64, 256 * 1024])
def test_the_answer_router_drops_garbage_and_never_raises(max_answer_bytes: int) -> None:
    """Whatever arrives on answer topics with no task in flight is dropped, counted once
    per message under a known reason, and leaves no per-message state behind."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fleet = Fleet(
                nursery,
                RecordingPublisher(),
                TOPICS,
                mailbox_size=4,
                idle_timeout=1.0,
                max_answer_bytes=max_answer_bytes,
            )
            sent = 0

            @fuzz
            @given(topics, payloads)
            def route(topic: str, payload: bytes) -> None:
                nonlocal sent
                fleet.on_answer(topic, payload)
                sent += 1
                assert sum(fleet.dropped.values()) == sent

            route()
            assert set(fleet.dropped) <= {
                "foreign_topic",
                "malformed",
                "unexpected_id",
                "oversized",
            }
            assert fleet.in_flight == 0 and fleet.live_actors == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
