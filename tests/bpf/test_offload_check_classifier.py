"""classifier.bpf.c (the NFP-subset ingress classifier) through BPF_PROG_TEST_RUN on the host kernel.

The same object must pass `relay offload-check --target nfp`; here we check what it does: objects of subscribed
tracks pass, objects of tracks nobody subscribed to are dropped, every object is counted per track, and
anything that is not a MoQT object of a known connection passes untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from bpf import offload_check
from bpf.loader import BpfObject, build_path
from bpf.structs import CidKey, IngressConfig, IngressStat, TrackKey, UpstreamConn
from tests.bpf.packets import Moq, eth, ipv4, long_header_packet, udp

XDP_DROP, XDP_PASS = 1, 2  # enum xdp_action (include/uapi/linux/bpf.h)
PORT = 4433
DCID = bytes(range(1, 9))
CONN_ID, SUBSCRIBED, UNSUBSCRIBED = 7, 5, 6
S = IngressStat
BASE = Moq(dcid=DCID, alias=SUBSCRIBED, dport=PORT)

# (description, packet, verdict, counter that moves)
ROWS: list[tuple[str, bytes, int, IngressStat]] = [
    ("subscribed track, ipv4", BASE.build(), XDP_PASS, S.ST_ELIGIBLE),
    ("subscribed track, ipv6", replace(BASE, ip=6).build(), XDP_PASS, S.ST_ELIGIBLE),
    ("unsubscribed track", replace(BASE, alias=UNSUBSCRIBED).build(), XDP_DROP, S.ST_UNKNOWN_TRACK),
    ("unsubscribed track, no object id", replace(BASE, alias=UNSUBSCRIBED, dtype=0x04).build(), XDP_DROP,
     S.ST_UNKNOWN_TRACK),
    ("unknown connection", replace(BASE, dcid=b"\xff" * 8, alias=UNSUBSCRIBED).build(), XDP_PASS, S.ST_UNKNOWN_CONN),
    ("other udp port", replace(BASE, dport=5000, alias=UNSUBSCRIBED).build(), XDP_PASS, S.ST_OTHER),
    ("long header", eth(ipv4(udp(1, PORT, long_header_packet(DCID, b"ab", bytes(40))))), XDP_PASS,
     S.ST_LONG_HEADER),
    ("protected (tag room not zero)", replace(BASE, alias=UNSUBSCRIBED, tag=b"\x01" * 16).build(), XDP_PASS,
     S.ST_PROTECTED),
]


@contextmanager
def loaded_classifier() -> Iterator[BpfObject]:
    """The classifier with one relay port, one upstream connection (DCID) and one subscribed track."""
    with BpfObject.load(build_path("classifier")) as obj:
        cfg = IngressConfig()
        cfg.port[0], cfg.dcid_len[0] = PORT, len(DCID)
        obj.maps["classifier_cfg"].update(0, cfg)
        obj.maps["classifier_conns"].update(CidKey.of(DCID), UpstreamConn(conn_id=CONN_ID))
        obj.maps["subscribed"].update(TrackKey(conn_id=CONN_ID, alias=SUBSCRIBED), 1)
        yield obj


@pytest.fixture(scope="module")
def classifier(bpf_build: Path) -> Iterator[BpfObject]:
    with loaded_classifier() as obj:
        yield obj


def stats(obj: BpfObject) -> dict[IngressStat, int]:
    return {s: obj.maps["classifier_stats"].lookup(int(s)) for s in S if s != S.ST_MAX}


def objects_seen(obj: BpfObject, alias: int) -> int:
    return obj.maps["track_objects"].lookup(TrackKey(conn_id=CONN_ID, alias=alias)) or 0


def test_classifier_fits_the_nfp(bpf_build: Path) -> None:
    report = offload_check.check(bpf_build / "classifier.o", "nfp")
    assert report.fits, [r.message for p in report.programs for r in p.reasons]
    assert [(p.name, p.type) for p in report.programs] == [("classifier", "xdp")]


@pytest.mark.parametrize(("desc", "pkt", "verdict", "stat"), ROWS, ids=[r[0] for r in ROWS])
def test_verdicts(classifier: BpfObject, desc: str, pkt: bytes, verdict: int, stat: IngressStat) -> None:
    before = stats(classifier)
    seen_sub, seen_unsub = objects_seen(classifier, SUBSCRIBED), objects_seen(classifier, UNSUBSCRIBED)
    res = classifier.programs["classifier"].test_run(pkt)
    assert res.retval == verdict
    if verdict == XDP_PASS:
        assert res.data == pkt, "a passed packet goes up unchanged"
    after = stats(classifier)
    assert {s: after[s] - before[s] for s in after if after[s] != before[s]} == {stat: 1}
    # Every parsed object counts for its track, dropped or not; anything else counts nowhere.
    expected = {S.ST_ELIGIBLE: (1, 0), S.ST_UNKNOWN_TRACK: (0, 1)}.get(stat, (0, 0))
    delta_sub = objects_seen(classifier, SUBSCRIBED) - seen_sub
    delta_unsub = objects_seen(classifier, UNSUBSCRIBED) - seen_unsub
    assert (delta_sub, delta_unsub) == expected
