"""The nesting check on raw JSON bytes, against a plain reference scan and msgspec itself."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pm.json_nesting import nesting_exceeds

EXAMPLES = int(os.environ.get("PM_FUZZ_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, database=None)


def reference_depth(document: bytes) -> int:
    """The deepest bracket nesting outside strings, one byte at a time (slow, obvious)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in document:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    ("document", "depth"),
    [
        (b"1", 0),
        (b'"[[[["', 0),
        (b"{}", 1),
        (b'{"a": [1]}', 2),
        (b"[[], [[]], []]", 3),
        (b'["\\"[[[", [1]]', 2),  # an escaped quote does not end the string
        (b'["\\\\", [1]]', 2),  # an escaped backslash does not escape the quote after it
        (b'["\\\\\\"[[", [1]]', 2),
        (b'{"k": "]]]]", "v": [[[1]]]}', 4),
        (b'[{"a": "{"}, {"b": "}"}]', 2),
    ],
)
def test_depth_counts_brackets_outside_strings(document: bytes, depth: int) -> None:
    assert reference_depth(document) == depth
    assert not nesting_exceeds(document, depth)
    if depth:
        assert nesting_exceeds(document, depth - 1)


def test_a_document_far_deeper_than_the_parser_can_go_is_refused() -> None:
    deep = msgspec.json.encode(nested(200))  # safe to build: 200 levels
    assert nesting_exceeds(deep, 64)
    assert nesting_exceeds(b"[" * 1_000_000, 64)
    assert nesting_exceeds(b'{"data":' * 100_000, 64)


def test_malformed_documents_are_judged_by_their_brackets() -> None:
    # Unbalanced: the deepest path counts; msgspec refuses the rest.
    assert not nesting_exceeds(b"]" * 100 + b"[" * 10, 64)
    assert nesting_exceeds(b"[" * 65, 64)
    assert not nesting_exceeds(b"[" * 64 + b"]" * 200, 64)
    # An unterminated string hides the brackets after its quote.
    assert not nesting_exceeds(b'["' + b"[" * 100, 64)


json_leaves = (
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), children, max_size=5)
    ),
    max_leaves=40,
)


@fuzz
@given(json_values, st.integers(0, 12))
def test_agrees_with_the_reference_on_json(value: Any, limit: int) -> None:
    document = json.dumps(value).encode()
    assert nesting_exceeds(document, limit) == (reference_depth(document) > limit)


@fuzz
@given(st.binary(max_size=200) | st.text(alphabet='[]{}"\\ a1,:', max_size=200).map(str.encode))
@example(b'"\\\\"[[[]]]')
@example(b'\\"[[]]')  # a backslash outside a string: not JSON
def test_any_bytes_are_judged_without_error_and_json_exactly(document: bytes) -> None:
    try:
        msgspec.json.decode(document)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # Not JSON: any answer will do (the parser refuses it anyway), but an answer.
        for limit in (0, 1, 3):
            nesting_exceeds(document, limit)
        return
    for limit in (0, 1, 3):
        assert nesting_exceeds(document, limit) == (reference_depth(document) > limit)
