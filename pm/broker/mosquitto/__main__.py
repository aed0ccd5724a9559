"""``python -m pm.broker.mosquitto``: the mosquitto wrapper child (:mod:`._main`)."""

import sys

from ._main import main

sys.exit(main())
