"""client_egress.bpf.c through BPF_PROG_TEST_RUN, byte-exact against tests/bpf/fastpath_model.py.

A clone is a test run with skb->mark = FASTPATH_MARK_MAGIC | upstream DCID length << 16 | slot (what
server_ingress sets); a user-space packet is a run without the mark. Every sent packet must carry a verifying
UDP checksum and produce one reg_events record."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf import libbpf
from bpf.btf import Btf
from bpf.loader import BpfObject, Map, Program, RingBuffer, build_path
from bpf.structs import (
    FASTPATH_MARK_MAGIC,
    NO_LARGEST_ACKED,
    REG_KIND_CLONE,
    REG_KIND_USER,
    SENT_IN_FLIGHT,
    SENT_OWNER_FORWARDED,
    SENT_OWNER_USER,
    CidKey,
    DownstreamCid,
    DownstreamConn,
    DownstreamState,
    EgressConfig,
    EgressStat,
    RecoveryState,
    RegEvent,
    SlotState,
)
from bpf.testrun import TC_ACT_OK, TC_ACT_SHOT
from tests.bpf.fastpath_model import (
    Drop,
    Subscriber,
    expected_copy,
    expected_user,
    parse,
    udp_checksum_ok,
    with_udp_checksum,
)
from tests.bpf.packets import ETH_P_IPV6, Moq, ack_frame, eth, ipv4, ipv6, short_header_packet, udp

pytestmark = [pytest.mark.root, pytest.mark.bpf]

E = EgressStat
RELAY_PORT = 4433
UP_DCID = bytes(range(1, 9))
SLOT = 3

SUB4 = Subscriber(
    eth_dst=bytes.fromhex("02aabbccdd01"), eth_src=bytes.fromhex("02aabbccdd02"),
    src_ip=bytes([198, 18, 1, 1]), dst_ip=bytes([198, 18, 1, 2]), sport=RELAY_PORT, dport=40000,
    dcid=bytes(range(0xA0, 0xA8)), alias=9, alias_len=1, next_pn=1000, largest_acked=990,
)
SUB6 = replace(SUB4, src_ip=bytes.fromhex("fd00" + "00" * 12 + "0101"), dst_ip=bytes.fromhex("fd00" + "00" * 12 + "0102"))


def conn_of(sub: Subscriber) -> DownstreamConn:
    c = DownstreamConn(
        alias=sub.alias, ip_version=4 if len(sub.src_ip) == 4 else 6,
        dcid_len=len(sub.dcid), alias_len=sub.alias_len, enabled=int(sub.enabled), key_phase=sub.key_phase,
        prio_set=int(sub.priority_threshold is not None), priority_threshold=sub.priority_threshold or 0,
        sport=sub.sport, dport=sub.dport,
        largest_acked=NO_LARGEST_ACKED if sub.largest_acked is None else sub.largest_acked,
    )
    c.eth_dst[:], c.eth_src[:] = list(sub.eth_dst), list(sub.eth_src)
    c.dcid[: len(sub.dcid)] = list(sub.dcid)
    c.src_ip[: len(sub.src_ip)], c.dst_ip[: len(sub.dst_ip)] = list(sub.src_ip), list(sub.dst_ip)
    return c


def run(obj: Egress | BpfObject, frame: bytes, mark: int = 0) -> tuple[int, bytes]:
    """One test run with skb->mark set through the __sk_buff context (len, pkt_type zero; mark at 8)."""
    ctx = ctypes.create_string_buffer(b"\0" * 8 + mark.to_bytes(4, "little"), 12)
    inbuf = ctypes.create_string_buffer(frame, len(frame))
    out_size = 2 * len(frame) + 256
    outbuf = ctypes.create_string_buffer(out_size)
    opts = libbpf.BpfTestRunOpts(
        sz=ctypes.sizeof(libbpf.BpfTestRunOpts), data_in=ctypes.cast(inbuf, ctypes.c_void_p),
        data_out=ctypes.cast(outbuf, ctypes.c_void_p), data_size_in=len(frame), data_size_out=out_size,
        ctx_in=ctypes.cast(ctx, ctypes.c_void_p), ctx_size_in=12, repeat=1,
    )
    fd = obj.programs["client_egress"].fd
    libbpf.check(libbpf.lib().bpf_prog_test_run_opts(fd, ctypes.byref(opts)), "bpf_prog_test_run_opts")
    return ctypes.c_int32(opts.retval).value, outbuf.raw[: opts.data_size_out]


def clone_mark(slot: int = SLOT, up_dcid_len: int = len(UP_DCID)) -> int:
    return FASTPATH_MARK_MAGIC | up_dcid_len << 16 | slot


def load_egress(port: int = RELAY_PORT) -> BpfObject:
    """client_egress for relay port `port`, trying 8-byte DCIDs for user-space packets (what the tests send)."""
    cfg = EgressConfig()
    cfg.port[0] = port
    cfg.dcid_len[:] = [8, 0xFF, 0xFF, 0xFF]
    cfg.congestion_high_pct, cfg.congestion_low_pct, cfg.congestion_hold_ms = 90, 60, 0  # 0: no hold in tests
    return BpfObject.load(build_path("client_egress"), rodata={"egress_cfg": cfg})


@pytest.fixture(scope="module")
def egress(bpf_build: Path) -> Iterator[BpfObject]:
    with load_egress() as obj:
        yield obj


@dataclass
class Egress:
    """The loaded program with a reader of its registration ring."""

    obj: BpfObject
    rb: RingBuffer
    records: list[RegEvent]

    @property
    def maps(self) -> dict[str, Map]:
        return self.obj.maps

    @property
    def programs(self) -> dict[str, Program]:
        return self.obj.programs


@pytest.fixture
def prog(egress: BpfObject) -> Iterator[Egress]:
    """Fresh state per test: no subscribers, zero counters, an empty ring."""
    for name in ("downstream_conns", "downstream_cids"):
        for k in list(egress.maps[name].keys()):
            egress.maps[name].delete(k)
    for i in range(E.EG_MAX):
        egress.maps["egress_stats"].update(i, 0)
    records: list[RegEvent] = []
    rb = egress.ring_buffer("reg_events", records.append, RegEvent)
    rb.consume()
    records.clear()
    yield Egress(egress, rb, records)
    rb.close()


def stats(obj: Egress | BpfObject) -> dict[EgressStat, int]:
    return {s: obj.maps["egress_stats"].sum_percpu(int(s)) for s in E if s != E.EG_MAX and
            obj.maps["egress_stats"].sum_percpu(int(s))}


def records(obj: Egress) -> list[RegEvent]:
    obj.rb.consume()
    return list(obj.records)


def install(obj: Egress | BpfObject, sub: Subscriber, slot: int = SLOT, conn_index: int | None = None,
            seed: bool = True) -> None:
    """Seed the connection's counter, then the slot's state (the order the controller uses)."""
    index = slot if conn_index is None else conn_index
    if seed:
        obj.maps["downstream_state"].update(index, DownstreamState(next_pn=sub.next_pn))
    conn = conn_of(sub)
    conn.conn_index = index
    obj.maps["downstream_conns"].update(slot, conn)
    obj.maps["downstream_cids"].update(CidKey.of(sub.dcid), DownstreamCid(slot=slot))


def check_copy(obj: Egress, frame: bytes, sub: Subscriber) -> bytes:
    """Run the frame as a clone for sub; compare with the model, the counter, the PN counter and the record."""
    want, pn = expected_copy(frame, len(UP_DCID), sub)
    install(obj, sub)
    verdict, out = run(obj, frame, clone_mark())
    assert verdict == TC_ACT_OK
    assert out.hex() == want.hex()
    assert udp_checksum_ok(out)
    assert stats(obj) == {E.EG_CLONE_SENT: 1}
    state = obj.maps["downstream_state"].lookup(SLOT)
    assert (state.next_pn, state.tx_packets, state.tx_bytes) == (pn + 1, 1, len(out))
    (rec,) = records(obj)
    assert (rec.slot, rec.pn, rec.size, rec.kind) == (SLOT, pn, len(out), REG_KIND_CLONE)
    assert rec.ts_ns > 0
    return out


UP = Moq(dcid=UP_DCID, alias=5, pn=0x1234, pn_len=2)

COPY_ROWS = [
    ("ipv4, same dcid length", UP, SUB4),
    ("ipv6", replace(UP, ip=6), SUB6),
    ("dcid grows 8 -> 20", UP, replace(SUB4, dcid=bytes(range(0x30, 0x44)))),
    ("dcid shrinks 8 -> 4", UP, replace(SUB4, dcid=b"\x11\x22\x33\x44")),
    ("dcid shrinks to 0", UP, replace(SUB4, dcid=b"")),
    ("ipv6 dcid grows 8 -> 13", replace(UP, ip=6), replace(SUB6, dcid=bytes(range(13)))),
    ("ipv6 dcid shrinks 8 -> 5", replace(UP, ip=6), replace(SUB6, dcid=bytes(range(5)))),
    ("1-byte pn", replace(UP, pn_len=1, pn=7), replace(SUB4, next_pn=50, largest_acked=40)),
    ("4-byte pn", replace(UP, pn_len=4, pn=0xDEADBEEF), SUB4),
    ("pn forced 1 -> 2 bytes by the window", replace(UP, pn_len=1, pn=7), replace(SUB4, next_pn=300, largest_acked=100)),
    ("pn forced 2 -> 3 bytes", UP, replace(SUB4, next_pn=200_000, largest_acked=100)),
    ("pn exactly at the window edge stays 1 byte", replace(UP, pn_len=1, pn=7),
     replace(SUB4, next_pn=228, largest_acked=100)),
    ("pn one past the edge takes 2 bytes", replace(UP, pn_len=1, pn=7), replace(SUB4, next_pn=229, largest_acked=100)),
    ("nothing acked yet", UP, replace(SUB4, next_pn=0, largest_acked=None)),
    ("key phase 1", UP, replace(SUB4, key_phase=1)),
    ("2-byte alias", replace(UP, alias=300), replace(SUB4, alias=16000, alias_len=2)),
    ("1-byte alias to 63", UP, replace(SUB4, alias=63)),
    ("ACK and PING become PADDING", replace(UP, before=b"\x01" + ack_frame(1000, 25, 1, ((1, 2), (3, 400)), (1, 2, 3))),
     SUB4),
    ("ACK with a dcid resize", replace(UP, before=ack_frame(77)), replace(SUB4, dcid=bytes(17))),
    ("datagram frame without length", replace(UP, with_length=False), replace(SUB4, dcid=bytes(3))),
    ("object without id (type 0x04)", replace(UP, dtype=0x04), SUB4),
    ("large payload, odd length", replace(UP, payload=bytes(range(256)) * 5 + b"x"), replace(SUB4, dcid=bytes(9))),
    ("ipv4 options, same size", replace(UP, ip_options=b"\x01" * 8), SUB4),
    ("priority under the threshold", replace(UP, priority=3), replace(SUB4, priority_threshold=3)),
]


@pytest.mark.parametrize(("up", "sub"), [(u, s) for _, u, s in COPY_ROWS], ids=[d for d, *_ in COPY_ROWS])
def test_copy_matches_model(prog: Egress, up: Moq, sub: Subscriber) -> None:
    out = check_copy(prog, up.build(), sub)
    lay = parse(out, len(sub.dcid))
    assert out[lay.quic + 1 : lay.quic + 1 + len(sub.dcid)] == sub.dcid


def test_pn_counter_crosses_65536(prog: Egress) -> None:
    sub = replace(SUB4, next_pn=65534, largest_acked=65500)
    frame = UP.build()
    install(prog, sub)
    for pn in (65534, 65535, 65536, 65537):
        want, want_pn = expected_copy(frame, len(UP_DCID), replace(sub, next_pn=pn))
        verdict, out = run(prog, frame, clone_mark())
        assert (verdict, want_pn, out.hex()) == (TC_ACT_OK, pn, want.hex())
    assert [r.pn for r in records(prog)] == [65534, 65535, 65536, 65537]
    assert [parse(r, 8).pn for r in [expected_copy(frame, 8, replace(sub, next_pn=p))[0] for p in (65535, 65536)]] \
        == [0xFFFF, 0x0000]


DROP_ROWS = [
    ("priority above the threshold", replace(UP, priority=4), replace(SUB4, priority_threshold=3), E.EG_PRIORITY_DROP),
    ("connection disabled", UP, replace(SUB4, enabled=False), E.EG_DISABLED),
    ("pn cannot be encoded in 4 bytes", UP, replace(SUB4, next_pn=(1 << 31) + 11, largest_acked=10),
     E.EG_PN_UNENCODABLE),
    ("alias needs another length", UP, replace(SUB4, alias_len=2, alias=300), E.EG_ALIAS_LEN),
    ("ipv4 copy for an ipv6 subscriber", UP, SUB6, E.EG_UNSUPPORTED),
    ("ipv4 options with a dcid resize", replace(UP, ip_options=b"\x01" * 4), replace(SUB4, dcid=bytes(3)),
     E.EG_UNSUPPORTED),
]


@pytest.mark.parametrize(("up", "sub", "stat"), [r[1:] for r in DROP_ROWS], ids=[r[0] for r in DROP_ROWS])
def test_drop_matches_model(prog: Egress, up: Moq, sub: Subscriber, stat: EgressStat) -> None:
    with pytest.raises(Drop) as exc:
        expected_copy(up.build(), len(UP_DCID), sub)
    assert exc.value.reason == stat.name
    install(prog, sub)
    verdict, _ = run(prog, up.build(), clone_mark())
    assert verdict == TC_ACT_SHOT
    assert stats(prog) == {stat: 1}
    assert prog.maps["downstream_state"].lookup(SLOT).dropped == 1
    assert records(prog) == []


def test_missing_subscriber_is_dropped_and_counted(prog: Egress) -> None:
    install(prog, SUB4, slot=SLOT + 1)
    verdict, _ = run(prog, UP.build(), clone_mark(SLOT))
    assert verdict == TC_ACT_SHOT
    assert stats(prog) == {E.EG_NO_SUBSCRIBER: 1}
    assert records(prog) == []


def test_clone_that_does_not_parse_is_dropped(prog: Egress) -> None:
    install(prog, SUB4)
    verdict, _ = run(prog, replace(UP, tag=b"\x01" * 16).build(), clone_mark())  # still protected
    assert verdict == TC_ACT_SHOT
    assert stats(prog) == {E.EG_MALFORMED: 1}


def user_packet(sub: Subscriber, pn: int, pn_len: int = 2, ip: int = 4, spin: bool = False) -> bytes:
    """A user-space 1-RTT packet of the relay to the subscriber (UDP checksum valid, tag room zero), sent in the
    subscriber state's key phase (as aioquic would)."""
    quic = bytearray(short_header_packet(sub.dcid, pn, b"\x01" + bytes(20), pn_len))
    quic[0] |= (0x20 if spin else 0) | (sub.key_phase << 2)
    seg = udp(RELAY_PORT, sub.dport, bytes(quic))
    frame = eth(ipv4(seg, src="198.18.1.1", dst="198.18.1.2")) if ip == 4 else eth(ipv6(seg), ETH_P_IPV6)
    return with_udp_checksum(frame)


