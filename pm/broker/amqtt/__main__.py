"""``python -m pm.broker.amqtt``: the amqtt broker child (see :mod:`pm.broker.amqtt._main`)."""

import sys

from ._main import main

sys.exit(main())
