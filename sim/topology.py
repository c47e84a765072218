"""The simulated network as one object: bring it up, run commands in its nodes, switch NIC modes, tear it down.

    relay host            simulated NIC                switch              nodes
  <p>-relay: eth0 ==== host0 <p>-nic wire0 ==== nic0 <p>-sw br0 pub0 ==== eth0 <p>-pub0
                        (passthrough or engine)           sub0 ==== eth0 <p>-sub0 ...

Every step is recorded in the prefix's state file before it is taken, so `down()` (and `relay sim down` after a
crash) removes exactly what `up()` made. The object is a context manager that tears down on any exit, including
exceptions and Ctrl-C.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import NetNS

from sim import netns, nic, shaping
from sim.addressing import MAX_PUBLISHERS, MAX_SUBSCRIBERS, Role, address_for
from sim.links import LinkShape
from sim.nic import NicMode
from sim.state import (
    NodeState,
    PortState,
    ProcessState,
    SimState,
    SimStateError,
    StateStore,
    check_prefix,
    state_dir,
)

Progress = Callable[[str], None]
NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02  # IPv6 address usable at once, no duplicate-address-detection wait
NODE_IF = "eth0"
SERVICE_NAMES = {"nic": "nic", "sw": "sw", "switch": "sw"}


def gai_conf(prefer_ipv6: bool) -> str:
    """Address-selection table (RFC 6724 section 2.1) that makes `relay` resolve to the chosen family first.

    glibc ranks the fd00::/8 ULA above IPv4 by default; the relay address of the sim is IPv4 unless --ipv6.
    """
    v4 = 10 if prefer_ipv6 else 100
    table = [("::1/128", 50), ("::/0", 40), ("2002::/16", 30), ("::/96", 20), ("::ffff:0:0/96", v4)]
    return "".join(f"precedence {net} {prec}\n" for net, prec in table)


def _quiet(_: str) -> None:
    pass


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SimStateError("the simulated network needs root (namespaces, veths, tc): run as root, e.g. sudo relay sim up")


class Topology:
    """A running simulated network of one prefix."""

    def __init__(self, state: SimState, store: StateStore, progress: Progress = _quiet) -> None:
        self.state = state
        self.store = store
        self.progress = progress
        self._children: list[subprocess.Popen[Any]] = []
        # Only the process that made this object tears down: a forked copy (pyroute2 forks helpers) never does.
        self._owner_pid = os.getpid()

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def up(cls, prefix: str = "moq", publishers: int = 1, subscribers: int = 1,
           links: Mapping[str, LinkShape] | Iterable[tuple[str, LinkShape]] = (), *, prefer_ipv6: bool = False,
           state_root: Path | None = None, progress: Progress = _quiet) -> Topology:
        """Create the namespaces, links, addresses, names and shaping; on any failure remove what was made."""
        _require_root()
        check_prefix(prefix)
        if not 0 <= publishers <= MAX_PUBLISHERS or not 0 <= subscribers <= MAX_SUBSCRIBERS:
            raise SimStateError(f"publishers must be 0..{MAX_PUBLISHERS}, subscribers 0..{MAX_SUBSCRIBERS}")
        shapes = dict(links.items() if isinstance(links, Mapping) else links)
        names = ["relay"] + [f"pub{i}" for i in range(publishers)] + [f"sub{i}" for i in range(subscribers)]
        for name in shapes:
            if name not in names:
                raise SimStateError(f"--link {name}: no such node (this network has {publishers} publisher(s) "
                                    f"and {subscribers} subscriber(s): {', '.join(names)})")
        state = SimState(prefix=prefix, relay_ns=f"{prefix}-relay", nic_ns=f"{prefix}-nic",
                         switch_ns=f"{prefix}-sw", prefer_ipv6=prefer_ipv6)
        store = StateStore(state_dir(state_root))
        store.claim(state)
        topo = cls(state, store, progress)
        try:
            topo._build(publishers, subscribers, shapes)
        except BaseException:
            if os.getpid() != topo._owner_pid:
                raise
            progress(f"sim {prefix}: set-up failed, removing what was created")
            topo.down()
            raise
        return topo

    @classmethod
    def attach(cls, prefix: str = "moq", *, state_root: Path | None = None,
               progress: Progress = _quiet) -> Topology:
        """The topology of a prefix brought up earlier (by another process, e.g. `relay sim up`)."""
        store = StateStore(state_dir(state_root))
        state = store.load(prefix)
        if state is None:
            raise SimStateError(f"no simulated network with prefix {prefix!r} (see `relay sim list`; "
                                f"start one with `relay sim up --prefix {prefix}`)")
        return cls(state, store, progress)

    def _save(self) -> None:
        self.store.save(self.state)

    def _new_ns(self, name: str) -> None:
        if netns.exists(name):  # someone else's: never record it, so teardown cannot remove it
            raise SimStateError(f"namespace {name} already exists but is not in any state file: remove it with "
                                f"`ip netns del {name}` or pick another --prefix")
        self.state.namespaces.append(name)
        self._save()
        netns.create(name)

    def _build(self, publishers: int, subscribers: int, shapes: dict[str, LinkShape]) -> None:
        st = self.state
        p = st.prefix
        self.progress(f"sim {p}: creating namespaces")
        node_ns = {"relay": st.relay_ns}
        for ns in (st.relay_ns, st.nic_ns, st.switch_ns):
            self._new_ns(ns)
        for kind, count in (("pub", publishers), ("sub", subscribers)):
            for i in range(count):
                node_ns[f"{kind}{i}"] = f"{p}-{kind}{i}"
                self._new_ns(f"{p}-{kind}{i}")
        # The NIC and the switch carry no addresses: no IPv6 link-local chatter on the wire, nothing answers there.
        for ns in (st.nic_ns, st.switch_ns):
            netns.write_sysctl(ns, {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"})

        handles: dict[str, NetNS] = {}
        try:
            for ns in st.namespaces:
                handles[ns] = NetNS(ns)
                handles[ns].link("set", index=handles[ns].link_lookup(ifname="lo")[0], state="up")
            sw = handles[st.switch_ns]
            sw.link("add", ifname=st.bridge, kind="bridge", br_stp_state=0, br_mcast_snooping=0)
            bridge_idx = sw.link_lookup(ifname=st.bridge)[0]

            self.progress(f"sim {p}: wiring relay -> nic -> switch")
            relay_addr = address_for("relay", 0)
            port = PortState(name="port0", relay_if=NODE_IF, host_if="host0", wire_if="wire0", switch_if="nic0")
            nic_h = handles[st.nic_ns]
            nic_h.link("add", ifname=port.host_if, kind="veth",
                       peer={"ifname": port.relay_if, "net_ns_fd": st.relay_ns, "address": relay_addr.mac})
            nic_h.link("add", ifname=port.wire_if, kind="veth", peer={"ifname": port.switch_if, "net_ns_fd": st.switch_ns})
            st.ports.append(port)
            st.nodes.append(NodeState(name="relay", role="relay", netns=st.relay_ns, ifname=port.relay_if,
                                      ipv4=relay_addr.ipv4, ipv6=relay_addr.ipv6, mac=relay_addr.mac,
                                      switch_if=port.switch_if))
            for ifname in (port.host_if, port.wire_if):
                nic_h.link("set", index=nic_h.link_lookup(ifname=ifname)[0], state="up")

            self.progress(f"sim {p}: wiring {publishers} publisher(s) and {subscribers} subscriber(s) to the switch")
            for name, ns in node_ns.items():
                if name == "relay":
                    continue
                role: Role = "pub" if name.startswith("pub") else "sub"
                addr = address_for(role, int(name[3:]))
                sw.link("add", ifname=name, kind="veth",
                        peer={"ifname": NODE_IF, "net_ns_fd": ns, "address": addr.mac})
                st.nodes.append(NodeState(name=name, role=role, netns=ns, ifname=NODE_IF, ipv4=addr.ipv4,
                                          ipv6=addr.ipv6, mac=addr.mac, switch_if=name))
            for switch_if in [port.switch_if] + [n.switch_if for n in st.nodes if n.role != "relay"]:
                idx = sw.link_lookup(ifname=switch_if)[0]
                sw.link("set", index=idx, master=bridge_idx)
                sw.link("set", index=idx, state="up")
            sw.link("set", index=bridge_idx, state="up")
            self._save()

            self.progress(f"sim {p}: addresses, static neighbours and names")
            relay = st.node("relay")
            for node in st.nodes:
                h = handles[node.netns]
                idx = h.link_lookup(ifname=node.ifname)[0]
                h.addr("add", index=idx, address=node.ipv4, prefixlen=relay_addr.ipv4_prefixlen)
                h.addr("add", index=idx, address=node.ipv6, prefixlen=relay_addr.ipv6_prefixlen, flags=IFA_F_NODAD)
                h.link("set", index=idx, state="up")
                # A wire carries only segmented datagrams: a UDP GSO super-packet (qh3 sends its first flight as one)
                # exists only inside a host. gso_max_segs 1 makes the kernel segment before the frame leaves the node,
                # so the NIC sees what a real NIC would see from the wire.
                netns.check_run(["ip", "-n", node.netns, "link", "set", "dev", node.ifname, "gso_max_segs", "1"])
                # Static neighbours between the relay and every node: loss on a link never stalls ARP/ND.
                peers = [n for n in st.nodes if n.role != "relay"] if node.role == "relay" else [relay]
                for peer in peers:
                    for dst in (peer.ipv4, peer.ipv6):
                        h.neigh("add", dst=dst, lladdr=peer.mac, ifindex=idx, state=NUD_PERMANENT)
        finally:
            for h in handles.values():
                h.close()

        hosts = self._hosts_file()
        for ns in st.namespaces:
            st.etc_dirs.append(ns)
            self._save()
            netns.write_etc_file(ns, "hosts", hosts)
            # `ip netns exec` can only bind a file over one that exists; without /etc/gai.conf, glibc's default
            # order (IPv6 ULA before IPv4) stands.
            if Path("/etc/gai.conf").exists():
                netns.write_etc_file(ns, "gai.conf", gai_conf(st.prefer_ipv6))

        self.progress(f"sim {p}: nic port0 in passthrough mode")
        self._passthrough(st.ports[0], on=True)
        for name, shape in shapes.items():
            if shape.shaped:
                self.progress(f"sim {p}: shaping {name}: {shape.describe()}")
                self.set_link(name, shape)
        self._wait_links_up()
        st.complete = True
        self._save()
        self.progress(f"sim {p}: up ({len(st.namespaces)} namespaces, relay {relay.ipv4} / {relay.ipv6})")

    def _wait_links_up(self, timeout: float = 5.0) -> None:
        """Wait until every interface is operationally up.

        The kernel activates a device's queueing only when its link-watch work sees the carrier, up to a second
        after `ip link set up`; until then a veth silently drops what it is given, so the first packets of a
        test would vanish.
        """
        deadline = time.monotonic() + timeout
        for ns in self.state.namespaces:
            with NetNS(ns) as h:
                while True:
                    down = [link.get("ifname") for link in h.get_links()
                            if link.get("ifname") != "lo" and link.get("operstate") != "UP"]
                    if not down:
                        break
                    if time.monotonic() > deadline:
                        raise SimStateError(f"interfaces {', '.join(down)} in {ns} not up after {timeout:.0f} s")
                    time.sleep(0.02)

    def _hosts_file(self) -> str:
        """/etc/hosts of every node: `relay` (both families), relay4 and relay6 (one each), every node by name."""
        relay = self.state.node("relay")
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{relay.ipv4}\trelay relay4", f"{relay.ipv6}\trelay relay6"]
        for node in self.state.nodes:
            if node.role != "relay":
                lines += [f"{node.ipv4}\t{node.name}", f"{node.ipv6}\t{node.name}"]
        return "\n".join(lines) + "\n"

    # ---- what tests, the HAL and the demo use --------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def publishers(self) -> list[str]:
        return [n.name for n in self.state.nodes if n.role == "pub"]

    @property
    def subscribers(self) -> list[str]:
        return [n.name for n in self.state.nodes if n.role == "sub"]

    @property
    def relay_ipv4(self) -> str:
        return self.state.node("relay").ipv4

    @property
    def relay_ipv6(self) -> str:
        return self.state.node("relay").ipv6

    @property
    def relay_address(self) -> str:
        """The address `relay` resolves to first: IPv6 with prefer_ipv6, else IPv4."""
        return self.relay_ipv6 if self.state.prefer_ipv6 else self.relay_ipv4

    def node(self, name: str) -> NodeState:
        try:
            return self.state.node(name)
        except KeyError:
            raise SimStateError(f"no node {name!r} in sim {self.prefix}: use relay, "
                                f"{', '.join(n.name for n in self.state.nodes if n.role != 'relay')}, nic, sw "
                                f"or a namespace name") from None

    def netns_of(self, name: str) -> str:
        """Namespace of a node: relay, pub0, sub3, nic, sw, or a full namespace name of this prefix."""
        if name in SERVICE_NAMES:
            return f"{self.prefix}-{SERVICE_NAMES[name]}"
        if name in self.state.namespaces:
            return name
        return self.node(name).netns

    def port(self, name: str = "port0") -> PortState:
        for port in self.state.ports:
            if port.name == name:
                return port
        raise SimStateError(f"no NIC port {name!r} (ports: {', '.join(p.name for p in self.state.ports)})")

    def exec(self, node: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in a node; the process is recorded and ended by `down()` if still running."""
        child = netns.popen(self.netns_of(node), argv, **popen_kwargs)
        self._children.append(child)
        start = netns.process_starttime(child.pid)
        # Forget processes that have ended, so the record stays small over a long scenario.
        self.state.processes = [pr for pr in self.state.processes
                                if netns.process_starttime(pr.pid) == pr.starttime]
        if start is not None:
            self.state.processes.append(ProcessState(pid=child.pid, starttime=start, node=node, argv=list(argv)))
            self._save()
        return child

    def run(self, node: str, argv: list[str], timeout: float = 30.0, **run_kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` in a node to completion and capture its output as text."""
        return subprocess.run(netns.exec_argv(self.netns_of(node), argv), capture_output=True, text=True,
                              timeout=timeout, **run_kwargs)

    def set_nic_mode(self, mode: NicMode, port: str = "port0") -> None:
        """Hand a port to the crypto engine (`engine`: passthrough removed first) or back to `passthrough`."""
        if mode not in nic.NIC_MODES:
            raise SimStateError(f"nic mode must be one of {', '.join(nic.NIC_MODES)}, not {mode!r}")
        p = self.port(port)
        if p.nic_mode == mode:
            return
        self._passthrough(p, on=(mode == "passthrough"))
        self.progress(f"sim {self.prefix}: nic {p.name} now {mode}")

    def _passthrough(self, port: PortState, on: bool) -> None:
        ns = self.state.nic_ns
        if on:
            have_clsact = "clsact" in netns.check_run(["tc", "-n", ns, "qdisc", "show", "dev", port.host_if])
            for cmd in nic.passthrough_on_commands(port.host_if, port.wire_if, add_clsact=not have_clsact):
                netns.check_run(netns.tc_argv(ns, cmd))
            port.clsact_added = port.clsact_added or not have_clsact
            port.nic_mode = "passthrough"
        else:
            for cmd in nic.passthrough_off_commands(port.host_if, port.wire_if):
                netns.check_run(netns.tc_argv(ns, cmd))
            if port.clsact_added and not self._other_filters(port):
                for dev in (port.host_if, port.wire_if):
                    netns.check_run(netns.tc_argv(ns, nic.clsact_del_command(dev)))
                port.clsact_added = False
            port.nic_mode = "engine"
        self._save()

    def _other_filters(self, port: PortState) -> bool:
        ns = self.state.nic_ns
        for dev in (port.host_if, port.wire_if):
            for hook in ("ingress", "egress"):
                if netns.check_run(["tc", "-n", ns, "filter", "show", "dev", dev, hook]).strip():
                    return True
        return False

    def set_link(self, name: str, shape: LinkShape | None) -> None:
        """(Re)shape the link of a node (relay, pubK, subK); None removes the shaping."""
        node = self.node(name)
        if node.role == "relay":
            down_side, up_side = (self.state.switch_ns, node.switch_if), (self.state.nic_ns, self.port().wire_if)
        else:
            down_side, up_side = (self.state.switch_ns, node.switch_if), (node.netns, node.ifname)
        old = node.link_shape()
        for (ns, ifname), was, will in ((down_side, old and old.applies_down(), shape and shape.applies_down()),
                                         (up_side, old and old.applies_up(), shape and shape.applies_up())):
            if was:
                for cmd in shaping.clear_commands(ifname):
                    netns.check_run(netns.tc_argv(ns, cmd))
            if will:
                assert shape is not None
                for cmd in shaping.shaping_commands(ifname, shape):
                    netns.check_run(netns.tc_argv(ns, cmd))
        node.shape = None if shape is None or not shape.shaped else {
            "rate_bps": shape.rate_bps, "loss": shape.loss, "direction": shape.direction}
        self._save()

    # ---- teardown ----------------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything this prefix created: processes, namespaces, /etc/netns folders, the state file."""
        if os.getpid() != self._owner_pid:
            return
        on_disk = self.store.load(self.prefix)
        st = self.state
        if on_disk is not None:  # another process may have started children since we loaded the state
            known = {(pr.pid, pr.starttime) for pr in st.processes}
            st.processes += [pr for pr in on_disk.processes if (pr.pid, pr.starttime) not in known]
        teardown_state(st, self.progress)
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
        self.store.remove(self.prefix)
        self.progress(f"sim {self.prefix}: down")

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()


def _owned(state: SimState, name: str) -> bool:
    """Only names under this prefix are ever removed, whatever the state file says."""
    return name.startswith(f"{state.prefix}-") and "/" not in name


def teardown_state(state: SimState, progress: Progress = _quiet) -> None:
    """Remove what a state records; tolerant of things already gone (a half-built or half-removed run)."""
    ours = [ns for ns in state.namespaces if _owned(state, ns)]
    pids = [pr.pid for pr in state.processes if netns.process_starttime(pr.pid) == pr.starttime]
    for ns in ours:
        pids += [pid for pid in netns.pids_in(ns) if pid not in pids and pid != os.getpid()]
    if pids:
        progress(f"sim {state.prefix}: ending {len(pids)} process(es)")
        netns.end_processes(pids)
    progress(f"sim {state.prefix}: removing {len(ours)} namespace(s)")
    for ns in reversed(ours):
        netns.remove(ns)
    for ns in state.etc_dirs:
        if _owned(state, ns):
            netns.remove_etc_dir(ns)


def down_prefix(prefix: str, *, state_root: Path | None = None, progress: Progress = _quiet) -> None:
    """`relay sim down`: tear down a prefix from its state file alone (also after a crash)."""
    check_prefix(prefix)
    if StateStore(state_dir(state_root)).load(prefix) is None:
        strays = [ns for ns in netns.list_names() if ns.startswith(f"{prefix}-")]
        hint = f"; namespaces named like it exist but were not made by `relay sim up`: {', '.join(strays)} " \
               f"(remove them with `ip netns del NAME` if they are yours)" if strays else ""
        raise SimStateError(f"no simulated network with prefix {prefix!r} (see `relay sim list`){hint}")
    _require_root()
    Topology.attach(prefix, state_root=state_root, progress=progress).down()


def list_prefixes(state_root: Path | None = None) -> list[SimState]:
    store = StateStore(state_dir(state_root))
    states = []
    for prefix in store.prefixes():
        state = store.load(prefix)
        if state is not None:
            states.append(state)
    return states
