"""Fast-path controller: the domain verbs that fill the kernel programs' maps (docs/fastpath.md).

Only this class writes `upstream_conns`, `fast_tracks`, `track_subs` (server_ingress) and `downstream_conns`,
`downstream_state`, `downstream_cids` (client_egress). Two kinds of `downstream_conns` slots:

- a **connection slot** per enabled downstream connection (`enable_connection`): seeds its PN counter and owns its
  `downstream_cids` entry, so the program renumbers every user-space 1-RTT packet of the connection from then until
  the connection closes (`disable_connection`), whatever its subscriptions do (invariant 1);
- a **subscription slot** per fast-path subscription (`add_subscriber`): what a copy needs (alias, addresses), and
  the connection's `conn_index`, hence the same PN sequence.

The order of writes is what keeps the invariants: a subscription's state is written before any clone can name its
slot, and a removed subscription leaves every fan-out list before its state goes (invariant 3: a copy in flight is
then dropped, never sent with stale addresses). Map capacity errors surface as `FastPathFull` so the caller keeps
that subscriber on the slow path (invariant 6).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bpf.structs import (
    NO_LARGEST_ACKED,
    QUIC_MAX_CID_LEN,
    TRACK_SUBS_PER_TRACK,
    CidKey,
    DownstreamCid,
    DownstreamConn,
    DownstreamState,
    FastTrack,
    RecoveryState,
    SlotState,
    SlotStream,
    SlotStreamKey,
    StreamKey,
    SubTarget,
    TrackKey,
    TrackSubs,
    UpstreamConn,
)

SLOT_MAX = 4096  # DOWNSTREAM_CONNS_MAX in bpf/src/maps.h (a slot also fits the 16-bit mark field)
RECOVERY_CONNS_MAX = 1024  # RECOVERY_CONNS_MAX in bpf/src/maps.h: connection indexes with kernel recovery state


class MapLike(Protocol):
    """What the controller needs of a BPF map (bpf.loader.Map, or a dict-backed fake in unit tests)."""

    def lookup(self, key: Any) -> Any: ...

    def update(self, key: Any, value: Any, flags: int = 0) -> None: ...

    def delete(self, key: Any) -> bool: ...


class FastPathFull(Exception):
    """A fast-path capacity is exhausted: keep this subscription on the slow path."""


@dataclass(frozen=True)
class Addresses:
    """Where a downstream connection's packets go: L2 next hop, IP and UDP endpoints."""

    eth_src: bytes
    eth_dst: bytes
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("source and destination must be the same IP version")
        if len(self.eth_src) != 6 or len(self.eth_dst) != 6:
            raise ValueError("MAC addresses are 6 bytes")


def _alias_len(alias: int) -> int:
    """RFC 9000 section 16: the shortest varint length for the alias."""
    for n in (1, 2, 4, 8):
        if alias < 1 << (8 * n - 2):
            return n
    raise ValueError("alias does not fit a varint")


def _conn_state(
    addresses: Addresses, dcid: bytes, alias: int, conn_index: int, key_phase: int, drop_group_rest: bool = True,
    recovery: bool = False, auto_threshold: int | None = None,
) -> DownstreamConn:
    conn = DownstreamConn(
        largest_acked=NO_LARGEST_ACKED, alias=alias, ip_version=addresses.src.version, dcid_len=len(dcid),
        alias_len=_alias_len(alias), enabled=1, key_phase=key_phase & 1, sport=addresses.sport,
        dport=addresses.dport, conn_index=conn_index, drop_group_rest=int(drop_group_rest), recovery=int(recovery),
    )
    if recovery and auto_threshold is not None:  # the egress program applies it while the kernel's window is full
        conn.prio_auto, conn.priority_threshold = 1, auto_threshold
    conn.eth_dst[:], conn.eth_src[:] = list(addresses.eth_dst), list(addresses.eth_src)
    conn.dcid[: len(dcid)] = list(dcid)
    ip_len = 4 if addresses.src.version == 4 else 16
    conn.src_ip[:ip_len], conn.dst_ip[:ip_len] = list(addresses.src.packed), list(addresses.dst.packed)
    return conn


