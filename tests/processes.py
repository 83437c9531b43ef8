"""Starting kdsweep as a subprocess in its own session, and stopping exactly the processes of that session."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def listening_sockets(pids: list[int]) -> dict[int, list[str]]:
    """The TCP sockets in LISTEN state and the bound UDP sockets that processes `pids` hold, as "ADDRESS:PORT" per
    pid; read from /proc (the kernel's own tables), so it needs neither `ss` nor psutil."""
    bound: dict[str, str] = {}  # socket inode -> address
    for table, wanted in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):  # 0A LISTEN, 07 bound
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == wanted:
                    bound[fields[9]] = _socket_address(fields[1])
    held: dict[int, list[str]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in bound:
                        held.setdefault(pid, []).append(bound[link[8:-1]])
    return held


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def _socket_address(field: str) -> str:
    """/proc/net/tcp's "0100007F:1F90" -> "127.0.0.1:8080" (the address is in host byte order, 4 bytes at a time)."""
    hex_ip, hex_port = field.split(":")
    raw = bytes.fromhex(hex_ip)
    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return f"{ip}:{int(hex_port, 16)}" if ip.version == 4 else f"[{ip}]:{int(hex_port, 16)}"


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_inside_a_write(folder: Path, pattern: str, pid: int, timeout: float, skip: int = 0,
                        when: Callable[[], bool] = lambda: True) -> str | None:
    """SIGKILL process `pid` while it writes a file of `folder` whose temporary name matches `pattern` (after
    letting `skip` such writes finish, and only a write that starts while `when()` holds; `when` is asked while
    the process is frozen, so it sees the files as they were when the write began).

    The kernel tells us (inotify) the moment the temporary file is created; the process is frozen at once with
    SIGSTOP, and killed only if the temporary file is still there - the write is then provably in flight (Store
    renames it over the target only when it is complete). Returns the temporary file's name, or None when no
    such moment came before `timeout` (or the process ended).
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    # The race is between the writer's write + fsync + rename and our SIGSTOP. On a loaded machine the scheduler may
    # wake this watcher milliseconds late; a real-time priority wakes it first (the watcher only blocks in select).
    with _realtime_priority():
        return _stop_inside_a_write(libc, folder, pattern, pid, timeout, skip, when)


@contextlib.contextmanager
def _realtime_priority():
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        raised = True
    except (PermissionError, AttributeError, OSError):
        raised = False  # not root: best effort at normal priority
    try:
        yield
    finally:
        if raised:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _stop_inside_a_write(libc, folder: Path, pattern: str, pid: int, timeout: float, skip: int,
                         when: Callable[[], bool]) -> str | None:
    import ctypes
    import fnmatch
    import select
    import struct

    fd = libc.inotify_init()
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init")
    try:
        if libc.inotify_add_watch(fd, str(folder).encode(), 0x100) < 0:  # IN_CREATE
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
        deadline = time.time() + timeout
        while time.time() < deadline and alive(pid):
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            data = os.read(fd, 65536)
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if not fnmatch.fnmatch(name, pattern):
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                os.kill(pid, signal.SIGSTOP)
                if (folder / name).exists() and when():
                    os.kill(pid, signal.SIGKILL)
                    return name
                os.kill(pid, signal.SIGCONT)  # too late: that write had finished
        return None
    finally:
        os.close(fd)


def alive(pid: int) -> bool:
    """Process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"
