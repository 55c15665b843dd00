"""One folder, one peer: an exclusive lock on the folder a peer is opened from.

Two peers open on one folder would each keep their own memory of the same documents and write
under the same client ids.  Yrs identifies an edit by (client id, clock), so the household would
take two different edits for one and keep only one of them: an acknowledged write lost on every
robot.  Nothing in SQLite prevents that (each process commits its own transactions), so the
peer takes this lock before it touches anything in the folder, and holds it until it closes.

The lock is ``flock(2)`` on ``hearth.lock``, exclusive and non-blocking:

* the kernel drops it when its holder dies, however it dies (SIGKILL included), so a crashed
  robot restarts without a stale lock to clear;
* it is held by one open file description: a second `FolderLock.acquire` of the same folder
  fails in the same process too;
* a child forked while it is held closes its copy at once (`os.register_at_fork`), so a worker
  process never keeps the lock of a peer its parent has closed;
* the file holds the holder's pid, which only names it in the error: the lock is the kernel's.

It is advisory: it binds hearthsync peers, not other programs writing into the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import weakref
from pathlib import Path

from hearthsync.errors import StoreError, StoreInUseError

LOCK_FILE = "hearth.lock"

_held: weakref.WeakSet[FolderLock] = weakref.WeakSet()


class FolderLock:
    """The lock of one folder, held from `acquire` until `release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        _held.add(self)

    @classmethod
    def acquire(cls, folder: Path) -> FolderLock:
        """Lock ``folder`` (which must exist) or raise `StoreInUseError` naming the holder."""
        path = folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # a read-only file system, a file of another user, ...
            raise StoreError(f"cannot lock {folder}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd)
            os.close(fd)
            raise StoreInUseError(str(folder), holder) from None
        except OSError as exc:  # a file system without flock
            os.close(fd)
            raise StoreError(f"cannot lock {folder}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        # the pid only names the holder in a refusal: on a full disk the lock holds without it
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent).  The file stays: removing it would let a second opener
        lock a new file while a third still waits on the old one.  In a forked child this
        closes only the inherited copy: the parent's descriptor keeps the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _pid_in(fd: int) -> int | None:
    """The holder's pid, if the file names a live process: a holder that has just taken the
    lock may not have written its own yet, and the file still names the one before it."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        pid = int(text) if text else 0
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if pid <= 0:
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's counts: alive)."""
    try:
        os.kill(pid, 0)  # signal 0: is it alive?
    except PermissionError:  # alive, but another user's
        return True
    except (OSError, OverflowError):
        return False
    return True


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock.release()


os.register_at_fork(after_in_child=_after_fork_in_child)
