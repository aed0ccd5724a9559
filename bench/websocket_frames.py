"""What permessage-deflate costs the gateway per WebSocket watcher, in isolation.

hypercorn writes every WebSocket frame through wsproto; with permessage-deflate accepted,
wsproto deflates each message first, with a zlib stream kept per connection. This measures,
in one process and without sockets (so other load on the machine changes little), the CPU
time wsproto's server side takes per message with and without the extension for the
messages watchers receive (a job snapshot, a task change), and the memory a connection's
zlib stream holds once it has sent one message (RSS growth over ``--connections`` of them).
The end-to-end figure with a gateway, a fleet and 100 dashboards is ``bench/dashboards.py``.

Usage::

    .venv/bin/python -m bench.websocket_frames [--messages 20000] [--connections 200]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import msgspec
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from bench._processes import memory_kib
from bench._report import Report

SNAPSHOT = {
    "type": "job",
    "job": {
        "id": 12,
        "createdAt": "2026-12-01T12:00:00.000Z",
        "finishAt": None,
        "timeout": None,
        "status": "dispatching",
        "progress": 41,
        "totalCount": 10000,
        "doneCount": 4123,
        "finishCount": 4100,
        "errorCount": 23,
        "pendingCount": 3000,
        "sentCount": 2877,
        "expiredCount": 0,
    },
}
TASK = {
    "type": "task",
    "task": {
        "id": 4124,
        "method": "post",
        "resource": "/system/reboot",
        "tunnel": "/remote/02:00:00:00:10:1c/response",
        "data": {"delay": 5},
        "__destination": "02:00:00:00:10:1c",
        "__task": {
            "createdAt": "2026-12-01T12:00:00.000Z",
            "finishAt": "2026-12-01T12:00:07.412Z",
            "timeout": 30.0,
            "status": "resolved",
            "progress": 100,
            "result": {"code": 200, "data": {"resource": "/system/reboot", "ok": True}},
        },
    },
}


def _server(deflate: bool) -> WSConnection:
    """A server connection past its handshake, with or without permessage-deflate."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    offer = [PerMessageDeflate()] if deflate else []
    server.receive_data(client.send(Request(host="gateway", target="/jobs/1/ws", extensions=offer)))
    request = next(event for event in server.events() if isinstance(event, Request))
    accepted = [PerMessageDeflate()] if deflate and request.extensions else []
    server.send(AcceptConnection(extensions=accepted))
    return server


def cpu_per_message(message: str, count: int, deflate: bool) -> tuple[float, int]:
    """Microseconds of CPU per message sent, and the bytes of one message on the wire."""
    server = _server(deflate)
    size = len(server.send(TextMessage(data=message)))
    started = time.process_time()
    for _ in range(count):
        server.send(TextMessage(data=message))
    return (time.process_time() - started) / count * 1e6, size


def memory_per_connection(connections: int, deflate: bool, message: str) -> float:
    """KiB of RSS each connection adds once it has sent one message."""
    before = memory_kib(os.getpid())
    kept = []
    for _ in range(connections):
        server = _server(deflate)
        server.send(TextMessage(data=message))
        kept.append(server)
    return (memory_kib(os.getpid()) - before) / connections


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args(argv)
    report = Report(
        scenario="websocket_frames",
        title="permessage-deflate: the gateway's cost per watcher (wsproto, no sockets)",
        command="python -m bench.websocket_frames "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        parameters=vars(args),
        columns=["message", "deflate", "CPU µs per message", "bytes on the wire"],
    )
    for name, body in (("job snapshot", SNAPSHOT), ("task change", TASK)):
        message = msgspec.json.encode(body).decode()
        for deflate in (False, True):
            micros, size = cpu_per_message(message, args.messages, deflate)
            report.rows.append([name, "on" if deflate else "off", round(micros, 1), size])
    message = msgspec.json.encode(SNAPSHOT).decode()
    plain = memory_per_connection(args.connections, False, message)
    compressed = memory_per_connection(args.connections, True, message)
    report.notes.append(
        f"RSS per connection after one message: {plain:.0f} KiB without deflate, "
        f"{compressed:.0f} KiB with ({args.connections} connections each)"
    )
    report.write()
    return report


if __name__ == "__main__":
    main()
