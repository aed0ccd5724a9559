"""``python -m pm.cli``: the same as the installed ``pm`` script."""

from ._main import main

raise SystemExit(main())
