"""paho's client class as pm.mqtt drives it: reading the socket ahead, no per-topic callbacks."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho

# paho reads every packet with at least three recv() calls (type byte, each length byte, the
# body); ReadAheadClient serves them from one read of up to this many bytes.
_READ_AHEAD_BYTES = 65536


class ReadAheadClient(paho.Client):
    """paho's client, reading the socket ahead, and without per-topic callbacks.

    Three or four syscalls per packet (with our pending-bytes peek) were ~8% of the
    gateway's CPU under load; one read now serves every packet of a burst. Overrides paho's
    private ``_sock_recv`` and ``_handle_on_message`` (paho is pinned;
    tests/test_private_names.py pins the source of what this relies on).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_ahead = b""
        self._read_position = 0

    @property
    def read_ahead_pending(self) -> bool:
        """Bytes already read from the socket that paho has not consumed yet."""
        return self._read_position < len(self._read_ahead)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho walks its per-topic callback tree for every incoming message (~4% of the
        # gateway's CPU); we register no per-topic callbacks, so it would always find none.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        raise NotImplementedError("per-topic callbacks are skipped by _handle_on_message")

    def _sock_recv(self, bufsize: int) -> bytes:
        start = self._read_position
        if start >= len(self._read_ahead):
            # Raises BlockingIOError when nothing is there, and returns b"" at EOF, as before.
            data = super()._sock_recv(_READ_AHEAD_BYTES)
            if len(data) <= bufsize:
                return data
            self._read_ahead, start = data, 0
        end = start + bufsize
        self._read_position = end
        return self._read_ahead[start:end]
