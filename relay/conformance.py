"""The HAL conformance suite: does a NIC backend protect, key and hook packets the way the relay relies on?

`relay conformance --hal NAME` (relay/conformance_cli.py) creates the backend through its `moq_relay.hal` factory,
starts it, runs the cases below against its public surfaces (key_installer(), ports(), netns(), capabilities(),
stats(), teardown()) and real packets, and tears it down. Every expected byte comes from crypto_offload's RFC 9001
code (protection.py, keys.py, pn.py; checked against the RFC's appendix A vectors), never from the backend.

Packets cross the NIC between two UDP sockets: one on the relay side of a port (the backend's plaintext side) and
one on a peer beyond the NIC (the wire). A backend names that peer through the optional `conformance_wire()` hook
(returns a `WirePath`); for the `sim` backend, which has no such hook yet, the suite takes a publisher node of the
simulated network. A backend without a wire peer gets the data-path cases reported as "not applicable".

Drops are observed without timing: after a packet that must not arrive, the suite sends a sentinel datagram that
every NIC forwards untouched (first byte without the QUIC fixed bit, RFC 9000 17.3.1); whatever arrives before the
sentinel is what the NIC let through. The suite is sequential request/response, so it uses blocking sockets with
generous timeouts rather than an event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crypto_offload.api import (
    CipherSuite,
    Counters,
    DecryptFailurePolicy,
    Direction,
    FlowKey,
    KeyInstall,
    KeyInstallError,
    Rekey,
)
from crypto_offload.keys import derive_traffic_keys, next_traffic_secret
from crypto_offload.nic_io import in_netns
from crypto_offload.pn import truncate_packet_number
from crypto_offload.protection import (
    SHORT_HP_MASK,
    TAG_SIZE,
    HeaderProtection,
    PayloadProtection,
    protect,
)
from hal.base import Hal, HalCapabilities, HalFactory

SCHEMA = "moq-relay.conformance/1"
UDP_PORT = 44330  # the suite's own port on both sides of the NIC
ZERO_TAG = bytes(TAG_SIZE)
CID_LENGTH = 8
MARKER = b"CONFORMANCE-PLAINTEXT-MARKER "  # must never be seen on the wire
FILTER_PRIO = 0xC0DE  # our TC filters' priority: never replaces a filter the backend or a relay attached
FILTER_NAME = "conformance"
EXIT_PASS, EXIT_FAIL, EXIT_START, EXIT_NOT_APPLICABLE = 0, 1, 2, 3


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"  # the case itself crashed (a bug in the backend's API or in the suite): counts as a failure


class CaseFailed(AssertionError):
    """A check of a case did not hold; the message is the detail the user sees."""


class NotApplicable(Exception):  # noqa: N818 - an outcome, not an error
    """The backend cannot run this case (no crypto offload, no TC hooks, no hardware); the message says why."""


def check(ok: bool, detail: str) -> None:
    if not ok:
        raise CaseFailed(detail)


@dataclass(frozen=True)
class Endpoint:
    """One UDP end of the data path: a namespace (None = the caller's own) and an address in it."""

    netns: str | None
    address: str


@dataclass(frozen=True)
class WirePath:
    """Where plaintext enters the NIC (`host`, the relay's side of a port) and a peer beyond it (`wire`)."""

    host: Endpoint
    wire: Endpoint


@dataclass(frozen=True)
class CaseResult:
    case: str
    result: Outcome
    detail: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "result": self.result.value, "detail": self.detail,
                "seconds": round(self.seconds, 3)}


@dataclass
class Report:
    backend: str
    backend_args: list[str]
    capabilities: HalCapabilities | None
    results: list[CaseResult] = field(default_factory=list)
    error: str | None = None  # the backend could not be created or started: no case ran

    def count(self, outcome: Outcome) -> int:
        return sum(r.result is outcome for r in self.results)

    @property
    def exit_status(self) -> int:
        """0 all passed; 1 a case failed or errored; 2 the backend did not start; 3 none failed, some n/a."""
        if self.error is not None:
            return EXIT_START
        if self.count(Outcome.FAIL) or self.count(Outcome.ERROR):
            return EXIT_FAIL
        if self.count(Outcome.NOT_APPLICABLE):
            return EXIT_NOT_APPLICABLE
        return EXIT_PASS

    def to_json(self) -> dict[str, Any]:
        caps = asdict(self.capabilities) if self.capabilities is not None else None
        if caps is not None:
            caps = {k: list(v) if isinstance(v, tuple) else v for k, v in caps.items()}
        return {
            "schema": SCHEMA,
            "backend": self.backend,
            "backend_args": list(self.backend_args),
            "capabilities": caps,
            "error": self.error,
            "cases": [r.to_json() for r in self.results],
            "summary": {o.value: self.count(o) for o in Outcome},
            "exit_status": self.exit_status,
        }


def format_table(report: Report) -> str:
    if report.error is not None:
        return f"backend {report.backend} did not start: {report.error}"
    width = max([len(r.case) for r in report.results] + [4])
    lines = [f"{'case':<{width}}  {'result':<14}  detail"]
    for r in report.results:
        label = r.result.value.replace("_", " ")
        lines.append(f"{r.case:<{width}}  {label:<14}  {r.detail}")
    total = sum(r.seconds for r in report.results)
    lines.append(f"{report.count(Outcome.PASS)} passed, {report.count(Outcome.FAIL)} failed, "
                 f"{report.count(Outcome.ERROR)} errors, {report.count(Outcome.NOT_APPLICABLE)} not applicable "
                 f"(backend {report.backend}, {total:.1f} s)")
    return "\n".join(lines)


# ---- reference packets (RFC 9000 17.3.1 short header, RFC 9001 section 5 protection) ---------------------------


