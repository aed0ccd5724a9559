"""The ``[cluster]`` section of the configuration (several gateways on one PostgreSQL
database; docs/scale-out.md). Kept beside :mod:`pm.config`, which holds every other section,
so that module stays one screenful per concern."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .config_fields import Section

# A gateway's id: it names the gateway in the database (lease owner) and, later, in its
# answer topic, so it holds no MQTT wildcard, no "/" and no space. Empty: generated at start.
GatewayId = Annotated[str, msgspec.Meta(pattern="^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")]


class ClusterConfig(Section):
    # true: this gateway is one of several sharing store.url (PostgreSQL) and an external
    # broker, dispatching the devices of the shards it leases (pm/cluster_engine.py).
    enabled: bool = False
    # This gateway's id in the cluster; empty = "<host name>-<random>", new at each start.
    gateway_id: GatewayId = ""
    # Seconds a gateway's device-shard leases last without renewal; a gateway that stops
    # renewing (dead, paused, cut off from the database) loses its shards to the others
    # after it, and its writes for them are refused (fenced) from then on.
    lease_ttl: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    # Device shards leased among the gateways (a device's shard is a stable hash of its id
    # mod this). Every gateway of a cluster must use the same number.
    shards: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 256
