"""A real full disk for tests: a small tmpfs mounted for one test, filled and freed at will.

Mounting needs root (or CAP_SYS_ADMIN); where the machine refuses it, the test using it is
skipped with the reason, never faked.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_CHUNK = b"\0" * 65536


class SmallFilesystem:
    """A mounted tmpfs at :attr:`path`; :meth:`fill` takes every free byte, :meth:`free`
    gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        """Write until the filesystem says ENOSPC: from now on every write that needs a new
        block fails, as on a full disk."""
        with self._filler.open("ab", buffering=0) as filler:
            for chunk in (_CHUNK, b"\0" * 4096, b"\0"):
                try:
                    while True:
                        filler.write(chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


def commands_to_mount(why_skipped: str, *commands: str) -> list[str]:
    """The paths of ``commands``, on a machine where this process may mount filesystems.

    Error handling: skips the test, with ``why_skipped`` and the reason, when one is missing or
    this process is not root (mounting needs root or CAP_SYS_ADMIN; a failed mount skips too).
    """
    if os.geteuid() != 0:
        pytest.skip(f"{why_skipped}: mounting a filesystem needs root")
    paths = []
    for command in commands:
        path = shutil.which(command)
        if path is None:
            pytest.skip(f"{why_skipped}: the `{command}` command is missing")
        paths.append(path)
    return paths


@contextmanager
def small_filesystem(path: Path, size: str = "4m") -> Iterator[SmallFilesystem]:
    """Mount a tmpfs of ``size`` (mount's syntax) at ``path`` for the block; unmounted after.

    Error handling: skips the test, with the reason, when mounting is not possible here.
    """
    (mount,) = commands_to_mount("no full-disk test here", "mount")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"no full-disk test here: mounting a tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield SmallFilesystem(path)
    finally:
        # Lazy: a process the test started may still hold a file open for a moment.
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
