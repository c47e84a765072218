"""Small helpers around network namespaces: create/remove, run a command inside one, find and end its processes.

Commands run through `ip netns exec`, which bind-mounts /etc/netns/<ns>/* over /etc: that is how `relay` resolves
inside a node without touching the machine's own /etc/hosts (DESIGN.md section 7).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pyroute2 import netns as pr_netns

from sim.state import SimStateError

NETNS_RUN_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")


class CommandError(SimStateError):
    """A set-up command failed; carries the command and its stderr (a SimStateError, so callers catch one type)."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"`{' '.join(argv)}` failed ({returncode}): {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


def exists(name: str) -> bool:
    return (NETNS_RUN_DIR / name).exists()


def create(name: str) -> None:
    pr_netns.create(name)


def remove(name: str) -> None:
    if exists(name):
        pr_netns.remove(name)


def list_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def exec_argv(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def tc_argv(ns: str, argv: list[str]) -> list[str]:
    """`tc ...` -> `tc -n <ns> ...` (no mount namespace needed for netlink-only tools)."""
    assert argv and argv[0] == "tc", argv
    return ["tc", "-n", ns, *argv[1:]]


def check_run(argv: list[str], timeout: float = 30.0) -> str:
    """Run a set-up command; raise CommandError with its stderr when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise CommandError(argv, result.returncode, result.stderr)
    return result.stdout


def write_sysctl(ns: str, settings: dict[str, str]) -> None:
    """Write /proc/sys values as seen from inside `ns` (net.* sysctls are per namespace)."""
    script = " && ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items())
    check_run(exec_argv(ns, ["sh", "-c", script]))


def write_etc_file(ns: str, name: str, content: str) -> Path:
    directory = ETC_NETNS_DIR / ns
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content)
    return directory


def remove_etc_dir(ns: str) -> None:
    """Remove /etc/netns/<ns> (only that folder, never /etc/netns itself)."""
    directory = ETC_NETNS_DIR / ns
    if ns and "/" not in ns and ns not in (".", "..") and directory.is_dir():
        shutil.rmtree(directory)


def process_starttime(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def pids_in(ns: str) -> list[int]:
    """Every process whose network namespace is `ns` (what keeps a namespace alive after `ip netns del`)."""
    try:
        target = os.stat(NETNS_RUN_DIR / ns)
    except FileNotFoundError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            found.append(int(entry.name))
    return found


def end_processes(pids: list[int], grace: float = 2.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the PIDs that were signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(signalled)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return signalled


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def popen(ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(exec_argv(ns, argv), **kwargs)
