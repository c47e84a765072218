"""Kernel cost per copy: our fan-out (server_ingress + client_egress rewrite) vs the floor (floor.bpf.c, a minimal
clone-and-redirect), measured in one run with BPF_PROG_TEST_RUN in a private namespace.

    .venv/bin/python -m tests.bpf.bench_floor [--copies 10] [--repeat 2000]

A test run of server_ingress includes the clones it makes: bpf_clone_redirect to a veth's egress runs client_egress
(attached there) synchronously, so `duration` covers parse + N x (clone, rewrite, checksum, registration record).
The floor clones the same frame to the same device N times with no parsing and no rewrite. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

from bpf.attach import Direction, TcFilter
from bpf.loader import BpfObject, build_path
from bpf.structs import (
    CidKey,
    DownstreamState,
    EgressConfig,
    FastTrack,
    FloorConfig,
    IngressConfig,
    RegEvent,
    SlotState,
    SubTarget,
    TrackKey,
    TrackSubs,
    UpstreamConn,
)
from bpf.testrun import test_run
from tests.bpf.netns import ifindex, in_netns, ip, veth_netns
from tests.bpf.packets import Moq
from tests.bpf.test_client_egress import SUB4, conn_of

PORT, CONN_ID, ALIAS, TRACK_ID = 4433, 7, 5, 99


def _timed(ns: str, prog_fd: int, frame: bytes, n: int) -> float:
    """Total run time of n test runs (the kernel reports the mean)."""
    return float(in_netns(ns, lambda: test_run(prog_fd, frame, repeat=n)).duration_ns) * n


def measure(copies: int, repeat: int, payload: int) -> dict[str, float]:
    up = Moq(dcid=bytes(range(1, 9)), alias=ALIAS, dport=PORT, payload=bytes(payload))
    frame = up.build()
    with veth_netns(f"bf{os.getpid() % 100000}") as ns:
        ip("-n", ns, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
        for dev in ("vc", "vd"):
            ip("-n", ns, "link", "set", dev, "up")
        vc = ifindex(ns, "vc")
        icfg = IngressConfig()
        icfg.port[0], icfg.dcid_len[0] = PORT, len(up.dcid)
        ecfg = EgressConfig()
        ecfg.port[0] = PORT
        ecfg.dcid_len[:] = [8, 0xFF, 0xFF, 0xFF]
        fcfg = FloorConfig(count=copies)
        fcfg.ifindex[:copies] = [vc] * copies
        with BpfObject.load(build_path("server_ingress"), rodata={"cfg": icfg}) as ing, \
                BpfObject.load(build_path("client_egress"), rodata={"egress_cfg": ecfg}) as eg, \
                BpfObject.load(build_path("floor"), rodata={"floor_cfg": fcfg}) as floor:
            ing.maps["upstream_conns"].update(CidKey.of(up.dcid), UpstreamConn(conn_id=CONN_ID))
            ing.maps["fast_tracks"].update(TrackKey(conn_id=CONN_ID, alias=ALIAS), FastTrack(track_id=TRACK_ID))
            subs = TrackSubs(count=copies)
            for i in range(copies):
                sub = replace(SUB4, dcid=bytes([0xB0 + i]) * 8, dport=40000 + i, next_pn=0, largest_acked=None)
                eg.maps["downstream_state"].update(i, DownstreamState(next_pn=0))
                eg.maps["slot_state"].update(i, SlotState())
                conn = conn_of(sub)
                conn.conn_index = i
                eg.maps["downstream_conns"].update(i, conn)
                subs.sub[i] = SubTarget(slot=i, ifindex=vc)
            ing.maps["track_subs"].update(TRACK_ID, subs)
            rb = eg.ring_buffer("reg_events", lambda rec: None, RegEvent)
            with TcFilter(eg.programs["client_egress"].fd, vc, Direction.EGRESS, netns=ns, name="egress"):
                fast_ns = floor_ns = 0.0
                done = 0
                while done < repeat:  # batches: the registration ring holds ~21k records
                    n = min(500, repeat - done)
                    fast_ns += _timed(ns, ing.programs["server_ingress"].fd, frame, n)
                    floor_ns += _timed(ns, floor.programs["floor_clone"].fd, frame, n)
                    rb.consume()
                    done += n
            sent = eg.maps["egress_stats"].sum_percpu(1)
    per_copy_fast = fast_ns / repeat / copies
    per_copy_floor = floor_ns / repeat / copies
    return {"copies": copies, "repeat": repeat, "payload": payload, "copies_sent": sent,
            "fast_ns_per_copy": round(per_copy_fast, 1), "floor_ns_per_copy": round(per_copy_floor, 1),
            "ratio_fast_to_floor": round(per_copy_fast / per_copy_floor, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--payload", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(measure(min(args.copies, 16), args.repeat, args.payload), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
