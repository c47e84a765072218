"""Load, attach and confirm offloaded programs on a device; every kernel refusal becomes one clear error.

The error's message names the program, the device and the step, then quotes the kernel verbatim: the netlink
extended-ack text of a refused attach, and the ``[nfp]`` lines of the verifier log of a refused load (the card's
verifier explains there what it cannot run). ``OffloadError.log`` keeps the whole libbpf/verifier output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETTFILTER, RTM_NEWTFILTER

from bpf.attach import Direction, TcFilter, _bpf_filter, _ipr
from bpf.loader import BpfObject, LoadError
from crypto_offload.nic_io import in_netns
from hal.netronome.plan import (
    TCA_CLS_FLAGS_IN_HW,
    TCA_CLS_FLAGS_SKIP_HW,
    TCA_CLS_FLAGS_SKIP_SW,
    Placement,
)

SYSFS_NET = Path("/sys/class/net")


class OffloadError(RuntimeError):
    """A refused offload; ``str()`` is what the user reads, ``.log`` the whole verifier/libbpf output."""

    def __init__(self, message: str, log: str = "", kernel_text: str = "") -> None:
        super().__init__(message)
        self.log = log
        self.kernel_text = kernel_text


def port_driver(ifname: str, sysfs: Path = SYSFS_NET) -> str | None:
    """The kernel driver behind a netdev (``/sys/class/net/IF/device/driver`` -> .../nfp), None for virtual ones."""
    link = sysfs / ifname / "device" / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def find_nfp_ports(sysfs: Path = SYSFS_NET) -> list[str]:
    """Every netdev whose driver is ``nfp`` (PF and representor netdevs alike), sorted by name."""
    try:
        names = sorted(p.name for p in sysfs.iterdir())
    except OSError:
        return []
    return [n for n in names if port_driver(n, sysfs) == "nfp"]


def nfp_lines(log: str) -> list[str]:
    """The card's own verifier messages (the nfp driver prefixes them with ``[nfp]``)."""
    return [ln for ln in log.splitlines() if "[nfp]" in ln]


def _not_nfp_hint(ifname: str, driver: str | None) -> str:
    if driver == "nfp":
        return ""
    return f" ({ifname} is not an NFP port: driver {driver or 'none'}, and only an offload-capable driver accepts this)"


def _netlink_text(exc: NetlinkError) -> str:
    """The kernel's extended-ack text when it gave one (pyroute2 puts it in the message), else ''."""
    msg = exc.args[1] if len(exc.args) > 1 else ""
    return "" if not msg or msg == os.strerror(exc.code) else str(msg)


@dataclass
class OffloadedProgram:
    """One program loaded for a device and attached with the offload flags; ``close`` undoes both."""

    placement: Placement
    ifname: str
    netns: str | None
    obj: BpfObject
    ifindex: int = 0
    tc: TcFilter | None = None
    xdp_attached: bool = False
    in_hw: bool = False

    def close(self) -> None:
        try:
            if self.tc is not None:
                self.tc.detach()
                self.tc = None
            if self.xdp_attached:
                xdp_set(self.ifindex, -1, self.placement.xdp_flags, self.netns)
                self.xdp_attached = False
        finally:
            self.obj.close()


