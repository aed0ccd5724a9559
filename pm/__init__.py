"""puppetmaster: dispatch batches of Sanji commands to fleets of IoT devices over MQTT."""

__version__ = "0.1.0"
