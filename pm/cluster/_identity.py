"""A gateway's id in the cluster: ``cluster.gateway_id``, or one made up at start."""

from __future__ import annotations

import re
import secrets
import socket

import msgspec

from ..config import Config
from ..config_cluster import ClusterConfig

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")


def gateway_id_for(cluster: ClusterConfig, host_name: str | None = None) -> str:
    """The configured id, else ``<host name>-<8 random hex digits>``: readable in the
    ``gateways`` table and new at every start, so a restarted gateway never inherits the
    leases (or epochs) of its previous life. The host name is cut to the characters a
    configured id may hold."""
    if cluster.gateway_id:
        return cluster.gateway_id
    host = _NOT_ALLOWED.sub("-", host_name or socket.gethostname()).strip("-._")[:40]
    return f"{host or 'gateway'}-{secrets.token_hex(4)}"


def with_gateway_id(config: Config) -> Config:
    """``config`` with ``cluster.gateway_id`` set: the configured one, else one made up now.

    Resolved once, when the gateway starts, so that everything naming this gateway (its
    answer topic and subscription, its answer-path probe, its lease rows) names the same one.
    """
    if config.cluster.gateway_id:
        return config
    cluster = msgspec.structs.replace(config.cluster, gateway_id=gateway_id_for(config.cluster))
    return msgspec.structs.replace(config, cluster=cluster)
