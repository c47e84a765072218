"""server_ingress.bpf.c through BPF_PROG_TEST_RUN: verdict rows as data (katran's fixtures move).

Every packet must come back unchanged with TC_ACT_OK (this step only parses and counts; DESIGN invariant 5),
and exactly one counter of ``ingress_stats`` must move: ELIGIBLE or the first reason it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.loader import BpfObject, build_path
from bpf.structs import CidKey, FastTrack, IngressConfig, IngressStat, ParseResult, TrackKey, UpstreamConn
from bpf.testrun import TC_ACT_OK
from tests.bpf.packets import (
    ETH_P_ARP,
    IPPROTO_TCP,
    Moq,
    ack_frame,
    crypto_frame,
    eth,
    ipv4,
    ipv6,
    long_header_packet,
    stream_frame,
    udp,
    varint,
)

PORT, PORT_ZERO_CID = 4433, 4434
DCID = bytes(range(1, 9))
CONN_ID, ALIAS, TRACK_ID = 7, 5, 99

S = IngressStat


@pytest.fixture(scope="module")
def ingress(bpf_build: Path) -> Iterator[BpfObject]:
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(DCID)
    cfg.port[1], cfg.dcid_len[1] = PORT_ZERO_CID, 0
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        yield obj


@pytest.fixture
def prog(ingress: BpfObject) -> BpfObject:
    """Fresh map state for each test: one upstream connection with one fast-path track."""
    for name in ("upstream_conns", "fast_tracks"):
        for k in list(ingress.maps[name].keys()):
            ingress.maps[name].delete(k)
    for i in range(S.ST_MAX):
        ingress.maps["ingress_stats"].update(i, 0)
    ingress.maps["last_parse"].update(0, ParseResult())
    ingress.maps["upstream_conns"].update(CidKey.of(DCID), UpstreamConn(conn_id=CONN_ID))
    ingress.maps["upstream_conns"].update(CidKey.of(b""), UpstreamConn(conn_id=CONN_ID + 1))
    ingress.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=ALIAS), FastTrack(track_id=TRACK_ID))
    ingress.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID + 1, alias=ALIAS), FastTrack(track_id=TRACK_ID + 1))
    return ingress


def stats(obj: BpfObject) -> dict[IngressStat, int]:
    return {s: obj.maps["ingress_stats"].sum_percpu(int(s)) for s in S if s != S.ST_MAX}


def classify(obj: BpfObject, pkt: bytes) -> IngressStat:
    """Run once; assert unchanged + TC_ACT_OK + exactly one counter moved by one; return that counter."""
    before = stats(obj)
    res = obj.programs["server_ingress"].test_run(pkt)
    assert res.retval == TC_ACT_OK
    assert res.data == pkt, "the packet must pass up unchanged"
    after = stats(obj)
    moved = {s: after[s] - before[s] for s in after if after[s] != before[s]}
    assert len(moved) == 1 and list(moved.values()) == [1], moved
    return next(iter(moved))


def last_parse(obj: BpfObject) -> ParseResult:
    """The one CPU's record written by the last eligible run (the fixture zeroed all of them)."""
    recs = [r for r in obj.maps["last_parse"].lookup(0) if r.alias or r.moq_off]
    assert len(recs) == 1
    return recs[0]


BASE = Moq()

