"""The gateway: broker, MQTT client, dispatch engine and HTTP server in one nursery tree.

Layers, outermost first (shutdown goes the other way, inner layers first):

1. the embedded broker (unless ``broker.embedded = false``), a supervised child process;
2. the MQTT client, connected to it (or to the external broker) and subscribed to answers;
   over TLS when ``broker.certfile`` is set (embedded) or ``mqtt.tls`` (external);
3. the engine: job and device actors;
4. the HTTP/WebSocket server (hypercorn serving the quart-trio app), over TLS when
   ``http.certfile`` and ``http.keyfile`` are set (``Gateway.http_url`` is then https://).

Restart policy: the broker child is restarted by :func:`pm.broker.run_embedded_broker`; the
MQTT client reconnects by itself and restores its subscription, after which the engine
re-sends once every in-flight request whose device is not offline (same task id:
at-least-once delivery; an offline device's request goes when it returns). A subscription
the broker drops while the connection stays up is found by the answer-path probe
(:func:`pm.mqtt.open_answer_path_probe`, on the reserved pseudo device
:data:`pm.protocol.PROBE_DEVICE_ID`'s answer topic), which re-subscribes (the engine then
re-sends what is in flight, as after a reconnect) or else reconnects. Failures of job
or device actors stay inside the engine. Anything else that raises ends the gateway, which
is the right thing for a process a supervisor (systemd, a container runtime) restarts.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import hypercorn.config
import trio

from .broker import EmbeddedBroker, broker_auth, gateway_client_id, run_embedded_broker
from .cluster import with_gateway_id
from .cluster_engine import ClusterEngine
from .config import Config, ConfigError, HttpConfig
from .config_topics import topic_templates
from .engine import Engine, open_engine
from .fleet_counters import gateway_fleet_counters
from .http import HttpCounters, create_app, serve, set_websocket_compression, watch_connections
from .mqtt import AnswerPathProbe, MqttClient, open_answer_path_probe, open_mqtt_client
from .protocol import PROBE_DEVICE_ID
from .schemas import AnswerPathHealth, Health

logger = logging.getLogger(__name__)

# Seconds open WebSockets and requests get to finish when the gateway stops.
HTTP_GRACEFUL_TIMEOUT = 2.0


class Gateway:
    """What a running gateway offers its owner (the CLI, tests, benchmarks)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttClient | None = None
        self.engine: Engine | None = None
        self.answer_probe: AnswerPathProbe | None = None
        self.http_url = ""
        self.mqtt_host = ""
        self.mqtt_port = 0

    def health(self) -> Health:
        engine, mqtt, probe = self.engine, self.mqtt, self.answer_probe
        connected = mqtt is not None and mqtt.connected
        hearing = probe is None or probe.ok
        fleet = None if engine is None else gateway_fleet_counters(engine)
        return Health(
            status="ok" if connected and hearing else "degraded",
            broker_connected=connected,
            broker_reconnects=0 if mqtt is None else mqtt.reconnects,
            embedded_broker_restarts=None if self.broker is None else self.broker.restarts,
            jobs=0 if engine is None else len(engine),
            jobs_running=0 if engine is None else engine.jobs_running,
            device_actors=0 if fleet is None else fleet.live_actors,
            dropped_messages={} if fleet is None else fleet.dropped,
            answer_path=None if probe is None else _answer_path_health(probe),
        )

    # The MQTT client is opened before the engine exists; these forward to it once it does.
    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.engine is not None:
            self.engine.on_mqtt_message(topic, payload)

    def _on_connect(self, generation: int) -> None:
        if self.engine is not None:
            self.engine.on_mqtt_connect(generation)

    def _on_resubscribed(self) -> None:
        # The probe re-subscribed after the broker had dropped the answer subscription: answers
        # sent meanwhile are lost, so in-flight requests go out again as after a reconnect.
        if self.engine is not None:
            due = self.engine.fleet.resend_after_reconnect()
            logger.info("answer subscription restored: %d in-flight requests re-sent", due)


def _answer_path_health(probe: AnswerPathProbe) -> AnswerPathHealth:
    round_trip = probe.last_round_trip
    return AnswerPathHealth(
        ok=probe.ok,
        last_round_trip_ms=None if round_trip is None else round(round_trip * 1000, 3),
        probes_sent=probe.probes_sent,
        probes_lost=probe.probes_lost,
        resubscribes=probe.resubscribes,
        reconnects=probe.reconnects,
    )


