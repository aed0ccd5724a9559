"""Device shards and gateway ids (pure logic, pm/cluster/_shards.py and _identity.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pm.cluster import fair_share, gateway_id_for, shard_of
from pm.config import ConfigError, load_config
from pm.config_cluster import ClusterConfig

REPOSITORY = Path(__file__).resolve().parent.parent


def test_a_devices_shard_is_the_same_in_every_process_and_release() -> None:
    # Fixed values: a change of the hash would move devices between gateways mid-upgrade.
    assert [shard_of(device, 256) for device in ("d0", "device-1", "00:0c:29:aa:bb:cc", "é")] == [
        97,
        235,
        102,
        47,
    ]
    # Not Python's hash(): another process, with another string-hash salt, agrees.
    other = subprocess.run(
        [sys.executable, "-c", "from pm.cluster import shard_of; print(shard_of('d0', 256))"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPOSITORY)},
        cwd=REPOSITORY,
    )
    assert other.stdout.strip() == "97"


def test_devices_spread_evenly_over_the_shards() -> None:
    counts = Counter(shard_of(f"device-{n}", 256) for n in range(25_600))
    assert set(counts) == set(range(256))
    # 100 per shard on average; a uniform hash stays well within +-50%.
    assert 50 < min(counts.values()) and max(counts.values()) < 150


@pytest.mark.parametrize(
    ("shards", "gateways", "share"),
    [(256, 1, 256), (256, 2, 128), (256, 3, 86), (256, 0, 256), (1, 3, 1), (10, 4, 3)],
)
def test_the_fair_share_rounds_up_so_every_shard_can_be_held(
    shards: int, gateways: int, share: int
) -> None:
    assert fair_share(shards, gateways) == share


def test_a_configured_gateway_id_is_used_as_is() -> None:
    assert gateway_id_for(ClusterConfig(gateway_id="gw-1")) == "gw-1"


def test_a_generated_gateway_id_is_a_valid_id_and_new_at_each_start() -> None:
    first = gateway_id_for(ClusterConfig(), host_name="rack 7/node+1.example")
    second = gateway_id_for(ClusterConfig(), host_name="rack 7/node+1.example")
    assert first.startswith("rack-7-node-1.example-") and first != second
    # A generated id passes the check a configured one must pass.
    config = load_config(environ={"PM_CLUSTER_GATEWAY_ID": first})
    assert config.cluster.gateway_id == first
    assert gateway_id_for(ClusterConfig(), host_name="///").startswith("gateway-")
    with pytest.raises(ConfigError, match="cluster.gateway_id"):
        load_config(environ={"PM_CLUSTER_GATEWAY_ID": "-starts-with-a-dash"})
