"""`--hal netronome`: the relay on a Netronome/Corigine NFP SmartNIC port.

The NFP runs a narrow BPF subset on its own cores and has no QUIC crypto. So this backend (1) finds NFP ports
(driver ``nfp`` in sysfs) or takes ``--nfp-port IFNAME``, (2) plans where each program runs from offload-check's
verdicts (`plan.py`: the classifier in XDP hardware mode, the clone/rewrite programs in host TC, with reasons),
(3) loads the offloaded programs and their maps for the device (prog_ifindex / map_ifindex), attaches them with
the offload flags and confirms ``in_hw`` from a netlink dump (`offload.py`; the kernel's refusal reaches the user
verbatim), and (4) refuses to start unless the relay runs 1-RTT in the explicit, insecure lab plaintext mode
(crypto_offload/plaintext.py), which `relay pub` and `relay sub` must enable too.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from bpf.attach import _ipr
from bpf.loader import BUILD_DIR
from crypto_offload import plaintext
from crypto_offload.nic_io import in_netns
from hal.base import Hal, HalCapabilities, HalError, Port
from hal.netronome.offload import Offloader, OffloadError, find_nfp_ports, port_driver
from hal.netronome.plan import Plan, make_plan

__all__ = ["NetronomeFactory", "NetronomeHal"]


class NetronomeHal:
    name = "netronome"

    def __init__(self, port: str | None, netns: str | None = None, lab_plaintext: bool = False,
                 build_dir: Path = BUILD_DIR) -> None:
        self.port = port
        self.port_netns = netns
        self.lab_plaintext = lab_plaintext
        self.build_dir = build_dir
        self.offloader: Offloader | None = None
        self._plan: Plan | None = None

    # --- planning (no root, no card) -------------------------------------------------------------------------

    def resolve_port(self) -> str:
        """--nfp-port, else the first NFP port sysfs shows; HalError says how to pick one."""
        if self.port:
            return self.port
        ports = find_nfp_ports()
        if not ports:
            raise HalError("no NFP port found (no /sys/class/net/*/device/driver is nfp): give --nfp-port IFNAME")
        return ports[0]

    def plan(self) -> Plan:
        if self._plan is None:
            ifname = self.resolve_port()
            with in_netns(self.port_netns):
                driver = port_driver(ifname)
                ifindex = _ifindex(ifname, self.port_netns)
            try:
                self._plan = make_plan(ifname, ifindex, driver, self.build_dir)
            except (OSError, ValueError) as exc:
                raise HalError(f"cannot plan: {exc} (run `make -C bpf`)") from None
        return self._plan

    def plan_text(self) -> str:
        return self.plan().format()

    # --- Hal -------------------------------------------------------------------------------------------------

    def capabilities(self) -> HalCapabilities:
        return HalCapabilities(crypto_offload=False, tc_hooks=True, hw_bpf_offload=True,
                               notes=("NFP: BPF offload of the classifier, no QUIC crypto (lab plaintext mode)",))

    def start(self) -> None:
        if not self.lab_plaintext:
            raise HalError(f"--hal netronome: the NFP has no QUIC crypto, so this backend runs 1-RTT unencrypted: "
                           f"start with {plaintext.OPTION} (INSECURE, lab only; relay pub/sub need it too), "
                           f"or use --plan to see the placement")
        plan = self.plan()
        if not plan.is_nfp:
            print(f"netronome: WARNING: {plan.ifname} is not an NFP port (driver {plan.driver or 'none'}); "
                  f"trying the offload anyway, the kernel will answer", flush=True)
        self.offloader = Offloader(plan.ifname, plan.driver, self.port_netns)
        try:
            for placement in plan.offloaded():
                obj = self.offloader.load(placement, self.build_dir / f"{placement.object}.o")
                try:
                    self.offloader.attach(placement, obj)
                except BaseException:
                    obj.close()
                    raise
                print(f"netronome: {placement.program} offloaded to {plan.ifname} ({placement.mode}, in_hw)",
                      flush=True)
        except OffloadError as exc:
            self.teardown()
            raise HalError(str(exc)) from None
        except BaseException:
            self.teardown()
            raise

    def ports(self) -> list[Port]:
        return [Port("nfp0", self._plan.ifname, self.port_netns)] if self._plan else []

    def netns(self) -> str | None:
        return None  # the relay serves from its own namespace; the port's only carries the programs

    def default_listen(self) -> str | None:
        return None

    def tls_names(self) -> list[str]:
        return []

    def usage_hint(self, url: str) -> str:
        return (f"clients need {plaintext.OPTION} too, e.g. relay sub --url {url} --ca CA {plaintext.OPTION} "
                f"--namespace live/cam1 --track video")

    def key_installer(self) -> Any | None:
        return None

    def stats(self) -> dict[str, Any]:
        if self.offloader is None:
            return {}
        return {"offloaded": [o.placement.program for o in self.offloader.done]}

    def teardown(self) -> None:
        if self.offloader is not None:
            with contextlib.suppress(OSError, NetlinkError):
                self.offloader.close()
            self.offloader = None


def _ifindex(ifname: str, netns: str | None) -> int:
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise HalError(f"no network device {ifname!r}" + (f" in namespace {netns}" if netns else ""))
    return int(found[0])


class NetronomeFactory:
    name = "netronome"
    summary = "Netronome/Corigine NFP: classifier offloaded to the card, 1-RTT in INSECURE lab plaintext mode"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("Netronome/Corigine NFP (--hal netronome; needs --insecure-lab-plaintext)")
        g.add_argument("--nfp-port", metavar="IFNAME", default=None,
                       help="the NFP port to offload to (default: the first netdev whose driver is nfp); "
                            "--plan accepts any interface and says when it is not an NFP")
        g.add_argument("--nfp-netns", metavar="NS", default=None,
                       help="network namespace holding the port (default: the relay's own)")

    def create(self, args: argparse.Namespace) -> Hal:
        return NetronomeHal(getattr(args, "nfp_port", None), getattr(args, "nfp_netns", None),
                            bool(getattr(args, "insecure_lab_plaintext", False)))
