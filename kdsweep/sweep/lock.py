"""One `kdsweep run` per experiment at a time: an exclusive lock on a file in the experiment folder.

On a file system the lock is the kernel's (`flock` on `.kdsweep.lock`), held for as long as the driver lives: a
driver that is SIGKILLed, pre-empted or crashes releases it with its last breath, so there is no stale lock to
guess about and no pid that could have been reused. The file also names its holder (pid, host, start time) for
the message a second run gets, and for `kdsweep status`. On object storage (s3://, gs://) there is no exclusive
create: the lock is a best-effort marker object, trusted unless its holder is known to be gone on this host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time

from kdsweep.errors import UserError
from kdsweep.storage import Store

LOCK_NAME = ".kdsweep.lock"
# `kdsweep status` peeks at the lock by taking it shared for an instant; a run starting at that instant retries
# this long before it calls the experiment busy.
PEEK_GRACE_S = 0.5


class ExperimentLock:
    def __init__(self, store: Store):
        self.store = store
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(), "argv": sys.argv}
        if self.store.local_path(LOCK_NAME) is None:
            self._acquire_marker(info)
        else:
            self._acquire_flock(info)
        self.held = True

    def _acquire_flock(self, info: dict) -> None:
        path = self.store.local_path(LOCK_NAME)
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(
                    f"cannot write to the experiment folder {path.parent}: {err.strerror or err}. Choose a writable "
                    f"`storage` (or --storage), or free space / fix permissions there; nothing was started."
                ) from None
            if not _flock_within(fd, fcntl.LOCK_EX, PEEK_GRACE_S):
                os.close(fd)
                raise self._in_use(self.holder() or {})
            # A holder that released (deleted the file) between our open and our flock leaves us locking a file
            # that is no longer there; lock whatever the path names now instead.
            if _same_file(fd, path):
                break
            os.close(fd)
        previous = os.read(fd, 1 << 16)
        if previous.strip():
            print(f"kdsweep: taking over the lock of a process that is gone ({path})", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def _acquire_marker(self, info: dict) -> None:
        holder = self.holder()
        if holder and holder_alive(holder):
            raise self._in_use(holder)
        self.store.write_json(LOCK_NAME, info)

    def holder(self) -> dict | None:
        try:
            return self.store.read_json(LOCK_NAME) if self.store.exists(LOCK_NAME) else None
        except (ValueError, OSError):
            return {}  # unreadable: being written by its owner right now, or garbage; treat as held

    def release(self) -> None:
        if not self.held:
            return
        self.store.delete(LOCK_NAME)  # deleted while still locked: see _acquire_flock for the race this leaves
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.held = False

    def _in_use(self, holder: dict) -> UserError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
        return UserError(
            f"experiment {self.store.root} is in use by another `kdsweep run` (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {since}); a second run would corrupt its results, so this one stops. "
            f"Wait for it to finish, or stop it (Ctrl-C) and run again to resume."
        )

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _flock_within(fd: int, kind: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _same_file(fd: int, path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def is_held(store: Store) -> bool:
    """True while some `kdsweep run` holds the experiment's lock (for `kdsweep status`)."""
    path = store.local_path(LOCK_NAME)
    if path is None:
        holder = ExperimentLock(store).holder()
        return holder is not None and holder_alive(holder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # nobody holds it exclusively
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock taken to look


def holder_alive(holder: dict) -> bool:
    """For marker locks on object storage: True unless the holder is known to be gone (same host, no such pid)."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine (or an unreadable marker): cannot check, so assume it is alive
    try:
        os.kill(int(holder.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True