USER_ROWS = [
    ("ipv4, 2-byte pn kept", 4, 2, SUB4),
    ("ipv6", 6, 2, SUB6),
    ("1-byte pn", 4, 1, replace(SUB4, next_pn=20, largest_acked=5)),
    ("1-byte pn forced to 2 by the window", 4, 1, replace(SUB4, next_pn=500, largest_acked=5)),
    ("ipv6 4-byte pn, key phase 1", 6, 4, replace(SUB6, key_phase=1)),
]


def test_user_packet_keeps_its_own_key_phase(prog: Egress) -> None:
    """During a key update the sender's bit is the truth (the NIC seals by it); the map may lag behind."""
    frame = user_packet(replace(SUB4, key_phase=1), 0x42, 2)
    install(prog, SUB4)  # the map still says phase 0
    verdict, out = run(prog, frame)
    assert verdict == TC_ACT_OK and out[42] & 0x04  # Ethernet 14 + IPv4 20 + UDP 8: the first byte



@pytest.mark.parametrize(("ip", "pn_len", "sub"), [r[1:] for r in USER_ROWS], ids=[r[0] for r in USER_ROWS])
def test_user_packet_renumbered_and_reported(prog: Egress, ip: int, pn_len: int, sub: Subscriber) -> None:
    frame = user_packet(sub, 0x42, pn_len, ip, spin=True)
    want, pn = expected_user(frame, sub)
    install(prog, sub)
    verdict, out = run(prog, frame)
    assert verdict == TC_ACT_OK
    assert out.hex() == want.hex()
    assert udp_checksum_ok(out)
    assert stats(prog) == {E.EG_USER_RENUMBERED: 1}
    (rec,) = records(prog)
    assert (rec.kind, rec.pn, rec.orig_pn, rec.slot, rec.size) == (REG_KIND_USER, pn, 0x42, SLOT, len(out))


