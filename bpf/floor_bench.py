"""Kernel cost per copy: the fan-out (server_ingress + client_egress) vs the floor (floor.bpf.c, a minimal
clone-and-redirect), measured in one run with BPF_PROG_TEST_RUN in a private namespace (DESIGN section 6).

A test run of server_ingress includes the copies it makes: bpf_clone_redirect to a veth's egress runs client_egress
(attached there) synchronously, so its duration covers parsing plus N x (clone, rewrite, checksum, registration
record). The floor clones the same frame to the same device N times with no parsing and no rewrite.

    .venv/bin/python -m bpf.floor_bench [--copies 10] [--repeat 2000] [--payload 1000]    (root)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import subprocess
from dataclasses import dataclass

from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, build_path
from bpf.structs import (
    CidKey,
    EgressConfig,
    EgressStat,
    FastTrack,
    FloorConfig,
    IngressConfig,
    RegEvent,
    TrackKey,
    UpstreamConn,
)
from bpf.testrun import test_run
from crypto_offload.nic_io import in_netns
from relay.fastpath import Addresses, FastPathController
from relay.moqt.varint import encode_varint

PORT, CONN_ID, ALIAS, TRACK_ID = 4433, 7, 5, 99
UP_DCID = bytes(range(1, 9))
BATCH = 500  # test runs per batch: the registration ring (~21k records) is drained between batches


@dataclass(frozen=True)
class FloorResult:
    copies: int
    repeat: int
    payload: int
    copies_sent: int
    fast_ns_per_copy: float
    floor_ns_per_copy: float

    @property
    def ratio(self) -> float:
        return self.fast_ns_per_copy / self.floor_ns_per_copy

    def to_json(self) -> dict[str, float | int]:
        return {**vars(self), "ratio_fast_to_floor": round(self.ratio, 2)}


def upstream_frame(payload: int) -> bytes:
    """Ethernet / IPv4 / UDP / 1-RTT short header (NIC-verified plaintext: zero tag room) / DATAGRAM frame /
    OBJECT_DATAGRAM (draft-14: type 0, alias, group, object, priority, payload)."""
    obj = bytes([0]) + encode_varint(ALIAS) + encode_varint(1) + encode_varint(0) + bytes([0x80]) + bytes(payload)
    quic = bytes([0x41]) + UP_DCID + b"\x00\x01" + b"\x31" + encode_varint(len(obj)) + obj + bytes(16)
    udp = struct.pack("!HHHH", 50000, PORT, 8 + len(quic), 0) + quic
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([198, 18, 0, 2]),
                     bytes([198, 18, 0, 1]))
    return bytes.fromhex("020000000001020000000002") + b"\x08\x00" + ip + udp


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def measure(copies: int = 10, repeat: int = 2000, payload: int = 1000) -> FloorResult:
    """Both programs on the same frame, the same device and the same number of copies (at most 16)."""
    copies = max(1, min(copies, 16))
    ns = f"moqfloor{os.getpid()}"
    frame = upstream_frame(payload)
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
        for dev in ("vc", "vd"):
            _ip("-n", ns, "link", "set", dev, "up")
        with in_netns(ns):
            vc = socket.if_nametoindex("vc")
            return _measure(frame, vc, copies, repeat, payload)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _measure(frame: bytes, vc: int, copies: int, repeat: int, payload: int) -> FloorResult:
    icfg = IngressConfig()
    icfg.port[0], icfg.dcid_len[0] = PORT, len(UP_DCID)
    ecfg = EgressConfig()
    ecfg.port[0] = PORT
    ecfg.dcid_len[:] = [8, 0xFF, 0xFF, 0xFF]
    fcfg = FloorConfig(count=copies)
    fcfg.ifindex[:copies] = [vc] * copies
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": icfg}) as ing, \
            BpfObject.load(build_path("client_egress"), rodata={"egress_cfg": ecfg}) as eg, \
            BpfObject.load(build_path("floor"), rodata={"floor_cfg": fcfg}) as floor:
        ing.maps["upstream_conns"].update(CidKey.of(UP_DCID), UpstreamConn(conn_id=CONN_ID))
        ing.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=ALIAS), FastTrack(track_id=TRACK_ID))
        ctl = FastPathController(ing.maps, eg.maps)
        for i in range(copies):
            addr = Addresses(bytes(6), bytes(6), ipaddress.IPv4Address("198.18.0.1"),
                             ipaddress.IPv4Address(f"198.18.1.{i + 2}"), PORT, 40000 + i)
            ctl.add_subscriber(i, TRACK_ID, vc, addr, bytes([0xB0 + i]) * 8, ALIAS, next_pn=0)
        ring = eg.ring_buffer("reg_events", lambda rec: None, RegEvent)
        with TcFilter(eg.programs["client_egress"].fd, vc, Direction.EGRESS, name="egress"):
            fast_ns = floor_ns = 0.0
            done = 0
            while done < repeat:
                n = min(BATCH, repeat - done)
                fast_ns += float(test_run(ing.programs["server_ingress"].fd, frame, repeat=n).duration_ns) * n
                floor_ns += float(test_run(floor.programs["floor_clone"].fd, frame, repeat=n).duration_ns) * n
                ring.consume()
                done += n
        sent = eg.maps["egress_stats"].sum_percpu(int(EgressStat.EG_CLONE_SENT))
    return FloorResult(copies, repeat, payload, sent, round(fast_ns / repeat / copies, 1),
                       round(floor_ns / repeat / copies, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=10, help="copies per packet (1-16, default 10)")
    parser.add_argument("--repeat", type=int, default=2000, help="packets per program (default 2000)")
    parser.add_argument("--payload", type=int, default=1000, help="object payload bytes (default 1000)")
    args = parser.parse_args()
    print(json.dumps(measure(args.copies, args.repeat, args.payload).to_json(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