@dataclass
class Offloader:
    """Does what a plan asks on one device: load with prog_ifindex/map_ifindex, attach with offload flags,
    confirm ``in_hw``. Everything it made is undone by ``close`` (reverse order)."""

    ifname: str
    driver: str | None
    netns: str | None = None
    done: list[OffloadedProgram] = field(default_factory=list)

    def load(self, placement: Placement, path: Path) -> BpfObject:
        with in_netns(self.netns):  # the ifindex is resolved in the caller's namespace
            try:
                return BpfObject.load(path, ifindex=placement.prog_ifindex, log_level=1)
            except LoadError as exc:
                nfp = nfp_lines(exc.log)
                quoted = ("; the card's verifier said:\n  " + "\n  ".join(nfp)) if nfp else ""
                raise OffloadError(
                    f"offload of {placement.program} to {self.ifname} (prog_ifindex/map_ifindex "
                    f"{placement.prog_ifindex}) refused by the kernel at load: {exc}"
                    f"{_not_nfp_hint(self.ifname, self.driver)}{quoted}", exc.log, "\n".join(nfp)) from None

    def attach(self, placement: Placement, obj: BpfObject) -> OffloadedProgram:
        prog = obj.programs[placement.program]
        off = OffloadedProgram(placement, self.ifname, self.netns, obj, placement.prog_ifindex or self.ifindex())
        try:
            if placement.mode in ("xdp-hw", "xdp-drv"):
                xdp_set(off.ifindex, prog.fd, placement.xdp_flags, self.netns)
                off.xdp_attached = True
                off.in_hw = xdp_hw_prog_id(off.ifindex, self.netns) is not None
            elif placement.mode == "tc-skip_sw":
                gen = placement.tc_flags_gen
                off.tc = TcFilter(prog.fd, placement.prog_ifindex, Direction.INGRESS, netns=self.netns,
                                  name=placement.program, skip_sw=bool(gen & TCA_CLS_FLAGS_SKIP_SW),
                                  skip_hw=bool(gen & TCA_CLS_FLAGS_SKIP_HW))
                off.tc.attach()
                off.in_hw = tc_in_hw(placement.prog_ifindex, Direction.INGRESS, self.netns, placement.program)
            else:
                raise ValueError(f"{placement.program}: mode {placement.mode} is attached by the fast path, not here")
        except NetlinkError as exc:
            off.close()
            text = _netlink_text(exc)
            said = f"; the kernel said: {text}" if text else "; the kernel gave no extended-ack text"
            raise OffloadError(
                f"{'offloaded ' if placement.offloaded else ''}attach of {placement.program} to {self.ifname} "
                f"({placement.mode}) refused: "
                f"{os.strerror(exc.code)} (errno {exc.code}){said}{_not_nfp_hint(self.ifname, self.driver)}",
                kernel_text=text) from None
        if placement.offloaded and not off.in_hw:
            off.close()
            raise OffloadError(f"{placement.program} attached on {self.ifname} but the kernel does not report it "
                               f"in hardware (in_hw not set): refusing to run it in software")
        self.done.append(off)
        return off

    def ifindex(self) -> int:
        with _ipr(self.netns) as ipr:
            found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise OffloadError(f"no network device {self.ifname!r}")
        return int(found[0])

    def close(self) -> None:
        while self.done:
            self.done.pop().close()


def xdp_set(ifindex: int, fd: int, flags: int, netns: str | None = None) -> None:
    """IFLA_XDP on a link (fd -1 detaches the program of that mode); NetlinkError carries the extended ack."""
    with _ipr(netns) as ipr:
        ipr.link("set", index=ifindex, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})


def xdp_hw_prog_id(ifindex: int, netns: str | None = None) -> int | None:
    """The id of the program the device runs in XDP hardware mode, from a link dump (None = none in hardware)."""
    with _ipr(netns) as ipr:
        links = ipr.get_links(ifindex)
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    if not xdp:
        return None
    hw = xdp.get_attr("IFLA_XDP_HW_PROG_ID")
    if hw:
        return int(hw)
    if xdp.get_attr("IFLA_XDP_ATTACHED") in ("hw", 3):
        return int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0) or None
    return None


def tc_filter_flags(ifindex: int, direction: Direction, netns: str | None = None) -> dict[str, int]:
    """TCA_BPF_FLAGS_GEN of every cls_bpf filter on a hook, by filter name, from a netlink dump (RTM_GETTFILTER).

    pyroute2's own cls_bpf attribute table stops before TCA_BPF_FLAGS_GEN, so the dump is parsed with
    bpf.attach's complete message class."""
    out: dict[str, int] = {}
    with _ipr(netns) as ipr:
        marshal = ipr.marshal
        old = marshal.msg_map.get(RTM_NEWTFILTER)
        marshal.msg_map[RTM_NEWTFILTER] = _bpf_filter
        try:
            msg = _bpf_filter()
            msg["family"], msg["index"], msg["parent"] = 0, ifindex, direction.parent
            for reply in ipr.nlm_request(msg, msg_type=RTM_GETTFILTER, msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
                if not reply["handle"] or reply.get_attr("TCA_KIND") != "bpf":
                    continue
                opts = reply.get_attr("TCA_OPTIONS")
                if opts is None:
                    continue
                out[str(opts.get_attr("TCA_BPF_NAME"))] = int(opts.get_attr("TCA_BPF_FLAGS_GEN") or 0)
        finally:
            marshal.msg_map[RTM_NEWTFILTER] = old
    return out


def tc_in_hw(ifindex: int, direction: Direction, netns: str | None, name: str) -> bool:
    return bool(tc_filter_flags(ifindex, direction, netns).get(name, 0) & TCA_CLS_FLAGS_IN_HW)
