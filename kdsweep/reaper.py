"""Ending the embedded Ray with its driver, within a second of a SIGKILL.

Ray ends its GCS, raylet and workers about a second after their driver dies, but the dashboard and runtime-env agents
first try to tell the (dead) GCS about it, with a 60 s timeout written into Ray, and keep their ports open meanwhile
(docs/ray-notes.md, pitfall 10). `watch_driver` starts a small process that notes every descendant of the driver
twice a second while the driver lives; once the driver is gone it SIGKILLs those of them still alive. It signals no
process it did not see descend from the driver, and checks each one's start time so that a reused pid is left alone.
A process orphaned within half a second of its start is not seen; Ray's agents are orphaned only when their
raylet ends, with the driver.

Linux only (it reads /proc); elsewhere `watch_driver` does nothing. Run as `python -m kdsweep.reaper DRIVER_PID`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5  # how often the reaper looks at the driver's descendants and whether it still lives
_PROC = Path("/proc")
_started: list[int] = []  # the reaper's pid, once this process has started one


def watch_driver() -> None:
    """Start the reaper for this process (once per process)."""
    if _started or not (_PROC / str(os.getpid()) / "stat").exists():
        return
    reaper = subprocess.Popen([sys.executable, "-m", "kdsweep.reaper", str(os.getpid())],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _started.append(reaper.pid)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks after boot) of process `pid`, or None when it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of `root`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def reap(driver: int) -> None:
    """Wait for `driver` to end, then SIGKILL the descendants it had that still live."""
    first = _stat(driver)
    seen: set[tuple[int, int]] = set()
    while (now := _stat(driver)) and first and now[2] == first[2] and now[0] != "Z":
        seen |= _descendants(driver)
        time.sleep(POLL_S)
    for pid, started in seen:
        if (stat := _stat(pid)) and stat[2] == started and stat[0] != "Z" and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    # Ctrl-C reaches the whole foreground process group, the reaper too: it must outlive the driver it watches.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap(int(sys.argv[1]))
