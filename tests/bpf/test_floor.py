"""floor.bpf.c: one test run clones the packet to every configured device; the original passes up."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.loader import BpfObject, build_path
from bpf.structs import FloorConfig
from bpf.testrun import TC_ACT_OK
from tests.bpf.netns import ifindex, in_netns, ip, veth_netns
from tests.bpf.packets import Moq

pytestmark = [pytest.mark.root, pytest.mark.bpf]


@pytest.fixture
def ns(run_prefix: str) -> Iterator[str]:
    with veth_netns(run_prefix) as name:
        ip("-n", name, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
        for dev in ("vc", "vd"):
            ip("-n", name, "link", "set", dev, "up")
        yield name


def tx_packets(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", dev], check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout)[0]["stats64"]["tx"]["packets"])


def test_clones_to_every_target_and_counts(bpf_build: Path, ns: str) -> None:
    cfg = FloorConfig(count=3)
    targets = [ifindex(ns, "va"), ifindex(ns, "vc"), 9999]  # 9999 does not exist: counted as an error
    cfg.ifindex[:3] = targets
    before = {d: tx_packets(ns, d) for d in ("va", "vc")}
    pkt = Moq().build()
    with BpfObject.load(build_path("floor"), rodata={"floor_cfg": cfg}) as obj:
        res = in_netns(ns, lambda: obj.programs["floor_clone"].test_run(pkt, repeat=5))
        assert res.retval == TC_ACT_OK and res.data == pkt
        assert obj.maps["floor_stats"].sum_percpu(0) == 10  # 5 runs x 2 existing devices
        assert obj.maps["floor_stats"].sum_percpu(1) == 5
    assert {d: tx_packets(ns, d) - before[d] for d in before} == {"va": 5, "vc": 5}
