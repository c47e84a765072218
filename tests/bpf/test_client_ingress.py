"""client_ingress.bpf.c + recovery.h through BPF_PROG_TEST_RUN, field by field against relay/recovery_model.py.

The test object recovery_test.o is client_ingress plus a program ``recovery_sent`` that calls recovery_on_sent()
(what the egress program does per numbered packet) and a ``test_clock`` map that fixes "now", so RTT samples
and the pass-up interval are deterministic. Every packet the subscriber sends is a real Ethernet/IPv4/UDP/QUIC
short-header frame; a packet the program does not consume must come back byte-identical."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.loader import BpfObject, RingBuffer, build_path
from bpf.structs import (
    RECOVERY_NONE,
    SENT_ACKED,
    SENT_IN_FLIGHT,
    SENT_LOST,
    CidKey,
    IngressConfig,
    LossEvent,
    RecoveryConn,
    RecoveryFigures,
    RecoveryStat,
    RecoveryState,
    RecoverySweepCmd,
)
from bpf.testrun import TC_ACT_SHOT, TC_ACT_UNSPEC
from bpf.testrun import test_run as prog_run
from relay.recovery_model import FORWARDED, RING, USER, Ack, Model, Outcome, Sent, ranges_of
from tests.bpf.packets import ack_frame, crypto_frame, eth, ipv4, short_header_packet, udp

PASS = TC_ACT_UNSPEC  # "not claimed": tc runs server_ingress next

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = RecoveryStat
PORT = 4433
DCID = bytes(range(0x10, 0x18))
IDX = 5
MS = 1_000_000
T0 = 1_000 * MS  # the test clock starts here (0 means "use the real clock")


@pytest.fixture(scope="module")
def obj(bpf_build: Path) -> Iterator[BpfObject]:
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(DCID)
    with BpfObject.load(build_path("recovery_test"), rodata={"cfg": cfg}) as o:
        yield o


def ack_bytes(ack: Ack) -> bytes:
    """RFC 9000 section 19.3 encoding of a decoded ACK (ranges highest first)."""
    (lo0, hi0), rest = ack.ranges[0], ack.ranges[1:]
    enc: list[tuple[int, int]] = []
    prev_lo = lo0
    for lo, hi in rest:
        enc.append((prev_lo - hi - 2, hi - lo))
        prev_lo = lo
    ecn = None if ack.ecn_ce is None else (0, 0, ack.ecn_ce)
    return ack_frame(hi0, ack.ack_delay, hi0 - lo0, tuple(enc), ecn)


def frame_of(frames: bytes, dcid: bytes = DCID, dport: int = PORT) -> bytes:
    return eth(ipv4(udp(40000, dport, short_header_packet(dcid, 7, frames)), src="198.18.2.2", dst="198.18.2.1"))


@dataclass
class Conn:
    """One connection on the loaded object, with the model beside it."""

    obj: BpfObject
    model: Model
    rb: RingBuffer
    losses: list[LossEvent] = field(default_factory=list)
    now: int = T0

    def stats(self) -> dict[RecoveryStat, int]:
        m = self.obj.maps["recovery_stats"]
        return {s: n for s in R if s != R.RS_MAX and (n := m.sum_percpu(int(s)))}

    def send(self, pn: int, size: int = 1200, owner: int = FORWARDED, at: int | None = None,
             stream: tuple[int, int, int] = (0, 0, 0)) -> None:
        at = self.now if at is None else at
        cmd = struct.pack("<QQQQIIIBB2x", pn, at, stream[0], stream[1], IDX, size, stream[2], owner, 0)
        res = prog_run(self.obj.programs["recovery_sent"].fd, bytes(14) + cmd)
        assert res.retval == 0
        self.model.on_sent(Sent(pn, size, at, owner, stream[0], stream[1], stream[2]))

    def run(self, frames: bytes, at: int | None = None) -> tuple[int, bytes]:
        self.now = self.now if at is None else at
        self.obj.maps["test_clock"].update(0, self.now)
        pkt = frame_of(frames)
        res = prog_run(self.obj.programs["client_ingress"].fd, pkt)
        if res.retval == PASS:
            assert res.data == pkt, "a packet that goes up must go up unchanged"
        return res.retval, res.data

    def ack(self, ack: Ack, at: int | None = None, extra: bytes = b"") -> tuple[int, Outcome]:
        """One ACK-only packet through the program and the model; returns (verdict, model outcome)."""
        verdict, _ = self.run(ack_bytes(ack) + extra, at)
        out = self.model.on_ack(ack, self.now)
        self._model_losses.extend(p for p in out.lost if p.owner == FORWARDED)
        reason = self.model.pass_up(bool(extra and extra.strip(b"\0")), out, self.now)
        assert verdict == (TC_ACT_SHOT if reason is None else PASS), (reason, out)
        self.check()
        return verdict, out

    def state(self) -> RecoveryState:
        s = self.obj.maps["recovery_state"].lookup(IDX)
        assert isinstance(s, RecoveryState)
        return s

    def check(self) -> None:
        """Every field of the kernel state equals the model's (ring entries included)."""
        s, m = self.state(), self.model
        none = RECOVERY_NONE
        expect = {
            "largest_acked": none if m.largest_acked is None else m.largest_acked,
            "largest_sent": none if m.largest_sent is None else m.largest_sent,
            "min_rtt": none if m.min_rtt is None else m.min_rtt,
        }
        for name in ("bytes_in_flight", "cwnd", "ssthresh", "recovery_start_ns", "latest_rtt", "smoothed_rtt",
                     "rttvar", "ecn_ce", "last_pass_ns", "acked_packets", "acked_bytes", "lost_packets",
                     "lost_bytes", "evicted", "sent_packets", "sent_bytes", "congestion_events"):
            expect[name] = getattr(m, name)
        got = {k: getattr(s, k) for k in expect}
        assert got == expect
        states = {"in_flight": SENT_IN_FLIGHT, "acked": SENT_ACKED, "lost": SENT_LOST}
        for p in m.sent.values():
            e = s.ring[p.pn % RING]
            assert (e.pn, e.size, e.sent_ns, e.owner, e.state) == (p.pn, p.size, p.sent_ns, p.owner, states[p.state])
        self.rb.consume()
        lost_fwd = [(e.pn, e.size, e.stream_id, e.stream_off) for e in self.losses]
        assert lost_fwd == [(p.pn, p.size, p.stream_id, p.stream_off) for p in self._model_losses]

    _model_losses: list[Sent] = field(default_factory=list)


