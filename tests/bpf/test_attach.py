"""bpf/attach.py in a throw-away namespace: clsact created only when absent and removed only by its creator,
direct-action filters on ingress/egress, replace, skip_sw refused by a device without offload."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from bpf.attach import Direction, TcFilter, list_filters
from bpf.loader import BpfObject, build_path
from tests.bpf.netns import ifindex, veth_netns
from tests.support import have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.bpf]


@pytest.fixture
def ns(run_prefix: str) -> Iterator[str]:
    require(have_tool("ip") and have_tool("tc"), "iproute2 (ip, tc)")
    with veth_netns(run_prefix) as name:
        yield name


@pytest.fixture
def progs(bpf_build: Path) -> Iterator[tuple[int, int]]:
    with BpfObject.load(build_path("floor")) as a, BpfObject.load(build_path("selftest")) as b:
        yield a.programs["floor_clone"].fd, b.programs["selftest"].fd


def tc(ns: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def test_attach_ingress_and_detach_removes_our_clsact(ns: str, progs: tuple[int, int]) -> None:
    f = TcFilter.by_name(progs[0], "va", netns=ns, name="floor")
    with f:
        assert f.created_clsact
        out = tc(ns, "filter", "show", "dev", "va", "ingress")
        assert "floor" in out and "direct-action" in out and "name floor_clone" in out
        assert list_filters(f.ifindex, Direction.INGRESS, ns) == [{"kind": "bpf", "prio": 1, "handle": 1}]
        assert list_filters(f.ifindex, Direction.EGRESS, ns) == []
    assert "clsact" not in tc(ns, "qdisc", "show", "dev", "va")


def test_existing_clsact_is_left_alone(ns: str, progs: tuple[int, int]) -> None:
    tc(ns, "qdisc", "add", "dev", "va", "clsact")
    with TcFilter(progs[0], ifindex(ns, "va"), Direction.EGRESS, netns=ns) as f:
        assert not f.created_clsact
        assert "floor_clone" in tc(ns, "filter", "show", "dev", "va", "egress")
    assert tc(ns, "filter", "show", "dev", "va", "egress") == ""
    assert "clsact" in tc(ns, "qdisc", "show", "dev", "va")


def test_creator_keeps_clsact_while_other_filters_remain(ns: str, progs: tuple[int, int]) -> None:
    idx = ifindex(ns, "va")
    first = TcFilter(progs[0], idx, Direction.INGRESS, netns=ns).attach()
    second = TcFilter(progs[1], idx, Direction.EGRESS, netns=ns).attach()
    assert first.created_clsact and not second.created_clsact
    second.detach()
    assert "clsact" in tc(ns, "qdisc", "show", "dev", "va")
    first.detach()
    assert "clsact" not in tc(ns, "qdisc", "show", "dev", "va")
    first.detach()  # idempotent


def test_replace_swaps_the_program(ns: str, progs: tuple[int, int]) -> None:
    idx = ifindex(ns, "va")
    with TcFilter(progs[0], idx, netns=ns):
        TcFilter(progs[1], idx, netns=ns).attach()  # same prio/handle: replaces
        out = tc(ns, "filter", "show", "dev", "va", "ingress")
        assert "name selftest" in out and "floor_clone" not in out
        assert len(list_filters(idx, Direction.INGRESS, ns)) == 1
        with pytest.raises(NetlinkError):
            TcFilter(progs[0], idx, netns=ns, replace=False).attach()  # exclusive create refuses


def test_skip_sw_on_a_device_without_offload_fails_cleanly(ns: str, progs: tuple[int, int]) -> None:
    with pytest.raises(NetlinkError) as exc:
        TcFilter.by_name(progs[0], "va", netns=ns, skip_sw=True).attach()
    assert exc.value.code == 95  # EOPNOTSUPP: veth cannot run BPF in hardware
    assert "clsact" not in tc(ns, "qdisc", "show", "dev", "va")


def test_unknown_device(ns: str, progs: tuple[int, int]) -> None:
    with pytest.raises(LookupError):
        TcFilter.by_name(progs[0], "nope0", netns=ns)
