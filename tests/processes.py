"""Starting kdsweep as a subprocess in its own session, and stopping exactly the processes of that session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KDSWEEP = [sys.executable, "-m", "kdsweep"]


def start(args: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """`kdsweep ARGS` in a new session (its pid is the session id of everything it starts, Ray included)."""
    handle = log.open("wb")
    return subprocess.Popen(KDSWEEP + args, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields: state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, timeout: float = 10.0) -> None:
    """SIGKILL every live process of session `sid` (the driver and whatever it started), then wait for them."""
    deadline = time.time() + timeout
    while True:
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.time() > deadline:
            raise RuntimeError(f"processes {pids} of session {sid} survived SIGKILL")
        time.sleep(0.2)


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
