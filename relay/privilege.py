"""Capability drop once the relay is set up (issue #10, privilege): what an exploited relay could do is what it kept.

The relay starts as root to load BPF programs, attach TC filters and enter the HAL's namespace. Once its socket is
bound and the data plane is attached, `drop_capabilities` lowers the bounding set (so no exec can regain a
capability) and the permitted/effective sets to `keep` with prctl(2) and capset(2) through ctypes. What is kept:

- `--hal none` without the fast path: nothing. The UDP socket is bound, certificates are read, the event loop runs.
- with the fast path or a HAL namespace: CAP_NET_ADMIN (TC filters are re-attached / removed at exit),
  CAP_SYS_ADMIN (setns(2) back out of the HAL namespace and its teardown at exit), CAP_BPF and CAP_PERFMON (kept
  for a re-attach that loads again; on older kernels bpf(2) itself wants them). Updating maps through fds the relay
  already holds needs no capability on kernels >= 6.5, creating one does (tests/integration/test_privilege.py).

Capabilities are per thread: only the calling thread drops, threads it starts later inherit the lowered sets. So the
caller drops from the main thread and replaces thread pools made before (serve.py does both); `privileged_tasks`
lists any thread that still holds more than `keep`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

DATA_PLANE_CAPS = frozenset({CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON})


class PrivilegeError(OSError):
    """A prctl/capset call failed: the relay keeps running with the capabilities it had, and says so."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class CapSets:
    """One task's capability sets from /proc/<pid>/status, as bit masks."""

    effective: int
    permitted: int
    bounding: int
    ambient: int

    def names(self) -> list[int]:
        return [c for c in range(64) if self.effective >> c & 1]


def read_caps(pid: int | str = "self", task: int | None = None) -> CapSets:
    """Parse CapEff/CapPrm/CapBnd/CapAmb of a process (or one of its threads)."""
    base = Path("/proc") / str(pid)
    status = (base / "task" / str(task) / "status") if task is not None else base / "status"
    fields: dict[str, int] = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            fields[key] = int(value.strip(), 16)
    return CapSets(fields["CapEff"], fields["CapPrm"], fields["CapBnd"], fields["CapAmb"])


def mask(caps: frozenset[int] | set[int]) -> int:
    return sum(1 << c for c in caps)


def needed_capabilities(*, fast_path: bool, netns: bool) -> frozenset[int]:
    """What the relay still needs after set-up (see the module docstring for why each one)."""
    return DATA_PLANE_CAPS if fast_path or netns else frozenset()


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        return 40


def drop_capabilities(keep: frozenset[int] | set[int]) -> CapSets:
    """Lower this thread's bounding, ambient, permitted, effective and inheritable sets to `keep` (intersected with
    what it has); returns the sets read back. No-op for a process that holds no capability (not root)."""
    libc = _libc()
    before = read_caps()
    if before.permitted == 0 and before.bounding & ~mask(keep) == 0:
        return before
    keep_mask = mask(keep) & before.permitted
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if before.effective >> 8 & 1:  # CAP_SETPCAP: needed to lower the bounding set
        for cap in range(_last_cap() + 1):
            bounded = cap not in keep and libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1
            if bounded and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                raise PrivilegeError(err, f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(err)}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = keep_mask >> (32 * i) & 0xFFFFFFFF
        data[i].effective, data[i].permitted, data[i].inheritable = word, word, 0
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(err, f"capset: {os.strerror(err)}")
    return read_caps(task=threading.get_native_id())


def privileged_tasks(keep: frozenset[int] | set[int], pid: int | str = "self") -> list[int]:
    """Threads of `pid` whose effective or permitted set holds more than `keep` (should be empty after a drop)."""
    out = []
    extra = ~mask(keep)
    for entry in (Path("/proc") / str(pid) / "task").iterdir():
        try:
            caps = read_caps(pid, int(entry.name))
        except (OSError, KeyError):
            continue  # the thread ended meanwhile
        if (caps.effective | caps.permitted) & extra:
            out.append(int(entry.name))
    return out