@dataclass
class RefKeys:
    """Our side's view of one flow: the keys of each phase, derived like the relay derives them."""

    suite: CipherSuite
    secrets: list[bytes]  # secret of phase 0 and 1 ("quic ku" chain, RFC 9001 6.1)
    hp: HeaderProtection
    hp_key: bytes

    @classmethod
    def new(cls, suite: CipherSuite) -> RefKeys:
        secret = os.urandom(suite.hash_size)
        keys = derive_traffic_keys(suite, secret)
        return cls(suite, [secret, b""], HeaderProtection(suite, keys.hp), keys.hp)

    def aead(self, phase: int) -> PayloadProtection:
        keys = derive_traffic_keys(self.suite, self.secrets[phase])
        return PayloadProtection(self.suite, keys.key, keys.iv)

    def install(self, phase: int = 0, *, largest_pn: int = -1, next_pn: int = 0,
                policy: DecryptFailurePolicy = DecryptFailurePolicy.DROP) -> KeyInstall:
        keys = derive_traffic_keys(self.suite, self.secrets[phase])
        return KeyInstall(self.suite, keys.key, keys.iv, self.hp_key, phase, largest_pn, next_pn, policy)

    def update(self, to_phase: int) -> Rekey:
        """Advance to the next secret ("quic ku") for `to_phase`; the HP key stays (RFC 9001 section 6)."""
        self.secrets[to_phase] = next_traffic_secret(self.suite, self.secrets[to_phase ^ 1])
        keys = derive_traffic_keys(self.suite, self.secrets[to_phase])
        return Rekey(to_phase, keys.key, keys.iv)


def short_header(cid: bytes, pn: int, pn_len: int = 2, phase: int = 0) -> bytes:
    """Fixed bit set, reserved bits zero, key phase and PN length in the first byte (RFC 9000 17.3.1)."""
    return bytes([0x40 | (phase << 2) | (pn_len - 1)]) + cid + truncate_packet_number(pn, pn_len)


def payload(tag: str, size: int = 48) -> bytes:
    return (MARKER + tag.encode() + b" ").ljust(size, b".")[:size]


def host_plain(header: bytes, body: bytes) -> bytes:
    """What the host hands the NIC to send, and what a NIC hands up after verifying: 16 zero bytes of tag room."""
    return header + body + ZERO_TAG


def reference_protect(keys: RefKeys, header: bytes, body: bytes, pn: int, phase: int = 0) -> bytes:
    return protect(header, body, pn, keys.aead(phase), keys.hp)


def sentinel(n: int) -> bytes:
    """No QUIC fixed bit (RFC 9000 17.3.1): not a QUIC v1 packet, so a NIC passes it untouched."""
    return b"\x00conformance-sentinel-%d" % n


# ---- the data path through the NIC ------------------------------------------------------------------------------


class PathError(RuntimeError):
    """The data path itself failed (a sentinel did not come through): nothing can be concluded."""


class DataPath:
    """Two UDP sockets, one on each side of the NIC; `to_wire`/`to_host` return what came through, or None."""

    def __init__(self, path: WirePath, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._n = 0
        self.host = self._open(path.host)
        try:
            self.wire = self._open(path.wire)
        except OSError:
            self.host.close()
            raise

    @staticmethod
    def _open(end: Endpoint) -> socket.socket:
        family = socket.AF_INET6 if ":" in end.address else socket.AF_INET
        with in_netns(end.netns):
            sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((end.address, UDP_PORT))
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.host.close()
        self.wire.close()

    def _cross(self, src: socket.socket, dst: socket.socket, dst_end: Endpoint, datagrams: list[bytes]
               ) -> list[bytes | None]:
        """Send each datagram followed by a sentinel; per datagram, what arrived before its sentinel."""
        out: list[bytes | None] = []
        for d in datagrams:
            self._n += 1
            mark = sentinel(self._n)
            src.sendto(d, (dst_end.address, UDP_PORT))
            src.sendto(mark, (dst_end.address, UDP_PORT))
            got: list[bytes] = []
            deadline = time.monotonic() + self.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PathError(f"a sentinel datagram did not cross the NIC within {self.timeout:.0f} s "
                                    f"(the path {self.path.host.address} <-> {self.path.wire.address} is broken)")
                dst.settimeout(left)
                try:
                    data = dst.recv(65535)
                except TimeoutError:
                    continue
                if data == mark:
                    break
                if data.startswith(b"\x00conformance-sentinel-"):
                    continue  # a late sentinel of an earlier exchange
                got.append(data)
            if len(got) > 1:
                raise CaseFailed(f"one datagram in, {len(got)} out")
            out.append(got[0] if got else None)
        return out

    def to_wire(self, *datagrams: bytes) -> list[bytes | None]:
        return self._cross(self.host, self.wire, self.path.wire, list(datagrams))

    def to_host(self, *datagrams: bytes) -> list[bytes | None]:
        return self._cross(self.wire, self.host, self.path.host, list(datagrams))


def sim_wire_path(hal: Hal) -> WirePath | None:
    """The `sim` backend has no `conformance_wire()` hook: a publisher (else subscriber) node is the peer.

    Duck-typed on `hal.topology` (sim/topology.py's Topology) so relay/ does not import sim/.
    """
    topo = getattr(hal, "topology", None)
    ports = hal.ports()
    if topo is None or not ports:
        return None
    names = list(getattr(topo, "publishers", [])) + list(getattr(topo, "subscribers", []))
    if not names:
        return None
    node = topo.node(names[0])
    port = ports[0]
    host_v4 = [a for a in port.addresses if ":" not in a]
    if not host_v4:
        return None
    return WirePath(Endpoint(port.netns, host_v4[0]), Endpoint(node.netns, node.ipv4))


def wire_path(hal: Hal) -> WirePath | None:
    hook = getattr(hal, "conformance_wire", None)
    if callable(hook):
        result = hook()
        return result if isinstance(result, WirePath) else None
    return sim_wire_path(hal)


# ---- resources, for the teardown case ----------------------------------------------------------------------------

BPFFS = Path("/sys/fs/bpf")
RUN_DIR = Path("/run")


def _walk(root: Path, depth: int) -> set[str]:
    found: set[str] = set()
    try:
        entries = list(root.iterdir())
    except OSError:
        return found
    for e in entries:
        found.add(str(e))
        if depth > 1 and e.is_dir() and not e.is_symlink():
            found |= _walk(e, depth - 1)
    return found


def _namespaces() -> set[str]:
    with contextlib.suppress(FileNotFoundError):
        return {p.name for p in Path("/run/netns").iterdir()}
    return set()


def _qdiscs(ns: str | None) -> str:
    """`tc qdisc show` without the reference counts (they move with other users of a device)."""
    argv = ["tc"] + (["-n", ns] if ns else []) + ["qdisc", "show"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        return f"(tc failed: {result.stderr.strip()})"
    return re.sub(r" refcnt \d+", "", result.stdout)


def _lines_of(text: str, devices: set[str]) -> list[str]:
    return [ln for ln in text.splitlines() if any(f" dev {d} " in f"{ln} " for d in devices)]


def _filters(ns: str) -> str:
    """Every TC filter on every device of a namespace (text), to compare before and after."""
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True, timeout=10)
    out = []
    for line in links.stdout.splitlines():
        dev = line.split(":", 2)[1].strip().split("@")[0]
        for hook in ("ingress", "egress"):
            text = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", dev, hook], capture_output=True,
                                  text=True, timeout=10).stdout
            if text:
                out.append(f"{dev} {hook}:\n{text}")
    return "".join(out)


