"""How deeply a JSON document nests, checked on its raw bytes before anything parses it.

msgspec decodes and encodes nested arrays and objects recursively: a document nested ~1,000
levels deep raises ``RecursionError`` (a 500 on the HTTP side, a traceback per message on the
device side), and one just under that would decode here and fail later, wherever it is encoded
again inside a bigger document. So every JSON document the gateway accepts from outside (a
request body, a device answer) is first checked against ``limits.max_json_depth``.

Pure functions, no I/O. Cost (``python -m bench.json_nesting``, figures in
``bench/README.md``): a document with no more brackets than the limit, which is every usual
answer, costs one ``bytes.translate`` and one ``bytes.count`` (under a microsecond for a
typical answer); any other document costs a few more passes of C-level byte operations over
it, less than msgspec takes to decode it.
"""

from __future__ import annotations

from array import array
from itertools import accumulate

# limits.max_json_depth: its default, and the most it may be set to. msgspec recurses once per
# level and Python's recursion limit (1000) must keep room for the stack around the parser
# and for the levels a stored document gains inside a bigger one (a job view's tasks).
DEFAULT_MAX_JSON_DEPTH = 64
MAX_JSON_DEPTH_CEILING = 256

# The structure of a document is its brackets outside strings. Its skeleton keeps only the
# brackets and the quotes that delimit strings (and, at first, backslashes, which can escape a
# quote); openers and closers of both kinds become one kind each, since only the nesting
# counts (a mismatched pair is msgspec's to refuse).
_SKELETON = bytes.maketrans(b"{}", b"[]")
_NOT_SKELETON = bytes(byte for byte in range(256) if byte not in b'"[]{}\\')
_NOT_SKELETON_NOR_BACKSLASH = _NOT_SKELETON + b"\\"
# For the exact count: an opener steps +1, a closer -1 (as signed bytes).
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")


def nesting_exceeds(document: bytes, max_depth: int) -> bool:
    """Whether ``document`` nests arrays and objects more than ``max_depth`` levels deep.

    ``{}`` is one level, ``{"a": [1]}`` two; brackets inside strings do not count. Exact for
    JSON; for bytes that are not JSON it still answers (never raises, linear time), and the
    parser that runs next refuses them either way.
    """
    # One C-level pass; a short document's skeleton is a handful of bytes.
    skeleton = document.translate(_SKELETON, _NOT_SKELETON)
    # A level needs an opening bracket: with no more of them than the limit, nothing to do.
    if skeleton.count(b"[") <= max_depth:
        return False
    skeleton = _without_strings(document, skeleton)
    # Each pass removes every innermost pair at once, so a document max_depth deep is gone
    # after max_depth passes; real documents (wide, shallow) are gone after a few.
    remaining = skeleton
    for _ in range(max_depth):
        shorter = remaining.replace(b"[]", b"")
        if len(shorter) == len(remaining):
            break  # unbalanced: count exactly below
        remaining = shorter
        if not remaining:
            return False
    # Deeper than the limit, or unbalanced brackets (malformed): the exact depth says which.
    return max(accumulate(array("b", skeleton.translate(_STEPS))), default=0) > max_depth


def _without_strings(document: bytes, skeleton: bytes) -> bytes:
    """The skeleton's brackets outside strings, as ``[`` and ``]``."""
    if b"\\" in skeleton:
        # Escapes are undone in the document itself, where a backslash is next to what it
        # escapes: escaped backslashes first, then escaped quotes. What remains of a backslash
        # then cannot hide a quote, so every remaining quote opens or closes a string.
        unescaped = document.replace(b"\\\\", b"").replace(b'\\"', b"")
        skeleton = unescaped.translate(_SKELETON, _NOT_SKELETON_NOR_BACKSLASH)
    # A string with no bracket in it is now an empty pair of quotes: drop them all at once.
    # Dropping any two adjacent quotes leaves every other byte on its side of its string.
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        # Strings holding brackets (rare): every other piece between quotes is outside one.
        skeleton = b"".join(skeleton.split(b'"')[::2])
    return skeleton