# (description, packet, expected counter)
ROWS: list[tuple[str, bytes, IngressStat]] = [
    ("ipv4 datagram 0x31 type 0x00", BASE.build(), S.ST_ELIGIBLE),
    ("datagram 0x30 to the end", replace(BASE, with_length=False).build(), S.ST_ELIGIBLE),
    ("type 0x04 without object id", replace(BASE, dtype=0x04).build(), S.ST_ELIGIBLE),
    ("type 0x07 (extensions, end of group, no object id)", replace(BASE, dtype=0x07).build(), S.ST_ELIGIBLE),
    ("ipv6", replace(BASE, ip=6).build(), S.ST_ELIGIBLE),
    ("ipv4 with 4 bytes of options", replace(BASE, ip_options=b"\x01\x01\x01\x00").build(), S.ST_ELIGIBLE),
    ("ipv4 with 40 bytes of options (IHL 15)", replace(BASE, ip_options=b"\x01" * 40).build(), S.ST_ELIGIBLE),
    ("ACK then DATAGRAM", replace(BASE, before=ack_frame(100, 3, 2)).build(), S.ST_ELIGIBLE),
    ("ACK with ranges, ECN", replace(BASE, before=ack_frame(1000, 25, 1, ((1, 2), (3, 400)), (1, 2, 3))).build(),
     S.ST_ELIGIBLE),
    ("PING, PADDING, ACK, DATAGRAM", replace(BASE, before=b"\x01\x00\x00" + ack_frame(7)).build(), S.ST_ELIGIBLE),
    ("pn length 4", replace(BASE, pn_len=4, pn=0xDEADBEEF).build(), S.ST_ELIGIBLE),
    ("pn length 1", replace(BASE, pn_len=1, pn=9).build(), S.ST_ELIGIBLE),
    ("8-byte alias varint", replace(BASE, alias_len=8).build(), S.ST_ELIGIBLE),
    ("zero-length dcid port", replace(BASE, dcid=b"", dport=PORT_ZERO_CID).build(), S.ST_ELIGIBLE),
    ("large payload", replace(BASE, payload=bytes(3000)).build(), S.ST_ELIGIBLE),
    ("ethernet trailer after the IP packet", BASE.build() + bytes(20), S.ST_ELIGIBLE),
    ("other udp port", replace(BASE, dport=5000).build(), S.ST_OTHER),
    ("tcp", eth(ipv4(bytes(40), proto=IPPROTO_TCP)), S.ST_OTHER),
    ("arp", eth(bytes(28), ETH_P_ARP), S.ST_OTHER),
    ("ipv4 fragment", eth(ipv4(udp(1, PORT, BASE.quic()), frag_off=0x2000)), S.ST_OTHER),
    ("ipv6 extension header first", eth(ipv6(bytes(8) + udp(1, PORT, BASE.quic()), nexthdr=0), 0x86DD), S.ST_OTHER),
    ("long header", eth(ipv4(udp(1, PORT, long_header_packet(DCID, b"ab", bytes(40))))), S.ST_LONG_HEADER),
    ("fixed bit clear", eth(ipv4(udp(1, PORT, b"\x01" + BASE.quic()[1:]))), S.ST_NOT_QUIC),
    ("udp payload shorter than the tag", eth(ipv4(udp(1, PORT, b"\x41" + bytes(10)))), S.ST_NOT_QUIC),
    ("unknown dcid", replace(BASE, dcid=b"\xff" * 8).build(), S.ST_UNKNOWN_CONN),
    ("unknown alias", replace(BASE, alias=6).build(), S.ST_UNKNOWN_TRACK),
    ("STREAM frame before the DATAGRAM frame", replace(BASE, before=stream_frame(4, b"x")).build(), S.ST_TRAILING),
    ("CRYPTO frame", replace(BASE, before=crypto_frame(b"x")).build(), S.ST_UNKNOWN_FRAME),
    ("datagram is a status datagram 0x20", replace(BASE, dtype=0x20).build(), S.ST_NOT_OBJECT),
    ("frame after the datagram", replace(BASE, after=b"\x01").build(), S.ST_TRAILING),
    ("too many ACK ranges", replace(BASE, before=ack_frame(1000, 0, 0, ((0, 0),) * 17)).build(), S.ST_TOO_COMPLEX),
    ("too many frames", replace(BASE, before=b"\x01" * 16).build(), S.ST_TOO_COMPLEX),
    ("ip total length beyond the packet", BASE.build()[:-30], S.ST_MALFORMED),
    ("reserved header bits set", eth(ipv4(udp(1, PORT, bytes([BASE.quic()[0] | 0x08]) + BASE.quic()[1:]))),
     S.ST_MALFORMED),
    ("key phase bit set is fine", eth(ipv4(udp(1, PORT, bytes([BASE.quic()[0] | 0x04]) + BASE.quic()[1:]))),
     S.ST_ELIGIBLE),
]
for i in (0, 7, 15):
    tag = bytearray(16)
    tag[i] = 1
    ROWS.append((f"tag byte {i} nonzero", replace(BASE, tag=bytes(tag)).build(), S.ST_PROTECTED))


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.parametrize(("desc", "pkt", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_verdict_rows(prog: BpfObject, desc: str, pkt: bytes, expected: IngressStat) -> None:
    assert classify(prog, pkt) == expected


@pytest.mark.root
@pytest.mark.bpf
def test_only_ack_frames_is_no_datagram(prog: BpfObject) -> None:
    pkt = eth(ipv4(udp(1, PORT, b"\x41" + DCID + b"\x00\x01" + ack_frame(5) + bytes(16))))
    assert classify(prog, pkt) == S.ST_NO_DATAGRAM


@pytest.mark.root
@pytest.mark.bpf
@pytest.mark.parametrize("ip", [4, 6])
def test_eligible_parse_result(prog: BpfObject, ip: int) -> None:
    m = replace(BASE, ip=ip, alias=ALIAS, group=300, obj=70000, priority=0x21, before=ack_frame(9), pn=0x0A0B)
    pkt = m.build()
    assert classify(prog, pkt) == S.ST_ELIGIBLE
    r = last_parse(prog)
    l3 = 14
    l4 = l3 + (20 if ip == 4 else 40)
    quic = l4 + 8
    frame = quic + 1 + 8 + 2 + len(ack_frame(9))
    assert (r.alias, r.group, r.object, r.priority) == (ALIAS, 300, 70000, 0x21)
    assert (r.conn_id, r.track_id, r.ip_version, r.dcid_len, r.pn_len, r.pn_trunc) == (CONN_ID, TRACK_ID, ip, 8, 2, 0x0A0B)
    assert (r.l3_off, r.l4_off, r.quic_off, r.frame_off, r.frame_type) == (l3, l4, quic, frame, 0x31)
    assert r.moq_off == frame + 1 + len(varint(len(m.object_datagram())))  # 0x31 | Length | Data
    assert pkt[r.moq_off] == 0x00 and r.alias_off == r.moq_off + 1 and r.alias_len == 1
    assert r.payload_end == len(pkt) - 16


@pytest.mark.root
@pytest.mark.bpf
def test_truncated_at_every_byte_is_never_eligible(prog: BpfObject) -> None:
    pkt = replace(BASE, before=ack_frame(1000, 25, 1, ((1, 2),))).build()
    for n in range(14 + 20, len(pkt)):  # the kernel refuses shorter IPv4 test runs (bpf/testrun.py)
        assert classify(prog, pkt[:n]) != S.ST_ELIGIBLE, n


@pytest.mark.root
@pytest.mark.bpf
def test_ipv6_and_ipv4_truncated_inside_headers(prog: BpfObject) -> None:
    for pkt in (replace(BASE, ip=6).build(), replace(BASE, ip_options=b"\x01" * 8).build()):
        for n in range(14 + (40 if pkt[12:14] == b"\x86\xdd" else 20), 14 + 48 + 8 + 2):
            assert classify(prog, pkt[:n]) in (S.ST_MALFORMED, S.ST_OTHER, S.ST_NOT_QUIC)


@pytest.mark.root
@pytest.mark.bpf
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=54, max_size=1600))
def test_random_bytes_pass_unchanged(prog: BpfObject, data: bytes) -> None:
    assert classify(prog, data) != S.ST_ELIGIBLE