def _children() -> set[int]:
    """Live (not zombie) processes whose parent is this process."""
    me = os.getpid()
    kids: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields_ = stat[stat.rfind(")") + 2:].split()
        if int(fields_[1]) == me and fields_[0] != "Z":
            kids.add(int(d.name))
    return kids


@dataclass
class Snapshot:
    """What exists before the backend starts, so teardown can be judged by what is new."""

    namespaces: set[str]
    qdiscs: dict[str, str]
    filters: dict[str, str]  # only namespaces named after the backend's prefix (listing all would be slow)
    pins: set[str]
    run_files: set[str]
    children: set[int]

    @classmethod
    def take(cls, prefix: str | None = None) -> Snapshot:
        names = _namespaces()
        qdiscs = {ns: _qdiscs(ns) for ns in names}
        qdiscs[""] = _qdiscs(None)
        filters = {ns: _filters(ns) for ns in names if prefix and ns.startswith(prefix)}
        return cls(names, qdiscs, filters, _walk(BPFFS, 3), _walk(RUN_DIR, 2), _children())


# ---- the cases -----------------------------------------------------------------------------------------------


@dataclass
class Context:
    hal: Hal
    timeout: float
    before: Snapshot | None
    installed: list[FlowKey] = field(default_factory=list)
    namespaces_seen: set[str] = field(default_factory=set)
    _path: DataPath | None = None

    def installer(self) -> Any:
        inst = self.hal.key_installer()
        if inst is None:
            raise NotApplicable(f"backend {self.hal.name} offers no crypto offload (key_installer() is None)")
        return inst

    def suites(self) -> list[CipherSuite]:
        return sorted(self.installer().capabilities().suites)

    def datapath(self) -> DataPath:
        if self._path is None:
            wp = wire_path(self.hal)
            if wp is None:
                raise NotApplicable("the backend names no peer beyond the NIC (no conformance_wire() hook), so "
                                    "no packet can be sent through it")
            self.namespaces_seen |= {ns for ns in (wp.host.netns, wp.wire.netns) if ns}
            self._path = DataPath(wp, self.timeout)
        return self._path

    def crypto_datapath(self) -> DataPath:
        """The data path for a crypto case: without crypto offload that is the reason it does not apply."""
        self.installer()
        return self.datapath()

    def cid(self) -> bytes:
        return os.urandom(CID_LENGTH)

    def install(self, direction: Direction, keys: KeyInstall, cid: bytes | None = None) -> FlowKey:
        flow = FlowKey(direction, cid if cid is not None else self.cid())
        self.installer().install(flow, keys)
        self.installed.append(flow)
        return flow

    def cleanup(self) -> None:
        """Remove every flow a case installed (a failed case must not leave keys behind)."""
        inst = self.hal.key_installer()
        if inst is not None:
            for flow in self.installed:
                with contextlib.suppress(Exception):
                    inst.remove(flow)
        self.installed.clear()

    def counters(self) -> Counters:
        return self.installer().stats().port

    def close(self) -> None:
        if self._path is not None:
            self._path.close()
            self._path = None


def _delta(before: Counters, after: Counters) -> dict[str, int]:
    return {k: v - getattr(before, k) for k, v in asdict(after).items() if v != getattr(before, k)}


def _hex(data: bytes | None, limit: int = 24) -> str:
    if data is None:
        return "nothing"
    return data[:limit].hex() + ("..." if len(data) > limit else "")


def _diff(what: str, got: bytes | None, want: bytes) -> str:
    if got is None:
        return f"{what}: nothing came through (expected {len(want)} bytes)"
    if len(got) != len(want):
        return f"{what}: {len(got)} bytes, expected {len(want)}"
    first = next((i for i in range(len(want)) if got[i] != want[i]), None)
    if first is None:
        return f"{what}: as the reference"
    return f"{what}: differs from the reference at byte {first} (got {_hex(got[first:], 8)}, " \
           f"want {_hex(want[first:], 8)})"


def check_sealed(got: bytes | None, want: bytes, header: bytes, what: str) -> None:
    """The AEAD output (everything after the header) matches; header protection is judged by its own case."""
    cut = len(header)
    check(got is not None and len(got) == len(want) and got[cut:] == want[cut:],
          _diff(f"{what}, sealed part (after the {cut}-byte header)", None if got is None else got[cut:],
                want[cut:]))


def case_capabilities(ctx: Context) -> str:
    caps = ctx.hal.capabilities()
    inst = ctx.hal.key_installer()
    check(caps.crypto_offload == (inst is not None),
          f"capabilities().crypto_offload is {caps.crypto_offload} but key_installer() is "
          f"{'None' if inst is None else 'set'}")
    if inst is None:
        raise NotApplicable("no crypto offload; capabilities agree")
    nic = inst.capabilities()
    names = tuple(s.name for s in sorted(nic.suites))
    check(bool(nic.suites), "the key installer advertises no cipher suite")
    check(set(caps.cipher_suites) == set(names),
          f"HAL advertises suites {list(caps.cipher_suites)}, the key installer {list(names)}")
    check(caps.max_flows == nic.max_flows > 0,
          f"max_flows: HAL {caps.max_flows}, key installer {nic.max_flows} (must agree and be > 0)")
    check(nic.key_phases >= 2, f"{nic.key_phases} receive key phase(s); RFC 9001 6.5 needs 2")
    return f"{len(names)} suite(s) ({', '.join(names)}), {nic.max_flows} flows, {nic.key_phases} key phases"


MAX_FULL_TABLE_PROBE = 65536  # fill the flow table to check "table full" only when it is this small


