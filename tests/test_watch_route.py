"""The watchers' route's pure parts: its WebSocket frames (read back by wsproto, an independent
parser) and its coalesced writes on trio's virtual clock. The route itself, over a real
server and real clients, is exercised by the WebSocket tests (tests/test_http_*.py,
tests/integration/test_watch_ws.py)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from pm.http.watch_route import MAX_WRITE_BYTES, send_coalesced
from pm.http.websocket_frames import text_frames
from pm.watch import Watcher
from tests.test_watch import INTERVAL, job_of, make_feed, task_of, view_of


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_are_read_back_by_wsproto(size: int) -> None:
    messages = [b"x" * size, '{"é":"ü"}'.encode(), b"{}"]
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frames(messages))
    received = list(client.events())
    assert all(isinstance(event, TextMessage) and event.message_finished for event in received)
    assert [event.data for event in received] == [message.decode() for message in messages]


async def test_messages_due_together_go_in_one_write_and_the_final_one_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=3)
    writes: list[tuple[float, list[bytes]]] = []
    start = trio.current_time()

    async def write(messages: list[bytes]) -> bool:
        writes.append((trio.current_time() - start, list(messages)))
        return True

    with Watcher(feed, INTERVAL) as watcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_coalesced, watcher, write)
            await trio.sleep(0.01)
            for index in range(3):
                job.mark_sent(job.tasks[index], 1.0)
                feed.task_changed(view_of(job, index))
            await trio.sleep(INTERVAL + 0.05)  # just after the second write
            feed.close()
    (first_at, first), (second_at, second), (final_at, final) = writes
    # The first snapshot at once; the task changes of the interval together, after it.
    assert first_at == 0 and [job_of(message)["status"] for message in first] == ["pending"]
    assert second_at == INTERVAL
    assert [task_of(message).id for message in second] == [1, 2, 3]
    # The final message does not wait for the next interval.
    assert final_at == INTERVAL + 0.06
    assert [job_of(message)["id"] for message in final] == [1]


async def test_a_client_gone_during_a_write_ends_the_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    job, feed = make_feed(devices=1)
    calls = 0

    async def write(messages: list[bytes]) -> bool:
        nonlocal calls
        calls += 1
        return False

    with Watcher(feed, INTERVAL) as watcher:
        assert await send_coalesced(watcher, write) is False
    assert calls == 1


class _Backlog:
    """Stands in for a watcher that has a backlog ready at once (a batch watcher catching up)."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = list(messages)

    def __aiter__(self) -> _Backlog:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._messages:
            raise StopAsyncIteration
        return self._messages.pop(0)

    def update_interval(self) -> float:
        return 10.0


async def test_a_backlog_is_written_in_bounded_pieces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Without the bound, all of it would wait in one list for the interval, then go in one
    # write: a stalled client's handler holding a copy of everything unsent.
    piece = b"x" * (MAX_WRITE_BYTES // 2 + 1)
    writes: list[int] = []

    async def write(messages: list[bytes]) -> bool:
        writes.append(sum(map(len, messages)))
        return True

    assert await send_coalesced(_Backlog([b"{}"] + [piece] * 6), write)  # type: ignore[arg-type]
    assert writes == [2] + [2 * len(piece)] * 3
    assert trio.current_time() == 0  # none of it waited for the interval
