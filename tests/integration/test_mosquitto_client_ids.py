"""What the installed mosquitto does when an anonymous client connects with a client id in use:
the facts behind :func:`pm.broker.gateway_client_id` (docs/broker.md, "On the embedded
mosquitto the gateway's session has an id nobody else knows").

mosquitto 2.0.11 hands the id over to whoever asks, closing the holder's connection, in every
setup that lets devices in without credentials: none of them can reserve the gateway's id, so
the gateway connects under an id nobody else knows. If a future mosquitto refuses the
anonymous client in one of these setups, this test fails: that setup could then reserve the
configured id instead.

Real mosquitto (the ``mosquitto`` fixture, restarted with each configuration), raw MQTT over
trio sockets; 127.0.0.1 only; a hang guard per test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from tests.integration.brokers import MosquittoBroker
from tests.integration.raw_client import RawClient

HANG_GUARD = 20.0
GATEWAY_USER, GATEWAY_PASSWORD, GATEWAY_ID = "gw-user", "gw-secret", "gw"
DYNAMIC_SECURITY_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def _tool(name: str) -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        pytest.fail(f"{name} not found: it comes with the mosquitto package")
    return found


def _password_file(directory: Path) -> Path:
    """A password file holding only the gateway's user (made by mosquitto_passwd)."""
    path = directory / "passwd"
    subprocess.run(
        [_tool("mosquitto_passwd"), "-c", "-b", str(path), GATEWAY_USER, GATEWAY_PASSWORD],
        check=True,
        capture_output=True,
    )
    return path


def _dynamic_security_file(directory: Path) -> Path:
    """A dynamic-security config: the gateway's user (its password hashed by mosquitto_ctrl)
    bound to the gateway's client id, and an anonymous group allowed everything, so that
    devices still connect without credentials."""
    path = directory / "dynamic-security.json"
    subprocess.run(
        [_tool("mosquitto_ctrl"), "dynsec", "init", str(path), GATEWAY_USER, GATEWAY_PASSWORD],
        check=True,
        capture_output=True,
    )
    config = json.loads(path.read_text())
    (gateway,) = config["clients"]
    gateway["clientid"] = GATEWAY_ID
    everything = [
        {"acltype": kind, "topic": "#", "allow": True}
        for kind in (
            "publishClientSend",
            "publishClientReceive",
            "subscribePattern",
            "unsubscribePattern",
        )
    ]
    config["roles"].append({"rolename": "everything", "acls": everything})
    config["groups"] = [{"groupname": "devices", "roles": [{"rolename": "everything"}]}]
    config["anonymousGroup"] = "devices"
    path.write_text(json.dumps(config))
    return path


def _configure(mosquitto: MosquittoBroker, setup: str, directory: Path) -> None:
    """Write the mosquitto.conf of one setup: the fixture's (a TCP listener with
    ``allow_anonymous true``) plus the setup's lines; the gateway's own listener, if any, is a
    Unix socket."""
    # Run as root (CI containers), mosquitto would switch to user "mosquitto", which cannot
    # read the test's private temporary directory.
    stay = "user root\n" if os.geteuid() == 0 else ""
    if setup == "anonymous":
        mosquitto.configure()
    elif setup == "password file":
        mosquitto.configure(f"password_file {_password_file(directory)}\n{stay}")
    elif setup == "dynamic security":
        if not Path(DYNAMIC_SECURITY_PLUGIN).exists():
            pytest.fail(f"{DYNAMIC_SECURITY_PLUGIN} not found: it comes with mosquitto 2.x")
        mosquitto.configure(
            f"plugin {DYNAMIC_SECURITY_PLUGIN}\n"
            f"plugin_opt_config_file {_dynamic_security_file(directory)}\n{stay}"
        )
    elif setup == "a listener of its own":
        mosquitto.configure(
            f"listener 0 {directory / 'gateway.sock'}\n"
            f"allow_anonymous false\npassword_file {_password_file(directory)}\n{stay}",
            first="per_listener_settings true\n",
        )
    else:
        raise AssertionError(setup)


@pytest.mark.parametrize(
    "setup", ["anonymous", "password file", "dynamic security", "a listener of its own"]
)
async def test_an_anonymous_client_takes_an_authenticated_clients_id_over(
    mosquitto: MosquittoBroker, tmp_path: Path, setup: str
) -> None:
    await trio.to_thread.run_sync(mosquitto.stop)
    _configure(mosquitto, setup, tmp_path)
    await trio.to_thread.run_sync(mosquitto.start)
    with trio.fail_after(HANG_GUARD):
        socket_path = tmp_path / "gateway.sock"
        if socket_path.exists():
            gateway = await RawClient.connect_unix(
                str(socket_path), GATEWAY_ID, username=GATEWAY_USER, password=GATEWAY_PASSWORD
            )
        else:
            gateway = await RawClient.connect(
                mosquitto, GATEWAY_ID, username=GATEWAY_USER, password=GATEWAY_PASSWORD
            )
        assert await gateway.connack() == 0
        if setup in ("password file", "dynamic security"):
            # Where passwords are checked, a wrong one is refused before mosquitto looks for
            # the id's session, so it takes nothing over.
            guesser = await RawClient.connect(
                mosquitto, GATEWAY_ID, username=GATEWAY_USER, password="guess"
            )
            assert await guesser.connack() == 5
            await guesser.aclose()
            await gateway.ping()
        # In every setup an anonymous client with the id is let in and closes the holder's
        # connection: the id cannot be reserved while devices connect without credentials.
        intruder = await RawClient.connect(mosquitto, GATEWAY_ID)
        assert await intruder.connack() == 0
        assert await gateway.closed_by_broker()
        await intruder.ping()
        for client in (gateway, intruder):
            await client.aclose()
