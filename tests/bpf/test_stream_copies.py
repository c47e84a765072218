"""client_egress on copies of subgroup-stream packets (RFC 9000 section 19.8): the subscriber's stream id at the same
offset, byte-exact against tests/bpf/fastpath_model.py; every reason the kernel leaves the data to user space."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bpf.structs import REG_KIND_STREAM, EgressStat, SlotStream, SlotStreamKey
from bpf.testrun import TC_ACT_OK, TC_ACT_SHOT
from tests.bpf.fastpath_model import expected_stream_copy, udp_checksum_ok
from tests.bpf.packets import eth, ipv4, short_header_packet, udp, varint
from tests.bpf.test_client_egress import (
    SLOT,
    SUB4,
    UP_DCID,
    Egress,
    clone_mark,
    egress,
    install,
    prog,
    records,
    run,
    stats,
)

__all__ = ["egress", "prog"]  # fixtures shared with test_client_egress

pytestmark = [pytest.mark.root, pytest.mark.bpf]

E = EgressStat
UP_STREAM, DOWN_STREAM = 6, 7  # client-initiated uni (publisher) / server-initiated uni (relay), RFC 9000 2.1


def stream_packet(stream_id: int = UP_STREAM, offset: int = 5000, data: bytes = b"object bytes" * 40,
                  fin: bool = False, with_len: bool = True, pad: int = 2, sid_len: int = 1) -> bytes:
    ftype = 0x08 | 0x04 | (0x02 if with_len else 0) | (0x01 if fin else 0)
    frame = (bytes([ftype]) + varint(stream_id, sid_len) + varint(offset) + (varint(len(data)) if with_len else b"")
             + data)
    quic = short_header_packet(UP_DCID, 0x1234, bytes(pad) + frame)
    return eth(ipv4(udp(50000, 4433, quic)))


def map_stream(prog: Egress, down: int = DOWN_STREAM, min_offset: int = 100, max_offset: int = 1 << 20,
               id_len: int = 1) -> None:
    prog.maps["slot_streams"].update(SlotStreamKey(slot=SLOT, up_stream_id=UP_STREAM),
                                     SlotStream(down_stream_id=down, min_offset=min_offset, max_offset=max_offset,
                                                id_len=id_len))


@pytest.fixture
def stream_prog(prog: Egress) -> Egress:
    for k in list(prog.maps["slot_streams"].keys()):
        prog.maps["slot_streams"].delete(k)
    return prog


@pytest.mark.parametrize(("fin", "with_len"), [(False, True), (True, True), (False, False), (True, False)])
def test_stream_copy_matches_model_and_is_registered(stream_prog: Egress, fin: bool, with_len: bool) -> None:
    frame = stream_packet(fin=fin, with_len=with_len)
    want, pn = expected_stream_copy(frame, len(UP_DCID), SUB4, DOWN_STREAM)
    install(stream_prog, SUB4)
    map_stream(stream_prog)
    verdict, out = run(stream_prog, frame, clone_mark())
    assert verdict == TC_ACT_OK
    assert out.hex() == want.hex() and udp_checksum_ok(out)
    assert stats(stream_prog) == {E.EG_STREAM_SENT: 1}
    (rec,) = records(stream_prog)
    assert (rec.kind, rec.pn, rec.stream_id, rec.stream_off, rec.stream_len, rec.stream_fin) == \
        (REG_KIND_STREAM, pn, DOWN_STREAM, 5000, 480, int(fin))


def test_two_byte_stream_ids_keep_their_length(stream_prog: Egress) -> None:
    frame = stream_packet(sid_len=2)
    want, _ = expected_stream_copy(frame, len(UP_DCID), SUB4, 303)
    install(stream_prog, SUB4)
    map_stream(stream_prog, down=303, id_len=2)
    verdict, out = run(stream_prog, frame, clone_mark())
    assert verdict == TC_ACT_OK and out.hex() == want.hex()


@pytest.mark.parametrize(("desc", "mapping", "offset", "stat"), [
    ("no mapping", None, 5000, E.EG_NO_STREAM),
    ("data below the mapping's start (user space sent it)", dict(min_offset=6000), 5000, E.EG_NO_STREAM),
    ("stream id of another length", dict(down=300, id_len=2), 5000, E.EG_NO_STREAM),
    ("beyond MAX_STREAM_DATA / MAX_DATA share", dict(max_offset=5400), 5000, E.EG_FLOW_BLOCKED),
])
def test_left_to_user_space(stream_prog: Egress, desc: str, mapping: dict[str, int] | None, offset: int,
                            stat: EgressStat) -> None:
    install(stream_prog, SUB4)
    if mapping is not None:
        map_stream(stream_prog, **mapping)
    verdict, _ = run(stream_prog, stream_packet(offset=offset), clone_mark())
    assert verdict == TC_ACT_SHOT
    assert stats(stream_prog) == {stat: 1}
    assert records(stream_prog) == []


def test_flow_limit_is_inclusive(stream_prog: Egress) -> None:
    install(stream_prog, replace(SUB4))
    map_stream(stream_prog, max_offset=5000 + 480)  # data may end exactly at the limit
    verdict, _ = run(stream_prog, stream_packet(), clone_mark())
    assert verdict == TC_ACT_OK


def test_server_ingress_takes_streams_the_controller_registered(bpf_build: Path) -> None:
    """A STREAM frame ending the packet is eligible only for a stream in fast_streams; its fields are parsed."""
    from bpf.loader import BpfObject, build_path
    from bpf.structs import CidKey, FastTrack, IngressConfig, IngressStat, StreamKey, UpstreamConn

    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = 4433, len(UP_DCID)
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as ing:
        ing.maps["upstream_conns"].update(CidKey.of(UP_DCID), UpstreamConn(conn_id=7))
        pkt = stream_packet(fin=True)
        assert ing.programs["server_ingress"].test_run(pkt).data == pkt
        assert ing.maps["ingress_stats"].sum_percpu(int(IngressStat.ST_UNKNOWN_FRAME)) == 1
        ing.maps["fast_streams"].update(StreamKey(conn_id=7, stream_id=UP_STREAM), FastTrack(track_id=99))
        res = ing.programs["server_ingress"].test_run(pkt)
        assert res.data == pkt and ing.maps["ingress_stats"].sum_percpu(int(IngressStat.ST_ELIGIBLE)) == 1
        r = next(p for p in ing.maps["last_parse"].lookup(0) if p.track_id)  # per-CPU: the CPU that ran it
        assert (r.track_id, r.stream_id, r.stream_off, r.stream_len, r.stream_fin, r.sid_len) == \
            (99, UP_STREAM, 5000, 480, 1, 1)
