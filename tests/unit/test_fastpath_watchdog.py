"""relay/fastpath_watchdog.py against a real veth in a throw-away namespace: our two filters attached, then removed
or replaced from outside with `tc`; the watchdog notices at its next check, counts, calls the fallback once.

Needs root, iproute2 and the compiled BPF objects (skips locally without them, fails in CI)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, build_path
from relay.fastpath_watchdog import FilterWatchdog, missing_filters
from tests.bpf.netns import ifindex, veth_netns
from tests.support import REPO, have_root, have_tool, require


@pytest.fixture
def ns() -> Iterator[str]:
    require(have_root(), "root (netns, TC)")
    require(have_tool("ip") and have_tool("tc"), "iproute2 (ip, tc)")
    with veth_netns(f"moqwd{os.getpid() % 10000}{uuid.uuid4().hex[:6]}") as name:
        yield name


@pytest.fixture
def prog_fds(ns: str) -> Iterator[tuple[int, int]]:
    require(have_tool("clang"), "clang (run `make setup`)")
    out = subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with BpfObject.load(build_path("floor")) as a, BpfObject.load(build_path("selftest")) as b:
        yield a.programs["floor_clone"].fd, b.programs["selftest"].fd


@pytest.fixture
def filters(ns: str, prog_fds: tuple[int, int]) -> Iterator[list[TcFilter]]:
    idx = ifindex(ns, "va")
    fs = [
        TcFilter(prog_fds[0], idx, Direction.INGRESS, netns=ns, prio=2, name="floor_clone").attach(),
        TcFilter(prog_fds[0], idx, Direction.EGRESS, netns=ns, prio=1, name="floor_clone").attach(),
    ]
    try:
        yield fs
    finally:
        for f in fs:
            f.detach()


def tc(ns: str, *args: str) -> None:
    subprocess.run(["tc", "-n", ns, *args], check=True, capture_output=True, text=True)


def test_all_attached_is_quiet(filters: list[TcFilter]) -> None:
    lost: list[list[TcFilter]] = []
    wd = FilterWatchdog(filters, on_lost=lost.append)
    assert all(wd.check() for _ in range(3))
    assert lost == [] and wd.counters()["watchdog_checks"] == 3 and wd.counters()["filters_lost"] == 0


def test_filter_deleted_by_someone_else_falls_back_once(ns: str, filters: list[TcFilter]) -> None:
    lost: list[list[TcFilter]] = []
    wd = FilterWatchdog(filters, on_lost=lost.append)
    assert wd.check()
    tc(ns, "filter", "del", "dev", "va", "egress", "prio", "1")
    assert not wd.check()
    assert lost == [[filters[1]]], "on_lost gets exactly the missing filter, once"
    assert not wd.check() and len(lost) == 1
    c = wd.counters()
    assert c["filters_lost"] == 1 and c["fallen_back"] is True and c["lost"] == ["floor_clone egress prio 1"]
    assert filters[1].attached is False  # our later detach must not try to delete a filter that is not ours


def test_whole_clsact_removed_counts_both(ns: str, filters: list[TcFilter]) -> None:
    tc(ns, "qdisc", "del", "dev", "va", "clsact")
    assert missing_filters(filters) == filters
    wd = FilterWatchdog(filters)
    assert not wd.check() and wd.filters_lost == 2


def test_filter_replaced_by_another_program_is_gone(
    ns: str, prog_fds: tuple[int, int], filters: list[TcFilter]
) -> None:
    TcFilter(prog_fds[1], filters[0].ifindex, Direction.INGRESS, netns=ns, prio=2, name="selftest").attach()
    assert missing_filters(filters) == [filters[0]]


def test_device_gone(ns: str, filters: list[TcFilter]) -> None:
    subprocess.run(["ip", "-n", ns, "link", "del", "va"], check=True)
    wd = FilterWatchdog(filters)
    assert not wd.check() and wd.filters_lost == 2
