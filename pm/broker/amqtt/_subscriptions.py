"""The subscription index that replaces amqtt's ``Broker._subscriptions`` dict (fix 2 of
:mod:`pm.broker.amqtt._broker`): exact filters by one lookup, wildcard filters apart."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from amqtt.session import Session

Holders = list[tuple[Session, int]]


def is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class SubscriptionIndex(dict[str, Holders]):
    """amqtt's ``{filter: [(session, qos), ...]}`` with the wildcard filters kept apart.

    amqtt only ever sets, deletes, reads and clears keys of ``Broker._subscriptions`` (its
    source is pinned by tests/test_private_names.py); those are the operations that keep
    :attr:`wildcards` in step. The holder lists themselves are still mutated in place by amqtt.
    """

    def __init__(self) -> None:
        super().__init__()
        # An ordered set: wildcard filters in subscription order, like amqtt's scan.
        self.wildcards: dict[str, None] = {}
        # client id -> filters it holds, maintained by PuppetmasterBroker's add/delete hooks.
        self.filters_of_client: defaultdict[str, set[str]] = defaultdict(set)

    def __setitem__(self, topic_filter: str, holders: Holders) -> None:
        super().__setitem__(topic_filter, holders)
        if is_wildcard(topic_filter):
            self.wildcards[topic_filter] = None

    def __delitem__(self, topic_filter: str) -> None:
        super().__delitem__(topic_filter)
        self.wildcards.pop(topic_filter, None)

    def clear(self) -> None:
        super().clear()
        self.wildcards.clear()
        self.filters_of_client.clear()

    def setdefault(self, topic_filter: str, default: Any = None) -> Any:  # noqa: ANN401
        raise AssertionError("amqtt 0.12.1 never calls setdefault on _subscriptions")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("amqtt 0.12.1 never calls update on _subscriptions")

    def pop(self, *args: Any) -> Any:  # noqa: ANN401
        raise AssertionError("amqtt 0.12.1 never calls pop on _subscriptions")

    def __repr__(self) -> str:
        # amqtt evaluates repr(self._subscriptions) per SUBSCRIBE even at WARNING level.
        return f"<SubscriptionIndex {len(self)} filters, {len(self.wildcards)} wildcard>"

    def exact_holders(self, topic: str) -> Holders | None:
        """Holders of the filter spelled exactly ``topic`` if it has no wildcard."""
        if topic in self.wildcards:
            return None  # a (malformed) topic with '+': the wildcard scan handles that filter
        return dict.get(self, topic)
