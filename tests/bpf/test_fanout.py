"""The kernel fast path end to end in one namespace: server_ingress clones an eligible packet once per subscriber of
its track (bpf_clone_redirect to the client-side device's egress), client_egress (attached there) rewrites each
copy, and the copies arriving on the peer device match tests/bpf/fastpath_model.py byte for byte.

Clone-redirect needs real devices, so the test run happens in a thread that joined the namespace (test_floor.py)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, build_path
from bpf.structs import (
    CidKey,
    DownstreamState,
    EgressStat,
    FastTrack,
    IngressConfig,
    IngressStat,
    RegEvent,
    SubTarget,
    TrackKey,
    TrackSubs,
    UpstreamConn,
)
from bpf.testrun import TC_ACT_OK
from relay.fastpath import Addresses, FastPathController
from tests.bpf.fastpath_model import expected_copy, udp_checksum_ok
from tests.bpf.netns import ifindex, in_netns, ip, veth_netns
from tests.bpf.packets import Moq
from tests.bpf.test_client_egress import SUB4, conn_of, load_egress

pytestmark = [pytest.mark.root, pytest.mark.bpf]

PORT, CONN_ID, ALIAS, TRACK_ID = 4433, 7, 5, 99
UP = Moq(dcid=bytes(range(1, 9)), alias=ALIAS, dport=PORT)
ETH_P_ALL = 0x0003


@pytest.fixture
def ns(run_prefix: str) -> Iterator[str]:
    with veth_netns(run_prefix) as name:
        ip("-n", name, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
        for dev in ("vc", "vd"):
            ip("-n", name, "link", "set", dev, "up")
        yield name


@pytest.fixture
def ingress(bpf_build: Path) -> Iterator[BpfObject]:
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(UP.dcid)
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        obj.maps["upstream_conns"].update(CidKey.of(UP.dcid), UpstreamConn(conn_id=CONN_ID))
        obj.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=ALIAS), FastTrack(track_id=TRACK_ID))
        yield obj


@pytest.fixture
def egress(bpf_build: Path) -> Iterator[BpfObject]:
    with load_egress(PORT) as obj:
        yield obj


def capture(ns: str, dev: str) -> socket.socket:
    """An AF_PACKET socket bound to ``dev`` inside ``ns`` (the socket keeps its namespace)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((dev, 0))
        s.settimeout(1.0)
        return s

    return in_netns(ns, make)


def test_one_copy_per_subscriber_rewritten(ns: str, ingress: BpfObject, egress: BpfObject) -> None:
    subs = [replace(SUB4, dcid=bytes([0xB0 + i]) * (4 + 4 * i), dport=40000 + i, next_pn=100 * (i + 1),
                    largest_acked=100 * (i + 1) - 5, alias=10 + i) for i in range(3)]
    vc = ifindex(ns, "vc")
    targets = TrackSubs(count=4)
    for i, sub in enumerate(subs):
        egress.maps["downstream_state"].update(i, DownstreamState(next_pn=sub.next_pn))
        conn = conn_of(sub)
        conn.conn_index = i
        egress.maps["downstream_conns"].update(i, conn)
        targets.sub[i] = SubTarget(slot=i, ifindex=vc)
    targets.sub[3] = SubTarget(slot=3, ifindex=9999)  # no such device: counted, no copy
    ingress.maps["track_subs"].update(TRACK_ID, targets)
    records: list[RegEvent] = []
    rb = egress.ring_buffer("reg_events", records.append, RegEvent)
    frame = UP.build()
    sock = capture(ns, "vd")
    try:
        with TcFilter(egress.programs["client_egress"].fd, vc, Direction.EGRESS, netns=ns, name="egress"):
            res = in_netns(ns, lambda: ingress.programs["server_ingress"].test_run(frame))
            got: list[bytes] = []
            while len(got) < 3:
                pkt = sock.recv(4096)
                if pkt[12:14] == b"\x08\x00" and pkt[23] == 17:
                    got.append(pkt)
    finally:
        sock.close()
    assert res.retval == TC_ACT_OK and res.data == frame, "the original passes up unchanged"
    s = {st: ingress.maps["ingress_stats"].sum_percpu(int(st)) for st in IngressStat if st != IngressStat.ST_MAX}
    assert (s[IngressStat.ST_ELIGIBLE], s[IngressStat.ST_CLONED], s[IngressStat.ST_CLONE_FAILED]) == (1, 3, 1)
    want = sorted(expected_copy(frame, len(UP.dcid), sub)[0] for sub in subs)
    assert sorted(got) == want
    assert all(udp_checksum_ok(p) for p in got)
    assert egress.maps["egress_stats"].sum_percpu(int(EgressStat.EG_CLONE_SENT)) == 3
    rb.consume()
    assert sorted((r.slot, r.pn) for r in records) == [(0, 100), (1, 200), (2, 300)]


def test_track_without_subscribers_makes_no_copy(bpf_build: Path, ingress: BpfObject) -> None:
    res = ingress.programs["server_ingress"].test_run(UP.build())
    assert res.retval == TC_ACT_OK
    assert ingress.maps["ingress_stats"].sum_percpu(int(IngressStat.ST_ELIGIBLE)) == 1
    assert ingress.maps["ingress_stats"].sum_percpu(int(IngressStat.ST_CLONED)) == 0


def test_controller_drives_the_programs(ns: str, ingress: BpfObject, egress: BpfObject) -> None:
    """relay/fastpath.py over the real maps: two subscribers get copies; after remove_subscriber only one does."""
    vc = ifindex(ns, "vc")
    ctl = FastPathController(ingress.maps, egress.maps)
    subs = {slot: replace(SUB4, dcid=bytes([slot]) * 6, alias=ALIAS + slot, next_pn=10 * slot, largest_acked=None)
            for slot in (1, 2)}
    for slot, sub in subs.items():
        addr = Addresses(sub.eth_src, sub.eth_dst, ipaddress.IPv4Address(sub.src_ip),
                         ipaddress.IPv4Address(sub.dst_ip), sub.sport, sub.dport)
        ctl.add_subscriber(slot, TRACK_ID, vc, addr, sub.dcid, sub.alias, sub.next_pn)
    frame = UP.build()
    sock = capture(ns, "vd")
    try:
        with TcFilter(egress.programs["client_egress"].fd, vc, Direction.EGRESS, netns=ns, name="egress"):
            in_netns(ns, lambda: ingress.programs["server_ingress"].test_run(frame))
            ctl.remove_subscriber(1)
            in_netns(ns, lambda: ingress.programs["server_ingress"].test_run(frame))
            got: list[bytes] = []
            while len(got) < 3:
                pkt = sock.recv(4096)
                if pkt[12:14] == b"\x08\x00" and pkt[23] == 17:
                    got.append(pkt)
    finally:
        sock.close()
    want = [expected_copy(frame, len(UP.dcid), subs[1])[0], expected_copy(frame, len(UP.dcid), subs[2])[0],
            expected_copy(frame, len(UP.dcid), replace(subs[2], next_pn=21))[0]]
    assert sorted(got) == sorted(want)
    assert ingress.maps["ingress_stats"].sum_percpu(int(IngressStat.ST_CLONED)) == 3
    assert egress.maps["egress_stats"].sum_percpu(int(EgressStat.EG_NO_SUBSCRIBER)) == 0
