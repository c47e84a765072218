"""server_ingress attached for real: a UDP packet crosses a veth pair between two namespaces, is counted
eligible on the receiver's TC ingress and still arrives at the socket byte for byte (passes up unchanged)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.attach import TcFilter
from bpf.loader import BpfObject, build_path
from bpf.structs import CidKey, FastTrack, IngressConfig, IngressStat, TrackKey, UpstreamConn
from tests.bpf.netns import in_netns, ip
from tests.bpf.packets import Moq
from tests.support import have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.bpf]
PORT = 4433


@pytest.fixture
def pair(run_prefix: str) -> Iterator[tuple[str, str]]:
    """Namespaces <prefix>a (va, 198.18.0.1) and <prefix>b (vb, 198.18.0.2), linked by one veth pair."""
    require(have_tool("ip"), "iproute2")
    a, b = run_prefix + "a", run_prefix + "b"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        ip("-n", a, "addr", "add", "198.18.0.1/24", "dev", "va")
        ip("-n", b, "addr", "add", "198.18.0.2/24", "dev", "vb")
        ip("-n", a, "link", "set", "va", "up")
        ip("-n", b, "link", "set", "vb", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_eligible_packet_is_counted_and_delivered_unchanged(bpf_build: Path, pair: tuple[str, str]) -> None:
    a, b = pair
    m = Moq(dport=PORT)
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, len(m.dcid)
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        obj.maps["upstream_conns"].update(CidKey.of(m.dcid), UpstreamConn(conn_id=1))
        obj.maps["fast_tracks"].update(TrackKey(conn_id=1, alias=m.alias), FastTrack(track_id=2))
        rx = in_netns(b, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tx = in_netns(a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            rx.bind(("198.18.0.2", PORT))
            rx.settimeout(2)
            with TcFilter.by_name(obj.programs["server_ingress"].fd, "vb", netns=b):
                tx.sendto(m.quic(), ("198.18.0.2", PORT))
                data, _ = rx.recvfrom(2048)
                tx.sendto(b"\x80" + bytes(40), ("198.18.0.2", PORT))  # long header: counted, delivered
                assert rx.recvfrom(2048)[0] == b"\x80" + bytes(40)
        finally:
            rx.close()
            tx.close()
        assert data == m.quic()
        stats = obj.maps["ingress_stats"]
        assert stats.sum_percpu(IngressStat.ST_ELIGIBLE) == 1
        assert stats.sum_percpu(IngressStat.ST_LONG_HEADER) == 1


def test_oversized_packet_is_counted_and_delivered_unchanged(bpf_build: Path, pair: tuple[str, str]) -> None:
    """Larger than PARSE_MAX_OFF (only reachable on a real device: test runs are limited to a page)."""
    a, b = pair
    ip("-n", a, "link", "set", "va", "mtu", "30000")
    ip("-n", b, "link", "set", "vb", "mtu", "30000")
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = PORT, 8
    payload = Moq(payload=bytes(20000)).quic()
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        rx = in_netns(b, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        tx = in_netns(a, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            rx.bind(("198.18.0.2", PORT))
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            rx.settimeout(2)
            with TcFilter.by_name(obj.programs["server_ingress"].fd, "vb", netns=b):
                tx.sendto(payload, ("198.18.0.2", PORT))
                data, _ = rx.recvfrom(65536)
        finally:
            rx.close()
            tx.close()
        assert data == payload
        assert obj.maps["ingress_stats"].sum_percpu(IngressStat.ST_OVERSIZED) == 1
        assert obj.maps["ingress_stats"].sum_percpu(IngressStat.ST_ELIGIBLE) == 0