def case_key_install(ctx: Context) -> str:
    inst = ctx.installer()
    suite = ctx.suites()[0]
    ref = RefKeys.new(suite)
    rx = ctx.install(Direction.RX, ref.install())
    tx = ctx.install(Direction.TX, ref.install(), cid=rx.cid)  # same CID, other direction: a separate flow
    flows = inst.stats().flows
    check(rx in flows and tx in flows, "installed RX and TX flows do not show in stats().flows")
    ctx.install(Direction.RX, RefKeys.new(suite).install(), cid=rx.cid)  # replace
    check(len([f for f in inst.stats().flows if f.cid == rx.cid]) == 2,
          "re-installing a flow's keys must replace them, not add a flow")
    notes = []
    unsupported = [s for s in CipherSuite if s not in inst.capabilities().suites]
    for s in unsupported:
        try:
            ctx.install(Direction.TX, RefKeys.new(s).install())
        except KeyInstallError:
            continue
        raise CaseFailed(f"install with unadvertised suite {s.name} was accepted")
    if unsupported:
        notes.append(f"unadvertised {', '.join(s.name for s in unsupported)} refused")
    check(inst.remove(rx) is True, "remove() of an installed flow did not return True")
    check(inst.remove(rx) is False, "remove() of a removed flow did not return False")
    check(rx not in inst.stats().flows and tx in inst.stats().flows,
          "remove() of the RX flow must remove exactly that flow")
    check(inst.remove(tx) is True, "remove() of the TX flow did not return True")
    ctx.installed.clear()
    max_flows = inst.capabilities().max_flows
    if max_flows <= MAX_FULL_TABLE_PROBE:
        base = len(inst.stats().flows)
        keys = RefKeys.new(suite).install()
        filled: list[FlowKey] = []
        try:
            for i in range(max_flows - base):
                flow = FlowKey(Direction.RX, b"\xc0" + i.to_bytes(CID_LENGTH - 1, "big"))
                inst.install(flow, keys)
                filled.append(flow)
            try:
                inst.install(FlowKey(Direction.TX, b"\xc1" * CID_LENGTH), keys)
                ctx.installed.append(FlowKey(Direction.TX, b"\xc1" * CID_LENGTH))
                raise CaseFailed(f"install beyond max_flows ({max_flows}) was accepted")
            except KeyInstallError:
                pass
            if filled:
                inst.install(filled[-1], keys)  # replacing in a full table is not a new flow
        finally:
            for flow in filled:
                inst.remove(flow)
        notes.append(f"table full at {max_flows} flows refused")
    return "install, replace, remove semantics hold" + (f"; {'; '.join(notes)}" if notes else "")


