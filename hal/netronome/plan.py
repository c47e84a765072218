"""Where each BPF program runs on an NFP port, and why: a pure function of offload-check reports (no kernel).

The NFP runs a narrow BPF subset on its own cores (docs/offload-check.md). A program that fits the `nfp` profile
and hooks where the card can run it goes to the NIC: XDP programs in XDP hardware mode, TC ingress programs as
cls_bpf with ``skip_sw``; both are loaded with the device's ifindex (prog_ifindex), and so are their maps
(map_ifindex: the maps live in the card's memory). Everything else runs in host TC with ``skip_hw``, and the
plan carries offload-check's own reasons (e.g. "uses bpf_clone_redirect (helper 13): the NFP cannot clone").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf.offload_check import Profile, ProgramReport, Report, check

# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE = 1, 2, 4, 8
# include/uapi/linux/pkt_cls.h (TCA_BPF_FLAGS_GEN)
TCA_CLS_FLAGS_SKIP_HW, TCA_CLS_FLAGS_SKIP_SW, TCA_CLS_FLAGS_IN_HW, TCA_CLS_FLAGS_NOT_IN_HW = 1, 2, 4, 8
# (TCA_CLS_FLAGS_VERBOSE is flower-only: cls_bpf refuses any flag but SKIP_HW/SKIP_SW with EINVAL)

NFP_TARGET = "nfp"


@dataclass(frozen=True)
class ProgramSpec:
    """One program the relay runs: its compiled object and the hook it needs."""

    program: str
    object: str  # bpf/build/<object>.o
    hook: str  # "xdp", "tc-ingress" or "tc-egress"
    role: str


# The relay's programs: the classifier (written in the NFP subset), then the fan-out programs (docs/fastpath.md).
PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("classifier", "classifier", "xdp", "drop objects of unsubscribed tracks before the host"),
    ProgramSpec("server_ingress", "server_ingress", "tc-ingress", "clone each upstream object per subscriber"),
    ProgramSpec("client_egress", "client_egress", "tc-egress", "rewrite each clone for its subscriber"),
)


@dataclass(frozen=True)
class MapRequest:
    """A map the kernel must create in the device's memory (bpf_map__set_ifindex before load)."""

    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    map_ifindex: int


@dataclass(frozen=True)
class Placement:
    program: str
    object: str
    hook: str
    where: str  # "nic" or "host"
    mode: str  # "xdp-hw", "tc-skip_sw", "tc-host"
    prog_ifindex: int  # 0 = host program
    xdp_flags: int  # netlink IFLA_XDP_FLAGS (XDP placements)
    tc_flags_gen: int  # netlink TCA_BPF_FLAGS_GEN (TC placements)
    reasons: tuple[str, ...]
    maps: tuple[MapRequest, ...] = ()

    @property
    def offloaded(self) -> bool:
        return self.where == "nic"

    def to_json(self) -> dict[str, Any]:
        return {"program": self.program, "object": self.object, "hook": self.hook, "where": self.where,
                "mode": self.mode, "prog_ifindex": self.prog_ifindex, "xdp_flags": self.xdp_flags,
                "tc_flags_gen": self.tc_flags_gen, "reasons": list(self.reasons),
                "device_maps": [m.__dict__ for m in self.maps]}