def new_conn(obj: BpfObject, ack_delay_exponent: int = 3, max_ack_delay_us: int = 25_000,
             pass_interval_us: int = 5_000) -> Conn:
    obj.maps["recovery_state"].update(IDX, RecoveryState.seeded(1200))
    obj.maps["recovery_conns"].update(CidKey.of(DCID), RecoveryConn(
        conn_index=IDX, max_ack_delay_us=max_ack_delay_us, pass_interval_us=pass_interval_us,
        max_datagram_size=1200, ack_delay_exponent=ack_delay_exponent))
    for i in range(R.RS_MAX):
        obj.maps["recovery_stats"].update(i, 0)
    losses: list[LossEvent] = []
    rb = obj.ring_buffer("loss_events", losses.append, LossEvent)
    rb.consume()
    losses.clear()
    model = Model(mds=1200, ack_delay_exponent=ack_delay_exponent, max_ack_delay_us=max_ack_delay_us,
                  pass_interval_us=pass_interval_us)
    return Conn(obj, model, rb, losses)


@pytest.fixture
def conn(obj: BpfObject) -> Iterator[Conn]:
    c = new_conn(obj)
    yield c
    c.rb.close()


# ---- single and many ranges ----

def test_single_range_acks_and_samples_rtt(conn: Conn) -> None:
    for pn in range(10):
        conn.send(pn, at=T0 + pn * MS)
    verdict, out = conn.ack(Ack(((0, 9),), ack_delay=1000 >> 3), at=T0 + 60 * MS)
    assert verdict == PASS  # first packet of the connection: the periodic pass is due
    assert out.newly_acked == list(range(10))
    s = conn.state()
    assert (s.largest_acked, s.bytes_in_flight, s.latest_rtt) == (9, 0, 51 * MS)
    assert s.cwnd == 12000 + 10 * 1200  # slow start: + acked bytes
    assert conn.stats()[R.RS_ACKED] == 10