def test_user_packets_share_the_counter_with_copies(prog: Egress) -> None:
    install(prog, SUB4)
    run(prog, UP.build(), clone_mark())
    run(prog, user_packet(SUB4, 7))
    run(prog, UP.build(), clone_mark())
    assert [(r.kind, r.pn) for r in records(prog)] == [(REG_KIND_CLONE, 1000), (REG_KIND_USER, 1001),
                                                       (REG_KIND_CLONE, 1002)]


def test_slots_of_one_connection_share_its_counter(prog: Egress) -> None:
    """Two subscriptions (aliases) on one downstream connection: one PN sequence (invariant 1)."""
    install(prog, SUB4, slot=1, conn_index=7)
    install(prog, replace(SUB4, alias=33), slot=2, conn_index=7, seed=False)
    outs = [run(prog, UP.build(), clone_mark(slot))[1] for slot in (1, 2, 1)]
    assert [parse(o, 8).pn for o in outs] == [1000 % 65536, 1001, 1002]
    assert [o[parse(o, 8).alias_off] for o in outs] == [9, 33, 9]
    assert [(r.slot, r.pn) for r in records(prog)] == [(1, 1000), (2, 1001), (1, 1002)]
    assert prog.maps["downstream_state"].lookup(7).next_pn == 1003


