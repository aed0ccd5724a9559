"""The ``pm`` command line: ``serve``, ``submit``, ``watch``, ``jobs``, ``simulate`` and ``bench``.

Implementations live in underscored modules, one command each; public are :func:`main` and
:func:`serve_command` (the argv that starts ``pm serve`` in a child process).
"""

from ._main import main as main
from ._serve import serve_command as serve_command

__all__ = ["main", "serve_command"]