def test_many_ranges_ack_exactly_those_and_declare_the_holes_lost(conn: Conn) -> None:
    for pn in range(40):
        conn.send(pn, stream=(4, pn * 1000, 1000))
    acked = {pn for pn in range(40) if pn % 3 != 1}
    verdict, out = conn.ack(Ack(ranges_of(acked)), at=T0 + 30 * MS)
    assert verdict == PASS and len(out.lost) == 12  # 1, 4, ..., 34: 37 is only 2 below 39
    assert conn.stats()[R.RS_PASS_LOSS] == 1 and conn.stats()[R.RS_LOSS_RECORDS] == 12
    assert [e.stream_off for e in conn.losses] == [pn * 1000 for pn in range(1, 37, 3)]
    assert conn.state().congestion_events == 1


def test_ack_ecn_ce_increase_is_a_congestion_event(conn: Conn) -> None:
    for pn in range(10):  # a full window (12000 bytes): the first ACK grows it (RFC 9002 7.8)
        conn.send(pn)
    conn.ack(Ack(((0, 1),), ecn_ce=0), at=T0 + 10 * MS)
    assert conn.state().congestion_events == 0
    conn.ack(Ack(((2, 3),), ecn_ce=2), at=T0 + 11 * MS)
    s = conn.state()
    assert (s.congestion_events, s.ecn_ce, s.ssthresh) == (1, 2, (12000 + 2 * 1200) // 2)


def test_ranges_beyond_the_ring_are_ignored(conn: Conn) -> None:
    for pn in range(RING + 20):
        conn.send(pn, size=100)
    assert conn.state().evicted == 20
    conn.ack(Ack(((RING + 10, RING + 19), (0, RING - 10))), at=T0 + 5 * MS)
    s = conn.state()
    assert s.acked_packets == 10 + (RING - 10 - 20 + 1)  # PNs 0..19 left the ring unacknowledged


# ---- duplicates and reordering ----

def test_duplicate_ack_changes_nothing_and_is_consumed(conn: Conn) -> None:
    for pn in range(6):
        conn.send(pn)
    conn.ack(Ack(((0, 5),)), at=T0 + 10 * MS)
    before = bytes(conn.state())
    verdict, out = conn.ack(Ack(((0, 5),)), at=T0 + 11 * MS)
    assert verdict == TC_ACT_SHOT and out.newly_acked == []
    assert bytes(conn.state()) == before
    assert conn.stats()[R.RS_CONSUMED] == 1


def test_reordered_acks(conn: Conn) -> None:
    for pn in range(10):
        conn.send(pn, at=T0 + pn * MS)
    conn.ack(Ack(((8, 9),)), at=T0 + 20 * MS)   # 0..6 lost (packet threshold), 7 still in flight
    verdict, out = conn.ack(Ack(((0, 7),)), at=T0 + 21 * MS)  # late ACK of older packets
    assert out.newly_acked == [7] and conn.state().largest_acked == 9
    assert conn.state().latest_rtt == 21 * MS - 7 * MS  # 7 is this ACK's largest and newly acked: a sample


def test_user_owned_pn_acked_goes_up(conn: Conn) -> None:
    conn.send(0)
    conn.send(1, owner=USER)
    conn.ack(Ack(((0, 0),)), at=T0 + 5 * MS)
    verdict, _ = conn.ack(Ack(((1, 1),)), at=T0 + 6 * MS)
    assert verdict == PASS and conn.stats()[R.RS_PASS_USER_ACKED] == 1


def test_periodic_pass(conn: Conn) -> None:
    for pn in range(4):
        conn.send(pn)
    verdicts = [conn.ack(Ack(((pn, pn),)), at=T0 + pn * 2 * MS)[0] for pn in range(4)]
    assert verdicts == [PASS, TC_ACT_SHOT, TC_ACT_SHOT, PASS]  # every 5 ms
    assert conn.stats()[R.RS_PASS_PERIODIC] == 2


def test_other_frames_go_up_after_the_ack_is_applied(conn: Conn) -> None:
    conn.send(0)
    conn.ack(Ack(((0, 0),)), at=T0 + 1 * MS)
    conn.send(1)
    verdict, _ = conn.ack(Ack(((1, 1),)), at=T0 + 2 * MS, extra=crypto_frame(b"x"))
    assert verdict == PASS and conn.state().acked_packets == 2
    assert conn.stats()[R.RS_PASS_OTHER_FRAMES] == 1


# ---- malformed ACK frames: up unchanged, state untouched ----

MALFORMED = {
    "first range below zero": ack_frame(3, first=4),
    "gap below zero": ack_frame(5, first=1, ranges=((3, 0),)),
    "length below zero": ack_frame(5, first=1, ranges=((0, 3),)),
    "largest never sent": ack_frame(50),
    "truncated": ack_frame(5, first=1, ranges=((0, 0),))[:-1] + b"\x40",
    "two ack frames": ack_frame(5) + ack_frame(4),
    "too many ranges": ack_frame(9, ranges=((0, 0),) * 40),
}


@pytest.mark.parametrize("frames", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_ack_passes_up_unchanged(conn: Conn, frames: bytes) -> None:
    for pn in range(10):
        conn.send(pn)
    before = bytes(conn.state())
    verdict, _ = conn.run(frames, at=T0 + MS)  # run() asserts the bytes are unchanged
    assert verdict == PASS
    assert bytes(conn.state()) == before
    st = conn.stats()
    assert st.get(R.RS_MALFORMED, 0) + st.get(R.RS_TOO_COMPLEX, 0) == 1 and R.RS_ACK_FRAMES not in st


def test_unknown_connection_and_other_ports_go_up(conn: Conn) -> None:
    conn.send(0)
    for pkt in (frame_of(ack_frame(0), dcid=bytes(8)), frame_of(ack_frame(0), dport=9999)):
        assert prog_run(conn.obj.programs["client_ingress"].fd, pkt).retval == PASS
    assert conn.stats() == {R.RS_NOT_OURS: 2} and conn.state().acked_packets == 0


def test_learns_the_subscriber_address(conn: Conn) -> None:
    conn.send(0)
    conn.ack(Ack(((0, 0),)))
    a = conn.obj.maps["subscriber_addrs"].lookup(IDX)
    assert (bytes(a.ip[:4]), a.port, a.ip_version) == (bytes([198, 18, 2, 2]), 40000, 4) and a.packets >= 1


# ---- generated traces against the model ----

@st.composite
def traces(draw: st.DrawFn) -> list[tuple[str, object]]:
    ops: list[tuple[str, object]] = []
    pn = 0
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.integers(1, 60))
        sizes = draw(st.lists(st.integers(40, 1400), min_size=n, max_size=n))
        owners = draw(st.lists(st.sampled_from([FORWARDED, FORWARDED, USER]), min_size=n, max_size=n))
        ops.append(("send", list(zip(range(pn, pn + n), sizes, owners, strict=True))))
        pn += n
        for _ in range(draw(st.integers(0, 3))):
            lo = max(0, pn - draw(st.integers(1, 300)))
            picked = draw(st.sets(st.integers(lo, pn - 1), min_size=1, max_size=80))
            if len(ranges_of(picked)) > 33:
                continue
            ecn = draw(st.one_of(st.none(), st.integers(0, 5)))
            ops.append(("ack", (Ack(ranges_of(picked), draw(st.integers(0, 5000)), ecn), draw(st.integers(0, 7)))))
    return ops


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces())
def test_generated_traces_match_the_model(obj: BpfObject, trace: list[tuple[str, object]]) -> None:
    c = new_conn(obj, ack_delay_exponent=3, max_ack_delay_us=25_000)
    try:
        for kind, arg in trace:
            if kind == "send":
                for pn, size, owner in arg:  # type: ignore[attr-defined]
                    c.send(pn, size, owner, stream=(4, pn * 2000, size))
                c.now += 3 * MS
            else:
                ack, dt = arg  # type: ignore[misc]
                c.now += dt * MS
                c.ack(ack)
    finally:
        c.rb.close()


