"""hal/netronome's real offload calls against a veth (no NFP here): the kernel refuses each one, and each refusal
reaches the user as one clear message quoting the kernel; nothing is left attached afterwards. The in_hw check
reads TCA_BPF_FLAGS_GEN from a real netlink filter dump."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.attach import Direction, TcFilter, list_filters
from bpf.loader import BpfObject, build_path
from crypto_offload.nic_io import in_netns
from hal.base import HalError
from hal.netronome import NetronomeHal
from hal.netronome.offload import Offloader, OffloadError, tc_filter_flags, tc_in_hw, xdp_hw_prog_id, xdp_set
from hal.netronome.plan import (
    TCA_CLS_FLAGS_NOT_IN_HW,
    TCA_CLS_FLAGS_SKIP_HW,
    TCA_CLS_FLAGS_SKIP_SW,
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_SKB_MODE,
    Placement,
    make_plan,
)
from tests.bpf.netns import ifindex, veth_netns
from tests.support import REPO, have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.bpf]


@pytest.fixture
def ns(run_prefix: str, bpf_build: Path) -> Iterator[str]:
    require(have_tool("ip") and have_tool("tc"), "iproute2 (ip, tc)")
    with veth_netns(run_prefix) as name:
        yield name


def classifier_placement(ns: str) -> Placement:
    plan = make_plan("va", ifindex(ns, "va"), None, REPO / "bpf" / "build")
    return plan.offloaded()[0]


def test_offloaded_load_is_refused_by_a_veth_with_the_kernel_reason(ns: str) -> None:
    placement = classifier_placement(ns)
    off = Offloader("va", None, ns)
    with pytest.raises(OffloadError) as info:
        off.load(placement, build_path("classifier"))
    msg = str(info.value)
    assert msg.startswith(f"offload of classifier to va (prog_ifindex/map_ifindex {placement.prog_ifindex}) "
                          "refused by the kernel at load: classifier.o: load failed (Invalid argument)")
    # the kernel refuses to create the first device map on a device that does not offload (map_ifindex)
    assert "map 'classifier_cfg': failed to create: Invalid argument(-22)" in msg
    assert "(va is not an NFP port: driver none, and only an offload-capable driver accepts this)" in msg
    assert "classifier_cfg" in info.value.log


def test_xdp_hardware_mode_attach_is_refused_and_leaves_nothing(ns: str) -> None:
    placement = classifier_placement(ns)
    off = Offloader("va", None, ns)
    with in_netns(ns):
        obj = BpfObject.load(build_path("classifier"))  # a host program: the veth cannot run it "in hardware"
    try:
        with pytest.raises(OffloadError) as info:
            off.attach(placement, obj)
    finally:
        obj.close()
    assert str(info.value).startswith("offloaded attach of classifier to va (xdp-hw) refused: Invalid argument "
                                      "(errno 22); the kernel gave no extended-ack text")
    assert xdp_hw_prog_id(placement.prog_ifindex, ns) is None
    assert "xdp" not in subprocess.run(["ip", "-n", ns, "link", "show", "va"], capture_output=True, text=True).stdout
    assert off.done == []


def test_tc_skip_sw_attach_is_refused_and_leaves_no_clsact(ns: str) -> None:
    idx = ifindex(ns, "va")
    placement = Placement("selftest", "selftest", "tc-ingress", "nic", "tc-skip_sw", idx, 0,
                          TCA_CLS_FLAGS_SKIP_SW, ("test",))
    off = Offloader("va", None, ns)
    with BpfObject.load(build_path("selftest")) as obj, pytest.raises(OffloadError) as info:
        off.attach(placement, obj)
    assert str(info.value).startswith("offloaded attach of selftest to va (tc-skip_sw) refused: Operation not "
                                      "supported (errno 95)")
    assert "va is not an NFP port" in str(info.value)
    assert "clsact" not in subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", "va"], capture_output=True,
                                          text=True).stdout


def test_in_hw_is_read_from_the_filter_dump(ns: str) -> None:
    idx = ifindex(ns, "va")
    with BpfObject.load(build_path("selftest")) as obj, \
            TcFilter(obj.programs["selftest"].fd, idx, Direction.INGRESS, netns=ns, name="hostprog", skip_hw=True):
        flags = tc_filter_flags(idx, Direction.INGRESS, ns)
        assert flags == {"hostprog": TCA_CLS_FLAGS_SKIP_HW | TCA_CLS_FLAGS_NOT_IN_HW}
        assert not tc_in_hw(idx, Direction.INGRESS, ns, "hostprog")
        assert tc_filter_flags(idx, Direction.EGRESS, ns) == {}
    assert list_filters(idx, Direction.INGRESS, ns) == []


def test_hal_start_turns_the_refusal_into_a_hal_error_and_cleans_up(ns: str) -> None:
    hal = NetronomeHal("va", ns, lab_plaintext=True)
    with pytest.raises(HalError, match=r"offload of classifier to va .* refused by the kernel at load"):
        hal.start()
    hal.teardown()
    assert hal.offloader is None
    assert "xdp" not in subprocess.run(["ip", "-n", ns, "link", "show", "va"], capture_output=True, text=True).stdout


def test_relay_command_reports_the_kernel_refusal(ns: str) -> None:
    out = subprocess.run([sys.executable, "-m", "relay.cli", "--hal", "netronome", "--nfp-port", "va", "--nfp-netns",
                          ns, "--insecure-lab-plaintext", "--listen", "127.0.0.1:0"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out
    assert "INSECURE LAB PLAINTEXT MODE" in out.stderr
    assert "netronome: WARNING: va is not an NFP port" in out.stdout
    assert "relay: offload of classifier to va" in out.stderr
    assert "map 'classifier_cfg': failed to create: Invalid argument(-22)" in out.stderr


def test_extended_ack_text_is_passed_verbatim(ns: str) -> None:
    """A refusal that comes *with* extended-ack text reaches the user as is: the plan's host-XDP fallback
    (driver mode) on a device where generic XDP is already active."""
    placement = classifier_placement(ns)
    host = Placement(placement.program, placement.object, placement.hook, "host", "xdp-drv", 0, XDP_FLAGS_DRV_MODE,
                     0, ("test",))
    off = Offloader("va", None, ns)
    with in_netns(ns):
        obj = BpfObject.load(build_path("classifier"))
    try:
        xdp_set(placement.prog_ifindex, obj.programs["classifier"].fd, XDP_FLAGS_SKB_MODE, ns)
        try:
            with pytest.raises(OffloadError) as info:
                off.attach(host, obj)
        finally:
            xdp_set(placement.prog_ifindex, -1, XDP_FLAGS_SKB_MODE, ns)
    finally:
        obj.close()
    assert "refused: File exists (errno 17); the kernel said: Native and generic XDP can't be active at the same " \
           "time" in str(info.value)
    assert info.value.kernel_text == "Native and generic XDP can't be active at the same time"