def test_not_ours_passes_untouched(prog: Egress) -> None:
    install(prog, replace(SUB4, enabled=False))
    frames = [
        user_packet(SUB4, 7),  # connection not enabled: user space stays the PN authority
        user_packet(replace(SUB4, dcid=bytes(8)), 7),  # unknown DCID
        UP.build(),  # upstream-side traffic, no mark
    ]
    for f in frames:
        assert run(prog, f) == (TC_ACT_OK, f)
    assert stats(prog) == {E.EG_PASS: 3}
    assert records(prog) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=200), ip=st.sampled_from([4, 6]))
def test_random_payload_never_makes_a_copy(prog: Egress, data: bytes, ip: int) -> None:
    """Garbage behind valid IP/UDP headers: a marked run never sends; an unmarked one passes unchanged."""
    install(prog, SUB4 if ip == 4 else SUB6)
    seg = udp(50000, RELAY_PORT, data)
    frame = eth(ipv4(seg)) if ip == 4 else eth(ipv6(seg), ETH_P_IPV6)
    verdict, _ = run(prog, frame, clone_mark())
    assert verdict == TC_ACT_SHOT
    assert run(prog, frame) == (TC_ACT_OK, frame)
    assert records(prog) == []
    assert prog.maps["egress_stats"].sum_percpu(int(E.EG_CLONE_SENT)) == 0


