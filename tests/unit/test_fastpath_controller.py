"""relay/fastpath.py over dict-backed maps that store raw bytes (as the kernel does): every value round-trips
through its ctypes mirror, so what the controller writes is exactly what the programs would read."""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Any

import pytest

from bpf.structs import (
    NO_LARGEST_ACKED,
    TRACK_SUBS_PER_TRACK,
    CidKey,
    DownstreamCid,
    DownstreamConn,
    DownstreamState,
    FastTrack,
    Mirror,
    TrackKey,
    TrackSubs,
    UpstreamConn,
)
from relay.fastpath import Addresses, FastPathController, FastPathFull


class BytesMap:
    """A map that keeps keys and values as bytes, like a BPF hash map; decodes to the given types."""

    def __init__(self, key_type: type[Any], value_type: type[Mirror]) -> None:
        self.key_type, self.value_type = key_type, value_type
        self.data: dict[bytes, bytes] = {}

    def _k(self, key: Any) -> bytes:
        return bytes(key) if isinstance(key, Mirror) else int(key).to_bytes(4, "little")

    def lookup(self, key: Any) -> Any:
        raw = self.data.get(self._k(key))
        return None if raw is None else self.value_type.from_buffer_copy(raw)

    def update(self, key: Any, value: Any, flags: int = 0) -> None:
        raw = bytes(value)
        assert len(raw) == ctypes.sizeof(self.value_type)
        self.data[self._k(key)] = raw

    def delete(self, key: Any) -> bool:
        return self.data.pop(self._k(key), None) is not None


ADDR4 = Addresses(bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), ipaddress.IPv4Address("198.18.1.1"),
                  ipaddress.IPv4Address("198.18.1.2"), 4433, 40000)
ADDR6 = Addresses(ADDR4.eth_src, ADDR4.eth_dst, ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2"),
                  4433, 40001)


@pytest.fixture
def ctl() -> FastPathController:
    ingress = {"upstream_conns": BytesMap(CidKey, UpstreamConn), "fast_tracks": BytesMap(TrackKey, FastTrack),
               "track_subs": BytesMap(int, TrackSubs)}
    egress = {"downstream_conns": BytesMap(int, DownstreamConn), "downstream_state": BytesMap(int, DownstreamState),
              "downstream_cids": BytesMap(CidKey, DownstreamCid)}
    return FastPathController(ingress, egress)


def test_add_subscriber_round_trips(ctl: FastPathController) -> None:
    ctl.add_upstream(b"\x01" * 8, 7)
    ctl.add_track(7, 5, 99)
    ctl.add_subscriber(3, 99, ifindex=12, addresses=ADDR6, dcid=b"\xaa" * 8, alias=300, next_pn=1000)
    assert ctl.ingress["upstream_conns"].lookup(CidKey.of(b"\x01" * 8)).conn_id == 7
    assert ctl.ingress["fast_tracks"].lookup(TrackKey(conn_id=7, alias=5)).track_id == 99
    subs = ctl.ingress["track_subs"].lookup(99)
    assert (subs.count, subs.sub[0].slot, subs.sub[0].ifindex) == (1, 3, 12)
    conn = ctl.egress["downstream_conns"].lookup(3)
    assert (conn.alias, conn.alias_len, conn.ip_version, conn.enabled, conn.conn_index) == (300, 2, 6, 1, 3)
    assert bytes(conn.dcid[: conn.dcid_len]) == b"\xaa" * 8
    assert bytes(conn.src_ip) == ADDR6.src.packed and bytes(conn.dst_ip) == ADDR6.dst.packed
    assert (bytes(conn.eth_dst), conn.sport, conn.dport) == (ADDR6.eth_dst, 4433, 40001)
    assert conn.largest_acked == NO_LARGEST_ACKED
    assert ctl.egress["downstream_cids"].data == {}  # renumbering belongs to enable_connection
    assert ctl.next_pn(3) == 1000


def test_connection_slot_owns_renumbering_until_disabled(ctl: FastPathController) -> None:
    """Invariant 1: the CID entry lives with the connection, not with any of its subscriptions."""
    ctl.enable_connection(0, ADDR4, b"\xaa" * 8, next_pn=500, conn_index=4, key_phase=1)
    assert ctl.egress["downstream_cids"].lookup(CidKey.of(b"\xaa" * 8)).slot == 0
    conn = ctl.egress["downstream_conns"].lookup(0)
    assert (conn.conn_index, conn.key_phase, conn.enabled) == (4, 1, 1) and ctl.next_pn(4) == 500
    ctl.add_subscriber(1, 9, 2, ADDR4, b"\xaa" * 8, alias=5, next_pn=0, conn_index=4, seed_pn=False)
    ctl.remove_subscriber(1)
    assert ctl.egress["downstream_cids"].lookup(CidKey.of(b"\xaa" * 8)).slot == 0 and ctl.next_pn(4) == 500
    ctl.disable_connection(0)
    assert ctl.egress["downstream_cids"].data == {} and ctl.egress["downstream_conns"].data == {}