@pytest.mark.root
@pytest.mark.bpf
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quic=st.binary(min_size=0, max_size=400), ip=st.sampled_from([4, 6]))
def test_random_quic_payload_to_relay_port_passes_unchanged(prog: BpfObject, quic: bytes, ip: int) -> None:
    """Garbage behind valid Ethernet/IP/UDP headers reaches the QUIC and frame parsers."""
    body = b"\x41" + DCID + quic + bytes(16)  # plaintext-looking short header: exercises the frame walk
    seg = udp(1, PORT, body)
    pkt = eth(ipv4(seg)) if ip == 4 else eth(ipv6(seg), 0x86DD)
    classify(prog, pkt)


@pytest.mark.root
@pytest.mark.bpf
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=0), val=st.integers(min_value=0, max_value=255))
def test_one_byte_mutation_passes_unchanged(prog: BpfObject, pos: int, val: int) -> None:
    pkt = bytearray(replace(BASE, before=ack_frame(77, 1, 0, ((2, 3),))).build())
    pkt[pos % len(pkt)] = val
    classify(prog, bytes(pkt))


def _varint_len(v: int) -> st.SearchStrategy[int]:
    """Any RFC 9000 section 16 encoding length that can hold v (non-minimal ones are legal)."""
    return st.sampled_from([n for n in (1, 2, 4, 8) if v < 1 << (8 * n - 2)])


@pytest.mark.root
@pytest.mark.bpf
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    alias=st.integers(0, (1 << 62) - 1).flatmap(lambda a: st.tuples(st.just(a), _varint_len(a))),
    group=st.integers(0, (1 << 62) - 1),
    obj=st.integers(0, (1 << 62) - 1),
    priority=st.integers(0, 255),
    dtype=st.integers(0, 7),
    ip=st.sampled_from([4, 6]),
    pn_len=st.integers(1, 4),
)
def test_object_fields_round_trip(prog: BpfObject, alias: tuple[int, int], group: int, obj: int, priority: int,
                                  dtype: int, ip: int, pn_len: int) -> None:
    """The parser's varints (RFC 9000 section 16) decode every value and encoding length."""
    value, alias_len = alias
    prog.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=value), FastTrack(track_id=TRACK_ID))
    prog.maps["last_parse"].update(0, ParseResult())
    m = replace(BASE, alias=value, alias_len=alias_len, group=group, obj=obj, priority=priority, dtype=dtype, ip=ip,
                pn_len=pn_len, pn=0x01020304)
    assert classify(prog, m.build()) == S.ST_ELIGIBLE
    recs = [r for r in prog.maps["last_parse"].lookup(0) if r.moq_off]
    assert len(recs) == 1
    r = recs[0]
    expected_obj = 0 if dtype & 0x04 else obj
    assert (r.alias, r.alias_len, r.group, r.object, r.priority, r.moq_type) == (
        value, alias_len, group, expected_obj, priority, dtype)
    assert r.pn_len == pn_len and r.pn_trunc == 0x01020304 % (1 << (8 * pn_len))


@pytest.mark.root
@pytest.mark.bpf
def test_vlan_tagged_frame_is_parsed(prog: BpfObject) -> None:
    plain = BASE.build()
    tagged = plain[:12] + b"\x81\x00\x00\x05" + plain[12:]  # 802.1Q, VLAN 5
    assert classify(prog, tagged) == S.ST_ELIGIBLE
    assert last_parse(prog).l3_off == 18