def test_production_object_loads(bpf_build: Path) -> None:
    """client_ingress.o itself (no test clock) passes the verifier with ports configured."""
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(DCID)
    with BpfObject.load(build_path("client_ingress"), rodata={"cfg": cfg}) as o:
        assert {"client_ingress", "recovery_sweep_prog"} == set(o.programs) and "test_clock" not in o.maps


def test_ipv6_ack_is_applied_and_address_learned(conn: Conn) -> None:
    from tests.bpf.packets import ETH_P_IPV6, ipv6

    for pn in range(3):
        conn.send(pn)
    conn.obj.maps["test_clock"].update(0, T0 + MS)
    pkt = eth(ipv6(udp(40001, PORT, short_header_packet(DCID, 9, ack_frame(2, first=2)))), ETH_P_IPV6)
    assert prog_run(conn.obj.programs["client_ingress"].fd, pkt).retval == PASS  # first: periodic pass
    assert conn.state().acked_packets == 3
    a = conn.obj.maps["subscriber_addrs"].lookup(IDX)
    assert (a.ip_version, a.port) == (6, 40001)


# ---- the sweep: time threshold (RFC 9002 6.1.2), PTO due (6.2.1), bytes-in-flight recount ----

def sweep(c: Conn, at: int, max_ack_delay_ns: int = 25 * MS) -> tuple[int, bool]:
    """One sweep of IDX; returns what it found (its aggregate record must mirror the state)."""
    figures = c.obj.maps["recovery_figures"]
    figures.update(IDX, RecoveryFigures(max_ack_delay_ns=max_ack_delay_ns, max_datagram_size=1200, active=1))
    cmd = RecoverySweepCmd(now_ns=at, conn_index=IDX)
    assert prog_run(c.obj.programs["recovery_sweep_prog"].fd, bytes(14) + bytes(cmd)).retval == 1
    f = figures.lookup(IDX)
    st = c.state()
    assert (f.swept_ns, f.bytes_in_flight, f.cwnd, f.lost_packets, f.largest_sent) == (
        at, st.bytes_in_flight, st.cwnd, st.lost_packets, st.largest_sent)
    return int(f.lost_now), bool(f.pto_due)


