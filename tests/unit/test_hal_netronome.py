"""hal/netronome without a card: port discovery from sysfs, placement plans from offload-check, the offload flags,
the device-map requests, `relay --hal netronome --plan`, and the refusal to start without lab plaintext."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpf.loader import BUILD_DIR
from bpf.offload_check import MapInfo, Profile, ProgramReport, Reason
from hal.base import HalError
from hal.netronome import NetronomeFactory, NetronomeHal
from hal.netronome.offload import find_nfp_ports, nfp_lines, port_driver
from hal.netronome.plan import (
    TCA_CLS_FLAGS_SKIP_HW,
    TCA_CLS_FLAGS_SKIP_SW,
    XDP_FLAGS_HW_MODE,
    MapRequest,
    ProgramSpec,
    make_plan,
    place,
)
from relay.cli import main
from tests.support import require

OBJECTS = ("classifier", "server_ingress", "client_egress")


@pytest.fixture
def built() -> Path:
    require(all((BUILD_DIR / f"{o}.o").exists() for o in OBJECTS), "compiled BPF objects (run `make -C bpf`)")
    return BUILD_DIR


def fake_sysfs(root: Path, ports: dict[str, str | None]) -> Path:
    """/sys/class/net/<if>/device/driver -> .../drivers/<driver> (None: a virtual device without `device`)."""
    for ifname, driver in ports.items():
        (root / "net" / ifname).mkdir(parents=True)
        if driver is not None:
            (root / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (root / "net" / ifname / "device").mkdir()
            os.symlink(root / "drivers" / driver, root / "net" / ifname / "device" / "driver")
    return root / "net"


def test_nfp_ports_are_found_by_driver(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {"enp1s0np0": "nfp", "enp1s0np1": "nfp", "eth0": "e1000e", "veth0": None})
    assert find_nfp_ports(sysfs) == ["enp1s0np0", "enp1s0np1"]
    assert port_driver("eth0", sysfs) == "e1000e"
    assert port_driver("veth0", sysfs) is None
    assert find_nfp_ports(tmp_path / "missing") == []


def test_plan_offloads_the_classifier_in_xdp_hw_mode_with_device_maps(built: Path) -> None:
    plan = make_plan("enp1s0np0", 7, "nfp", built)
    assert plan.is_nfp
    by = {p.program: p for p in plan.placements}
    c = by["classifier"]
    assert (c.where, c.mode, c.hook) == ("nic", "xdp-hw", "xdp")
    assert c.xdp_flags == XDP_FLAGS_HW_MODE and c.tc_flags_gen == 0 and c.prog_ifindex == 7
    assert {m.name for m in c.maps} == {"classifier_cfg", "classifier_conns", "classifier_stats", "track_objects",
                                        "subscribed"}
    assert all(m.map_ifindex == 7 and m.type in ("hash", "array") for m in c.maps)
    assert MapRequest("subscribed", "hash", 16, 4, 8192, 7) in c.maps
    assert [p.program for p in plan.offloaded()] == ["classifier"]


def test_plan_keeps_clone_and_rewrite_in_host_tc_with_offload_check_reasons(built: Path) -> None:
    by = {p.program: p for p in make_plan("enp1s0np0", 7, "nfp", built).placements}
    ingress, egress = by["server_ingress"], by["client_egress"]
    for p in (ingress, egress):
        assert (p.where, p.mode, p.prog_ifindex, p.maps) == ("host", "tc-host", 0, ())
        assert p.tc_flags_gen == TCA_CLS_FLAGS_SKIP_HW and p.xdp_flags == 0
    assert "uses bpf_clone_redirect (helper 13): the NFP cannot clone" in ingress.reasons
    assert any(r.startswith("uses bpf_skb_store_bytes") for r in egress.reasons)
    assert "attached on TC egress: the NFP offloads TC programs on ingress only" in egress.reasons


def report(name: str, section: str, reasons: list[Reason], maps: list[MapInfo] | None = None) -> ProgramReport:
    return ProgramReport(name, section, "tc", None, 10, 10, 0, [], [], [], maps or [], reasons)


def test_a_fitting_tc_ingress_program_is_offloaded_with_skip_sw() -> None:
    nfp = Profile.load("nfp")
    maps = [MapInfo("counts", "array", 4, 8, 4), MapInfo(".rodata", "array", 4, 8, 1)]
    p = place(ProgramSpec("count", "count", "tc-ingress", "test"), report("count", "tc", [], maps), nfp, 3)
    assert (p.where, p.mode) == ("nic", "tc-skip_sw")
    assert p.tc_flags_gen == TCA_CLS_FLAGS_SKIP_SW
    assert p.maps == (MapRequest("counts", "array", 4, 8, 4, 3),)  # internal maps are not device maps


def test_a_fitting_program_on_egress_stays_on_the_host() -> None:
    nfp = Profile.load("nfp")
    p = place(ProgramSpec("count", "count", "tc-egress", "test"), report("count", "tc", []), nfp, 3)
    assert (p.where, p.mode, p.tc_flags_gen) == ("host", "tc-host", TCA_CLS_FLAGS_SKIP_HW)
    assert p.reasons == ("attached on TC egress: the NFP offloads TC programs on ingress only",)


def test_an_xdp_program_that_does_not_fit_stays_in_host_xdp() -> None:
    nfp = Profile.load("nfp")
    why = Reason("helper", "uses bpf_redirect (helper 23): the NFP cannot redirect to another device")
    p = place(ProgramSpec("fwd", "fwd", "xdp", "test"), report("fwd", "xdp", [why]), nfp, 3)
    assert (p.where, p.mode, p.prog_ifindex) == ("host", "xdp-drv", 0)
    assert p.reasons == (why.message,)


def test_plan_text_says_when_the_port_is_not_an_nfp(built: Path) -> None:
    plan = make_plan("veth0", 4, "veth", built)
    text = plan.format()
    assert "veth0 (ifindex 4): NOT an NFP port (driver veth)" in text
    assert "classifier      NIC   xdp-hw" in text
    assert "uses bpf_clone_redirect (helper 13): the NFP cannot clone" in text
    assert "insecure lab plaintext" in text
    assert plan.to_json()["placements"][0]["device_maps"][0]["map_ifindex"] == 4


def test_relay_plan_cli_exits_0_for_any_interface(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hal", "netronome", "--nfp-port", "lo", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "netronome placement plan for lo (ifindex 1): NOT an NFP port (driver none)" in out
    assert "server_ingress  host" in out


def test_relay_plan_cli_unknown_port_is_a_clear_error(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hal", "netronome", "--nfp-port", "nosuchdev0", "--plan"]) == 2
    assert "no network device 'nosuchdev0'" in capsys.readouterr().err


def test_netronome_refuses_to_start_without_lab_plaintext(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HalError, match="the NFP has no QUIC crypto.*--insecure-lab-plaintext"):
        NetronomeHal("lo").start()
    assert main(["--hal", "netronome", "--nfp-port", "lo", "--listen", "127.0.0.1:0"]) == 2
    assert "start with --insecure-lab-plaintext (INSECURE" in capsys.readouterr().err


def test_no_nfp_port_found_says_how_to_pick_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hal.netronome.find_nfp_ports", lambda: [])
    with pytest.raises(HalError, match="no NFP port found.*--nfp-port IFNAME"):
        NetronomeHal(None).resolve_port()


def test_factory_options_and_capabilities() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    NetronomeFactory().configure(parser)
    args = parser.parse_args(["--nfp-port", "enp1s0np0", "--nfp-netns", "lab"])
    hal = NetronomeFactory().create(args)
    assert isinstance(hal, NetronomeHal) and (hal.port, hal.port_netns, hal.lab_plaintext) == ("enp1s0np0", "lab", False)
    caps = hal.capabilities()
    assert caps.hw_bpf_offload and not caps.crypto_offload and hal.key_installer() is None


def test_nfp_verifier_lines_are_picked_verbatim() -> None:
    log = "libbpf: prog 'classifier': BPF program load failed\n[nfp] unsupported function id: 13\nprocessed 12 insns\n"
    assert nfp_lines(log) == ["[nfp] unsupported function id: 13"]
