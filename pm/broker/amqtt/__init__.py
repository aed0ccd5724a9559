"""The embedded broker's amqtt child: runs only in its own process, never in the gateway.

``python -m pm.broker.amqtt`` (:mod:`._main`) serves :class:`._broker.PuppetmasterBroker`
(amqtt's ``Broker`` with the fixes the gateway depends on) with the plugins of :mod:`._auth`,
the GC pacing of :mod:`._gc` and the log filtering of :mod:`._logs`. This is the only package
that touches amqtt's private names; ``tests/test_private_names.py`` derives which from the
source and pins amqtt's source of each.
"""
