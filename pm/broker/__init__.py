"""The embedded MQTT broker: amqtt (or mosquitto) in a supervised child process.

The gateway calls :func:`run_embedded_broker` (``broker = await nursery.start(...)``), holds the
:class:`EmbeddedBroker` it hands over, builds the child's device identity with
:func:`broker_auth` and its own MQTT client id with :func:`gateway_client_id`; ``pm serve``
reports a :class:`BrokerStartError` in one line.

Layout (dependencies point one way): ``_supervisor`` (the restart loop) uses ``_child``
(process plumbing), ``_arguments`` (config to command line), ``_restart`` (the backoff policy)
and ``_state`` (the handle). The children, ``amqtt/`` and ``mosquitto/``, are separate
processes that share only ``_protocol`` with the parent: the parent never imports amqtt, and
neither child imports the other. This package's public face is imported lazily so that a
child, which runs ``pm.broker.<engine>``, does not pay for trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._arguments import BrokerAuth as BrokerAuth
    from ._arguments import broker_auth as broker_auth
    from ._arguments import gateway_client_id as gateway_client_id
    from ._state import BrokerStartError as BrokerStartError
    from ._state import EmbeddedBroker as EmbeddedBroker
    from ._supervisor import run_embedded_broker as run_embedded_broker

_EXPORTS = {
    "BrokerAuth": "._arguments",
    "broker_auth": "._arguments",
    "gateway_client_id": "._arguments",
    "BrokerStartError": "._state",
    "EmbeddedBroker": "._state",
    "run_embedded_broker": "._supervisor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the re-exported name is
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