def test_sweep_declares_time_threshold_losses(conn: Conn) -> None:
    """PNs 7 and 8 escape the packet threshold (largest acked 9); 9/8 of the 10 ms RTT after they were sent, the
    sweep declares them lost: records for the forwarded one, not for the user-space one, one congestion event."""
    for pn in range(10):
        conn.send(pn, size=1000, at=T0, owner=USER if pn == 8 else FORWARDED)
    conn.ack(Ack(((9, 9),), ack_delay=0), at=T0 + 10 * MS)  # packet threshold: 0..6 lost, 7 and 8 not yet
    st = conn.state()
    assert (st.lost_packets, st.bytes_in_flight, st.smoothed_rtt) == (7, 2000, 10 * MS)
    cwnd = st.cwnd
    assert sweep(conn, T0 + 11 * MS) == (0, False)  # 11 ms < 9/8 * 10 ms since they were sent
    assert sweep(conn, T0 + 11 * MS + MS // 4) == (2, False)
    st = conn.state()
    assert (st.lost_packets, st.bytes_in_flight) == (9, 0)
    assert st.ring[7].state == SENT_LOST and st.ring[8].state == SENT_LOST
    assert st.cwnd == cwnd  # lost packets sent before the recovery period the ACK started: no second halving
    conn.rb.consume()
    assert [e.pn for e in conn.losses] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert conn.stats()[R.RS_TIME_LOST] == 2 and conn.stats()[R.RS_SWEEPS] == 2


def test_sweep_reports_probe_timeout_and_recounts_flight(conn: Conn) -> None:
    conn.send(0, size=1000, at=T0)
    conn.ack(Ack(((0, 0),), ack_delay=0), at=T0 + 10 * MS)  # srtt 10 ms, rttvar 5 ms
    conn.send(1, size=700, at=T0 + 20 * MS)
    # PTO = 10 + max(4 * 5, 1) + 25 (max_ack_delay) = 55 ms after the newest in-flight packet
    assert sweep(conn, T0 + 74 * MS) == (0, False)
    assert sweep(conn, T0 + 75 * MS) == (0, True)
    # a lost update between the CPUs: bytes_in_flight wrong -> the sweep recounts it from the ring
    st = conn.state()
    st.bytes_in_flight = 123456
    conn.obj.maps["recovery_state"].update(IDX, st)
    sweep(conn, T0 + 76 * MS)
    assert conn.state().bytes_in_flight == 700
    assert conn.stats()[R.RS_PTO_DUE] == 2


def test_sweep_before_any_rtt_sample_uses_the_initial_rtt(conn: Conn) -> None:
    """RFC 9002 6.2.2: kInitialRtt 333 ms, rttvar half of it; no time-threshold loss without a sample."""
    conn.send(0, size=1000, at=T0)
    assert sweep(conn, T0 + 999 * MS) == (0, False)  # 333 + 4 * 166.5 + 25 = 1024 ms
    assert sweep(conn, T0 + 1024 * MS) == (0, True)
    assert conn.state().bytes_in_flight == 1000


def test_sweep_commands_out_of_range_or_inactive(obj: BpfObject) -> None:
    prog = obj.programs["recovery_sweep_prog"].fd
    assert prog_run(prog, bytes(14) + bytes(RecoverySweepCmd(now_ns=T0, conn_index=1 << 20))).retval == -1
    assert prog_run(prog, bytes(16)).retval == -1  # too short for a command
    obj.maps["recovery_figures"].update(3, RecoveryFigures(active=0))
    assert prog_run(prog, bytes(14) + bytes(RecoverySweepCmd(now_ns=T0, conn_index=3))).retval == 0


def test_an_under_utilized_window_does_not_grow(conn: Conn) -> None:
    """RFC 9002 7.8: 4 packets in a 12000-byte window: acknowledged, out of flight, no growth; a full window grows."""
    for pn in range(4):
        conn.send(pn)
    conn.ack(Ack(((0, 3),)), at=T0 + 10 * MS)
    assert (conn.state().cwnd, conn.state().bytes_in_flight) == (12000, 0)
    for pn in range(4, 14):
        conn.send(pn)
    conn.ack(Ack(((4, 13),)), at=T0 + 20 * MS)
    assert conn.state().cwnd == 12000 + 10 * 1200  # slow start


def test_acks_of_packets_sent_before_the_kernel_took_over_are_not_malformed(conn: Conn) -> None:
    """Seeded at enable with the first PN the program assigns: the subscriber's ACK of aioquic's earlier packets is
    valid (RFC 9000 13.1 only forbids PNs never sent), applied to nothing, and goes up (the periodic pass is due)."""
    conn.obj.maps["recovery_state"].update(IDX, RecoveryState.seeded(1200, next_pn=100))
    verdict, _ = conn.run(ack_bytes(Ack(((0, 99),))), at=T0)
    assert verdict == PASS and conn.stats().get(R.RS_MALFORMED, 0) == 0 and conn.stats()[R.RS_ACK_FRAMES] == 1
    s = conn.state()
    assert (s.largest_acked, s.largest_sent, s.acked_packets, s.bytes_in_flight) == (99, 99, 0, 0)
    verdict, _ = conn.run(ack_bytes(Ack(((0, 100),))), at=T0 + MS)  # PN 100 was never sent
    assert verdict == PASS and conn.stats()[R.RS_MALFORMED] == 1


# ---- hostile input: a valid short header for a known connection, then generated frames ----

_ack_any = st.builds(
    ack_frame, st.integers(0, 40), st.integers(0, 1 << 20), st.integers(0, 40),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=6).map(tuple),
    st.one_of(st.none(), st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9))),
)  # fmt: skip
_benign = st.one_of(st.integers(1, 6).map(lambda n: b"\x00" * n), _ack_any)  # may be consumed
_eliciting = st.one_of(  # RFC 9000 section 13.2.1: aioquic must see these (it owes an ACK)
    st.just(b"\x01"), st.binary(max_size=32).map(crypto_frame),
    st.builds(lambda sid, d: b"\x0a" + bytes([sid]) + bytes([len(d)]) + d, st.integers(0, 60), st.binary(max_size=60)),
)  # fmt: skip
_garbage = st.binary(min_size=1, max_size=24)
_tagged = st.one_of(_benign.map(lambda f: ("benign", f)), _eliciting.map(lambda f: ("eliciting", f)),
                    _garbage.map(lambda f: ("garbage", f)))  # fmt: skip
