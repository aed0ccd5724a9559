"""Gateway configuration: a TOML file, then ``PM_<SECTION>_<KEY>`` environment overrides.

Every key lives in a msgspec Struct with its default, so the defaults are written once, here
(``[cluster]`` in :mod:`pm.config_cluster`, ``[topics]`` in :mod:`pm.config_topics`).
``config.example.toml`` documents the same keys for people; ``tests/test_config.py`` checks the
two agree.

Every number is range-checked (msgspec ``Meta`` on its type, the message naming the key; a
``__post_init__`` for keys that depend on each other): a port of 70000 or -1 s stops the start.

Error handling: an unknown key, a wrong type, a value out of range or an unreadable file raises
:class:`ConfigError` whose message names the key (``$.http.port``) so ``pm serve`` can print it
and exit instead of starting half-configured.
"""

from __future__ import annotations

import math
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .config_cluster import ClusterConfig
from .config_fields import (
    AtLeastOne,
    BearerToken,
    BrowserOrigin,
    Host,
    ListenPort,
    RemotePort,
    Seconds,
    StoreUrl,
    ZeroOrMore,
)
from .config_fields import Section as _Section
from .config_topics import TopicsConfig as TopicsConfig
from .config_topics import check_answer_topic_for_cluster
from .json_nesting import DEFAULT_MAX_JSON_DEPTH, MAX_JSON_DEPTH_CEILING
from .schemas import MAX_EXPIRES_IN

ENV_PREFIX = "PM_"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class HttpConfig(_Section):
    host: Host = "127.0.0.1"
    port: ListenPort = 8080
    max_body_bytes: AtLeastOne = 1024 * 1024
    # Seconds a connection may go without a complete request (an idle keep-alive connection,
    # a slow-loris client whose request line and headers are still arriving) before closing.
    idle_timeout: Seconds = 5.0
    # Seconds a client may take to accept 64 KiB of a response or of WebSocket messages; one
    # that stops reading (a watcher that never reads) is disconnected after it.
    send_timeout: Seconds = 30.0
    # Bytes of each client connection's kernel send buffer (Linux doubles it for its own
    # bookkeeping); otherwise autotuned up to 4 MiB, kernel memory held per stalled client.
    send_buffer_bytes: AtLeastOne = 256 * 1024
    # Bytes of one message a WebSocket client may send (watchers need to send nothing); a
    # larger one closes its connection with 1009 before it is buffered whole.
    max_websocket_message_bytes: AtLeastOne = 64 * 1024
    # PEM certificate chain and private key: both set = HTTPS (and wss://), both empty = plain.
    certfile: str = ""
    keyfile: str = ""
    # Browser origins besides the gateway's own that may use the API (a dashboard served
    # elsewhere), e.g. "https://dashboard.example.com"; requests from other origins get 403.
    allowed_origins: list[BrowserOrigin] = msgspec.field(default_factory=list)
    # Accept browsers' permessage-deflate (a deflate per message per watcher: docs/dashboard.md).
    websocket_compression: bool = False

    def __post_init__(self) -> None:
        # Half a TLS setup would silently serve plain HTTP: refuse it at start instead.
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("http.certfile and http.keyfile must be set together (or neither)")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


class BrokerConfig(_Section):
    # true: the gateway starts and supervises its own broker; false: use [mqtt] host/port.
    embedded: bool = True
    host: Host = "127.0.0.1"
    port: ListenPort = 1883
    # Which broker the gateway embeds: "amqtt" (Python, always there) or "mosquitto" (the
    # binary must be installed; the gateway writes its config and supervises it).
    engine: typing.Literal["amqtt", "mosquitto"] = "amqtt"
    # engine = "mosquitto": the binary to run; empty = `mosquitto` on PATH, else /usr/sbin.
    mosquitto_binary: str = ""
    # true: devices must log in (id + password from password_file) and may use only their own
    # topics; anonymous clients are refused. amqtt engine only (README, Security).
    auth: bool = False
    # Lines "device_id:salted hash", managed with `pm devices add|remove|list`.
    password_file: str = "./devices.passwd"
    # PEM certificate chain and private key: both set = the listener speaks only MQTT over
    # TLS, both empty = plain TCP. amqtt engine only.
    certfile: str = ""
    keyfile: str = ""

    def __post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("broker.certfile and broker.keyfile must be set together (or neither)")

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


