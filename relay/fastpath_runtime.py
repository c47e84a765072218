"""The kernel fast path of one running relay: load and attach the programs, and connect them to aioquic.

`relay --fast-path on` (docs/fastpath.md). Pieces, each in its own module:

- `bpf/src/server_ingress.bpf.c` and `client_egress.bpf.c`, attached here to the HAL port's TC ingress and egress;
- `relay.fastpath.FastPathController` (map verbs) and `relay.fastpath_hooks.KernelFastPathHooks` (which subscription
  gets which slot), driven by the user-space relay's subscription events;
- `relay.registration.Registrar`: every packet the program numbered enters aioquic's sent history (with
  `--recovery kernel` only renumbered user-space packets and stream copies: forwarded datagram copies stay in the
  kernel), drained when the ring buffer is readable and before every received datagram (invariant 2);
- `relay.kernel_recovery.KernelRecovery` (`--recovery kernel`, issue 5): client_ingress applies subscribers' ACKs
  in the kernel; a sweep every `DropPolicy.interval` runs its timers and feeds the drop policy.

This module answers the transport questions the hooks ask (addresses, CIDs, key phase) from aioquic and the
kernel's routing tables, and keeps the maps in step with CID changes and key updates through the NIC offload
controller's events (`OffloadObserver`). Everything it attaches or pins is removed by `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.tls import Epoch
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, LoadError, PinDir, RingBuffer, build_path
from bpf.structs import (
    EGRESS_MAX_DCID_LENS,
    MAX_RELAY_PORTS,
    EgressConfig,
    EgressStat,
    IngressConfig,
    IngressStat,
    ObjectKey,
    RegEvent,
)
from crypto_offload.aioquic_offload import OffloadedQuicConnection, OneRttKeys
from crypto_offload.api import Direction as KeyDirection
from relay.cache import datagram_location
from relay.drop_policy import DropPolicy
from relay.fastpath import RECOVERY_CONNS_MAX, Addresses, FastPathController
from relay.fastpath_hooks import DownstreamPath, KernelFastPathHooks
from relay.fastpath_watchdog import CHECK_INTERVAL, FilterWatchdog
from relay.ingress_classifier import CompositeHooks, IngressClassifier
from relay.kernel_recovery import (
    DEFAULT_PASS_INTERVAL_MS,
    DEFAULT_SWEEP_INTERVAL,
    SERVER_INGRESS_PRIO,
    KernelRecovery,
    RecoveryUnavailable,
)
from relay.moqt.session import MoqtSession
from relay.quic import ConnectionHooks, MoqtConnection
from relay.registration import Registrar, enable, hand_back
from relay.relay import Downstream, Relay, Track
from relay.stream_copies import KernelStreams

log = logging.getLogger("relay.fastpath")

PIN_PREFIX = "moq-relay-"  # /sys/fs/bpf/moq-relay-<pid>: one folder per running relay
HOST_CID_LEN = 8  # aioquic's connection_id_length: the DCID length of packets the relay receives
PEER_CID_LENS = (8, 4, 16, 20)  # subscriber CID lengths the egress program tries (aioquic/qh3 use 8)
# The program picks PN lengths against `largest_acked` (RFC 9000 A.2); a stale, smaller value only makes it choose
# longer encodings, never ambiguous ones, so exporting every EXPORT_STEP packets is enough and saves map writes.
EXPORT_STEP = 64


class FastPathUnavailable(RuntimeError):
    """The fast path cannot run here (no BPF object, no port, load or attach refused): the message says why."""


@dataclass
class FastPathStats:
    enabled_connections: int = 0
    refused_connections: int = 0  # offloaded connections that could not be enabled (no TX offload, no neighbour)
    drains: int = 0
    congestion_onsets: int = 0  # times a connection entered the congested state (drop threshold set)
    fallen_back: int = 0  # 1: our TC filters were removed and every subscription went back to user space


@dataclass
class KernelFastPath:
    """Owns the two programs on one device and everything that keeps them in step with aioquic."""

    ifname: str
    ifindex: int
    port: int
    ingress: BpfObject
    egress: BpfObject
    filters: list[TcFilter]
    first_pn: int = 0  # test knob: start every enabled connection's numbering at least here
    policy: DropPolicy = field(default_factory=DropPolicy)
    classifier: IngressClassifier | None = None  # XDP: drops objects of tracks nobody subscribed to
    recovery: KernelRecovery | None = None  # `--recovery kernel`; None: every copy is registered in aioquic
    watchdog: FilterWatchdog | None = None  # our TC filters still attached? (someone may `tc filter del` them)
    controller: FastPathController = field(init=False)
    streams: KernelStreams = field(init=False)
    hooks: KernelFastPathHooks = field(init=False)
    registrar: Registrar = field(default_factory=Registrar)
    stats: FastPathStats = field(default_factory=FastPathStats)
    _conns: dict[MoqtSession, MoqtConnection] = field(default_factory=dict)
    _upstream_ids: dict[MoqtSession, int] = field(default_factory=dict)
    _upstream_cids: dict[MoqtSession, frozenset[bytes]] = field(default_factory=dict)
    _next_conn_id: int = 1
    _exported: dict[MoqtSession, int] = field(default_factory=dict)
    _peer_cids: dict[MoqtSession, bytes] = field(default_factory=dict)
    _ring: RingBuffer | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _addresses: dict[MoqtSession, Addresses] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    relay: Relay | None = None
    _congested: dict[MoqtSession, bool] = field(default_factory=dict)
    _policing: set[int] = field(default_factory=set)  # subscription slots whose threshold is in force

    def __post_init__(self) -> None:
        self.controller = FastPathController(self.ingress.maps, self.egress.maps)
        self.streams = KernelStreams(self.controller)
        self.registrar.on_stream = self.streams.record
        self.hooks = KernelFastPathHooks(self.controller, self._downstream_of, self._upstream_of, lambda t: True,
                                         drop_group_rest=self.policy.rest_of_group,
                                         on_slot_freed=self._slot_freed)

    def _slot_freed(self, slot: int) -> None:
        self._policing.discard(slot)
        self.streams.unmap_slot(slot)

    # --- life cycle ---------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, ifname: str, port: int, pin_prefix: str | None = None, first_pn: int = 0,
              policy: DropPolicy | None = None, classifier: bool = True, recovery: str = "user",
              pass_interval_ms: float = DEFAULT_PASS_INTERVAL_MS,
              registration_ring: int | None = None) -> KernelFastPath:
        """Load both programs (configured for the relay's UDP port), attach them to ``ifname`` in the current
        network namespace, and pin their maps under /sys/fs/bpf/<pin_prefix> (for `relay stats`).
        ``recovery``: "user" (per-packet registration), "kernel" (client_ingress too; failing is an error) or
        "auto" (kernel where it loads, else user with a warning). ``registration_ring``: the size in bytes of the
        `reg_events` ring (config `[fastpath] registration_ring`; None: the object's 1 MiB)."""
        if recovery not in ("user", "kernel", "auto"):
            raise ValueError(f"recovery {recovery!r}: user, kernel or auto")
        ingress_o, egress_o = build_path("server_ingress"), build_path("client_egress")
        for path in (ingress_o, egress_o):
            if not path.exists():
                raise FastPathUnavailable(f"{path} is missing: run `make bpf` (or `make -C bpf`)")
        ifindex = socket_ifindex(ifname)
        icfg = IngressConfig()
        icfg.port[0], icfg.dcid_len[0] = port, HOST_CID_LEN
        policy = policy or DropPolicy()
        ecfg = EgressConfig()
        ecfg.port[0] = port
        ecfg.congestion_high_pct, ecfg.congestion_low_pct = round(policy.high * 100), round(policy.low * 100)
        ecfg.congestion_hold_ms = min(255, round(policy.interval * 1000))
        lens = list(PEER_CID_LENS[:EGRESS_MAX_DCID_LENS]) + [0xFF] * EGRESS_MAX_DCID_LENS
        ecfg.dcid_len[:] = lens[:EGRESS_MAX_DCID_LENS]
        assert MAX_RELAY_PORTS >= 1
        sweep_stale_pins()
        pins = PinDir(pin_prefix or f"{PIN_PREFIX}{os.getpid()}")
        objs: list[BpfObject] = []
        filters: list[TcFilter] = []
        try:
            objs.append(BpfObject.load(ingress_o, rodata={"cfg": icfg}, pin_dir=pins))
            sizes = {"reg_events": registration_ring} if registration_ring else None
            objs.append(BpfObject.load(egress_o, rodata={"egress_cfg": ecfg}, pin_dir=pins, max_entries=sizes))
            for obj, prog, direction, prio in ((objs[0], "server_ingress", Direction.INGRESS, SERVER_INGRESS_PRIO),
                                               (objs[1], "client_egress", Direction.EGRESS, 1)):
                f = TcFilter(obj.programs[prog].fd, ifindex, direction, name=prog, prio=prio)
                filters.append(f.attach())
        except BaseException as exc:
            _undo(filters, objs, pins)
            if isinstance(exc, (LoadError, OSError)):
                raise FastPathUnavailable(f"loading or attaching the fast-path programs on {ifname} failed: {exc}") \
                    from exc
            raise
        rec = None
        if recovery != "user":
            try:
                rec = KernelRecovery.start(objs[1], ifindex, port, HOST_CID_LEN, pins, pass_interval_ms)
            except RecoveryUnavailable as exc:
                if recovery == "kernel":
                    _undo(filters, objs, pins)
                    raise FastPathUnavailable(f"--recovery kernel: {exc}") from exc
                log.warning("kernel recovery unavailable (%s): every forwarded copy is registered in aioquic", exc)
        clf = None
        if classifier:
            try:
                clf = IngressClassifier.start(ifindex, port, HOST_CID_LEN, pins)
            except (LoadError, OSError, NetlinkError) as exc:
                log.warning("ingress classifier not attached (%s): objects of unsubscribed tracks reach user space",
                            exc)
        return cls(ifname, ifindex, port, objs[0], objs[1], filters, first_pn=first_pn, policy=policy,
                   classifier=clf, recovery=rec)

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start draining the registration ring from this event loop."""
        self._loop = loop
        self._ring = self.egress.ring_buffer("reg_events", self.registrar.on_record, RegEvent)
        loop.add_reader(self._ring.epoll_fd, self.drain)
        filters = self.filters + ([self.recovery.filter] if self.recovery is not None else [])
        # the check runs in a worker thread (pyroute2's synchronous netlink calls cannot run inside this loop); the
        # fallback itself runs here, on the loop's thread, like everything else that touches aioquic
        def lost(missing: list[TcFilter]) -> None:
            loop.call_soon_threadsafe(self._filters_lost, missing)

        self.watchdog = FilterWatchdog(filters, on_lost=lost)
        self._tasks.add(loop.create_task(self._watch_filters(self.watchdog)))
        if self.recovery is not None:  # the egress program applies the policy from the kernel's window
            self._tasks.add(loop.create_task(self._every(DEFAULT_SWEEP_INTERVAL, self.sweep_recovery)))
        elif self.policy.drop_above is not None:
            self._tasks.add(loop.create_task(self._every(self.policy.interval, self.police)))

    def stop(self) -> None:
        """Detach, close, unpin: nothing of this run stays in the kernel."""
        if self._loop is not None and self._ring is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._ring.epoll_fd)
        for f in self.filters:
            with contextlib.suppress(Exception):
                f.detach()
        self.filters.clear()
        if self.classifier is not None:
            self.classifier.stop()
            self.classifier = None
        if self.recovery is not None:
            self.recovery.stop()
            self.recovery = None
        pin_dir = self.ingress.pin_dir or self.egress.pin_dir
        self.egress.close()
        self.ingress.close()
        if pin_dir is not None:
            with contextlib.suppress(OSError):
                pin_dir.remove()
        for task in self._tasks:
            task.cancel()

    # --- wiring into the relay and the connections -----------------------------------------------------------------

    def install(self, relay: Relay) -> None:
        self.relay = relay
        relay.hooks = self.hooks
        if self.classifier is not None:
            relay.hooks = CompositeHooks([self.hooks, self.classifier.hooks(self._upstream_of)])
        relay.forwarder.kernel_copied = self.kernel_copied
        relay.forwarder.kernel_stream_opened = self._stream_opened
        relay.forwarder.upstream_stream_ended = self._stream_ended
        relay.forwarder.kernel_stream_stopped = self._stream_stopped
        relay.subscription_counts = self.subscription_counts

    def connection_hooks(self, inner: ConnectionHooks) -> ConnectionHooks:
        """The HAL's hooks plus the fast path's (registration before every datagram, exports after)."""

        def made(conn: MoqtConnection) -> None:
            inner.connection_made(conn)
            self._conns[conn.session] = conn

        def keys(conn: MoqtConnection) -> None:
            inner.keys_available(conn)
            self._register_upstream(conn)
            # route and neighbour lookups need netlink round trips: done now, ready by the first SUBSCRIBE
            task = asyncio.ensure_future(self._resolve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        def lost(conn: MoqtConnection) -> None:
            self._forget(conn)
            inner.connection_lost(conn)

        def arriving(conn: MoqtConnection) -> None:
            inner.datagram_arriving(conn)
            if self.registrar.conns:
                self.drain()

        def handled(conn: MoqtConnection) -> None:
            inner.datagram_handled(conn)
            self._export_acked(conn)
            self.streams.apply()  # what the kernel sent leaves aioquic's pending data once it is written
            if self.hooks.enabled(conn.session):
                self.streams.refresh(conn._quic)

        return ConnectionHooks(made, keys, lost, arriving, handled)

    def drain(self) -> None:
        """Register every record the program reported (ring readable, or a datagram about to be processed)."""
        if self._ring is None:
            return
        if self.registrar.drain(self._ring):
            self.stats.drains += 1
            for quic in self.registrar.touched:
                proto = self._protocol_of(quic)
                if proto is not None:
                    proto.rearm_timer()

    def kernel_copied(self, track: Track, data: bytes, end: int) -> bool:
        """Did server_ingress clone this upstream datagram (Forwarder: else user space serves kernel subscribers)?"""
        track_id = self.hooks.track_id(track)
        if track_id is None:
            return False
        try:
            group, obj = datagram_location(data, end)
        except Exception:
            return False
        return self.ingress.maps["cloned_objects"].lookup(ObjectKey(track_id=track_id, group=group, object=obj)) is not None

    # --- what the hooks ask -----------------------------------------------------------------------------------------

    def _protocol_of(self, quic: QuicConnection) -> MoqtConnection | None:
        for conn in self._conns.values():
            if conn._quic is quic:
                return conn
        return None

    def _upstream_of(self, session: MoqtSession) -> int | None:
        return self._upstream_ids.get(session)

    def _downstream_of(self, session: MoqtSession) -> DownstreamPath | None:
        conn = self._conns.get(session)
        if conn is None:
            return None
        quic = conn._quic
        if not isinstance(quic, OffloadedQuicConnection) or not quic.offload_status().tx_offloaded:
            # software protection: a kernel copy would leave unprotected (never), so this one stays in user space
            self.stats.refused_connections += 1
            return None
        peer = quic._peer_cid.cid
        if len(peer) not in PEER_CID_LENS:
            self.stats.refused_connections += 1
            log.info("fast path: peer CID length %d not configured; connection stays in user space", len(peer))
            return None
        addresses = self._addresses.get(session)
        if addresses is None:
            return None  # not resolved yet: `_resolve` adds its subscriptions when it is
        registrar, controller, hooks = self.registrar, self.controller, self.hooks

        def next_pn() -> int:
            return max(int(quic._packet_number), self.first_pn)

        def enable_numbering() -> None:
            enable(quic)
            quic.offload_pn_source = lambda: controller.next_pn(hooks.conn_index(session))
            self.stats.enabled_connections += 1
            index = hooks.conn_index(session)
            if self.recovery is not None and index < RECOVERY_CONNS_MAX:
                self.recovery.enable(index, quic, (c.cid for c in quic._host_cids))

        send = quic._cryptos[Epoch.ONE_RTT].send
        return DownstreamPath(
            addresses, dcid=peer, ifindex=self.ifindex, key_phase=int(send.key_phase), next_pn=next_pn,
            enable=enable_numbering, bind=lambda slot: registrar.bind(slot, quic), unbind=registrar.unbind,
            recovery_mds=int(quic._max_datagram_size) if self.recovery is not None else None,
            auto_drop_above=self.policy.drop_above if self.recovery is not None else None,
            released=lambda: self.recovery.disable_quic(quic) if self.recovery is not None else None,
        )  # fmt: skip

    async def _resolve(self, conn: MoqtConnection) -> None:
        try:
            addresses = await self.lookup_addresses(conn._quic)
        except (LookupError, OSError) as exc:
            log.info("fast path: %s; that connection stays in user space", exc)
            return
        session = conn.session
        if session not in self._conns:
            return  # gone meanwhile
        self._addresses[session] = addresses
        # subscriptions answered before the lookup finished join the fast path now
        for sub in self.relay.subscriptions_of(session) if self.relay is not None else []:
            self.hooks.subscriber_added(sub.track, sub)

    async def lookup_addresses(self, quic: QuicConnection) -> Addresses:
        """Where the connection's packets go, from aioquic's path and the kernel's route and neighbour tables."""
        if not quic._network_paths:
            raise LookupError("no network path yet")
        host, dport = quic._network_paths[0].addr[:2]
        dst = ipaddress.ip_address(host)
        if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
            dst = dst.ipv4_mapped
        async with AsyncIPRoute() as ipr:
            routes = await _all(ipr.route("get", dst=str(dst)))
            if not routes:
                raise LookupError(f"no route to {dst}")
            oif, src = routes[0].get("RTA_OIF"), routes[0].get("RTA_PREFSRC")
            if oif != self.ifindex:
                raise LookupError(f"{dst} is not reached through {self.ifname}")
            gateway = routes[0].get("RTA_GATEWAY") or str(dst)
            lladdr = None
            for n in await _all(ipr.neigh("dump", ifindex=oif)):
                if n.get("NDA_DST") == gateway and n.get("NDA_LLADDR"):
                    lladdr = n.get("NDA_LLADDR")
            if lladdr is None:
                raise LookupError(f"no neighbour entry for {gateway}")
            links = await _all(ipr.link("get", index=oif))
        return Addresses(
            eth_src=bytes.fromhex(links[0].get("IFLA_ADDRESS").replace(":", "")),
            eth_dst=bytes.fromhex(str(lladdr).replace(":", "")),
            src=ipaddress.ip_address(src), dst=dst, sport=self.port, dport=int(dport),
        )  # fmt: skip

    # --- connection events ---------------------------------------------------------------------------------------

    def _register_upstream(self, conn: MoqtConnection) -> None:
        """Every offloaded connection may publish: its host CIDs make its packets candidates for cloning."""
        quic = conn._quic
        if not isinstance(quic, OffloadedQuicConnection) or not quic.offload_status().rx_offloaded:
            return
        self._upstream_ids[conn.session] = self._next_conn_id
        self._next_conn_id += 1
        self._sync_upstream_cids(conn.session, frozenset(c.cid for c in quic._host_cids))

    def _sync_upstream_cids(self, session: MoqtSession, cids: frozenset[bytes]) -> None:
        conn_id = self._upstream_ids.get(session)
        if conn_id is None:
            return
        old = self._upstream_cids.get(session, frozenset())
        for cid in sorted(cids - old):
            if len(cid) == HOST_CID_LEN:
                self.controller.add_upstream(cid, conn_id)
                if self.classifier is not None:
                    self.classifier.add_upstream(cid, conn_id)
        for cid in sorted(old - cids):
            self.controller.remove_upstream(cid)
            if self.classifier is not None:
                self.classifier.remove_upstream(cid)
        self._upstream_cids[session] = cids

    def _forget(self, conn: MoqtConnection) -> None:
        session = conn.session
        self.hooks.session_closed(session)  # idempotent: the relay may have told it already
        self._sync_upstream_cids(session, frozenset())
        self._upstream_ids.pop(session, None)
        self._upstream_cids.pop(session, None)
        self._exported.pop(session, None)
        self._peer_cids.pop(session, None)
        self._congested.pop(session, None)
        self._addresses.pop(session, None)
        self.streams.forget(conn._quic)
        self._conns.pop(session, None)

    def _export_acked(self, conn: MoqtConnection) -> None:
        session = conn.session
        if self.recovery is not None or not self.hooks.enabled(session):
            return  # kernel recovery: the egress program reads largest_acked from recovery_state itself
        largest = conn._quic._spaces[Epoch.ONE_RTT].largest_acked_packet
        last = self._exported.get(session)
        if largest < 0 or (last is not None and largest - last < EXPORT_STEP):
            return
        self._exported[session] = largest
        for slot in self.hooks.slots_of(session):
            with contextlib.suppress(KeyError):
                self.controller.set_largest_acked(slot, largest)

    def observe(self, conn: OffloadedQuicConnection, host_cids: frozenset[bytes] | None = None,
                peer_cid: bytes | None = None, tx_phase: int | None = None) -> None:
        """NIC offload events (`OffloadObserver`): CID changes and send-key updates reach the maps."""
        session = next((s for s, c in self._conns.items() if c._quic is conn), None)
        if session is None:
            return
        if host_cids is not None:
            self._sync_upstream_cids(session, host_cids)
            if self.recovery is not None and self.hooks.enabled(session):
                self.recovery.update_cids(self.hooks.conn_index(session), host_cids)
        if peer_cid is not None:
            previous = self._peer_cids.get(session)
            self._peer_cids[session] = peer_cid
            if previous is None or previous == peer_cid:
                peer_cid = None  # unchanged; an enabled connection took the CID in use when it was enabled
        if (peer_cid is not None or tx_phase is not None) and self.hooks.enabled(session):
            self.hooks.connection_changed(session, dcid=peer_cid, key_phase=tx_phase)

    # --- subgroup streams (relay.stream_copies) -------------------------------------------------------------------

    def _stream_opened(self, track: Track, sub: Downstream, up_id: int, down_id: int, first_len: int) -> None:
        slot, conn_id, track_id = self.hooks.slot_of(sub), self._upstream_of(track.publisher), self.hooks.track_id(track)
        conn = self._conns.get(sub.session)
        if slot is None or conn_id is None or track_id is None or conn is None:
            return
        try:
            self.streams.opened(conn._quic, slot, conn_id, track_id, up_id, down_id, first_len)
        except OSError as exc:  # a full map: this stream stays in user space
            log.info("fast path: stream %d not mapped: %s", up_id, exc)

    def _stream_ended(self, session: MoqtSession, up_id: int) -> None:
        conn_id = self._upstream_ids.get(session)
        if conn_id is not None:
            self.streams.ended(conn_id, up_id)

    def _stream_stopped(self, sub: Downstream, up_id: int) -> None:
        slot = self.hooks.slot_of(sub)
        if slot is not None:
            self.streams.unmap(slot, up_id)

    # --- drop policy -------------------------------------------------------------------------------------------

    @staticmethod
    async def _every(interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                job()
            except Exception:  # a bug in a sweep must not stop forwarding
                log.exception("periodic fast-path job %s failed", getattr(job, "__name__", job))

    @staticmethod
    async def _watch_filters(watchdog: FilterWatchdog) -> None:
        loop = asyncio.get_running_loop()
        while not watchdog.fallen_back:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                await loop.run_in_executor(None, watchdog.check)
            except Exception:  # a bug in the check must not stop forwarding
                log.exception("fast path watchdog failed")

    def _filters_lost(self, missing: list[TcFilter]) -> None:
        """Someone removed one of our filters (relay.fastpath_watchdog): a half path must not run (copies without
        their rewrite, user packets without their renumbering). In this synchronous step every subscription leaves
        the maps and goes back to user space, every connection leaves renumbering and its numbering goes back to
        aioquic, continuing after the program's last PN; then the remaining filters are detached (netlink, in a
        worker thread)."""
        self.drain()  # what the programs reported before they went
        for session, index in self.hooks.abandon():
            conn = self._conns.get(session)
            if conn is not None:
                hand_back(conn._quic, self.controller.next_pn(index))
                conn.transmit()  # the stranded frames, renumbered by aioquic now
        for task in self._tasks:
            task.cancel()  # the recovery sweep, the policy and the watchdog have nothing left to do
        self.stats.fallen_back = 1
        rest = [f for f in self.filters + ([self.recovery.filter] if self.recovery is not None else [])
                if f not in missing]
        asyncio.get_running_loop().run_in_executor(None, _detach, rest)

    def sweep_recovery(self) -> None:
        """Kernel recovery's timers (relay.kernel_recovery); probes it queued in aioquic leave now."""
        assert self.recovery is not None
        for quic in self.recovery.sweep():
            proto = self._protocol_of(quic)
            if proto is not None:
                proto.transmit()

    def police(self) -> None:
        """One sweep (`--recovery user`): each enabled connection's congestion state, from aioquic's recovery, becomes
        its subscriptions' priority threshold. With kernel recovery the egress program does this per copy."""
        for session, conn in list(self._conns.items()):
            if not self.hooks.enabled(session):
                continue
            loss = conn._quic._loss
            was = self._congested.get(session, False)
            now = self.policy.congested(int(loss.bytes_in_flight), int(loss.congestion_window), was)
            slots = self.hooks.slots_of(session)[1:]  # subscription slots (the first is the connection's own)
            fresh = [s for s in slots if (s in self._policing) != now]
            if now == was and not fresh:
                continue
            self._congested[session] = now
            if now and not was:
                self.stats.congestion_onsets += 1
            for slot in fresh:
                with contextlib.suppress(KeyError):
                    self.controller.set_priority_threshold(slot, self.policy.drop_above if now else None)
                    if now:
                        self._policing.add(slot)
                    else:
                        self._policing.discard(slot)

    def subscription_counts(self, sub: Downstream) -> dict[str, Any] | None:
        """The kernel's figures for one subscription: its slot's copies and policy drops and, with kernel recovery,
        the connection's window as the kernel sees it (from the last sweep: no 12 KiB read per stats request)."""
        out: dict[str, Any] = {}
        slot = self.hooks.slot_of(sub)
        st = self.controller.slot_state(slot) if slot is not None else None
        if st is not None:
            out.update(slot=slot, kernel_sent=int(st.sent), kernel_priority_drops=int(st.priority_drops),
                       kernel_group_drops=int(st.group_drops))
        if self.recovery is not None and self.hooks.enabled(sub.session):
            f = self.recovery.figures(self.hooks.conn_index(sub.session))
            if f is not None and f.sent_packets:
                out.update(recovery="kernel", cwnd=f.cwnd, bytes_in_flight=f.bytes_in_flight, rtt_ms=f.smoothed_rtt_ms)
        return out or None

    def _connection_counters(self) -> dict[str, Any]:
        out: dict[str, Any] = vars(self.stats).copy()
        # subscriptions (or connections) kept in user space because a map or slot capacity ran out (invariant 6)
        out["refused_full"] = self.hooks.full
        if self.watchdog is not None:
            out.update(self.watchdog.counters())
        if self.recovery is not None:  # onsets of the egress program's policy
            out["congestion_onsets"] += self.recovery.stats.congestion_onsets
        return out

    def subscription_stats(self) -> list[dict[str, int]]:
        """Per kernel-served subscription: slot, copies sent, drops by reason (for `relay stats` and reports)."""
        out = []
        for sub, slot in self.hooks.subscriptions():
            st = self.controller.slot_state(slot)
            if st is not None:
                out.append({"slot": slot, "request_id": sub.request_id, "sent": int(st.sent),
                            "priority_drops": int(st.priority_drops), "group_drops": int(st.group_drops)})
        return out

    # --- counters ----------------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        ing = self.ingress.maps["ingress_stats"]
        eg = self.egress.maps["egress_stats"]
        return {
            "ingress": {s.name: ing.sum_percpu(int(s)) for s in IngressStat if s.name != "ST_MAX"},
            "egress": {s.name: eg.sum_percpu(int(s)) for s in EgressStat if s.name != "EG_MAX"},
            "registration": vars(self.registrar.stats).copy(),
            "connections": self._connection_counters(),
            "subscriptions": self.subscription_stats(),
            "streams": vars(self.streams.stats).copy(),
            "classifier": self.classifier.counters() if self.classifier is not None else None,
            "recovery": self.recovery.counters() if self.recovery is not None else None,
        }


class OffloadObserver:
    """Wraps the NIC offload controller: every call goes through unchanged, and the fast path hears of CID
    changes and send-key updates in the same synchronous step (so copies carry the current CID and key phase)."""

    def __init__(self, inner: Any, fast: KernelFastPath) -> None:
        self.inner = inner
        self.fast = fast

    def install_keys(self, conn: OffloadedQuicConnection, keys: OneRttKeys) -> bool:
        ok = bool(self.inner.install_keys(conn, keys))
        if keys.direction is KeyDirection.TX and keys.trigger != "tls":
            self.fast.observe(conn, tx_phase=keys.key_phase)
        return ok

    def update_cids(self, conn: OffloadedQuicConnection, host_cids: frozenset[bytes], peer_cid: bytes) -> None:
        self.inner.update_cids(conn, host_cids, peer_cid)
        self.fast.observe(conn, host_cids=host_cids, peer_cid=peer_cid)

    def release(self, conn: OffloadedQuicConnection) -> None:
        self.inner.release(conn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _detach(filters: list[TcFilter]) -> None:
    for f in filters:
        try:
            f.detach()
        except Exception as exc:  # logged: stop() tries again
            log.warning("fast path: detaching %s failed: %s", f.name, exc)


def _undo(filters: list[TcFilter], objs: list[BpfObject], pins: PinDir) -> None:
    """A start that failed half-way: detach, close and unpin what it made."""
    for f in filters:
        with contextlib.suppress(Exception):
            f.detach()
    for o in objs:
        o.close()
    pins.remove()


async def _all(call: Any) -> list[Any]:
    """pyroute2 0.9's async calls return a list or an async generator, depending on the request."""
    result = await call
    if hasattr(result, "__aiter__"):
        return [msg async for msg in result]
    return list(result)


def sweep_stale_pins(root: Path = Path("/sys/fs/bpf")) -> list[Path]:
    """Remove the pin folders of relays that no longer run (killed with SIGKILL: no chance to unpin)."""
    removed = []
    for folder in root.glob(f"{PIN_PREFIX}*") if root.is_dir() else []:
        pid = folder.name[len(PIN_PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                PinDir(folder.name, root).remove()
                removed.append(folder)
                log.info("removed the pins of relay %s, which is gone: %s", pid, folder)
    return removed


def socket_ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError as exc:
        raise FastPathUnavailable(f"no device {ifname!r} in this network namespace") from exc
