"""Config to child arguments: the command line and environment of a broker child.

Pure functions of the configuration (no I/O): what :mod:`pm.broker._supervisor` forks with.
"""

from __future__ import annotations

import json
import os
import secrets
import sys

import msgspec

from pm.config import BrokerConfig, Config
from pm.config_topics import topic_templates
from pm.passwords import DEFAULT_GATEWAY_USERNAME, GATEWAY_PASSWORD_ENV, generate_password

from ._state import BrokerStartError

# The child-process entry point of each engine; both speak the protocol of pm.broker._protocol.
ENGINE_MODULES = {"amqtt": "pm.broker.amqtt", "mosquitto": "pm.broker.mosquitto"}


class BrokerAuth(msgspec.Struct, frozen=True, kw_only=True):
    """Who may use the embedded amqtt broker: what the child enforces.

    Always the gateway's reserved identity (its username, per-run password and client id: no
    other client can take its session over); with ``password_file`` (``broker.auth``) also
    device identity and the per-device topic ACL. ``gateway_password`` reaches the child
    through its environment, never its command line, and is left out of ``repr`` so no log
    line carries it.
    """

    gateway_username: str
    gateway_password: str = msgspec.field(default="")
    gateway_client_id: str
    # Empty: no device identity (``broker.auth = false``), anyone but the gateway's id may use
    # the broker.
    password_file: str = ""
    request_topic: str = ""
    response_topic: str = ""
    status_topic: str = ""

    def __repr__(self) -> str:
        return f"<BrokerAuth file={self.password_file!r} gateway={self.gateway_username!r}>"

    def plugin_arguments(self) -> dict[str, str]:
        """The JSON the child passes to ``pm.broker.amqtt._auth.plugin_config`` (no password)."""
        arguments = {
            "gateway_username": self.gateway_username,
            "gateway_client_id": self.gateway_client_id,
        }
        if self.password_file:
            arguments.update(
                password_file=os.path.abspath(self.password_file),
                request_topic=self.request_topic,
                response_topic=self.response_topic,
                status_topic=self.status_topic,
            )
        return arguments


def broker_auth(config: Config) -> BrokerAuth | None:
    """The embedded broker's auth settings; ``None`` for an external broker, or for the
    mosquitto engine without ``broker.auth`` (mosquitto cannot reserve a client id for
    anonymous clients: docs/broker.md; the gateway uses :func:`gateway_client_id` instead).

    The gateway logs in as ``mqtt.username`` (default ``$puppetmaster``) with
    ``mqtt.password``; an empty password is replaced by a random one made now, known only to
    this gateway process and its broker child, and never logged.
    """
    broker = config.broker
    if not broker.embedded or (broker.engine != "amqtt" and not broker.auth):
        return None
    devices = {}
    if broker.auth:
        devices = {
            "password_file": broker.password_file,
            "request_topic": config.topics.request,
            # With this gateway's id for {gateway}: a device answers only this gateway.
            "response_topic": topic_templates(config).response,
            "status_topic": config.topics.status,
        }
    return BrokerAuth(
        gateway_username=config.mqtt.username or DEFAULT_GATEWAY_USERNAME,
        gateway_password=config.mqtt.password or generate_password(),
        gateway_client_id=config.mqtt.client_id,
        **devices,
    )


def gateway_client_id(config: Config) -> str:
    """The client id the gateway's MQTT connection uses: ``mqtt.client_id``, or, on the
    embedded mosquitto engine, ``mqtt.client_id`` plus a random suffix made now.

    Why: a second connection with a client id takes that id's session over (MQTT 3.1.1
    section 3.1.4-2), and mosquitto cannot keep an id for one user while it lets anonymous
    clients in under any other (docs/broker.md: no option of 2.0.11, neither a password file,
    the dynamic security plugin nor a listener of its own). An id nobody else can know leaves
    nothing to take: a client using the configured id gets a session of its own. The suffix
    is made once per gateway process (reconnects and broker restarts keep it), 96 random bits
    from :mod:`secrets`, never published. The embedded amqtt broker reserves the configured id
    itself (:func:`broker_auth`), and an external broker's ACLs may name it, so both keep it.

    With ``cluster.enabled`` on an external broker (gateways sharing it and, usually, one
    configuration): ``mqtt.client_id`` plus ``-`` and the gateway's id, so no gateway takes
    another's session over (the ACLs of docs/scale-out.md name users, not client ids).
    """
    client_id = config.mqtt.client_id
    if config.cluster.enabled and not config.broker.embedded:
        return f"{client_id}-{config.cluster.gateway_id}"
    if config.broker.embedded and config.broker.engine == "mosquitto":
        return f"{client_id}-{secrets.token_hex(12)}"
    return client_id


def tls_files(config: BrokerConfig) -> tuple[str, str] | None:
    """``(certfile, keyfile)`` made absolute (the child may not share our working directory).

    Error handling: :class:`BrokerStartError` for TLS with the mosquitto engine.
    """
    if not config.tls:
        return None
    if config.engine != "amqtt":
        raise BrokerStartError(
            "broker.certfile/keyfile (TLS) are implemented for the amqtt engine only; with "
            "mosquitto configure its listener's certfile/keyfile and run it as an external "
            "broker (broker.embedded = false, mqtt.tls = true)"
        )
    return os.path.abspath(config.certfile), os.path.abspath(config.keyfile)


def child_command(
    host: str,
    port: int,
    engine: str = "amqtt",
    auth: BrokerAuth | None = None,
    tls: tuple[str, str] | None = None,
    mosquitto_binary: str = "",
    *,
    presence: tuple[str, str] | None = None,
) -> list[str]:
    """The command line of one broker child.

    Args:
      host, port: the address to bind (port 0: any; the ready line says which).
      engine: ``"amqtt"`` or ``"mosquitto"``.
      auth: device identity for the amqtt child, without the gateway password.
      tls: ``(certfile, keyfile)``: the amqtt listener speaks only TLS.
      mosquitto_binary: ``broker.mosquitto_binary`` (empty: the child searches).
      presence: ``(request, status)`` topic templates: the child (either engine) publishes
        presence.
    """
    # --parent-pid lets the child notice a parent that died before it armed PDEATHSIG.
    command = [
        sys.executable,
        "-m",
        ENGINE_MODULES[engine],
        "--host",
        host,
        "--port",
        str(port),
        "--parent-pid",
        str(os.getpid()),
    ]
    if auth is not None:
        # No password here: a command line is visible to every user in `ps`.
        command += ["--auth", json.dumps(auth.plugin_arguments())]
    if tls is not None:
        command += ["--certfile", tls[0], "--keyfile", tls[1]]
    if presence is not None:
        command += ["--presence", json.dumps({"request": presence[0], "status": presence[1]})]
    if engine == "mosquitto" and mosquitto_binary:
        command += ["--binary", mosquitto_binary]
    return command


def child_environment(auth: BrokerAuth | None) -> dict[str, str] | None:
    """The child's environment: ours plus the gateway password, or ``None`` to inherit ours."""
    if auth is None:
        return None
    return {**os.environ, GATEWAY_PASSWORD_ENV: auth.gateway_password}
