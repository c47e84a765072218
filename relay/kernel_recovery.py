"""Kernel-resident loss recovery of the fast path: `relay --recovery kernel` (issue 5, docs/kernel-recovery.md).

With `--recovery user` (the thesis design) every forwarded copy is registered in aioquic and every ACK for it is
processed in Python. Here the kernel does both: client_egress records each packet it numbers in `recovery_state`
(shared with this module's client_ingress through bpf_map__reuse_fd), and client_ingress, attached to the relay
port's TC ingress ahead of server_ingress, applies the subscribers' ACKs (RTT, packet-threshold loss, NewReno) and
consumes the packets that only acknowledge forwarded copies.

What stays in user space is aggregate work, per connection and not per packet: a sweep every few tens of
milliseconds (`recovery_sweep_prog` through BPF_PROG_TEST_RUN: time-threshold loss, a recount of bytes in flight,
whether a probe timeout is due; user space then sends the probe, a PING, through aioquic), the loss records, and
the figures (`RecoveryFigures`) the drop policy and the stats read.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aioquic.quic.connection import QuicConnection

from bpf import libbpf
from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, LoadError, PinDir, RingBuffer, build_path
from bpf.structs import (
    RECOVERY_NONE,
    CidKey,
    IngressConfig,
    LossEvent,
    RecoveryConn,
    RecoveryFigures,
    RecoveryStat,
    RecoverySweepCmd,
)

log = logging.getLogger("relay.recovery")

CLIENT_INGRESS_PRIO = 1  # runs before server_ingress (prio SERVER_INGRESS_PRIO): consumed ACKs skip its parse
SERVER_INGRESS_PRIO = 2
# One subscriber packet per connection reaches aioquic at least this often even when the kernel could consume it.
# What aioquic needs from such packets is little: its idle timer (seconds), and a largest acknowledged PN for its own
# loss detection; ACKs of its own packets (its RTT samples and recovery) always go up anyway (RS_PASS_USER_ACKED).
# A subscriber ACKs every ~25 ms (max_ack_delay) or two packets, so at 5 ms nothing would ever be consumed.
DEFAULT_PASS_INTERVAL_MS = 100.0
# Seconds between sweeps: time-threshold losses and probe timeouts at this resolution. Not "a few per RTT" (an RTT is
# a millisecond in the sim): what the sweep finds is a tail loss or a stall, and the drop policy does not wait for
# it (the egress program reads the window that every ACK updates).
DEFAULT_SWEEP_INTERVAL = 0.05


class RecoveryUnavailable(RuntimeError):
    """client_ingress could not be loaded or attached: the message says why."""


@dataclass
class ConnectionFigures:
    """One connection's aggregate record (issue 5 part 4), from the kernel's state at the last sweep."""

    conn_index: int
    sent_packets: int = 0
    sent_bytes: int = 0
    acked_packets: int = 0
    lost_packets: int = 0
    evicted: int = 0
    bytes_in_flight: int = 0
    cwnd: int = 0
    ssthresh: int | None = None
    smoothed_rtt_ms: float | None = None
    min_rtt_ms: float | None = None
    latest_rtt_ms: float | None = None
    rttvar_ms: float | None = None
    congestion_events: int = 0
    congested: bool = False  # the egress drop policy's state at the sweep
    congestion_onsets: int = 0
    probes: int = 0  # PINGs sent because a probe timeout was due


@dataclass
class _Conn:
    conn_index: int
    quic: QuicConnection
    cids: set[bytes]
    max_ack_delay_ns: int
    mds: int
    figures: ConnectionFigures
    pto_count: int = 0  # RFC 9002 6.2.1: consecutive probe timeouts without ACK progress (backoff)
    last_probe: float = 0.0
    acked_at_probe: int = -1


@dataclass
class RecoveryStats:
    sweeps: int = 0
    time_lost: int = 0
    probes: int = 0
    loss_records: int = 0  # forwarded datagram copies declared lost (datagrams are not retransmitted: counted)
    largest_sent: int = -1  # largest packet number any connection sent (seen by a sweep)
    congestion_onsets: int = 0  # the egress drop policy's onsets, summed over connections (also closed ones)


class _SweepCall:
    """One connection's sweep, BPF_PROG_TEST_RUN then a read of its figures, with every buffer allocated once:
    it runs for every connection every sweep interval, so the generic helpers' per-call allocations show up in
    the relay's profile (they were a third of its busy time at 16 subscribers)."""

    def __init__(self, prog_fd: int, figures_fd: int) -> None:
        self.prog_fd, self.figures_fd = prog_fd, figures_fd
        self.frame = ctypes.create_string_buffer(14 + ctypes.sizeof(RecoverySweepCmd))
        self.cmd = RecoverySweepCmd.from_buffer(self.frame, 14)
        self.out = ctypes.create_string_buffer(len(self.frame) + 256)
        self.opts = libbpf.BpfTestRunOpts(
            sz=ctypes.sizeof(libbpf.BpfTestRunOpts), data_in=ctypes.cast(self.frame, ctypes.c_void_p),
            data_out=ctypes.cast(self.out, ctypes.c_void_p), data_size_in=len(self.frame), repeat=1,
        )  # fmt: skip
        self.key = ctypes.c_uint32()
        self.value = RecoveryFigures()
        self.lib = libbpf.lib()

    def run(self, conn_index: int) -> RecoveryFigures | None:
        """The connection's figures after its sweep, or None when it is not active (or the kernel refused)."""
        self.cmd.conn_index = conn_index
        self.opts.data_size_out = len(self.out)
        if self.lib.bpf_prog_test_run_opts(self.prog_fd, ctypes.byref(self.opts)) < 0 or self.opts.retval != 1:
            return None
        self.key.value = conn_index
        if self.lib.bpf_map_lookup_elem(self.figures_fd, ctypes.byref(self.key), ctypes.byref(self.value)) < 0:
            return None
        return self.value


