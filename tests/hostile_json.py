"""Hypothesis strategies for JSON from outside: any values, and documents far deeper and wider
than real ones (raw bytes, since Python's own encoder cannot build the deepest). Shared by the
property tests of the codecs and the fuzz target that sends answers through a real broker."""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def deep_json(draw: st.DrawFn, min_levels: int = 1) -> bytes:
    """Raw JSON nested ``min_levels``-5,000 levels (too deep to build as Python values): a
    repeated pattern of arrays and objects, with brackets inside strings to mislead a scanner."""
    levels = draw(st.integers(min_levels, 5_000))
    pattern = draw(
        st.lists(st.sampled_from([b"[", b'{"k":', b'["]",', b'{"[{":']), min_size=1, max_size=4)
    )
    openers = [pattern[level % len(pattern)] for level in range(levels)]
    closers = [b"]" if opener.startswith(b"[") else b"}" for opener in reversed(openers)]
    leaf = msgspec.json.encode(draw(json_values))
    return b"".join(openers) + leaf + b"".join(closers)


# Wide: many siblings, shallow (up to ~200 KB).
wide_json = st.one_of(
    st.integers(0, 20_000).map(lambda width: msgspec.json.encode(list(range(width)))),
    st.integers(0, 10_000).map(
        lambda width: msgspec.json.encode({f"k{n}": [n] for n in range(width)})
    ),
)