@dataclass
class FastPathController:
    """Domain verbs over the two programs' maps (``ingress``: server_ingress maps, ``egress``: client_egress)."""

    ingress: Mapping[str, MapLike]
    egress: Mapping[str, MapLike]
    _tracks_of_slot: dict[int, set[int]] = field(default_factory=dict)

    def add_upstream(self, dcid: bytes, conn_id: int) -> None:
        """An upstream connection ID the relay issued; its packets become candidates."""
        self.ingress["upstream_conns"].update(CidKey.of(dcid), UpstreamConn(conn_id=conn_id))

    def remove_upstream(self, dcid: bytes) -> None:
        """A connection ID the relay retired (or its connection closed): its packets go up unparsed."""
        self.ingress["upstream_conns"].delete(CidKey.of(dcid))

    def add_track(self, conn_id: int, alias: int, track_id: int) -> None:
        """Objects with ``alias`` on upstream ``conn_id`` are fast-path track ``track_id``."""
        self.ingress["fast_tracks"].update(TrackKey(conn_id=conn_id, alias=alias), FastTrack(track_id=track_id))

    def remove_track(self, conn_id: int, alias: int, track_id: int) -> None:
        self.ingress["fast_tracks"].delete(TrackKey(conn_id=conn_id, alias=alias))
        self.ingress["track_subs"].delete(track_id)
        for tracks in self._tracks_of_slot.values():
            tracks.discard(track_id)

    def enable_connection(
        self, slot: int, addresses: Addresses, dcid: bytes, next_pn: int, conn_index: int, key_phase: int = 0,
        recovery_mds: int | None = None,
    ) -> None:
        """From now on the program numbers the connection's 1-RTT packets (its counter starts at ``next_pn``) and
        renumbers the ones user space sends to ``dcid``; ``slot`` becomes the connection slot. ``recovery_mds``
        (kernel recovery, issue 5): seed the connection's RFC 9002 state for that max datagram size first."""
        self._check(slot, dcid)
        if recovery_mds is not None:
            self.egress["recovery_state"].update(conn_index, RecoveryState.seeded(recovery_mds, next_pn))
        self.egress["downstream_state"].update(conn_index, DownstreamState(next_pn=next_pn))
        self.egress["downstream_conns"].update(
            slot, _conn_state(addresses, dcid, 0, conn_index, key_phase, recovery=recovery_mds is not None)
        )
        self.egress["downstream_cids"].update(CidKey.of(dcid), DownstreamCid(slot=slot))  # last: renumbering starts

    def disable_connection(self, slot: int) -> None:
        """The connection closed: no more renumbering (its subscription slots must be gone already)."""
        conn = self.egress["downstream_conns"].lookup(slot)
        if conn is None:
            return
        self.egress["downstream_cids"].delete(CidKey.of(bytes(conn.dcid[: conn.dcid_len])))
        self.egress["downstream_conns"].delete(slot)

    def change_connection(self, slots: list[int], dcid: bytes | None = None, key_phase: int | None = None) -> None:
        """The peer CID in use or the key phase changed: rewrite every slot of the connection (connection slot
        first); a new CID's renumbering entry is written before the old one goes."""
        if dcid is not None and len(dcid) > QUIC_MAX_CID_LEN:
            raise ValueError("connection ID longer than 20 bytes")
        for i, slot in enumerate(slots):
            conn = self.egress["downstream_conns"].lookup(slot)
            if conn is None:
                continue
            old = bytes(conn.dcid[: conn.dcid_len])
            if key_phase is not None:
                conn.key_phase = key_phase & 1
            if dcid is not None:
                conn.dcid[:] = [0] * QUIC_MAX_CID_LEN
                conn.dcid[: len(dcid)], conn.dcid_len = list(dcid), len(dcid)
            self.egress["downstream_conns"].update(slot, conn)
            if i == 0 and dcid is not None and dcid != old:
                self.egress["downstream_cids"].update(CidKey.of(dcid), DownstreamCid(slot=slot))
                self.egress["downstream_cids"].delete(CidKey.of(old))

    @staticmethod
    def _check(slot: int, dcid: bytes) -> None:
        if not 0 <= slot < SLOT_MAX:
            raise ValueError(f"slot must be below {SLOT_MAX}")
        if len(dcid) > QUIC_MAX_CID_LEN:
            raise ValueError("connection ID longer than 20 bytes")

    def add_subscriber(
        self, slot: int, track_id: int, ifindex: int, addresses: Addresses, dcid: bytes, alias: int,
        next_pn: int, conn_index: int | None = None, key_phase: int = 0, seed_pn: bool = True,
        drop_group_rest: bool = True, recovery: bool = False, auto_threshold: int | None = None,
    ) -> None:
        """Subscription ``slot`` of a downstream connection to ``track_id``, leaving by device ``ifindex``.
        ``conn_index`` names the connection's PN counter (default: the slot); ``seed_pn=False`` when the program
        already owns that counter (the connection is enabled). User-space packets are renumbered only for
        connections given to `enable_connection`."""
        self._check(slot, dcid)
        index = slot if conn_index is None else conn_index
        subs = self.ingress["track_subs"].lookup(track_id) or TrackSubs()
        if subs.count >= TRACK_SUBS_PER_TRACK:
            raise FastPathFull(f"track {track_id} has {TRACK_SUBS_PER_TRACK} fast-path subscribers")
        if seed_pn:
            self.egress["downstream_state"].update(index, DownstreamState(next_pn=next_pn))
        if "slot_state" in self.egress:  # the policy's record starts empty for every new subscription
            self.egress["slot_state"].update(slot, SlotState())
        self.egress["downstream_conns"].update(
            slot, _conn_state(addresses, dcid, alias, index, key_phase, drop_group_rest, recovery, auto_threshold)
        )
        subs.sub[subs.count] = SubTarget(slot=slot, ifindex=ifindex)
        subs.count += 1
        self.ingress["track_subs"].update(track_id, subs)  # last: clones start only now
        self._tracks_of_slot.setdefault(slot, set()).add(track_id)

    def remove_subscriber(self, slot: int) -> None:
        """Stop the copies first (fan-out lists), then the state; a copy already cloned is dropped."""
        for track_id in sorted(self._tracks_of_slot.pop(slot, set())):
            subs = self.ingress["track_subs"].lookup(track_id)
            if subs is None:
                continue
            kept = [subs.sub[i] for i in range(subs.count) if subs.sub[i].slot != slot]
            if not kept:
                self.ingress["track_subs"].delete(track_id)
                continue
            new = TrackSubs(count=len(kept))
            for i, target in enumerate(kept):
                new.sub[i] = SubTarget(slot=target.slot, ifindex=target.ifindex)
            self.ingress["track_subs"].update(track_id, new)
        self.egress["downstream_conns"].delete(slot)

    def _modify(self, slot: int, **fields: int) -> None:
        conn = self.egress["downstream_conns"].lookup(slot)
        if conn is None:
            raise KeyError(f"no fast-path subscriber in slot {slot}")
        for name, value in fields.items():
            setattr(conn, name, value)
        self.egress["downstream_conns"].update(slot, conn)  # never holds the PN counter: safe to rewrite

    def set_largest_acked(self, slot: int, pn: int) -> None:
        """RFC 9000 A.2 needs it: the program picks PN lengths against it (invariant 1)."""
        self._modify(slot, largest_acked=pn)

    def set_priority_threshold(self, slot: int, threshold: int | None) -> None:
        """Drop objects whose publisher priority is greater than ``threshold``; None turns it off."""
        if threshold is not None and not 0 <= threshold <= 255:
            raise ValueError("priority is one byte")
        self._modify(slot, prio_set=int(threshold is not None), priority_threshold=threshold or 0)

    def set_key_phase(self, slot: int, phase: int) -> None:
        self._modify(slot, key_phase=phase & 1)

    # subgroup streams (docs/fastpath.md, "Streams")

    def add_stream(self, conn_id: int, stream_id: int, track_id: int) -> None:
        """Packets of upstream stream `stream_id` on `conn_id` become candidates (their data is cloned)."""
        self.ingress["fast_streams"].update(StreamKey(conn_id=conn_id, stream_id=stream_id), FastTrack(track_id=track_id))

    def remove_stream(self, conn_id: int, stream_id: int) -> None:
        self.ingress["fast_streams"].delete(StreamKey(conn_id=conn_id, stream_id=stream_id))

    def map_stream(self, slot: int, up_stream_id: int, down_stream_id: int, min_offset: int, max_offset: int,
                   id_len: int) -> None:
        """Copies of `up_stream_id` for `slot` go to `down_stream_id`, for data at or above `min_offset` ending at or
        below `max_offset` (also the call that moves the limit: the value is user-owned)."""
        self.egress["slot_streams"].update(
            SlotStreamKey(slot=slot, up_stream_id=up_stream_id),
            SlotStream(down_stream_id=down_stream_id, min_offset=min_offset, max_offset=max_offset, id_len=id_len),
        )

    def unmap_stream(self, slot: int, up_stream_id: int) -> None:
        self.egress["slot_streams"].delete(SlotStreamKey(slot=slot, up_stream_id=up_stream_id))

    def slot_state(self, slot: int) -> SlotState | None:
        """What the drop policy did for one subscription (sent, priority drops, group drops)."""
        return self.egress["slot_state"].lookup(slot) if "slot_state" in self.egress else None

    def recovery_state(self, conn_index: int) -> RecoveryState | None:
        """The kernel's RFC 9002 state of a connection with kernel recovery (a copy; the kernel keeps writing)."""
        return self.egress["recovery_state"].lookup(conn_index) if "recovery_state" in self.egress else None

    def next_pn(self, conn_index: int) -> int:
        """The program's counter: the next packet number it will assign on that connection."""
        state = self.egress["downstream_state"].lookup(conn_index)
        return 0 if state is None else int(state.next_pn)