def test_change_connection_moves_cid_and_phase_on_every_slot(ctl: FastPathController) -> None:
    ctl.enable_connection(0, ADDR4, b"\x01" * 8, next_pn=0, conn_index=0)
    ctl.add_subscriber(1, 9, 2, ADDR4, b"\x01" * 8, alias=5, next_pn=0, conn_index=0, seed_pn=False)
    ctl.change_connection([0, 1], dcid=b"\x02" * 4, key_phase=1)
    for slot in (0, 1):
        conn = ctl.egress["downstream_conns"].lookup(slot)
        assert (bytes(conn.dcid), conn.dcid_len, conn.key_phase) == (b"\x02" * 4 + bytes(16), 4, 1)
    assert ctl.egress["downstream_cids"].lookup(CidKey.of(b"\x02" * 4)).slot == 0
    assert ctl.egress["downstream_cids"].lookup(CidKey.of(b"\x01" * 8)) is None


def test_controls_never_touch_the_pn_counter(ctl: FastPathController) -> None:
    ctl.add_subscriber(1, 9, 2, ADDR4, b"\x01" * 4, alias=5, next_pn=10)
    ctl.egress["downstream_state"].update(1, DownstreamState(next_pn=77))  # the program moved on
    ctl.set_largest_acked(1, 70)
    ctl.set_priority_threshold(1, 2)
    ctl.set_key_phase(1, 1)
    conn = ctl.egress["downstream_conns"].lookup(1)
    assert (conn.largest_acked, conn.prio_set, conn.priority_threshold, conn.key_phase) == (70, 1, 2, 1)
    assert ctl.next_pn(1) == 77
    ctl.set_priority_threshold(1, None)
    assert ctl.egress["downstream_conns"].lookup(1).prio_set == 0


def test_second_subscription_shares_the_connection_counter(ctl: FastPathController) -> None:
    ctl.add_subscriber(1, 9, 2, ADDR4, b"\x01" * 4, alias=5, next_pn=10)
    ctl.egress["downstream_state"].update(1, DownstreamState(next_pn=50))
    ctl.add_subscriber(2, 10, 2, ADDR4, b"\x01" * 4, alias=6, next_pn=0, conn_index=1, seed_pn=False)
    assert ctl.egress["downstream_conns"].lookup(2).conn_index == 1
    assert ctl.next_pn(1) == 50


def test_remove_subscriber_leaves_fan_out_then_state(ctl: FastPathController) -> None:
    for slot in (1, 2):
        ctl.add_subscriber(slot, 9, 2, ADDR4, bytes([slot]) * 4, alias=5, next_pn=0)
    ctl.remove_subscriber(1)
    subs = ctl.ingress["track_subs"].lookup(9)
    assert (subs.count, subs.sub[0].slot) == (1, 2)
    assert ctl.egress["downstream_conns"].lookup(1) is None
    ctl.remove_subscriber(2)
    assert ctl.ingress["track_subs"].lookup(9) is None


def test_full_track_is_refused(ctl: FastPathController) -> None:
    for slot in range(TRACK_SUBS_PER_TRACK):
        ctl.add_subscriber(slot, 9, 2, ADDR4, slot.to_bytes(2, "big"), alias=5, next_pn=0)
    with pytest.raises(FastPathFull):
        ctl.add_subscriber(TRACK_SUBS_PER_TRACK, 9, 2, ADDR4, b"\xff\xff", alias=5, next_pn=0)
    assert ctl.egress["downstream_conns"].lookup(TRACK_SUBS_PER_TRACK) is None


def test_rejects_bad_input(ctl: FastPathController) -> None:
    with pytest.raises(ValueError):
        ctl.add_subscriber(5000, 9, 2, ADDR4, b"", alias=5, next_pn=0)
    with pytest.raises(ValueError):
        ctl.add_subscriber(1, 9, 2, ADDR4, bytes(21), alias=5, next_pn=0)
    with pytest.raises(ValueError):
        Addresses(ADDR4.eth_src, ADDR4.eth_dst, ADDR4.src, ADDR6.dst, 1, 2)
    with pytest.raises(KeyError):
        ctl.set_largest_acked(42, 1)