@dataclass(frozen=True)
class Plan:
    ifname: str
    ifindex: int
    driver: str | None
    placements: tuple[Placement, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_nfp(self) -> bool:
        return self.driver == "nfp"

    def offloaded(self) -> list[Placement]:
        return [p for p in self.placements if p.offloaded]

    def to_json(self) -> dict[str, Any]:
        return {"port": self.ifname, "ifindex": self.ifindex, "driver": self.driver, "is_nfp": self.is_nfp,
                "placements": [p.to_json() for p in self.placements], "notes": list(self.notes)}

    def format(self) -> str:
        """The text `relay --hal netronome --plan` prints."""
        kind = "an NFP port" if self.is_nfp else f"NOT an NFP port (driver {self.driver or 'none'})"
        lines = [f"netronome placement plan for {self.ifname} (ifindex {self.ifindex}): {kind}"]
        for p in self.placements:
            where = "NIC " if p.offloaded else "host"
            lines.append(f"  {p.program:<15} {where}  {p.mode:<11} {p.hook:<10} "
                         f"xdp_flags=0x{p.xdp_flags:x} tc_flags_gen=0x{p.tc_flags_gen:x} prog_ifindex={p.prog_ifindex}")
            lines.extend(f"      - {r}" for r in p.reasons)
            if p.maps:
                names = ", ".join(f"{m.name} ({m.type})" for m in p.maps)
                lines.append(f"      device maps (map_ifindex={p.maps[0].map_ifindex}): {names}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _device_maps(report: ProgramReport, ifindex: int) -> tuple[MapRequest, ...]:
    # internal maps (.rodata, .bss) would be host memory a device program cannot read; the NFP objects have none
    return tuple(MapRequest(m.name, m.type, m.key_size, m.value_size, m.max_entries, ifindex)
                 for m in report.maps if not m.name.startswith("."))


def place(spec: ProgramSpec, report: ProgramReport, profile: Profile, ifindex: int) -> Placement:
    """NIC when offload-check says it fits and the hook is one the card runs; otherwise host TC, with why."""
    reasons = [r.message for r in report.reasons]
    hook_ok = spec.hook == "xdp" or spec.hook == "tc-ingress"
    if spec.hook == "tc-egress":
        reasons.append(f"attached on TC egress: {profile.explain('directions', 'the NFP offloads ingress only')}")
    if not reasons and hook_ok:
        if spec.hook == "xdp":
            return Placement(spec.program, spec.object, spec.hook, "nic", "xdp-hw", ifindex, XDP_FLAGS_HW_MODE, 0,
                             (f"fits {profile.name}: offloaded in XDP hardware mode",), _device_maps(report, ifindex))
        return Placement(spec.program, spec.object, spec.hook, "nic", "tc-skip_sw", ifindex, 0,
                         TCA_CLS_FLAGS_SKIP_SW,
                         (f"fits {profile.name}: offloaded as TC ingress with skip_sw",), _device_maps(report, ifindex))
    if spec.hook == "xdp":
        # An XDP program the card cannot take stays in the driver's (or generic) XDP on the host.
        return Placement(spec.program, spec.object, spec.hook, "host", "xdp-drv", 0, XDP_FLAGS_DRV_MODE, 0,
                         tuple(reasons))
    return Placement(spec.program, spec.object, spec.hook, "host", "tc-host", 0, 0, TCA_CLS_FLAGS_SKIP_HW,
                     tuple(reasons))


def make_plan(ifname: str, ifindex: int, driver: str | None, build_dir: Path,
              programs: tuple[ProgramSpec, ...] = PROGRAMS, target: str = NFP_TARGET) -> Plan:
    """Run offload-check on every program's object and place each one."""
    profile = Profile.load(target)
    placements: list[Placement] = []
    notes: list[str] = []
    for spec in programs:
        report: Report = check(build_dir / f"{spec.object}.o", target)
        prog = next((p for p in report.programs if p.name == spec.program), None)
        if prog is None:
            raise ValueError(f"{spec.object}.o has no program {spec.program!r}")
        placements.append(place(spec, prog, profile, ifindex))
    if driver != "nfp":
        notes.append(f"{ifname} is not an NFP port (driver {driver or 'none'}): the kernel will refuse the "
                     f"offloaded programs; this is the plan an NFP port would get")
    notes.append("the NFP has no QUIC crypto: this backend runs 1-RTT in insecure lab plaintext mode "
                 "(--insecure-lab-plaintext on the relay, `relay pub` and `relay sub`)")
    return Plan(ifname, ifindex, driver, tuple(placements), tuple(notes))