async def run_gateway(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the whole gateway until ``shutdown_trigger`` returns or the scope is cancelled.

    Args:
      config: validated configuration; ports may be 0 (tests): the bound ones are reported
        in the :class:`Gateway` passed to ``task_status.started``.
      shutdown_trigger: awaited; when it returns the gateway stops gracefully: HTTP first
        (open WebSockets get ``HTTP_GRACEFUL_TIMEOUT``), then jobs, MQTT, broker.
    """
    check_cluster(config)
    # One id for this run: its answer topic, subscription and probe (and, in a cluster, its
    # leases) all name it. Generated when not configured.
    config = with_gateway_id(config)
    gateway = Gateway(config)
    check_http_tls(config)
    check_broker_tls(config)
    async with trio.open_nursery() as services:
        host, port = config.mqtt_endpoint
        username, password = config.mqtt.username, config.mqtt.password
        if config.broker.embedded:
            auth = broker_auth(config)
            if auth is not None:
                username, password = auth.gateway_username, auth.gateway_password
            gateway.broker = await services.start(
                partial(
                    run_embedded_broker,
                    config.broker,
                    auth=auth,
                    presence=(config.topics.request, config.topics.status),
                )
            )
            host, port = gateway.broker.host, gateway.broker.port
        gateway.mqtt_host, gateway.mqtt_port = host, port
        async with open_mqtt_client(
            host,
            port,
            client_id=gateway_client_id(config),
            username=username,
            password=password,
            keepalive=config.mqtt.keepalive,
            reconnect_min_delay=config.mqtt.reconnect_min_delay,
            reconnect_max_delay=config.mqtt.reconnect_max_delay,
            # No paho in-flight cap: with one, paho scans every outstanding message on each
            # PUBACK (Client._update_inflight, ~7% of the gateway's CPU in a 10k-task job
            # through amqtt). Back-pressure already comes from one task in flight per device.
            max_inflight=0,
            on_message=gateway._on_message,
            on_connect=gateway._on_connect,
            tls=config.mqtt_tls,
            tls_ca_file=config.mqtt_ca_file if config.mqtt_tls else None,
        ) as mqtt:
            gateway.mqtt = mqtt
            # This gateway's answers only, when topics.response has a {gateway} level.
            topics = topic_templates(config)
            # Subscribed before the engine starts: resuming jobs re-send requests at once,
            # and a fast device's answer must find the subscription already in place.
            await mqtt.subscribe(topics.response_filter, qos=1)
            async with (
                open_answer_path_probe(
                    mqtt,
                    topics.response_topic(PROBE_DEVICE_ID),
                    interval=config.mqtt.answer_probe_interval,
                    round_trip_timeout=config.mqtt.answer_probe_timeout,
                    on_resubscribed=gateway._on_resubscribed,
                ) as answer_probe,
                open_engine(
                    config, mqtt, engine_type=ClusterEngine if config.cluster.enabled else Engine
                ) as engine,
            ):
                gateway.answer_probe = answer_probe
                # No checkpoint between the engine's start and this line: nothing it
                # publishes can be answered before the gateway routes answers to it.
                gateway.engine = engine
                if config.broker.embedded:
                    # A broker child started just now holds no connection from before: the
                    # devices the store last saw online are offline until they announce
                    # themselves again (their births and the amqtt broker's arrive next).
                    engine.presence.all_disconnected(engine.wall_clock())
                # Presence (protocol v1.1; the embedded amqtt broker publishes there too). Only
                # now: the retained births and wills arrive at once and need the engine.
                await mqtt.subscribe(topics.status_filter, qos=1)
                presence_watch = trio.CancelScope()
                if gateway.broker is not None:
                    services.start_soon(
                        _disconnect_all_when_the_broker_exits,
                        gateway.broker,
                        engine,
                        presence_watch,
                    )
                http_stopped = trio.Event()
                stop_http = trio.Event()
                http_counters = HttpCounters()
                app = create_app(engine, config, gateway.health, http_counters)

                async def serve_http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                    try:
                        await serve(
                            app,
                            http_server_config(config.http),
                            send_timeout=config.http.send_timeout,
                            send_buffer_bytes=config.http.send_buffer_bytes,
                            on_send_timeout=http_counters.count_send_timeout,
                            claim_connection=watch_connections(app, config.http).claim,
                            shutdown_trigger=stop_http.wait,
                            task_status=task_status,
                        )
                    finally:
                        http_stopped.set()

                binds = await services.start(serve_http)
                gateway.http_url = binds[0]
                logger.info("gateway ready: http %s, mqtt %s:%d", gateway.http_url, host, port)
                task_status.started(gateway)
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                await shutdown_trigger()
                logger.info("gateway stopping")
                engine.stop_dispatching()  # at once: not after the HTTP server's grace
                stop_http.set()
                await http_stopped.wait()
                await engine.settle(config.recovery.stop_grace)
                presence_watch.cancel()
        services.cancel_scope.cancel()


def http_server_config(http: HttpConfig) -> hypercorn.config.Config:
    """hypercorn's settings for the gateway's HTTP/WebSocket server (the tests serve the app
    with these too).

    No access log: the gateway logs what it does itself, and a browser's WebSocket handshake
    carries its API token in ``?token=`` (it cannot set headers). hypercorn's default access
    line leaves the query string out (measured with hypercorn 0.18), but a format with
    ``%(q)s`` would write the token. Server errors go to the ``hypercorn.error`` logger, so
    they reach the gateway's one log handler (text or JSON).
    """
    server_config = hypercorn.config.Config()
    server_config.bind = [f"{http.host}:{http.port}"]
    server_config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    # Hostile clients (pm/http/server.py): a slow-loris request is closed by hypercorn's idle
    # timer, which runs until a request's line and headers are complete; a client's message
    # over the limit closes its WebSocket with 1009.
    server_config.keep_alive_timeout = http.idle_timeout
    server_config.websocket_max_message_size = http.max_websocket_message_bytes
    server_config.accesslog = None
    # A Logger (not a path) is used as is: no second handler printing each line twice.
    server_config.errorlog = logging.getLogger("hypercorn.error")
    set_websocket_compression(server_config, http.websocket_compression)
    if http.tls:
        server_config.certfile = http.certfile
        server_config.keyfile = http.keyfile
    return server_config


async def _disconnect_all_when_the_broker_exits(
    broker: EmbeddedBroker, engine: Engine, scope: trio.CancelScope
) -> None:
    """Each time the embedded broker child exits, every device it had is disconnected: mark
    them offline at once, before the restarted broker's announcements (and the devices' own
    births) bring back those that return. Runs until ``scope`` is cancelled."""
    with scope:
        while True:
            await broker.wait_changed()
            if not broker.running:
                engine.presence.all_disconnected(engine.wall_clock())


def check_cluster(config: Config) -> None:
    """Refuse, before anything starts, a ``cluster.enabled = true`` the cluster cannot run
    with: a SQLite store (the gateways share one PostgreSQL database), the embedded broker
    (they share one external broker) or a ``tasks.max_in_flight`` below ``cluster.shards``
    (split by shards, some gateway's share would be none).

    Error handling: raises :class:`~pm.config.ConfigError` naming the key.
    """
    if not config.cluster.enabled:
        return
    if not config.store.url:
        raise ConfigError(
            "cluster.enabled = true needs store.url (the PostgreSQL database the gateways "
            "share); store.path is a SQLite file of one gateway (docs/scale-out.md)"
        )
    if config.broker.embedded:
        raise ConfigError(
            "cluster.enabled = true needs broker.embedded = false and [mqtt] pointing at the "
            "broker the gateways share (docs/scale-out.md)"
        )
    if 0 < config.tasks.max_in_flight < config.cluster.shards:
        raise ConfigError(
            f"tasks.max_in_flight = {config.tasks.max_in_flight} is below cluster.shards = "
            f"{config.cluster.shards}: each gateway gets the budget times the shards it "
            "serves over all shards, rounded down, and one serving few shards would get none; "
            f"set it to at least {config.cluster.shards}, or 0 (docs/scale-out.md)"
        )


def check_http_tls(config: Config) -> None:
    """Load ``http.certfile`` and ``http.keyfile`` once before anything starts.

    hypercorn would load them only after the broker and the engine are up, and fail with a
    bare ``FileNotFoundError``; this says which key is wrong, before there is anything to stop.

    Error handling: raises :class:`~pm.config.ConfigError` naming both keys.
    """
    if not config.http.tls:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            config.http.certfile, config.http.keyfile
        )
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot use http.certfile = {config.http.certfile!r} with "
            f"http.keyfile = {config.http.keyfile!r}: {error}"
        ) from None


def check_broker_tls(config: Config) -> None:
    """Load ``broker.certfile``/``broker.keyfile`` and ``mqtt.ca_file`` before anything starts.

    Without it a bad file would surface as the broker child's exit status 3, or as a client
    retrying a handshake forever. Error handling: raises :class:`~pm.config.ConfigError`
    naming the keys.
    """
    broker = config.broker
    if broker.embedded and broker.tls:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                broker.certfile, broker.keyfile
            )
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"cannot use broker.certfile = {broker.certfile!r} with "
                f"broker.keyfile = {broker.keyfile!r}: {error}"
            ) from None
    if config.mqtt_tls and config.mqtt.ca_file:
        try:
            ssl.create_default_context(cafile=config.mqtt.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"cannot use mqtt.ca_file = {config.mqtt.ca_file!r}: {error}"
            ) from None


async def serve_until_signalled(
    config: Config, on_ready: Callable[[Gateway], None] = lambda gateway: None
) -> None:
    """``pm serve``: run until SIGINT or SIGTERM, then stop gracefully.

    hypercorn's trio ``serve`` installs no signal handlers, so the signals are turned into
    the shutdown trigger here.
    """
    import signal

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for signum in signals:
                logger.info("received %s", signal.Signals(signum).name)
                return

        async with trio.open_nursery() as nursery:
            gateway = await nursery.start(
                partial(run_gateway, config, shutdown_trigger=first_signal)
            )
            on_ready(gateway)
