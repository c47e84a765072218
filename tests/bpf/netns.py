"""A throw-away network namespace with one veth pair, for attach and clone tests; always removed."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@contextmanager
def veth_netns(prefix: str) -> Iterator[str]:
    """Namespace ``<prefix>`` holding veth ``va`` <-> ``vb`` (up, no addresses: nothing can route out)."""
    ip("netns", "add", prefix)
    try:
        quiet_ipv6(prefix)
        ip("-n", prefix, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        ip("-n", prefix, "link", "set", "va", "up")
        ip("-n", prefix, "link", "set", "vb", "up")
        yield prefix
    finally:
        subprocess.run(["ip", "netns", "del", prefix], capture_output=True)


def quiet_ipv6(ns: str) -> None:
    """No IPv6 on new devices of ``ns``: no router solicitations or MLD reports muddying packet counters."""
    for scope in ("all", "default"):
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"],
                       check=True, capture_output=True)


def ifindex(ns: str, name: str) -> int:
    return int(subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{name}/ifindex"],
                              check=True, capture_output=True, text=True).stdout)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that joined the namespace (setns is per thread), e.g. a BPF test run whose
    redirects must land on that namespace's devices."""
    out: list[T] = []
    err: list[BaseException] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out.append(fn())
        except BaseException as e:
            err.append(e)
        finally:
            os.close(fd)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]
