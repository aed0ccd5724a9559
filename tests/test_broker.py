"""Unit tests of the embedded broker's pure parts: restart policy, config to child arguments,
the ready-line protocol, the generated mosquitto config, and the direction of the package's
imports (no broker process and no socket: one test imports the children's entry points in a fresh
interpreter; tests/integration/test_broker.py runs real children, tests/test_broker_amqtt.py
the amqtt child's fixes)."""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pm.broker import _protocol, _supervisor, run_embedded_broker
from pm.broker._arguments import (
    ENGINE_MODULES,
    broker_auth,
    child_command,
    child_environment,
    gateway_client_id,
    tls_files,
)
from pm.broker._protocol import (
    EXIT_START_FAILED,
    FAILED_PREFIX,
    READY_PREFIX,
    ReadyLine,
    cannot_listen,
    describe_exit,
    format_failure_line,
    format_ready_line,
    parse_failure_line,
    parse_ready_line,
)
from pm.broker._restart import RestartBackoff
from pm.broker._state import BrokerStartError
from pm.broker.mosquitto._config import mosquitto_config
from pm.config import BrokerConfig, Config, MqttConfig, load_config
from pm.passwords import GATEWAY_PASSWORD_ENV

PACKAGE = Path(__file__).resolve().parent.parent / "pm" / "broker"