def test_stat_enum_matches_btf(egress: BpfObject) -> None:
    assert Btf.from_object(build_path("client_egress")).enum("egress_stat") == {s.name: s.value for s in E}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ip=st.sampled_from([4, 6]),
    up_pn_len=st.integers(1, 4),
    dcid=st.binary(max_size=20),
    next_pn=st.integers(0, (1 << 40)),
    distance=st.one_of(st.none(), st.integers(1, 1 << 33)),
    alias_len=st.sampled_from([1, 2]),
    alias=st.integers(0, 63),
    key_phase=st.integers(0, 1),
    with_ack=st.booleans(),
    payload=st.binary(max_size=700),
)
def test_random_state_matches_model(
    prog: Egress, ip: int, up_pn_len: int, dcid: bytes, next_pn: int, distance: int | None, alias_len: int,
    alias: int, key_phase: int, with_ack: bool, payload: bytes,
) -> None:
    """Any subscriber state, any packet shape: the program sends exactly the model's bytes or drops with its reason."""
    largest = None if distance is None else next_pn - distance
    if largest is not None and largest < 0:
        largest = None
    sub = replace(SUB4 if ip == 4 else SUB6, dcid=dcid, next_pn=next_pn, largest_acked=largest, alias=alias,
                  alias_len=alias_len, key_phase=key_phase)
    up = replace(UP, ip=ip, pn_len=up_pn_len, pn=0xABCDEF12, alias_len=alias_len, payload=payload,
                 before=ack_frame(5000, 3, 1) if with_ack else b"")
    frame = up.build()
    install(prog, sub)
    before = stats(prog)
    verdict, out = run(prog, frame, clone_mark())
    moved = {k: v - before.get(k, 0) for k, v in stats(prog).items() if v != before.get(k, 0)}
    try:
        want, _ = expected_copy(frame, len(UP_DCID), sub)
    except Drop as d:
        assert (verdict, moved) == (TC_ACT_SHOT, {getattr(E, d.reason): 1})
        return
    assert (verdict, moved) == (TC_ACT_OK, {E.EG_CLONE_SENT: 1})
    assert out.hex() == want.hex()
    assert udp_checksum_ok(out)