def case_key_remove(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    inst = ctx.installer()
    ref = RefKeys.new(ctx.suites()[0])
    tx = ctx.install(Direction.TX, ref.install())
    rx = ctx.install(Direction.RX, ref.install())
    hdr = short_header(tx.cid, 0)
    (got,) = dp.to_wire(host_plain(hdr, payload("before remove")))
    check_sealed(got, reference_protect(ref, hdr, payload("before remove"), 0), hdr, "TX before remove")
    inst.remove(tx)
    inst.remove(rx)
    before = ctx.counters()
    hdr1 = short_header(tx.cid, 1)
    (leak,) = dp.to_wire(host_plain(hdr1, payload("after remove")))
    check(leak is None, f"TX after remove: the NIC sent {len(leak or b'')} bytes (must drop: no key)")
    protected = reference_protect(ref, short_header(rx.cid, 0), payload("rx after remove"), 0)
    (up,) = dp.to_host(protected)
    check(up == protected, _diff("RX after remove (must pass up unchanged, tag intact)", up, protected))
    delta = _delta(before, ctx.counters())
    check(delta.get("no_key_drops", 0) >= 1, f"the TX drop was not counted as no_key_drops ({delta})")
    ctx.installed.clear()
    return "after remove: TX dropped and counted, RX passed up unchanged"


def case_rekey(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    inst = ctx.installer()
    ref = RefKeys.new(ctx.suites()[0])
    try:
        inst.rekey(FlowKey(Direction.TX, ctx.cid()), ref.update(1))
        raise CaseFailed("rekey() of a flow that was never installed was accepted")
    except KeyInstallError:
        pass
    ref = RefKeys.new(ctx.suites()[0])
    tx = ctx.install(Direction.TX, ref.install(0))
    for pn, phase, step in ((0, 0, None), (1, 1, 1), (2, 0, 0)):
        if step is not None:
            inst.rekey(tx, ref.update(step))
        hdr = short_header(tx.cid, pn, phase=phase)
        body = payload(f"rekey pn {pn}")
        (got,) = dp.to_wire(host_plain(hdr, body))
        want = reference_protect(ref, hdr, body, pn, phase)
        check_sealed(got, want, hdr, f"TX pn {pn} phase {phase} after {'install' if step is None else 'rekey'}")
    return "TX sealed with the rekeyed phase-1 key, then with a replaced phase-0 key; " \
           "rekey of an unknown flow refused"


def case_key_phases(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    inst = ctx.installer()
    ref = RefKeys.new(ctx.suites()[0])
    rx = ctx.install(Direction.RX, ref.install(0))
    inst.rekey(rx, ref.update(1))  # the next phase ahead of the peer's update (RFC 9001 6.1)
    before = ctx.counters()
    # pn 0, 1 in phase 0; the peer updates: 3 in phase 1; then 2 (old phase, reordered) still opens (RFC 9001 6.5)
    for pn, phase in ((0, 0), (1, 0), (3, 1), (2, 0), (4, 1)):
        hdr = short_header(rx.cid, pn, phase=phase)
        body = payload(f"phase {phase} pn {pn}")
        (got,) = dp.to_host(reference_protect(ref, hdr, body, pn, phase))
        check(got == host_plain(hdr, body), _diff(f"RX pn {pn} phase {phase}", got, host_plain(hdr, body)))
    delta = _delta(before, ctx.counters())
    check(delta.get("key_phase_switches", 0) >= 1, f"the peer's key update was not counted ({delta})")
    # installing directly in phase 1 (keys handed over after an update) works both ways
    ref1 = RefKeys.new(ctx.suites()[0])
    ref1.secrets[1] = ref1.secrets[0]
    tx1 = ctx.install(Direction.TX, ref1.install(1, next_pn=7))
    rx1 = ctx.install(Direction.RX, ref1.install(1, largest_pn=6))
    hdr = short_header(tx1.cid, 7, phase=1)
    (got,) = dp.to_wire(host_plain(hdr, payload("tx phase 1")))
    want = reference_protect(ref1, hdr, payload("tx phase 1"), 7, 1)
    check_sealed(got, want, hdr, "TX installed in phase 1")
    hdr = short_header(rx1.cid, 7, phase=1)
    (got,) = dp.to_host(reference_protect(ref1, hdr, payload("rx phase 1"), 7, 1))
    check(got == host_plain(hdr, payload("rx phase 1")),
          _diff("RX installed in phase 1", got, host_plain(hdr, payload("rx phase 1"))))
    return "RX opens both phases under the one HP key (incl. a reordered old-phase packet), counts the switch; " \
           "install in phase 1 works"


def _pn_plan() -> list[tuple[str, int, int, list[int], list[int]]]:
    """(what, pn_len, PN expected at install, TX pns, RX pns) around each truncation boundary (RFC 9000 A.3).

    TX: across the wrap of the truncated field, then the farthest forward jump the window allows (expected + half
    window). RX: across the wrap, then the oldest packet the window still places right (expected - half window + 1),
    then onwards."""
    plans = []
    for n in (1, 2, 3, 4):
        hwin = 1 << (8 * n - 1)
        start = (5 << (8 * n)) - 2  # above the first window: a NIC ignoring the installed PN state gets it wrong
        tx = [start, start + 1, start + 2, start + 3, start + 4 + hwin]
        rx = [start, start + 1, start + 2, start + 3 - hwin + 1, start + 3]
        plans.append((f"{n}-byte", n, start, tx, rx))
    return plans


def case_pn_expansion(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    suite = ctx.suites()[0]
    sent = 0
    for what, n, start, tx_pns, rx_pns in _pn_plan():
        ref = RefKeys.new(suite)
        tx = ctx.install(Direction.TX, ref.install(next_pn=start))
        for pn in tx_pns:
            hdr = short_header(tx.cid, pn, n)
            body = payload(f"tx pn {pn}")
            (got,) = dp.to_wire(host_plain(hdr, body))
            want = reference_protect(ref, hdr, body, pn)
            # compare the sealed payload only: the nonce (IV xor full PN) is what a wrong expansion changes
            check_sealed(got, want, hdr, f"TX {what} PN {pn:#x} (from next_pn {start:#x})")
            sent += 1
        rx = ctx.install(Direction.RX, ref.install(largest_pn=start - 1))
        for pn in rx_pns:
            hdr = short_header(rx.cid, pn, n)
            body = payload(f"rx pn {pn}")
            (got,) = dp.to_host(reference_protect(ref, hdr, body, pn))
            check(got == host_plain(hdr, body), _diff(f"RX {what} PN {pn:#x} (largest {start - 1:#x})", got,
                                                       host_plain(hdr, body)))
            sent += 1
    # RFC 9000 appendix A.3's example: largest 0xa82f30ea, truncated 0x9b32 on 16 bits -> 0xa82f9b32
    ref = RefKeys.new(suite)
    rx = ctx.install(Direction.RX, ref.install(largest_pn=0xA82F30EA))
    hdr = short_header(rx.cid, 0xA82F9B32, 2)
    (got,) = dp.to_host(reference_protect(ref, hdr, payload("rfc a.3"), 0xA82F9B32))
    check(got == host_plain(hdr, payload("rfc a.3")), _diff("RX RFC 9000 A.3 example", got,
                                                            host_plain(hdr, payload("rfc a.3"))))
    return f"{sent + 1} packets, 1-4 byte PNs across each truncation wrap and the half-window edges, RFC 9000 A.3"


def case_header_protection(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    done = []
    for suite in ctx.suites():
        ref = RefKeys.new(suite)
        tx = ctx.install(Direction.TX, ref.install())
        rx = ctx.install(Direction.RX, ref.install())
        for pn_len in (1, 4):
            hdr = short_header(tx.cid, 5 * pn_len, pn_len)
            body = payload(f"hp {suite.name}", 64)
            (got,) = dp.to_wire(host_plain(hdr, body))
            want = reference_protect(ref, hdr, body, 5 * pn_len)
            check(got is not None, f"TX {suite.name}: nothing on the wire")
            assert got is not None
            check(got[0] & ~SHORT_HP_MASK & 0xFF == hdr[0] & ~SHORT_HP_MASK & 0xFF,
                  f"TX {suite.name}: header protection touched the unprotected bits of the first byte")
            mask_first = (got[0] ^ hdr[0]) & SHORT_HP_MASK
            check(got[0] == want[0], f"TX {suite.name} {pn_len}-byte PN: first byte {got[0]:#04x}, reference "
                                     f"{want[0]:#04x} (mask applied {mask_first:#04x})")
            pn_at = 1 + CID_LENGTH
            check(got[pn_at:pn_at + pn_len] == want[pn_at:pn_at + pn_len],
                  f"TX {suite.name}: packet number bytes {_hex(got[pn_at:pn_at + pn_len])}, reference "
                  f"{_hex(want[pn_at:pn_at + pn_len])}")
            check(got[1:pn_at] == hdr[1:pn_at], f"TX {suite.name}: the DCID changed on the wire")
            rhdr = short_header(rx.cid, 5 * pn_len, pn_len)
            (up,) = dp.to_host(reference_protect(ref, rhdr, body, 5 * pn_len))
            check(up is not None and up[:len(rhdr)] == rhdr,
                  f"RX {suite.name}: header not unmasked to {_hex(rhdr)} (got {_hex(up)})")
        done.append(suite.name)
    return f"first byte and 1/4-byte PN masks match RFC 9001 5.4 both ways for {', '.join(done)}"


def _aead_case(suite: CipherSuite) -> Callable[[Context], str]:
    def run(ctx: Context) -> str:
        inst = ctx.installer()
        if suite not in inst.capabilities().suites:
            # A NIC need not do every suite (the relay offers TLS only the advertised ones), but must refuse the rest.
            try:
                ctx.install(Direction.TX, RefKeys.new(suite).install())
            except KeyInstallError:
                return f"{suite.name} not advertised, and an install of it is refused as it must be"
            raise CaseFailed(f"{suite.name} is not advertised, yet an install of it was accepted")
        dp = ctx.datapath()
        ref = RefKeys.new(suite)
        tx = ctx.install(Direction.TX, ref.install())
        rx = ctx.install(Direction.RX, ref.install())
        sizes = (3, 20, 200, 1200)
        for pn, size in enumerate(sizes):
            hdr = short_header(tx.cid, pn)
            body = payload(f"aead {suite.name} {size}", size)
            (got,) = dp.to_wire(host_plain(hdr, body))
            want = reference_protect(ref, hdr, body, pn)
            # ciphertext and tag only (bytes after the header): header protection is its own case
            check_sealed(got, want, hdr, f"TX {suite.name} {size}-byte payload")
            rhdr = short_header(rx.cid, pn)
            (up,) = dp.to_host(reference_protect(ref, rhdr, body, pn))
            check(up == host_plain(rhdr, body), _diff(f"RX {suite.name} {size}-byte payload", up,
                                                      host_plain(rhdr, body)))
        return f"seal and open byte-exact for payloads of {', '.join(map(str, sizes))} bytes"
    return run


def case_decrypt_failure(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    ref = RefKeys.new(ctx.suites()[0])
    results = []
    for policy in (DecryptFailurePolicy.DROP, DecryptFailurePolicy.PASS_UP):
        rx = ctx.install(Direction.RX, ref.install(policy=policy))
        hdr = short_header(rx.cid, 1)
        body = payload(f"bad tag {policy.value}")
        good = reference_protect(ref, hdr, body, 1)
        bad = good[:-1] + bytes([good[-1] ^ 0x01])  # one flipped tag bit
        forged = host_plain(hdr, body)  # plaintext with a zero tag: "NIC-verified" if it came up as is
        before = ctx.counters()
        up_bad, up_forged = dp.to_host(bad, forged)
        delta = _delta(before, ctx.counters())
        check(up_bad != host_plain(hdr, body) and (up_bad is None or up_bad[-TAG_SIZE:] != ZERO_TAG),
              f"{policy.value}: a packet with a bad tag came up as verified plaintext")
        if policy is DecryptFailurePolicy.DROP:
            check(up_bad is None, f"policy drop: a bad-tag packet was passed up ({len(up_bad or b'')} bytes)")
        else:
            check(up_bad == bad, _diff("policy pass_up: the bad-tag packet must come up unchanged", up_bad, bad))
        check(up_forged is None, f"{policy.value}: a zero-tag forgery of a keyed flow was passed up")
        check(delta.get("auth_failures", 0) >= 2,
              f"{policy.value}: bad tag and forgery must count as auth_failures (counted {delta})")
        check(delta.get("zero_tag_forgery_drops", 0) >= 1,
              f"{policy.value}: the forgery was not counted as zero_tag_forgery_drops ({delta})")
        check(delta.get("decrypted", 0) == 0, f"{policy.value}: a failed packet counted as decrypted ({delta})")
        (ok,) = dp.to_host(good)  # the flow still works after failures
        check(ok == host_plain(hdr, body), _diff(f"{policy.value}: the genuine packet after failures", ok,
                                                  host_plain(hdr, body)))
        results.append(f"{policy.value}: {'dropped' if up_bad is None else 'passed up unchanged'}")
    return "; ".join(results) + "; zero-tag forgery dropped; all counted"


def case_no_plaintext(ctx: Context) -> str:
    dp = ctx.crypto_datapath()
    ref = RefKeys.new(ctx.suites()[0])
    tx = ctx.install(Direction.TX, ref.install())
    rx = ctx.install(Direction.RX, ref.install())
    count = 16
    for pn in range(count):
        hdr = short_header(tx.cid, pn)
        body = payload(f"media object {pn}", 40 + 70 * pn)
        (got,) = dp.to_wire(host_plain(hdr, body))
        want = reference_protect(ref, hdr, body, pn)
        check(got == want, _diff(f"TX pn {pn}", got, want))
        check(MARKER not in (got or b""), f"TX pn {pn}: plaintext marker on the wire")
        rhdr = short_header(rx.cid, pn)
        (up,) = dp.to_host(reference_protect(ref, rhdr, body, pn))
        check(up == host_plain(rhdr, body), _diff(f"RX pn {pn}", up, host_plain(rhdr, body)))
    before = ctx.counters()
    stray = host_plain(short_header(ctx.cid(), 3), payload("no key"))
    (leak,) = dp.to_wire(stray)
    check(leak is None, "a 1-RTT packet without a TX key reached the wire (plaintext on the wire)")
    delta = _delta(before, ctx.counters())
    check(delta.get("no_key_drops", 0) >= 1, f"the unkeyed TX packet was not counted as no_key_drops ({delta})")
    return f"{count} packets each way byte-exact vs the reference; unkeyed TX dropped and counted"


# ---- TC programs on the backend's ports --------------------------------------------------------------------


def _tc_ports(ctx: Context) -> list[Any]:
    if not ctx.hal.capabilities().tc_hooks:
        raise NotApplicable(f"backend {ctx.hal.name} offers no TC hooks (capabilities().tc_hooks is false)")
    ports = ctx.hal.ports()
    if not ports:
        raise NotApplicable("the backend reports TC hooks but no port")
    ctx.namespaces_seen |= {p.netns for p in ports if p.netns}
    return ports


@contextlib.contextmanager
def _selftest() -> Iterator[Any]:
    from bpf.loader import BpfObject, LoadError, build_path
    from bpf.structs import SelftestConfig

    path = build_path("selftest")
    if not path.exists():
        raise CaseFailed(f"{path} is missing: build the BPF objects first (make -C bpf)")
    try:
        obj = BpfObject.load(path, rodata={"selftest_cfg": SelftestConfig(magic=0xC0DE)})
    except LoadError as exc:
        raise CaseFailed(f"selftest program did not load: {exc}") from None
    with obj:
        yield obj


def _filter_text(ns: str | None, ifname: str, hook: str) -> str:
    argv = ["tc"] + (["-n", ns] if ns else []) + ["filter", "show", "dev", ifname, hook]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout


def _has_clsact(ns: str | None, ifname: str) -> bool:
    argv = ["tc"] + (["-n", ns] if ns else []) + ["qdisc", "show", "dev", ifname]
    return "clsact" in subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout


def case_program_attach(ctx: Context) -> str:
    from bpf.attach import Direction as Hook
    from bpf.attach import TcFilter, list_filters
    from bpf.structs import FastTrack, SelftestEvent, TrackKey

    ports = _tc_ports(ctx)
    try:
        dp: DataPath | None = ctx.datapath()
    except NotApplicable:
        dp = None  # attach and detach are still checked; whether the programs run is not
    notes = []
    with _selftest() as obj:
        obj.maps["selftest_hash"].update(TrackKey(conn_id=1, alias=2), FastTrack(track_id=1))  # verdict: pass
        events: list[Any] = []
        rb = obj.ring_buffer("selftest_events", events.append, SelftestEvent)
        for port in ports:
            had_clsact = _has_clsact(port.netns, port.ifname)
            filters = [TcFilter.by_name(obj.programs["selftest"].fd, port.ifname, port.netns, direction=d,
                                        prio=FILTER_PRIO, name=FILTER_NAME, replace=False)
                       for d in (Hook.INGRESS, Hook.EGRESS)]
            try:
                for f in filters:
                    f.attach()
                    mine = [x for x in list_filters(f.ifindex, f.direction, port.netns) if x["prio"] == FILTER_PRIO]
                    check(mine == [{"kind": "bpf", "prio": FILTER_PRIO, "handle": 1}],
                          f"{port.name}: the {f.direction.name.lower()} filter is not listed after attach ({mine})")
                if dp is not None and port is ports[0]:
                    events.clear()
                    probes = [b"\x00probe-%d" % i for i in range(3)]
                    check(dp.to_host(*probes) == probes and dp.to_wire(*probes) == probes,
                          f"{port.name}: traffic did not pass the attached programs")
                    rb.poll(500)
                    rb.consume()
                    check(len(events) >= 2 * len(probes),
                          f"{port.name}: the programs ran {len(events)} times for {2 * len(probes)} probes")
                    notes.append(f"{port.name}: programs ran on both hooks ({len(events)} runs)")
            finally:
                for f in reversed(filters):  # the one that created clsact last: it removes it once empty
                    f.detach()
            for f in filters:
                left = [x for x in list_filters(f.ifindex, f.direction, port.netns) if x["prio"] == FILTER_PRIO]
                check(not left, f"{port.name}: a filter is left after detach ({left})")
            check(_has_clsact(port.netns, port.ifname) == had_clsact,
                  f"{port.name}: clsact qdisc {'removed' if had_clsact else 'left behind'} by detach")
    return f"attach + detach on ingress and egress of {len(ports)} port(s)" + (f"; {'; '.join(notes)}" if notes
                                                                                 else "")


def case_placement(ctx: Context) -> str:
    from pyroute2.netlink.exceptions import NetlinkError

    from bpf.attach import TcFilter

    ports = _tc_ports(ctx)
    hw = ctx.hal.capabilities().hw_bpf_offload
    if hw:
        raise NotApplicable("the backend claims BPF hardware offload: checking it needs the device itself "
                            "(offload load with its ifindex, skip_sw attach, in_hw); not automated yet")
    with _selftest() as obj:
        for port in ports:
            f = TcFilter.by_name(obj.programs["selftest"].fd, port.ifname, port.netns, prio=FILTER_PRIO,
                                 name=FILTER_NAME, replace=False, skip_sw=True)
            try:
                f.attach()
                f.detach()
                raise CaseFailed(f"{port.name}: a hardware-only (skip_sw) attach succeeded although "
                                 f"capabilities().hw_bpf_offload is false")
            except NetlinkError:
                pass
            with TcFilter.by_name(obj.programs["selftest"].fd, port.ifname, port.netns, prio=FILTER_PRIO,
                                  name=FILTER_NAME, replace=False):
                text = _filter_text(port.netns, port.ifname, "ingress")
                mine = [ln for ln in text.splitlines() if FILTER_NAME in ln]
                check(bool(mine) and all(" in_hw" not in ln for ln in mine),
                      f"{port.name}: a host filter shows as offloaded: {mine}")
    return f"no hardware offload claimed: skip_sw refused, filters run in host TC on {len(ports)} port(s)"


def case_map_access(ctx: Context) -> str:
    from bpf.attach import TcFilter
    from bpf.structs import FastTrack, SelftestEvent, TrackKey

    ports = _tc_ports(ctx)
    dp = ctx.datapath()
    port = ports[0]
    key = TrackKey(conn_id=1, alias=2)
    with _selftest() as obj:
        m = obj.maps["selftest_hash"]
        events: list[Any] = []
        rb = obj.ring_buffer("selftest_events", events.append, SelftestEvent)

        def dropped_while_absent(probe: bytes) -> None:
            """Send while the key is absent; wait until the program has run on it (it reports every run with the
            frame length: Ethernet + IP + UDP headers before the payload)."""
            overhead = 14 + (40 if ":" in dp.path.host.address else 20) + 8
            events.clear()
            dp.wire.sendto(probe, (dp.path.host.address, UDP_PORT))
            deadline = time.monotonic() + ctx.timeout
            while not any(e.len == len(probe) + overhead for e in events) and time.monotonic() < deadline:
                rb.poll(100)
            check(any(e.len == len(probe) + overhead for e in events), "the attached program never saw the probe")

        with TcFilter.by_name(obj.programs["selftest"].fd, port.ifname, port.netns, prio=FILTER_PRIO,
                              name=FILTER_NAME, replace=False):
            # the program passes a packet only while the key is in the map: each update must reach it at once
            probe = [(b"\x00map-%d" % i).ljust(301 + 17 * i, b".") for i in range(4)]  # lengths tell them apart
            dropped_while_absent(probe[0])
            m.update(key, FastTrack(track_id=7))
            check(m.lookup(key) == FastTrack(track_id=7), "lookup does not return the value just written")
            (got,) = dp.to_host(probe[1])
            check(got == probe[1], f"after update: expected the probe, got {_hex(got)} (the earlier probe "
                                   f"must have been dropped while the key was absent)")
            check(m.delete(key) is True and m.lookup(key) is None, "delete did not remove the key")
            dropped_while_absent(probe[2])
            m.update(key, FastTrack(track_id=8))
            (got,) = dp.to_host(probe[3])
            check(got == probe[3], f"after delete and re-insert: got {_hex(got)}, want the last probe only")
            m.delete(key)
    return "update, lookup, delete of a hash map reach the attached program at once"


def case_teardown(ctx: Context) -> str:
    hal = ctx.hal
    inst = hal.key_installer()
    sock_path = getattr(inst, "path", None) if inst is not None else None
    known = set(ctx.namespaces_seen) | {ns for ns in [hal.netns()] + [p.netns for p in hal.ports()] if ns}
    host_devices = {p.ifname for p in hal.ports() if p.netns is None}  # ports in the caller's own namespace
    before = ctx.before
    if before is None:
        raise NotApplicable("no snapshot taken before start")
    tokens = {getattr(hal, "prefix", "") or ""} - {""}
    created = known - before.namespaces
    if created:
        common = os.path.commonprefix(sorted(created)).rstrip("-_")
        if len(common) >= 3:
            tokens.add(common)
    # namespaces that appeared since start and carry the backend's name prefix are its own too
    created |= {ns for ns in _namespaces() - before.namespaces if any(ns.startswith(t) for t in tokens)}
    ctx.close()
    hal.teardown()
    hal.teardown()  # must be idempotent (serve.py calls it in a finally, also after a failed start)
    problems = []
    now_ns = _namespaces()
    kept = (known | {ns for ns in before.namespaces if any(ns.startswith(t) for t in tokens)}) & before.namespaces
    left_ns = sorted(created & now_ns)
    if left_ns:
        problems.append(f"namespaces left: {', '.join(left_ns)}")
    for ns in sorted(kept):
        if _qdiscs(ns) != before.qdiscs.get(ns):
            problems.append(f"qdiscs of pre-existing namespace {ns} differ from before start")
        if ns in before.filters and _filters(ns) != before.filters[ns]:
            problems.append(f"TC filters of pre-existing namespace {ns} differ from before start")
    # the caller's namespace is shared with everything else on the machine: only the backend's ports are judged
    if host_devices and _lines_of(_qdiscs(None), host_devices) != _lines_of(before.qdiscs[""], host_devices):
        problems.append(f"qdiscs of {', '.join(sorted(host_devices))} differ from before start")
    if tokens:
        pins = sorted(p for p in _walk(BPFFS, 3) - before.pins if any(t in p for t in tokens))
        if pins:
            problems.append(f"pins left: {', '.join(pins)}")
        runs = sorted(p for p in _walk(RUN_DIR, 2) - before.run_files
                      if any(t in p for t in tokens) and not p.startswith("/run/netns/"))
        if runs:
            problems.append(f"files/sockets left: {', '.join(runs)}")
    if sock_path and os.path.exists(sock_path):
        problems.append(f"key-install socket left: {sock_path}")
    kids = sorted(_children() - before.children)
    if kids:
        problems.append(f"processes left: {', '.join(map(str, kids))}")
    check(not problems, "; ".join(problems))
    scope = f"{len(created)} namespace(s) removed" if created else "no namespace was created"
    return f"{scope}; qdiscs and filters as before; no pins, sockets or processes left (teardown() twice)"


@dataclass(frozen=True)
class Case:
    name: str
    summary: str
    run: Callable[[Context], str]


CASES: tuple[Case, ...] = (
    Case("capabilities", "HAL and key installer advertise the same suites and table size; 2 key phases",
         case_capabilities),
    Case("key-install", "install, replace, remove; unadvertised suites and a full table refused", case_key_install),
    Case("key-remove", "after remove: TX dropped (never plaintext out), RX passed up unchanged", case_key_remove),
    Case("rekey", "rekey replaces one phase's key; rekey of an unknown flow refused", case_rekey),
    Case("key-phases", "RX opens both key phases and counts the switch; install in phase 1", case_key_phases),
    Case("pn-expansion", "1-4 byte packet numbers across truncation wraps and window edges", case_pn_expansion),
    Case("header-protection", "first-byte and PN masks of every advertised suite, both ways",
         case_header_protection),
    *(Case(f"aead-{s.name.lower().replace('_', '-')}", f"{s.name}: seal and open byte-exact", _aead_case(s))
      for s in CipherSuite),
    Case("decrypt-failure", "bad tag dropped (or passed up unchanged), forgery dropped, counted",
         case_decrypt_failure),
    Case("no-plaintext-on-wire", "TX byte-exact vs reference, RX byte-exact, unkeyed TX dropped", case_no_plaintext),
    Case("program-attach", "TC attach/detach on every port, programs run, clsact restored", case_program_attach),
    Case("placement", "programs run where capabilities say (host TC vs NIC hardware)", case_placement),
    Case("map-access", "map update/lookup/delete reach an attached program", case_map_access),
    Case("teardown", "nothing left: namespaces, qdiscs, pins, sockets, processes", case_teardown),
)
CASE_NAMES = tuple(c.name for c in CASES)


def run_case(case: Case, ctx: Context) -> CaseResult:
    start = time.monotonic()
    try:
        detail = case.run(ctx)
        outcome = Outcome.PASS
    except CaseFailed as exc:
        outcome, detail = Outcome.FAIL, str(exc)
    except NotApplicable as exc:
        outcome, detail = Outcome.NOT_APPLICABLE, str(exc)
    except PathError as exc:
        outcome, detail = Outcome.ERROR, str(exc)
    except Exception as exc:  # a case must never take the others down
        outcome, detail = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        if case.name != "teardown":
            with contextlib.suppress(Exception):
                ctx.cleanup()
    return CaseResult(case.name, outcome, detail, time.monotonic() - start)


def run_suite(factory: HalFactory, args: argparse.Namespace, *, cases: tuple[str, ...] = (),
              backend_args: list[str] | None = None, timeout: float = 5.0,
              progress: Callable[[CaseResult], None] = lambda r: None) -> Report:
    """Create, start, run `cases` (default: all, teardown last), tear down; never raises for a backend's fault."""
    selected = [c for c in CASES if not cases or c.name in cases]
    report = Report(factory.name, list(backend_args or []), None)
    try:
        hal = factory.create(args)
    except Exception as exc:
        report.error = f"create() failed: {exc}"
        return report
    # after create (a backend may know its name prefix by then), before start (which makes the resources)
    before = Snapshot.take(getattr(hal, "prefix", None)) if any(c.name == "teardown" for c in selected) else None
    ctx = Context(hal, timeout, before)
    try:
        try:
            hal.start()
        except Exception as exc:
            report.error = str(exc) or type(exc).__name__
            return report
        with contextlib.suppress(Exception):
            report.capabilities = hal.capabilities()
        for case in selected:
            result = run_case(case, ctx)
            report.results.append(result)
            progress(result)
    finally:
        ctx.close()
        with contextlib.suppress(Exception):
            hal.teardown()
    return report
