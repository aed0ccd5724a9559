"""Identity on the embedded amqtt broker: auth plugins and a topic-ACL plugin.

Loaded by the broker child (:mod:`pm.broker.amqtt._main`) through amqtt 0.12.1's ``plugins``
config section (``PluginManager._load_str_plugins``: each class is built with a context whose
``config`` is its ``Config`` dataclass, filled by dacite).

Who is who:

* the **gateway** connects with ``gateway_username`` and the password the parent passed in
  the environment (never on the command line, where ``ps`` shows it). It may do anything.
* a **device** connects with its id as username and the password whose hash is in the password
  file (:mod:`pm.passwords`). It may subscribe to exactly its own request topic and publish to
  exactly its own answer and status topics, nothing else; in particular nobody but the gateway
  publishes requests. The gateway's MQTT client id is reserved for the gateway user, so a
  device cannot take over the gateway's session.
* anyone else (anonymous, unknown, wrong password) gets CONNACK 5 (not authorized).

Without ``broker.auth`` only :class:`GatewayIdentityPlugin` is loaded: every client is accepted
except one that poses as the gateway (its username without its password, or its client id).

amqtt calls ``authenticate`` once per CONNECT (all auth plugins must return True) and
``topic_filtering`` per SUBSCRIBE filter (a False gives SUBACK return code 0x80), per PUBLISH
received (False: the message is dropped silently, the QoS 1 PUBACK is still sent) and per
delivery (``Action.RECEIVE``; always allowed here, the subscription check already decided).
"""

from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from pm.passwords import (
    GATEWAY_PASSWORD_ENV,
    PasswordFileError,
    read_password_file,
    secret_digest,
    verify_password,
)

# A password-file id that could widen a topic (MQTT wildcards, a level separator) is ignored:
# `pm devices add` never writes one, a hand-edited file might.
_FORBIDDEN_IN_ID = frozenset("+#/\0")


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class DevicePasswordFile:
    """The password file, re-read when its modification time or size changes.

    Re-reading lets ``pm devices add`` take effect without restarting the broker. Successful
    verifications are cached as ``sha256(password)`` per entry, so a reconnecting fleet
    costs one scrypt per device and broker lifetime rather than one per connect.
    """

    def __init__(self, path: str, logger: object) -> None:
        self.path = path
        self._logger = logger
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, str] = {}
        self._verified: dict[str, tuple[str, bytes]] = {}
        self.reload()

    def reload(self) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, -1)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            entries = read_password_file(self.path)
        except (PasswordFileError, OSError, UnicodeDecodeError) as error:
            # Keep the previous entries: a damaged file must not lock every device out.
            self._logger.error("password file not reloaded: %s", error)  # type: ignore[attr-defined]
            return
        self._entries = {
            device: encoded
            for device, encoded in entries.items()
            if not _FORBIDDEN_IN_ID.intersection(device)
        }

    async def verify(self, device: str, password: str) -> bool:
        self.reload()
        encoded = self._entries.get(device)
        if encoded is None:
            return False
        fingerprint = secret_digest(password)
        cached = self._verified.get(device)
        if cached is not None and cached[0] == encoded:
            return hmac.compare_digest(cached[1], fingerprint)
        # scrypt takes ~85 ms: in a thread so the broker keeps serving other clients.
        if not await asyncio.to_thread(verify_password, password, encoded):
            return False
        self._verified[device] = (encoded, fingerprint)
        return True


class GatewayIdentityPlugin(BaseAuthPlugin):
    """Reserves the gateway's identity; accepts every other client (no ``broker.auth``).

    A client that names the gateway's username must give the gateway's per-run password, and
    a client that uses the gateway's client id must be the gateway: anyone else could take the
    gateway's session over (amqtt deletes a session's subscriptions when a clean-session
    CONNECT reuses its client id) and silently cut it off from every answer.
    """

    @dataclass
    class Config:
        gateway_username: str = ""
        gateway_client_id: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: GatewayIdentityPlugin.Config = self.context.config  # type: ignore[assignment]
        self._gateway_username = config.gateway_username
        self._gateway_client_id = config.gateway_client_id
        self._gateway_password = os.environ.pop(GATEWAY_PASSWORD_ENV, "")
        self._gateway_password_digest = secret_digest(self._gateway_password)

    def gateway_verdict(self, session: Session) -> bool | None:
        """True: the gateway itself; False: a client posing as it; None: somebody else."""
        username = _text(session.username)
        if username and username == self._gateway_username:
            # Digests, so the comparison time does not depend on the password's length either.
            return bool(self._gateway_password) and hmac.compare_digest(
                secret_digest(_text(session.password)), self._gateway_password_digest
            )
        if self._gateway_client_id and session.client_id == self._gateway_client_id:
            self.context.logger.warning(
                "refused %r: the gateway's client id is reserved for the gateway", username
            )
            return False
        return None

    async def authenticate(self, *, session: Session) -> bool | None:
        return self.gateway_verdict(session) is not False


class DeviceAuthPlugin(GatewayIdentityPlugin):
    """Refuses anonymous clients; accepts the gateway and devices of the password file."""

    @dataclass
    class Config(GatewayIdentityPlugin.Config):
        password_file: str = "./devices.passwd"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: DeviceAuthPlugin.Config = self.context.config  # type: ignore[assignment]
        self._devices = DevicePasswordFile(config.password_file, self.context.logger)

    async def authenticate(self, *, session: Session) -> bool | None:
        username = _text(session.username)
        if not username:
            return False
        verdict = self.gateway_verdict(session)
        if verdict is not None:
            return verdict
        return await self._devices.verify(username, _text(session.password))


class DeviceTopicPlugin(BaseTopicPlugin):
    """Per-device topic ACL derived from the ``[topics]`` templates."""

    @dataclass
    class Config:
        gateway_username: str = ""
        request_topic: str = "/remote/{device}"
        response_topic: str = "/remote/{device}/response"
        status_topic: str = "/remote/{device}/status"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: DeviceTopicPlugin.Config = self.context.config  # type: ignore[assignment]
        self._gateway_username = config.gateway_username
        self._request = config.request_topic
        self._response = config.response_topic
        self._status = config.status_topic

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if action is Action.RECEIVE:
            return True  # what a client receives was decided when it subscribed
        username = _text(session.username) if session is not None else ""
        if not username or topic is None:
            return False
        if username == self._gateway_username:
            return True
        if action is Action.SUBSCRIBE:
            return topic == self._request.replace("{device}", username)
        if action is Action.PUBLISH:
            # Its answers, and its own presence (protocol v1.1 birth; the last will is
            # published by the broker without this check).
            return topic in (
                self._response.replace("{device}", username),
                self._status.replace("{device}", username),
            )
        return False


def plugin_config(
    *,
    gateway_username: str,
    gateway_client_id: str,
    password_file: str = "",
    request_topic: str = "",
    response_topic: str = "",
    status_topic: str = "/remote/{device}/status",
) -> dict[str, dict[str, str]]:
    """The amqtt ``plugins`` entries: device identity and topic ACL with a ``password_file``
    (``broker.auth``), else only the gateway's reserved identity."""
    gateway = {"gateway_username": gateway_username, "gateway_client_id": gateway_client_id}
    if not password_file:
        return {f"{__name__}.GatewayIdentityPlugin": gateway}
    return {
        f"{__name__}.DeviceAuthPlugin": {**gateway, "password_file": password_file},
        f"{__name__}.DeviceTopicPlugin": {
            "gateway_username": gateway_username,
            "request_topic": request_topic,
            "response_topic": response_topic,
            "status_topic": status_topic,
        },
    }
