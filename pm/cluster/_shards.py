"""Which shard a device belongs to, and each gateway's fair share of the shards (pure).

A device belongs to shard ``hash(device id) mod shards`` with a hash that is the same in
every process and every release (BLAKE2b of the UTF-8 id, its first 8 bytes big-endian):
Python's ``hash()`` of a string is salted per process, so two gateways would disagree.
Every gateway of a cluster must therefore use the same ``cluster.shards``; the database
records it and a gateway configured otherwise refuses to join (:mod:`pm.cluster._leases`).
"""

from __future__ import annotations

import hashlib
import math


def shard_of(device: str, shards: int) -> int:
    """The shard of ``device`` (its normalized id) among ``shards``."""
    digest = hashlib.blake2b(device.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def fair_share(shards: int, live_gateways: int) -> int:
    """The most shards one of ``live_gateways`` gateways holds when they are split evenly:
    rounded up, so every shard can be held (3 gateways of 256: 86, 85, 85)."""
    return math.ceil(shards / max(live_gateways, 1))