class MqttConfig(_Section):
    # Used only when broker.embedded = false (an external broker such as mosquitto).
    host: Host = "127.0.0.1"
    port: RemotePort = 1883
    username: str = ""
    password: str = ""
    client_id: Annotated[str, msgspec.Meta(min_length=1)] = "puppetmaster"
    # Seconds; MQTT's keepalive is 16 bits. 0 (no keepalive) is refused: the gateway would
    # never notice a broker that went silent.
    keepalive: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 30
    reconnect_min_delay: Seconds = 0.1
    reconnect_max_delay: Seconds = 5.0
    # The gateway publishes a probe on its own answer topic pattern every answer_probe_interval
    # seconds and expects it back within answer_probe_timeout; a lost probe means the broker
    # dropped the gateway's subscription: re-subscribe, then reconnect (pm.mqtt._probe).
    answer_probe_interval: Seconds = 5.0
    answer_probe_timeout: Seconds = 5.0
    # true: MQTT over TLS to the external broker. The embedded broker is reached over TLS
    # whenever broker.certfile is set, whatever this says.
    tls: bool = False
    # PEM file of the certificates trusted for the broker's; empty = the system's defaults
    # (for the embedded broker: broker.certfile itself, a self-signed certificate works).
    ca_file: str = ""

    def __post_init__(self) -> None:
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError(
                f"mqtt.reconnect_min_delay ({self.reconnect_min_delay:g}) must not exceed "
                f"mqtt.reconnect_max_delay ({self.reconnect_max_delay:g})"
            )


class TasksConfig(_Section):
    # Seconds a task may wait for its final answer, counted from publication.
    default_timeout: Seconds = 3600.0
    # Seconds after a job's creation by which each of its tasks must have been sent (its
    # device online with nothing in flight), else it ends "expired" unsent; a batch entry's or
    # a job's expiresIn overrides it. inf (the default): no expiry, the job timeout bounds it.
    default_expires_in: Seconds = math.inf
    # A request in flight goes out once more, with the same task id, each time its device comes
    # back (online again after offline, or first seen online after it was sent) and each time
    # the gateway's own broker connection (or answer subscription) comes back while its device
    # is not offline (at once, and for a device known online once more at its next "online":
    # the broker may have restarted): the first copy or its answer may have been lost. Never on
    # a timer. false: one copy only; a device that missed it ends its task "timeout".
    resend_on_reconnect: bool = True
    # Tasks queued per device before a job feeding it waits (back-pressure).
    device_mailbox: AtLeastOne = 1024
    # A device actor with nothing to do for this many seconds (up to a quarter more) is retired.
    device_idle_retire: Seconds = 60.0
    # Tasks of finished jobs kept in memory (whole jobs, oldest first forgotten; the store has
    # them): memory and GC work grow with tasks, not jobs. 0 = none: all from the store.
    max_finished_tasks: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    # Requests in flight across the fleet (all jobs), at most; high priority first. 0 = none.
    max_in_flight: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if MAX_EXPIRES_IN < self.default_expires_in < math.inf:
            raise ValueError("tasks.default_expires_in must be inf or at most 315360000 (10 years)")


class WatchersConfig(_Section):
    # Minimum seconds between two coalesced job snapshots sent to one watcher.
    # 0 = every change is sent as it happens.
    coalesce_interval: ZeroOrMore = 0.1
    # Task messages buffered per watcher; beyond it a slow watcher misses task messages.
    queue_size: AtLeastOne = 1024
    # Coalesced updates (a job snapshot, with its batch of task changes) one job sends to all
    # its watchers together per second, at most: with more than this * coalesce_interval
    # watchers, each gets them less often. Every message costs the gateway a socket write;
    # this keeps a crowd of watchers from slowing the job. 0 = no such limit.
    max_updates_per_second: ZeroOrMore = 1000.0
    # {"type":"task"} messages (?tasks=each, one per task change) one job sends to all its
    # such watchers together per second, at most, shared evenly: beyond their share they are
    # slow watchers (they lag, then miss task messages; never the final job message). A job
    # of 10k tasks makes ~20k changes; sending each to 100 watchers took most of a core. 0 =
    # no such limit.
    max_task_messages_per_second: ZeroOrMore = 5000.0


class StoreConfig(_Section):
    # SQLite database file; ":memory:" keeps everything in memory (tests, benchmarks).
    path: Annotated[str, msgspec.Meta(min_length=1)] = "./puppetmaster.db"
    # A PostgreSQL database instead ("postgresql://user@host:5432/db"); "path" is then unused.
    # Needs the [postgres] extra (psycopg). Empty = SQLite at "path".
    url: StoreUrl = ""
    # Group-commit window in seconds: changes are written at most this often, in one
    # transaction. A crash loses at most the changes of the last window.
    # 0 = commit as soon as anything changes; at most 60 s, a crash's loss must stay small.
    commit_interval: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.05
    # Finished jobs older than this many seconds are deleted (default 30 days).
    retention: Seconds = 30 * 24 * 3600.0
    # Seconds between two retention sweeps.
    retention_interval: Seconds = 3600.0

    @property
    def location(self) -> str:
        """What :func:`pm.store.open_store` opens: the URL if set, else the path."""
        return self.url or self.path


