"""Fuzzing the TC parsers through BPF_PROG_TEST_RUN with structured packets (issue #10, hostile input).

Unlike the random-bytes properties in test_server_ingress.py / test_client_egress.py, these packets are valid
Ethernet/IP/UDP and a valid QUIC short header (RFC 9000 section 17.3.1) for a known connection, followed by a
generated mix of well-formed frames (PADDING, PING, ACK, STREAM, CRYPTO, DATAGRAM with MoQT objects) and garbage:
the frame walk and the MoQT parser get past the cheap early exits. The properties:
- server_ingress: never a verdict other than TC_ACT_OK, the packet passes up byte-for-byte, exactly one counter
  moves; a packet of only well-formed frames ending in an object DATAGRAM of a fast track is ELIGIBLE.
- client_egress: an unmarked packet that is not for an enabled subscriber passes unchanged (TC_ACT_OK, EG_PASS);
  a marked clone carrying garbage is either dropped (TC_ACT_SHOT) or a copy - never a crash, never another verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.loader import BpfObject, build_path
from bpf.structs import CidKey, EgressStat, FastTrack, IngressConfig, IngressStat, TrackKey, UpstreamConn
from bpf.testrun import TC_ACT_OK, TC_ACT_SHOT
from tests.bpf.packets import (
    ETH_P_IPV6,
    ack_frame,
    crypto_frame,
    datagram_frame,
    eth,
    ipv4,
    ipv6,
    moq_object_datagram,
    short_header_packet,
    stream_frame,
    udp,
)
from tests.bpf.test_client_egress import SUB4, SUB6, clone_mark, install, load_egress, run, user_packet
from tests.bpf.test_offload_check_classifier import SUBSCRIBED, XDP_DROP, XDP_PASS, loaded_classifier

pytestmark = [pytest.mark.root, pytest.mark.bpf]

PORT = 4433
DCID = bytes(range(1, 9))
CONN_ID, ALIAS = 7, 5
S, E = IngressStat, EgressStat
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- strategies -------------------------------------------------------------------------------------------------

_u62 = st.integers(0, (1 << 62) - 1)
_small = st.integers(0, 1 << 20)
padding = st.integers(1, 8).map(lambda n: b"\x00" * n)
ping = st.just(b"\x01")
ack = st.builds(ack_frame, _small, _small, st.integers(0, 1000),
                st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=4).map(tuple))  # fmt: skip
stream = st.builds(stream_frame, st.integers(0, 1 << 30), st.binary(max_size=64))
crypto = st.binary(max_size=32).map(crypto_frame)
obj_datagram = st.builds(
    moq_object_datagram, st.sampled_from([ALIAS, ALIAS + 1, 0]), _u62, _u62, st.integers(0, 255),
    st.binary(max_size=100), st.integers(0, 7),
)  # fmt: skip
datagram = st.tuples(obj_datagram, st.booleans()).map(lambda t: datagram_frame(*t))
garbage = st.binary(min_size=1, max_size=40)
valid_frame = st.one_of(padding, ping, ack)
any_frame = st.one_of(padding, ping, ack, stream, crypto, datagram, garbage)


def frame4or6(quic: bytes, ip: int, sport: int = 50000, dport: int = PORT) -> bytes:
    seg = udp(sport, dport, quic)
    return eth(ipv4(seg)) if ip == 4 else eth(ipv6(seg), ETH_P_IPV6)


# --- server_ingress ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingress(bpf_build: Path) -> Iterator[BpfObject]:
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(DCID)
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        obj.maps["upstream_conns"].update(CidKey.of(DCID), UpstreamConn(conn_id=CONN_ID))
        obj.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=ALIAS), FastTrack(track_id=1))
        yield obj


def ingress_stats(obj: BpfObject) -> dict[int, int]:
    return {int(s): obj.maps["ingress_stats"].sum_percpu(int(s)) for s in S if s != S.ST_MAX}


def ingress_run(obj: BpfObject, pkt: bytes) -> IngressStat:
    """One run: TC_ACT_OK, the packet unchanged, exactly one counter up by one; returns it."""
    before = ingress_stats(obj)
    res = obj.programs["server_ingress"].test_run(pkt)
    assert res.retval == TC_ACT_OK
    assert res.data == pkt, "server_ingress must pass every packet up unchanged"
    after = ingress_stats(obj)
    moved = {s: after[s] - before[s] for s in after if after[s] != before[s]}
    assert list(moved.values()) == [1], moved
    return S(next(iter(moved)))


@FUZZ
@given(frames=st.lists(any_frame, min_size=1, max_size=12), pn_len=st.integers(1, 4), ip=st.sampled_from([4, 6]),
       known=st.booleans(), tag=st.one_of(st.just(bytes(16)), st.binary(min_size=16, max_size=16)))  # fmt: skip
def test_ingress_valid_header_then_garbage_frames(ingress: BpfObject, frames: list[bytes], pn_len: int, ip: int,
                                                  known: bool, tag: bytes) -> None:  # fmt: skip
    dcid = DCID if known else bytes(8)
    pkt = frame4or6(short_header_packet(dcid, 0x1234, b"".join(frames), pn_len, tag), ip)
    verdict = ingress_run(ingress, pkt)
    if not known:
        assert verdict != S.ST_ELIGIBLE


@FUZZ
@given(before=st.lists(valid_frame, max_size=6), obj=obj_datagram, ip=st.sampled_from([4, 6]),
       pn_len=st.integers(1, 4), tail=st.one_of(st.just(b""), garbage))  # fmt: skip
def test_ingress_well_formed_datagram_is_eligible_and_garbage_after_is_not(
    ingress: BpfObject, before: list[bytes], obj: bytes, ip: int, pn_len: int, tail: bytes
) -> None:
    frames = b"".join(before) + datagram_frame(obj, with_length=True) + tail
    pkt = frame4or6(short_header_packet(DCID, 77, frames, pn_len), ip)
    verdict = ingress_run(ingress, pkt)
    fast_track = obj[1] == ALIAS  # types 0x00..0x07 are all object datagrams (section 10.3)
    if tail.strip(b"\x00"):
        assert verdict != S.ST_ELIGIBLE, "a frame after the DATAGRAM frame is not the fast path's"
    elif not tail:
        # well-formed: only the complexity limits (too many frames / ACK ranges) come before the track lookup
        allowed = {S.ST_ELIGIBLE if fast_track else S.ST_UNKNOWN_TRACK, S.ST_TOO_COMPLEX}
        assert verdict in allowed, verdict


# --- client_egress ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def egress(bpf_build: Path) -> Iterator[BpfObject]:
    with load_egress(PORT) as obj:
        yield obj


def egress_stat_total(obj: BpfObject, stat: EgressStat) -> int:
    return obj.maps["egress_stats"].sum_percpu(int(stat))


@FUZZ
@given(frames=st.lists(any_frame, min_size=1, max_size=10), pn_len=st.integers(1, 4), ip=st.sampled_from([4, 6]))
def test_egress_unknown_subscriber_passes_unchanged(egress: BpfObject, frames: list[bytes], pn_len: int,
                                                    ip: int) -> None:  # fmt: skip
    """A relay packet to a DCID no enabled subscriber has: user space owns it, the bytes are untouched."""
    quic = short_header_packet(b"\xee" * 8, 9, b"".join(frames), pn_len)
    pkt = frame4or6(quic, ip, sport=PORT, dport=40000)
    before = egress_stat_total(egress, E.EG_PASS)
    assert run(egress, pkt) == (TC_ACT_OK, pkt)
    assert egress_stat_total(egress, E.EG_PASS) == before + 1


@FUZZ
@given(frames=st.lists(any_frame, min_size=1, max_size=10), pn_len=st.integers(1, 4), ip=st.sampled_from([4, 6]))
def test_egress_clone_with_garbage_frames_never_crashes(egress: BpfObject, frames: list[bytes], pn_len: int,
                                                        ip: int) -> None:  # fmt: skip
    """A marked clone whose frames are garbage: dropped, or a copy for the installed subscriber; nothing else."""
    sub = SUB4 if ip == 4 else SUB6
    install(egress, sub)
    pkt = frame4or6(short_header_packet(DCID, 0x1234, b"".join(frames), pn_len), ip)
    verdict, out = run(egress, pkt, clone_mark())
    assert verdict in (TC_ACT_OK, TC_ACT_SHOT)
    if verdict == TC_ACT_OK:
        assert out[-16:] == pkt[-16:] or len(out) >= 14 + 20 + 8, "a copy keeps its tag room"


@FUZZ
@given(frames=st.lists(any_frame, min_size=1, max_size=10), pn_len=st.integers(1, 4))
def test_egress_user_packet_with_garbage_frames(egress: BpfObject, frames: list[bytes], pn_len: int) -> None:
    """A user-space packet for an enabled subscriber is renumbered whatever its (encrypted) frames look like: the
    program reads only the header, so the payload after the packet number is carried over byte for byte."""
    install(egress, SUB4)
    pkt = user_packet(SUB4, 0x42, pn_len)
    hdr = 14 + 20 + 8 + 1 + len(SUB4.dcid) + pn_len
    pkt = pkt[:hdr] + b"".join(frames) + pkt[hdr:]
    # fix the IPv4 and UDP lengths for the inserted bytes by rebuilding through the helpers
    quic = pkt[14 + 20 + 8 :]
    frame = frame4or6(quic, 4, sport=PORT, dport=SUB4.dport)
    verdict, out = run(egress, frame)
    assert verdict in (TC_ACT_OK, TC_ACT_SHOT)
    if verdict == TC_ACT_OK:
        body = frame[hdr:]
        assert out.endswith(body), "only the header may change"


# --- classifier (XDP; the NFP-subset program, also in host XDP with the fast path); its fixture and PORT/DCID/
# CONN_ID come from test_offload_check_classifier.py (the same values as here) -----------------------------------

_dgram_of = st.builds(
    lambda alias, group, obj, prio, payload, dtype, with_len: (
        "subscribed" if alias == SUBSCRIBED else "other",
        datagram_frame(moq_object_datagram(alias, group, obj, prio, payload, dtype), with_len),
    ),
    st.sampled_from([SUBSCRIBED, SUBSCRIBED + 1, 0]), _u62, _u62, st.integers(0, 255), st.binary(max_size=60),
    st.integers(0, 7), st.booleans(),
)  # fmt: skip
classifier_frame = st.one_of(
    st.one_of(padding, ping, ack, stream, crypto).map(lambda f: ("valid", f)), _dgram_of,
    garbage.map(lambda f: ("garbage", f)),
)  # fmt: skip


@pytest.fixture(scope="module")
def classifier(bpf_build: Path) -> Iterator[BpfObject]:
    with loaded_classifier() as obj:
        yield obj


@FUZZ
@given(frames=st.lists(classifier_frame, min_size=1, max_size=10), pn_len=st.integers(1, 4),
       ip=st.sampled_from([4, 6]), known=st.booleans())  # fmt: skip
def test_classifier_drops_only_objects_of_unsubscribed_tracks(classifier: BpfObject, frames: list[tuple[str, bytes]],
                                                              pn_len: int, ip: int, known: bool) -> None:  # fmt: skip
    """Whatever follows a valid short header: XDP_PASS with the packet unchanged, or XDP_DROP; exactly one counter
    moves, and a drop is always ST_UNKNOWN_TRACK. A packet without garbage whose object datagrams all belong to the
    subscribed track is never dropped (a publisher's good packet is never lost), nor any packet of an unknown
    connection."""
    dcid = DCID if known else bytes(8)
    pkt = frame4or6(short_header_packet(dcid, 0x55, b"".join(f for _, f in frames), pn_len), ip)
    m = classifier.maps["classifier_stats"]
    before = {s: m.lookup(int(s)) or 0 for s in S if s != S.ST_MAX}
    res = classifier.programs["classifier"].test_run(pkt)
    moved = {s: (m.lookup(int(s)) or 0) - before[s] for s in before if (m.lookup(int(s)) or 0) != before[s]}
    assert list(moved.values()) == [1], moved
    assert res.retval in (XDP_PASS, XDP_DROP)
    assert (res.retval == XDP_DROP) == (S.ST_UNKNOWN_TRACK in moved)
    if res.retval == XDP_PASS:
        assert res.data == pkt, "the classifier never rewrites"
    kinds = {k for k, _ in frames}
    if not known or ("garbage" not in kinds and "other" not in kinds):
        assert res.retval == XDP_PASS
