"""Micro-benchmark: what the nesting check (``limits.max_json_depth``) adds to decoding an answer.

For a few answer shapes, the time of ``decode_answer`` with the check (as the gateway runs
it) against msgspec decoding alone (what it cost before the check), in microseconds per
answer, best of ``--repeat`` runs (the machine is shared: the minimum is the least disturbed).
No gateway, no broker: this is CPU in one process.

Usage::

    .venv/bin/python -m bench.json_nesting [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from functools import partial

import msgspec

from pm.json_nesting import DEFAULT_MAX_JSON_DEPTH, nesting_exceeds
from pm.protocol import SanjiAnswer, decode_answer

_plain_decoder = msgspec.json.Decoder(SanjiAnswer)


def _answer(data: object) -> bytes:
    return json.dumps({"id": 1042, "code": 200, "method": "post", "resource": "/r", "data": data})


SHAPES: dict[str, bytes] = {
    # What Sanji devices usually answer: fewer brackets than the limit (the fast path).
    "small (typical)": _answer({"ok": True}).encode(),
    "progress 206": b'{"id": 1042, "code": 206, "data": {"progress": 40}}',
    # More brackets than the limit: the full scan runs.
    "100 objects, 5 KB": _answer(
        [{"name": f"eth{n}", "ip": [10, 0, 0, n], "up": True} for n in range(100)]
    ).encode(),
    "20,000 lists, 190 KB": _answer([[n] for n in range(20_000)]).encode(),
    "60 levels deep": _answer(json.loads("[" * 60 + "]" * 60)).encode(),
}


def _best_microseconds(call: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"limits.max_json_depth = {DEFAULT_MAX_JSON_DEPTH}; microseconds per answer")
    print("| answer | bytes | msgspec alone | check | check / msgspec |")
    print("|---|---|---|---|---|")
    for name, payload in SHAPES.items():
        decode_answer(payload)  # must be accepted
        plain = _best_microseconds(partial(_plain_decoder.decode, payload), args.repeat)
        check = _best_microseconds(
            partial(nesting_exceeds, payload, DEFAULT_MAX_JSON_DEPTH), args.repeat
        )
        print(f"| {name} | {len(payload):,} | {plain:.2f} | {check:.2f} | {check / plain:.0%} |")


if __name__ == "__main__":
    main()