def test_restart_backoff_doubles_caps_and_resets_after_healthy_uptime() -> None:
    backoff = RestartBackoff(min_delay=0.1, max_delay=5.0, healthy_uptime=60.0)
    delays = [backoff.next_delay(uptime=1.0) for _ in range(9)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert backoff.next_delay(uptime=60.0) == pytest.approx(0.1)
    assert backoff.next_delay(uptime=0.0) == pytest.approx(0.2)


def test_the_ready_line_round_trips_and_other_output_is_not_one() -> None:
    line = format_ready_line("::1", 1883, 42)
    assert line.startswith(READY_PREFIX) and line.endswith("\n")
    assert parse_ready_line(line.rstrip("\n")) == ReadyLine("::1", 1883, 42)
    assert parse_ready_line("amqtt says hello") is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"host": 1, "port": 1, "pid": 1}', "`host`"),
        ('{"host": "h", "port": "1883", "pid": 1}', "`port`"),
        ('{"host": "h", "port": true, "pid": 1}', "`port`"),
        ('{"host": "h", "port": 1883}', "`pid`"),
    ],
)
def test_a_malformed_ready_line_names_its_problem(body: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_ready_line(READY_PREFIX + body)


def test_a_failure_line_carries_one_line_of_reason() -> None:
    line = format_failure_line("cannot listen on h:1:\n  Address already in use")
    assert line == FAILED_PREFIX + "cannot listen on h:1: Address already in use\n"
    assert parse_failure_line(line.rstrip("\n")) == "cannot listen on h:1: Address already in use"
    assert parse_failure_line(FAILED_PREFIX) == "no reason given"
    assert parse_failure_line(format_ready_line("h", 1, 2)) is None
    in_use = OSError(errno.EADDRINUSE, "error while attempting to bind on address")
    assert cannot_listen("::1", 1883, in_use) == "cannot listen on ::1:1883: Address already in use"


def test_exit_statuses_are_described_in_words() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"
    assert "could not start" in describe_exit(EXIT_START_FAILED)
    assert describe_exit(1) == "exit status 1"


def test_the_child_command_runs_the_engine_module_and_never_carries_the_password() -> None:
    config = Config(
        broker=BrokerConfig(auth=True, password_file="devices.passwd"),
        mqtt=MqttConfig(password="s3cret-gateway-password"),
    )
    auth = broker_auth(config)
    assert auth is not None and auth.gateway_password == "s3cret-gateway-password"
    command = child_command("127.0.0.1", 0, "amqtt", auth, ("/c.pem", "/k.pem"))
    assert command[:3] == [sys.executable, "-m", "pm.broker.amqtt"]
    assert command[command.index("--port") + 1] == "0"
    assert command[command.index("--parent-pid") + 1] == str(os.getpid())
    plugin_arguments = json.loads(command[command.index("--auth") + 1])
    assert plugin_arguments["password_file"] == os.path.abspath("devices.passwd")
    assert command[-4:] == ["--certfile", "/c.pem", "--keyfile", "/k.pem"]
    assert not any("s3cret" in argument for argument in command)
    assert "s3cret" not in repr(auth)
    environment = child_environment(auth)
    assert environment is not None
    assert environment[GATEWAY_PASSWORD_ENV] == "s3cret-gateway-password"
    assert child_command("h", 1, "mosquitto")[2] == "pm.broker.mosquitto"
    assert child_command("h", 1, "mosquitto", mosquitto_binary="/opt/m")[-2:] == [
        "--binary",
        "/opt/m",
    ]
    assert "--binary" not in child_command("h", 1, "amqtt", mosquitto_binary="/opt/m")
    # Presence: both children get the templates (mosquitto's reads them from its log).
    templates = ("/remote/{device}", "/remote/{device}/status")
    for engine in ("amqtt", "mosquitto"):
        command = child_command("h", 1, engine, presence=templates)
        assert json.loads(command[command.index("--presence") + 1]) == {
            "request": "/remote/{device}",
            "status": "/remote/{device}/status",
        }
        assert "--presence" not in child_command("h", 1, engine)


def test_tls_is_refused_for_the_mosquitto_engine_and_made_absolute_for_amqtt() -> None:
    amqtt = BrokerConfig(certfile="c.pem", keyfile="k.pem")
    assert tls_files(amqtt) == (os.path.abspath("c.pem"), os.path.abspath("k.pem"))
    assert tls_files(BrokerConfig()) is None
    with pytest.raises(BrokerStartError, match="amqtt engine only"):
        tls_files(BrokerConfig(engine="mosquitto", certfile="c.pem", keyfile="k.pem"))


async def test_the_supervisor_refuses_tls_with_the_mosquitto_engine_before_starting_a_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_child(*args: object) -> int:
        pytest.fail("a child was started for a configuration that must be refused")

    monkeypatch.setattr(_supervisor, "_run_child", no_child)
    config = BrokerConfig(port=0, engine="mosquitto", certfile="c.pem", keyfile="k.pem")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(BrokerStartError, match="amqtt engine only"):
                await nursery.start(run_embedded_broker, config)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = node.module or ""
            if node.level:
                target = f"{base}.{target}" if target else base
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def test_imports_point_one_way_children_share_only_the_protocol_module() -> None:
    for path in PACKAGE.glob("*.py"):
        imported = _imports(path)
        assert not any(name.split(".")[0] == "amqtt" for name in imported), path
        assert not any(
            name.startswith(("pm.broker.amqtt", "pm.broker.mosquitto")) for name in imported
        ), path
    # The amqtt auth plugin reads the password file of pm.passwords; both children keep
    # presence with pm.broker._presence; nothing else of pm.
    shared = ("pm.broker._protocol", "pm.broker._presence", "pm.passwords")
    for child in ("amqtt", "mosquitto"):
        for path in sorted((PACKAGE / child).glob("*.py")):
            ours = {name for name in _imports(path) if name.startswith("pm.")}
            outside = {
                name for name in ours if not name.startswith((f"pm.broker.{child}", *shared))
            }
            assert not outside, path


def test_the_protocol_module_imports_neither_trio_nor_amqtt() -> None:
    imported = {name.split(".")[0] for name in _imports(Path(_protocol.__file__))}
    assert not imported & {"trio", "amqtt", "msgspec", "pm"}
    assert ENGINE_MODULES == {"amqtt": "pm.broker.amqtt", "mosquitto": "pm.broker.mosquitto"}


def test_a_child_entry_point_loads_neither_trio_nor_the_parent() -> None:
    probe = (
        "import sys, pm.broker.amqtt._main, pm.broker.mosquitto._main; "
        "print(sorted(m for m in sys.modules if m == 'trio' or m.startswith('pm.broker._s')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_engine_is_configurable_and_the_generated_config_has_what_the_gateway_needs() -> None:
    assert load_config(environ={}).broker.engine == "amqtt"
    assert load_config(environ={"PM_BROKER_ENGINE": "mosquitto"}).broker.engine == "mosquitto"
    config = mosquitto_config("127.0.0.1", 1884)
    for line in (
        "listener 1884 127.0.0.1",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence false",
        "max_queued_messages 1000000",
    ):
        assert line in config.splitlines()


def test_the_embedded_amqtt_broker_always_reserves_the_gateways_identity() -> None:
    plain = broker_auth(Config())
    assert plain is not None and plain.gateway_client_id == "puppetmaster"
    assert plain.gateway_username == "$puppetmaster" and len(plain.gateway_password) >= 16
    # Without broker.auth the child loads only the gateway-identity plugin: no password file.
    assert plain.plugin_arguments() == {
        "gateway_username": "$puppetmaster",
        "gateway_client_id": "puppetmaster",
    }
    assert broker_auth(Config()).gateway_password != plain.gateway_password  # per run
    # mosquitto cannot reserve a client id for anonymous clients; an external broker is
    # configured by its owner.
    assert broker_auth(Config(broker=BrokerConfig(engine="mosquitto"))) is None
    assert broker_auth(Config(broker=BrokerConfig(embedded=False))) is None


def test_on_the_embedded_mosquitto_the_gateway_connects_under_an_id_nobody_else_knows() -> None:
    mosquitto = Config(broker=BrokerConfig(engine="mosquitto"))
    first, second = gateway_client_id(mosquitto), gateway_client_id(mosquitto)
    # The configured id, for the operator reading logs, plus 96 random bits made per start.
    assert first.startswith("puppetmaster-") and len(first) == len("puppetmaster-") + 24
    assert int(first.removeprefix("puppetmaster-"), 16) >= 0 and first != second
    # amqtt reserves the configured id itself; an external broker's ACLs may name it.
    assert gateway_client_id(Config()) == "puppetmaster"
    external = Config(broker=BrokerConfig(engine="mosquitto", embedded=False))
    assert gateway_client_id(external) == "puppetmaster"


def test_each_gateway_of_a_cluster_has_a_client_id_of_its_own() -> None:
    cluster = {
        "PM_CLUSTER_ENABLED": "true",
        "PM_TOPICS_RESPONSE": "/r/{device}/{gateway}",
        "PM_BROKER_EMBEDDED": "false",
    }
    ids = {
        gateway_client_id(load_config(environ={**cluster, "PM_CLUSTER_GATEWAY_ID": name}))
        for name in ("gw-1", "gw-2")
    }
    # One configuration for all: without the gateway's id both would connect as
    # "puppetmaster" and take each other's session over.
    assert ids == {"puppetmaster-gw-1", "puppetmaster-gw-2"}
    # A single gateway keeps the configured id (an external broker's ACL may name it).
    assert gateway_client_id(load_config(environ={"PM_BROKER_EMBEDDED": "false"})) == "puppetmaster"
