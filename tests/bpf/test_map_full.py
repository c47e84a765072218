"""Invariant 6 (bounded state): a full map or ring degrades to the slow path, never to a wrong packet or a crash.

- a full renumbering map (`downstream_cids`) makes enabling a connection fail cleanly: the hooks keep it in user
  space (slots themselves come from a free list no larger than the maps);
- a full registration ring drops the copy (`EG_RING_FULL`) instead of sending a packet user space never hears of.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.loader import BpfObject
from bpf.structs import CidKey, DownstreamCid, DownstreamState, EgressStat, RegEvent, SlotState
from bpf.testrun import TC_ACT_OK, TC_ACT_SHOT
from relay.fastpath import FastPathController
from tests.bpf.packets import Moq
from tests.bpf.test_client_egress import SLOT, SUB4, UP, clone_mark, conn_of, load_egress, run
from tests.unit.test_fastpath_controller import ADDR4

pytestmark = [pytest.mark.root, pytest.mark.bpf]


@pytest.fixture
def egress(bpf_build: Path) -> Iterator[BpfObject]:
    with load_egress() as obj:  # a fresh object: these tests fill its maps
        yield obj


def test_full_cid_map_refuses_enabling_and_leaves_nothing_behind(egress: BpfObject) -> None:
    """4096 renumbering entries in use: enabling one more connection fails with E2BIG (the hooks then keep it in
    user space) and its connection slot is removed again, so no packet is ever renumbered half-way."""
    cids = egress.maps["downstream_cids"]
    n = 0
    with pytest.raises(OSError) as exc:
        while n < 100_000:
            cids.update(CidKey.of(n.to_bytes(8, "big")), DownstreamCid(slot=0))
            n += 1
    assert exc.value.errno == errno.E2BIG and n == 4096  # DOWNSTREAM_CIDS_MAX
    ctl = FastPathController({}, egress.maps)
    with pytest.raises(OSError):
        ctl.enable_connection(5, ADDR4, b"\xee" * 8, next_pn=10, conn_index=5)
    ctl.disable_connection(5)  # what KernelFastPathHooks._enable does on the error
    assert egress.maps["downstream_conns"].lookup(5) is None
    assert cids.lookup(CidKey.of(b"\xee" * 8)) is None


def test_full_registration_ring_drops_the_copy_and_counts_it(egress: BpfObject) -> None:
    egress.maps["downstream_state"].update(SLOT, DownstreamState(next_pn=1))  # above largest_acked
    egress.maps["slot_state"].update(SLOT, SlotState())
    conn = conn_of(SUB4)
    conn.conn_index, conn.largest_acked = SLOT, 0  # every PN stays encodable in 2 bytes
    egress.maps["downstream_conns"].update(SLOT, conn)
    frame = Moq(dcid=UP.dcid, alias=UP.alias, dport=UP.dport, payload=bytes(900)).build()
    ctx_mark = clone_mark()

    verdicts = {TC_ACT_OK: 0, TC_ACT_SHOT: 0}
    for _ in range(23_000):  # more than the 1 MiB ring holds
        verdict, _out = run(egress, frame, ctx_mark)
        verdicts[verdict] += 1
    sent = egress.maps["egress_stats"].sum_percpu(int(EgressStat.EG_CLONE_SENT))
    full = egress.maps["egress_stats"].sum_percpu(int(EgressStat.EG_RING_FULL))
    stats = {s.name: egress.maps["egress_stats"].sum_percpu(int(s)) for s in EgressStat if s is not EgressStat.EG_MAX}
    assert full > 0 and verdicts[TC_ACT_SHOT] == full, {k: v for k, v in stats.items() if v}
    capacity = (1 << 20) // (ctypes.sizeof(RegEvent) + 8)  # BPF_RINGBUF_HDR_SZ per record
    assert sent == verdicts[TC_ACT_OK] and abs(sent - capacity) <= 2, (sent, capacity)