def test_verifier_cost_with_every_dcid_length(bpf_build: Path) -> None:
    """Four DCID lengths for user-space packets is the costliest configuration; keep it well under 1M (kernel
    recovery's recovery_on_sent, inlined at the three rewrite sites, brought it from ~390k to ~430k)."""
    cfg = EgressConfig()
    cfg.port[:] = [4433, 4434, 4435, 4436]
    cfg.dcid_len[:] = [0, 4, 8, 20]
    with BpfObject.load(build_path("client_egress"), rodata={"egress_cfg": cfg}, log_level=4) as obj:
        (line,) = [x for x in obj.log.splitlines() if x.startswith("processed ")]
    assert int(line.split()[1]) < 500_000, line


def test_policy_drop_takes_the_rest_of_the_group(prog: Egress) -> None:
    """Drop policy: once the threshold drops an object, the rest of its group follows (its later objects depend on
    it); the next group starts clean, and slot_state counts each reason for the subscription."""
    prog.maps["slot_state"].update(SLOT, SlotState())
    conn = conn_of(replace(SUB4, priority_threshold=3))
    conn.drop_group_rest, conn.conn_index = 1, SLOT
    prog.maps["downstream_state"].update(SLOT, DownstreamState(next_pn=SUB4.next_pn))
    prog.maps["downstream_conns"].update(SLOT, conn)
    verdicts = [run(prog, replace(UP, group=group, obj=obj, priority=prio).build(), clone_mark())[0]
                for group, obj, prio in ((10, 0, 0), (10, 1, 4), (10, 2, 0), (11, 0, 0), (11, 1, 0))]
    assert verdicts == [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_SHOT, TC_ACT_OK, TC_ACT_OK]
    assert stats(prog) == {E.EG_CLONE_SENT: 3, E.EG_PRIORITY_DROP: 1, E.EG_GROUP_DROP: 1}
    st = prog.maps["slot_state"].lookup(SLOT)
    assert (st.sent, st.priority_drops, st.group_drops) == (3, 1, 1)


# ---- kernel recovery (issue 5): every numbered packet enters recovery_state; no record for a datagram copy ----