_VERDICT_STATS = {R.RS_MALFORMED, R.RS_TOO_COMPLEX, R.RS_CONSUMED, R.RS_PASS_OTHER_FRAMES, R.RS_PASS_USER_ACKED,
                  R.RS_PASS_LOSS, R.RS_PASS_PERIODIC}  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.lists(_tagged, min_size=1, max_size=8), min_size=1, max_size=4))
def test_generated_frames_after_a_valid_header_never_corrupt_the_state(
    obj: BpfObject, packets: list[list[tuple[str, bytes]]]
) -> None:
    """Whatever follows a valid header of a known connection: the verdict is PASS (bytes unchanged, checked by
    `run`) or SHOT; exactly one verdict counter moves; SHOT only when nothing in the packet needs aioquic; a
    malformed or too complex packet leaves the state byte-identical; the state's books always balance."""
    c = new_conn(obj)
    try:
        for pn in range(30):
            c.send(pn, 1000 + pn, FORWARDED if pn % 3 else USER)
        for frames in packets:
            before_state, before = bytes(c.state()), c.stats()
            verdict, _ = c.run(b"".join(f for _, f in frames), at=c.now + 2 * MS)
            after = c.stats()
            moved = {s: after.get(s, 0) - before.get(s, 0) for s in _VERDICT_STATS if after.get(s, 0) != before.get(s, 0)}
            assert list(moved.values()) == [1], moved
            (reason,) = moved
            assert (verdict == TC_ACT_SHOT) == (reason == R.RS_CONSUMED) and verdict in (PASS, TC_ACT_SHOT)
            if verdict == TC_ACT_SHOT:
                assert not any(kind == "eliciting" for kind, _ in frames), "an ack-eliciting frame was swallowed"
            if reason in (R.RS_MALFORMED, R.RS_TOO_COMPLEX):
                assert bytes(c.state()) == before_state
            s = c.state()
            assert s.acked_packets + s.lost_packets <= s.sent_packets == 30
            assert s.acked_bytes + s.lost_bytes <= s.sent_bytes and s.bytes_in_flight <= s.sent_bytes
            assert s.largest_acked == RECOVERY_NONE or s.largest_acked <= s.largest_sent == 29
            assert s.cwnd >= 2 * 1200  # RFC 9002 section 7.2: never below the minimum window
    finally:
        c.rb.close()
