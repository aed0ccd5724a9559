"""The embedded broker's mosquitto child: a wrapper process around the mosquitto binary.

``python -m pm.broker.mosquitto`` (:mod:`._main`) writes the configuration of :mod:`._config`,
starts mosquitto and speaks :mod:`pm.broker._protocol` with the gateway like the amqtt child.
"""
