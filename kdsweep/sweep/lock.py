"""One `kdsweep run` per experiment at a time: an exclusive lock file in the experiment folder.

A lock left by a process that no longer exists on this host (a SIGKILLed driver) is taken over with a note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from kdsweep.errors import UserError
from kdsweep.storage import Store

LOCK_NAME = ".kdsweep.lock"


class ExperimentLock:
    def __init__(self, store: Store):
        self.store = store
        self.held = False

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(), "argv": sys.argv}
        path = self.store.local_path(LOCK_NAME)
        if path is None:  # object storage: no exclusive create; best effort
            holder = self.holder()
            if holder and holder_alive(holder):
                raise self._in_use(holder)
            self.store.write_json(LOCK_NAME, info)
            self.held = True
            return
        for _ in range(2):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None and holder_alive(holder):
                    raise self._in_use(holder) from None
                if holder is not None:
                    print(f"kdsweep: taking over the lock of a process that is gone ({path})", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise UserError(
                    f"cannot write to the experiment folder {path.parent}: {err.strerror or err}. Choose a writable "
                    f"`storage` (or --storage), or free space / fix permissions there; nothing was started."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return
        raise UserError(f"could not take the experiment lock {path}; another kdsweep run is starting there.")

    def holder(self) -> dict | None:
        try:
            return self.store.read_json(LOCK_NAME) if self.store.exists(LOCK_NAME) else None
        except (ValueError, OSError):
            return {}  # unreadable: being written by its owner right now, or garbage; treat as held

    def release(self) -> None:
        if self.held:
            self.store.delete(LOCK_NAME)
            self.held = False

    def _in_use(self, holder: dict) -> UserError:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started_at", 0)))
        return UserError(
            f"experiment {self.store.root} is in use by another `kdsweep run` (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {since}); a second run would corrupt its results, so this one stops. "
            f"Wait for it to finish, or stop it (Ctrl-C) and run again to resume. If that process no longer "
            f"exists, delete {self.store.location(LOCK_NAME)}."
        )

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def holder_alive(holder: dict) -> bool:
    """True unless the lock's process is known to be gone (same host, no such pid or not a kdsweep process)."""
    if holder.get("host") != socket.gethostname():
        return True  # another machine (or an unreadable lock): cannot check, so assume it is alive
    pid = holder.get("pid")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        return b"kdsweep" in cmdline.read_bytes() or b"python" in cmdline.read_bytes()
    return True