def test_kernel_recovery_keeps_copies_out_of_the_registration_ring(prog: Egress) -> None:
    sub = replace(SUB4, next_pn=300, largest_acked=None)  # the map's value is stale on purpose: unused
    install(prog, sub)
    conn = prog.maps["downstream_conns"].lookup(SLOT)
    conn.recovery = 1
    prog.maps["downstream_conns"].update(SLOT, conn)
    seeded = RecoveryState.seeded(1200, next_pn=300)
    seeded.largest_acked = 100  # the kernel's own: PN 300 needs 2 bytes (RFC 9000 A.2), as if exported
    prog.maps["recovery_state"].update(SLOT, seeded)
    want, pn = expected_copy(UP.build(), len(UP_DCID), replace(sub, largest_acked=100))
    verdict, out = run(prog, UP.build(), clone_mark())
    assert (verdict, out.hex(), pn) == (TC_ACT_OK, want.hex(), 300)
    verdict, user_out = run(prog, user_packet(sub, 0x42, 2))
    assert verdict == TC_ACT_OK
    assert [(r.kind, r.pn) for r in records(prog)] == [(REG_KIND_USER, 301)]  # the copy has no record
    st = prog.maps["recovery_state"].lookup(SLOT)
    assert (st.largest_sent, st.sent_packets, st.bytes_in_flight) == (301, 2, len(out) + len(user_out))
    assert [(st.ring[p].pn, st.ring[p].owner, st.ring[p].state, st.ring[p].size) for p in (300 % 256, 301 % 256)] == [
        (300, SENT_OWNER_FORWARDED, SENT_IN_FLIGHT, len(out)), (301, SENT_OWNER_USER, SENT_IN_FLIGHT, len(user_out))]
    assert stats(prog) == {E.EG_CLONE_SENT: 1, E.EG_USER_RENUMBERED: 1}


def test_kernel_recovery_without_seeded_state_drops(prog: Egress) -> None:
    """A connection marked for kernel recovery whose state index is out of range never leaves unrecorded."""
    install(prog, SUB4, conn_index=2000)  # < 4096 PN counters, >= 1024 recovery states
    conn = prog.maps["downstream_conns"].lookup(SLOT)
    conn.recovery = 1
    prog.maps["downstream_conns"].update(SLOT, conn)
    verdict, _ = run(prog, UP.build(), clone_mark())
    assert verdict == TC_ACT_SHOT and stats(prog) == {E.EG_NO_SUBSCRIBER: 1} and records(prog) == []


def test_kernel_recovery_drop_policy_reads_the_kernel_window(prog: Egress) -> None:
    """prio_auto: P-frames (priority 128 > 127) are dropped once bytes in flight stayed >= 90 % of cwnd for the hold,
    until they fall below 60 % (the load-time hysteresis); I-frames always pass; onsets are counted in the state."""
    install(prog, SUB4)
    conn = prog.maps["downstream_conns"].lookup(SLOT)
    conn.recovery, conn.prio_auto, conn.priority_threshold = 1, 1, 127
    prog.maps["downstream_conns"].update(SLOT, conn)
    st = RecoveryState.seeded(1200, next_pn=1000)
    st.cwnd, st.bytes_in_flight = 10_000, 9_000
    prog.maps["recovery_state"].update(SLOT, st)

    def send(group: int, priority: int) -> int:
        return run(prog, replace(UP, group=group, obj=0, priority=priority).build(), clone_mark())[0]

    def set_flight(n: int) -> None:
        s = prog.maps["recovery_state"].lookup(SLOT)
        s.bytes_in_flight = n
        prog.maps["recovery_state"].update(SLOT, s)

    assert send(1, 128) == TC_ACT_OK  # 90 %: the hold starts (congestion_hold_ms, 0 here)
    assert send(2, 128) == TC_ACT_SHOT  # still above after the hold: congested
    assert send(3, 0) == TC_ACT_OK  # the I-frame of the next group goes
    set_flight(7_000)  # 70 %: still congested (above the low mark)
    assert send(4, 128) == TC_ACT_SHOT
    set_flight(5_000)  # 50 %: clear
    assert send(5, 128) == TC_ACT_OK
    s = prog.maps["recovery_state"].lookup(SLOT)
    assert (s.congested, s.congestion_onsets) == (0, 1)
    assert stats(prog) == {E.EG_CLONE_SENT: 3, E.EG_PRIORITY_DROP: 2}
