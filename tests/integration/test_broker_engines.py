"""``broker.engine = "mosquitto"``: the embedded broker supervised like amqtt (pm/broker/mosquitto).

Rules as in test_broker.py: 127.0.0.1 and port 0 only, an absolute hang guard per test.
"""

from __future__ import annotations

import os

import trio

from pm.broker import EmbeddedBroker, run_embedded_broker
from pm.broker.mosquitto._config import find_mosquitto
from pm.config import BrokerConfig
from tests.integration.brokers import HANG_GUARD, process_exists, round_trip
from tests.waiting import poll_until

MOSQUITTO = BrokerConfig(host="127.0.0.1", port=0, engine="mosquitto")


def _gone(pid: int) -> bool:
    # An orphaned mosquitto is reaped by init, not by us: a zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as listing:
        return [int(child) for child in listing.read().split()]


async def test_mosquitto_engine_round_trips_restarts_on_same_port_and_stops_clean() -> None:
    assert find_mosquitto() is not None, "install mosquitto: apt-get install -y mosquitto"
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            broker: EmbeddedBroker = await nursery.start(run_embedded_broker, MOSQUITTO)
            assert broker.engine == "mosquitto" and broker.port != 0
            wrapper = broker.pid
            assert wrapper is not None
            (first_mosquitto,) = _children(wrapper)
            assert os.readlink(f"/proc/{first_mosquitto}/exe").endswith("mosquitto")
            assert await round_trip(broker, b"before") == b"before"

            # Same restart policy as amqtt: SIGKILL the child, it comes back on the same port;
            # the mosquitto under the killed wrapper dies with it (PR_SET_PDEATHSIG).
            port = broker.port
            broker.kill()
            await broker.wait_running(restarts=1)
            assert broker.port == port and broker.last_exit == -9
            await poll_until(lambda: _gone(first_mosquitto))
            assert await round_trip(broker, b"after") == b"after"
            second_wrapper = broker.pid
            assert second_wrapper is not None
            (second_mosquitto,) = _children(second_wrapper)
            nursery.cancel_scope.cancel()
        assert broker.last_exit == 0  # SIGTERM forwarded, mosquitto exited, wrapper said 0
        assert not process_exists(second_wrapper)
        await poll_until(lambda: _gone(second_mosquitto))
