"""Presence from mosquitto's own log: :class:`MosquittoLogPresence`.

mosquitto has no hook a wrapper could call on a subscription or a disconnect, but it logs both
(``log_type subscribe``/``unsubscribe``, ``connection_messages true`` at ``notice``), one line
each, on stderr, unbuffered. This turns those lines into the same presence changes the amqtt
child makes (:class:`pm.broker._presence.BrokerPresence`): a device is online while a
connected client is subscribed to its request topic. Pure: lines in, ``(status topic,
payload)`` announcements out; the child publishes them (retained, QoS 1).

The lines read, as mosquitto 2.0.11 writes them (``log_timestamp false``)::

    New client connected from 127.0.0.1:38913 as sim-mux-1 (p2, c1, k60).
    sim-mux-1 1 /remote/d1                       (SUBSCRIBE: client id, QoS, filter)
    sim-mux-1 /remote/d1                         (UNSUBSCRIBE: client id, filter)
    Client sim-mux-1 closed its connection.      (and "disconnected.", "disconnected: why.",
    Client sim-mux-1 has exceeded timeout, disconnecting.   "disconnected due to ...", ...)
    Client sim-mux-1 already connected, closing old connection.   (a takeover)

Client ids may contain spaces (never control characters: mosquitto refuses those, so a client
id cannot forge a line); a device id never does, so a subscription line is read from its end:
the filter must be exactly a request topic. A client id ending in `` 0``, `` 1`` or `` 2``
that unsubscribes reads as a subscription of the id without that ending: such ids are not
supported for presence.

A persistent session (``c0``) keeps its subscriptions across connections without a new
SUBSCRIBE: its filters are remembered and announced again when it connects.

Error handling: nothing raises for a line; a line that is none of the above is not presence
and :meth:`MosquittoLogPresence.feed` returns ``None`` for it (the child forwards it to the
gateway's log: mosquitto's errors and warnings, and the rare UNSUBSCRIBE of a filter that is
no request topic, which cannot be told from other two-word lines).
"""

from __future__ import annotations

import re

from pm.broker._presence import OFFLINE, ONLINE, BrokerPresence, PresenceTopics

_CONNECTED = re.compile(
    r"New client connected from \S+ as (?P<client>.+) \(p\d+, c(?P<clean>[01]), k\d+.*\)\."
)
_ENDED = re.compile(
    r"Client (?P<client>.+?) (?:closed its connection|disconnected(?:[ ,:].*)?"
    r"|has exceeded timeout, disconnecting|been disconnected by administrative action"
    r"|already connected, closing old connection)\."
)
_BAD_SOCKET = re.compile(r"Bad socket read/write on client (?P<client>.+?): .*")
_SUBSCRIBED = re.compile(r"(?P<client>.+) [012] (?P<filter>\S+)")
_UNSUBSCRIBED = re.compile(r"(?P<client>.+) (?P<filter>\S+)")
# Notices that say nothing of presence and would only flood the gateway's log.
_QUIET = ("New connection from ", "mosquitto version ", "Config loaded from ", "Opening ip")

Announcement = tuple[str, bytes]


class MosquittoLogPresence:
    """mosquitto log lines to presence announcements (see the module docstring)."""

    def __init__(self, topics: PresenceTopics) -> None:
        self._presence = BrokerPresence(topics)
        # Persistent sessions' request-topic filters, kept across their connections.
        self._persistent: dict[str, set[str]] = {}
        # Connected clients: whether their session is clean.
        self._clean: dict[str, bool] = {}

    def feed(self, line: str) -> list[Announcement] | None:
        """One log line (without its newline): the announcements it makes (often none), or
        ``None`` if it is not a line this reads."""
        if match := _CONNECTED.fullmatch(line):
            return self._connected(match["client"], clean=match["clean"] == "1")
        if match := _ENDED.fullmatch(line) or _BAD_SOCKET.fullmatch(line):
            self._clean.pop(match["client"], None)
            devices = self._presence.disconnected(match["client"])
            return [self._announce(device, OFFLINE) for device in devices]
        if line.startswith(_QUIET):
            return []
        if match := _SUBSCRIBED.fullmatch(line):
            # Any subscription is read (the gateway's own wildcards at each connect would
            # otherwise reach its log); only a request topic's counts.
            if self._presence.device_of(match["filter"]) is None:
                return []
            return self._subscribed(match["client"], match["filter"])
        match = _UNSUBSCRIBED.fullmatch(line)
        if match and self._presence.device_of(match["filter"]):
            self._persistent.get(match["client"], set()).discard(match["filter"])
            device = self._presence.unsubscribed(match["client"], match["filter"])
            return [] if device is None else [self._announce(device, OFFLINE)]
        return None

    def _connected(self, client: str, *, clean: bool) -> list[Announcement]:
        self._clean[client] = clean
        if clean:
            self._persistent.pop(client, None)
            return []
        announcements = []
        for topic_filter in sorted(self._persistent.get(client, ())):
            device = self._presence.subscribed(client, topic_filter)
            if device is not None:
                announcements.append(self._announce(device, ONLINE))
        return announcements

    def _subscribed(self, client: str, topic_filter: str) -> list[Announcement]:
        if not self._clean.get(client, True):
            self._persistent.setdefault(client, set()).add(topic_filter)
        device = self._presence.subscribed(client, topic_filter)
        return [] if device is None else [self._announce(device, ONLINE)]

    def _announce(self, device: str, payload: bytes) -> Announcement:
        return self._presence.status_topic(device), payload