class RecoveryConfig(_Section):
    # On start, tasks that were in flight when the gateway stopped are sent again with the
    # same task id (at-least-once), once, when their device is first seen online (its birth,
    # its broker subscription, or any message from it); their timeout still counts from the
    # first send. false: they end "error" saying the gateway restarted.
    resend_inflight: bool = True
    # On stop (SIGTERM/SIGINT) no new request leaves at once; answers to the requests in flight
    # are awaited up to this many seconds and stored, so the next start re-sends only what was
    # still unanswered.
    stop_grace: ZeroOrMore = 2.0


class ApiConfig(_Section):
    # Bearer tokens accepted by the HTTP API (any one of them); empty = no authentication.
    # RFC 6750 token characters, at least 16: a short token is too easy to guess.
    tokens: list[BearerToken] = msgspec.field(default_factory=list)


class LimitsConfig(_Section):
    # Tasks one job may have (batch entries x destinations); more is refused with 413.
    max_tasks_per_job: AtLeastOne = 100_000
    # Bytes of a batch entry's "data", JSON-encoded; more is refused with 400.
    max_data_bytes: AtLeastOne = 64 * 1024
    # Jobs running at once; a new job beyond it is refused with 429 until one ends.
    max_jobs_running: AtLeastOne = 1000
    # WebSocket watchers of one job at once; more are refused with 429 at the handshake.
    max_watchers_per_job: AtLeastOne = 100
    # Bytes of one MQTT message on an answer topic; larger ones are dropped ("oversized").
    max_answer_bytes: AtLeastOne = 256 * 1024
    # Levels of nested arrays and objects in a request body or a device answer; deeper ones
    # are refused with 400 or dropped ("malformed"). At most MAX_JSON_DEPTH_CEILING.
    max_json_depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_JSON_DEPTH_CEILING)] = (
        DEFAULT_MAX_JSON_DEPTH
    )


class Config(_Section):
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    topics: TopicsConfig = msgspec.field(default_factory=TopicsConfig)
    tasks: TasksConfig = msgspec.field(default_factory=TasksConfig)
    watchers: WatchersConfig = msgspec.field(default_factory=WatchersConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    recovery: RecoveryConfig = msgspec.field(default_factory=RecoveryConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        check_answer_topic_for_cluster(self.cluster.enabled, self.topics.response)

    @property
    def mqtt_endpoint(self) -> tuple[str, int]:
        """Where the gateway's MQTT client connects: its own broker, or the external one."""
        if self.broker.embedded:
            return self.broker.host, self.broker.port
        return self.mqtt.host, self.mqtt.port

    @property
    def mqtt_tls(self) -> bool:
        """Whether the gateway's MQTT client speaks TLS to its broker."""
        return self.broker.tls if self.broker.embedded else self.mqtt.tls

    @property
    def mqtt_ca_file(self) -> str:
        """The gateway client's trust anchor; empty means the system's defaults."""
        if self.mqtt.ca_file or not self.broker.embedded:
            return self.mqtt.ca_file
        return self.broker.certfile


SECTIONS: dict[str, type[_Section]] = {
    field.encode_name: field.type  # type: ignore[misc]
    for field in msgspec.structs.fields(Config)
}


def _is_list_key(section: str, key: str) -> bool:
    for field in msgspec.structs.fields(SECTIONS[section]):
        if field.encode_name == key:
            return typing.get_origin(field.type) is list
    return False


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                # A variable holds one string: list keys (api.tokens) are comma-separated.
                overrides.setdefault(section, {})[key] = (
                    [item.strip() for item in value.split(",") if item.strip()]
                    if _is_list_key(section, key)
                    else value
                )
                break
        # Other PM_* names (PM_URL for the CLI) are not gateway config: left alone.
    return overrides


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read the TOML file (if any), apply environment variables, then explicit overrides.

    Args:
      path: a TOML file; ``None`` means defaults only.
      environ: defaults to ``os.environ``; ``PM_HTTP_PORT=9000`` sets ``http.port``.
      overrides: values that win over both (the CLI's ``--http``/``--broker`` flags).

    Returns:
      The validated :class:`Config`.

    Error handling: raises :class:`ConfigError` naming the key (and the variable that set it,
    if one did) for unknown keys, wrong types, values out of range and unreadable files.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"config file {path} is not UTF-8 text: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    environment = _environment_overrides(os.environ if environ is None else environ)
    for layer in (environment, overrides):
        for section, values in (layer or {}).items():
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"invalid configuration: expected a table - at `$.{section}`")
            target.update(values)
    try:
        # strict=False lets environment strings like "9000" or "false" become ints and bools.
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(f"invalid configuration: {error}{_source(error, environment)}") from None


def _source(error: msgspec.ValidationError, environment: Mapping[str, Mapping[str, Any]]) -> str:
    """`` (from PM_HTTP_PORT)`` when the refused key came from the environment: the message
    then names what the operator actually wrote."""
    path = str(error).rpartition("at `$.")[2].rstrip("`")
    section, _, key = path.partition(".")
    key = key.partition("[")[0]
    if key in environment.get(section, {}):
        return f" (from {ENV_PREFIX}{section.upper()}_{key.upper()})"
    return ""