@dataclass
class KernelRecovery:
    """client_ingress on the relay port, and the per-connection bookkeeping around `recovery_state`."""

    obj: BpfObject
    filter: TcFilter
    egress: BpfObject  # client_egress: owns recovery_state (seeded by FastPathController.enable_connection)
    pass_interval_us: int = int(DEFAULT_PASS_INTERVAL_MS * 1000)
    conns: dict[int, _Conn] = field(default_factory=dict)
    stats: RecoveryStats = field(default_factory=RecoveryStats)
    _ring: RingBuffer | None = None
    _call: _SweepCall | None = None

    @classmethod
    def start(cls, egress: BpfObject, ifindex: int, port: int, host_cid_len: int, pins: PinDir | None,
              pass_interval_ms: float = DEFAULT_PASS_INTERVAL_MS) -> KernelRecovery:
        """Load client_ingress sharing client_egress's `recovery_state`, attach it ahead of server_ingress."""
        path = build_path("client_ingress")
        if not path.exists():
            raise RecoveryUnavailable(f"{path} is missing: run `make bpf` (or `make -C bpf`)")
        if "recovery_state" not in egress.maps:
            raise RecoveryUnavailable("client_egress has no recovery_state map (an old build: run `make bpf`)")
        cfg = IngressConfig()
        cfg.port[0], cfg.dcid_len[0] = port, host_cid_len
        try:
            obj = BpfObject.load(path, rodata={"cfg": cfg}, pin_dir=pins,
                                 reuse_maps={"recovery_state": egress.maps["recovery_state"]})
        except (LoadError, OSError) as exc:
            raise RecoveryUnavailable(f"loading client_ingress failed: {exc}") from exc
        filt = TcFilter(obj.programs["client_ingress"].fd, ifindex, Direction.INGRESS, prio=CLIENT_INGRESS_PRIO,
                        name="client_ingress")
        try:
            filt.attach()
        except OSError as exc:
            obj.close()
            raise RecoveryUnavailable(f"attaching client_ingress failed: {exc}") from exc
        self = cls(obj, filt, egress, pass_interval_us=max(0, int(pass_interval_ms * 1000)))
        self._ring = obj.ring_buffer("loss_events", self._on_loss, LossEvent)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.filter.detach()
        self.conns.clear()
        self.obj.close()

    # --- connections ------------------------------------------------------------------------------------------

    def enable(self, conn_index: int, quic: QuicConnection, host_cids: Iterable[bytes]) -> None:
        """After FastPathController.enable_connection seeded the state: the subscriber's ACKs now go to the kernel."""
        max_ack_delay = float(getattr(quic._loss, "max_ack_delay", 0.025))
        conn = _Conn(conn_index, quic, set(), int(max_ack_delay * 1e9), int(quic._max_datagram_size),
                     ConnectionFigures(conn_index))
        self.conns[conn_index] = conn
        self.obj.maps["recovery_figures"].update(conn_index, RecoveryFigures(
            max_ack_delay_ns=conn.max_ack_delay_ns, max_datagram_size=conn.mds, active=1))
        self.update_cids(conn_index, host_cids)

    def update_cids(self, conn_index: int, host_cids: Iterable[bytes]) -> None:
        """The relay's CIDs the subscriber may send to (new ones first, retired ones after)."""
        conn = self.conns.get(conn_index)
        if conn is None:
            return
        cids = set(host_cids)
        value = RecoveryConn(
            conn_index=conn_index, max_ack_delay_us=conn.max_ack_delay_ns // 1000,
            pass_interval_us=self.pass_interval_us or 1, max_datagram_size=min(conn.mds, 0xFFFF),
            ack_delay_exponent=int(getattr(conn.quic, "_remote_ack_delay_exponent", 3)),
        )  # fmt: skip
        for cid in sorted(cids - conn.cids):
            self.obj.maps["recovery_conns"].update(CidKey.of(cid), value)
        for cid in sorted(conn.cids - cids):
            self.obj.maps["recovery_conns"].delete(CidKey.of(cid))
        conn.cids = cids

    def disable_quic(self, quic: QuicConnection) -> None:
        for conn in [c for c in self.conns.values() if c.quic is quic]:
            self.disable(conn.conn_index)

    def disable(self, conn_index: int) -> None:
        conn = self.conns.pop(conn_index, None)
        if conn is None:
            return
        self.obj.maps["recovery_figures"].update(conn_index, RecoveryFigures())  # inactive: the sweep skips it
        for cid in sorted(conn.cids):
            self.obj.maps["recovery_conns"].delete(CidKey.of(cid))

    # --- the sweep --------------------------------------------------------------------------------------------

    def sweep(self) -> list[QuicConnection]:
        """One pass over every connection (per connection one BPF_PROG_TEST_RUN and a 144-byte read, not the
        12 KiB ring); returns the connections that queued a probe (the caller transmits)."""
        probed = []
        now = time.monotonic()
        if self._call is None:
            self._call = _SweepCall(self.obj.programs["recovery_sweep_prog"].fd, self.obj.maps["recovery_figures"].fd)
        for conn in list(self.conns.values()):
            k = self._call.run(conn.conn_index)
            if k is None:
                continue
            self.stats.sweeps += 1
            self.stats.time_lost += int(k.lost_now)
            f = conn.figures
            if k.largest_sent != RECOVERY_NONE:
                self.stats.largest_sent = max(self.stats.largest_sent, int(k.largest_sent))
            f.sent_packets, f.sent_bytes = int(k.sent_packets), int(k.sent_bytes)
            f.acked_packets, f.lost_packets, f.evicted = int(k.acked_packets), int(k.lost_packets), int(k.evicted)
            f.bytes_in_flight, f.cwnd = int(k.bytes_in_flight), int(k.cwnd)
            f.ssthresh = None if k.ssthresh == RECOVERY_NONE else int(k.ssthresh)
            f.congestion_events = int(k.congestion_events)
            self.stats.congestion_onsets += int(k.congestion_onsets) - f.congestion_onsets
            f.congested, f.congestion_onsets = bool(k.congested), int(k.congestion_onsets)
            if k.min_rtt != RECOVERY_NONE:
                f.smoothed_rtt_ms, f.min_rtt_ms = k.smoothed_rtt / 1e6, k.min_rtt / 1e6
                f.latest_rtt_ms, f.rttvar_ms = k.latest_rtt / 1e6, k.rttvar / 1e6
            if f.acked_packets != conn.acked_at_probe:
                conn.pto_count = 0  # ACK progress resets the backoff
            if k.pto_due and self._probe_due(conn, now):
                with contextlib.suppress(Exception):  # a closing connection refuses frames: nothing to probe
                    conn.quic.send_ping(0x50544F)  # uid "PTO": aioquic reports its ACK as a PingAcknowledged event
                    probed.append(conn.quic)
                    conn.pto_count += 1
                    conn.last_probe = now
                    conn.acked_at_probe = f.acked_packets
                    f.probes += 1
                    self.stats.probes += 1
        if self._ring is not None:
            self._ring.consume()
        return probed

    @staticmethod
    def _probe_due(conn: _Conn, now: float) -> bool:
        """RFC 9002 6.2.1: one probe per PTO, the period doubling while no ACK makes progress."""
        f = conn.figures
        srtt = (f.smoothed_rtt_ms if f.smoothed_rtt_ms is not None else 333.0) / 1e3  # 6.2.2: kInitialRtt
        rttvar = (f.rttvar_ms if f.rttvar_ms is not None else 166.5) / 1e3
        pto = srtt + max(4 * rttvar, 0.001) + conn.max_ack_delay_ns / 1e9
        return now - conn.last_probe >= pto * (2 ** min(conn.pto_count, 6))

    def _on_loss(self, record: Any) -> None:
        self.stats.loss_records += 1

    # --- what the relay reads ---------------------------------------------------------------------------------

    def figures(self, conn_index: int) -> ConnectionFigures | None:
        conn = self.conns.get(conn_index)
        return conn.figures if conn is not None else None

    def counters(self) -> dict[str, Any]:
        m = self.obj.maps["recovery_stats"]
        kernel = {s.name: m.sum_percpu(int(s)) for s in RecoveryStat if s.name != "RS_MAX"}
        passed = sum(v for k, v in kernel.items() if k.startswith("RS_PASS_"))
        seen = passed + kernel.get("RS_CONSUMED", 0)
        return {
            "kernel": kernel,
            "user": asdict(self.stats),
            "subscriber_packets_to_user_space": round(passed / seen, 4) if seen else None,
            "connections": [asdict(c.figures) for c in self.conns.values()],
        }
