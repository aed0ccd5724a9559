"""A real read-only filesystem for tests: an ext4 image on a loop device that the kernel turns
read-only under open files, as it does after a disk error, and that comes back writable the way
an operator brings it back.

Linux refuses ``mount -o remount,ro`` while a file is open for writing, and root ignores file
modes, so a running gateway's database cannot be made read-only that way. An ext4 filesystem
mounted with ``errors=remount-ro`` can: writing to ``/sys/fs/ext4/<device>/trigger_fs_error``
raises a real filesystem error and the kernel makes the filesystem read-only at once, open files
included (``write()`` fails with EROFS or EIO). ext4 then keeps it read-only (``mount -o
remount,rw`` fails), so the way back is the operator's: unmount it lazily (the gateway still
holds files on it), wait until nothing holds it (``e2fsck`` refuses a device in use), check it,
mount it again at the same path, as with a real disk partition.

Needs root, loop devices, ``mkfs.ext4``/``e2fsck``/``losetup``/``mount`` and a kernel that
offers ``trigger_fs_error``; where one is missing the test is skipped with the reason, never
faked.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from tests.small_filesystem import commands_to_mount

WHY_SKIPPED = "no read-only filesystem test here"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


class Ext4Image:
    """An ext4 filesystem on the loop device :attr:`device`, mounted at :attr:`path`:
    :meth:`fail` makes it read-only as a disk error would, :meth:`repair` brings it back
    writable at the same path.

    Error handling: a command that fails fails the test with its output (the machine allowed
    the set-up, so a failure later is a real problem, not a reason to skip).
    """

    def __init__(self, image: Path, path: Path, commands: dict[str, str]) -> None:
        self.image = image
        self.path = path
        self._commands = commands
        self.device = ""

    def attach(self) -> str | None:
        """Attach the image to a free loop device; returns why that failed, or None."""
        attached = _run(self._commands["losetup"], "--find", "--show", str(self.image))
        if attached.returncode != 0:
            return f"no loop device: {attached.stderr.strip()}"
        self.device = attached.stdout.strip()
        return None

    def mount(self) -> str | None:
        """Mount the device at :attr:`path`, read-only on the first error; returns why that
        failed, or None."""
        options = "errors=remount-ro"
        mounted = _run(self._commands["mount"], "-t", "ext4", "-o", options, self.device,
                       str(self.path))  # fmt: skip
        if mounted.returncode != 0:
            return f"mounting ext4 failed: {mounted.stderr.strip()}"
        return None

    @property
    def error_trigger(self) -> Path:
        return Path("/sys/fs/ext4") / Path(self.device).name / "trigger_fs_error"

    def fail(self) -> None:
        """A real ext4 error: from now on no write reaches the filesystem, open files included.

        Error handling: fails the test if the filesystem still takes a new file afterwards.
        """
        self.error_trigger.write_text("puppetmaster test: a disk error\n")
        try:
            (self.path / "probe").write_bytes(b"")
        except OSError as error:
            if error.errno != errno.EROFS:
                raise
        else:
            pytest.fail(f"{self.path} still takes writes after an ext4 error")

    def unmount(self) -> None:
        """Unmount lazily: the path is free at once; the filesystem itself lives on (and its
        device stays in use) until every file open on it is closed."""
        done = _run(self._commands["umount"], "--lazy", str(self.path))
        if done.returncode != 0:
            pytest.fail(f"umount --lazy {self.path} failed: {done.stderr.strip()}")

    def check(self) -> bool:
        """``e2fsck -f -y`` the device, as an operator does before mounting it again; False
        while the device is still in use (a process holds files on the unmounted filesystem:
        e2fsck refuses, as it does for a real disk)."""
        checked = _run(self._commands["e2fsck"], "-f", "-y", self.device)
        output = checked.stdout + checked.stderr
        # e2fsck: 0 nothing to fix, 1 errors fixed; 8 an operational error such as "in use".
        if checked.returncode == 8 and "in use" in output:
            return False
        if checked.returncode >= 4:
            pytest.fail(f"e2fsck could not fix {self.device}: {output}")
        return True

    async def checked_once_free(self, poll: float = 0.05) -> None:
        """:meth:`check` as soon as nothing holds the unmounted filesystem any more. Callers
        bound it with their test's hang guard (it waits for the processes to let go)."""
        while not await trio.to_thread.run_sync(self.check):  # noqa: ASYNC110 - only e2fsck knows
            await trio.sleep(poll)

    def mount_again(self) -> None:
        failure = self.mount()
        if failure is not None:
            pytest.fail(f"{self.path} cannot be mounted again: {failure}")

    async def repair(self) -> None:
        """What an operator does after the error: unmount lazily, wait until nothing holds
        the filesystem, check and fix it, mount it again at the same path (bound it with a
        hang guard)."""
        await trio.to_thread.run_sync(self.unmount)
        await self.checked_once_free()
        await trio.to_thread.run_sync(self.mount_again)

    def release(self) -> None:
        """Unmount (lazily: a process may still hold files) and detach the loop device (a
        busy one is detached by the kernel once its last file closes)."""
        while self.path.is_mount():
            if _run(self._commands["umount"], "--lazy", str(self.path)).returncode != 0:
                break
        if self.device:
            _run(self._commands["losetup"], "--detach", self.device)


@contextmanager
def ext4_image(directory: Path, megabytes: int = 16) -> Iterator[Ext4Image]:
    """An ext4 image of ``megabytes`` MiB in ``directory``, mounted at ``directory / "mnt"`` for the
    block; unmounted and detached after, whatever happened.

    Error handling: skips the test, with the reason, where the machine cannot do it (not root,
    a command missing, no free loop device, mounting refused, no ``trigger_fs_error``).
    """
    names = ("losetup", "mount", "umount", "mkfs.ext4", "e2fsck")
    commands = dict(zip(names, commands_to_mount(WHY_SKIPPED, *names), strict=True))
    image, path = directory / "ext4.img", directory / "mnt"
    path.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as file:
        file.truncate(megabytes << 20)
    made = _run(commands["mkfs.ext4"], "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"{WHY_SKIPPED}: mkfs.ext4 failed: {made.stderr.strip()}")
    filesystem = Ext4Image(image, path, commands)
    try:
        failure = filesystem.attach() or filesystem.mount()
        if failure is not None:
            pytest.skip(f"{WHY_SKIPPED}: {failure}")
        if not filesystem.error_trigger.exists():
            pytest.skip(f"{WHY_SKIPPED}: the kernel has no {filesystem.error_trigger}")
        yield filesystem
    finally:
        filesystem.release()
