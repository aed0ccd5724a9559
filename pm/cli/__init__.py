"""The ``pm`` command line: ``serve``, ``submit``, ``watch``, ``jobs`` and ``simulate``.

Implementations live in underscored modules, one command each; only :func:`main` is public.
"""

from ._main import main as main

__all__ = ["main"]
