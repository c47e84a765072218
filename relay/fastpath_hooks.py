"""`relay.relay.FastPathHooks` that drive `FastPathController`: kernel maps mirror what user space forwards.

Why callbacks for everything transport-shaped: `relay.relay` is sans-I/O and knows sessions, not sockets, CIDs or
devices. The caller (the server wiring) answers three questions: is this downstream session an offloaded connection
and where do its packets go (`downstream_of`), which upstream connection id did it register for a publisher session
(`upstream_of`), and is a track in datagram mode (`datagram_track`; stream mode is not in the fast path yet).

Invariant 3: every removal (UNSUBSCRIBE, track end, session close, a failed add) leaves the maps before the hook
returns; the controller's write order makes in-flight copies drop. With no controller (no BPF object loaded) every
hook does nothing. Not wired into `relay.serve` yet, and not safe to be: user space still forwards to every
subscriber (it must skip those `offloaded` says), and the controller ties a connection's renumbering to its
subscriptions (the last removal deletes its `downstream_cids` entry, even the first of two: see the xfail test),
while `relay.registration.enable` needs the program to renumber that connection until it closes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.fastpath import SLOT_MAX, Addresses, FastPathController, FastPathFull
from relay.moqt.session import MoqtSession
from relay.relay import Downstream, Track

log = logging.getLogger("relay.fastpath")


@dataclass(frozen=True)
class DownstreamPath:
    """An offloaded downstream connection as the egress program sees it."""

    addresses: Addresses
    dcid: bytes  # the subscriber's connection ID the relay sends to
    ifindex: int  # client-side device the copies leave by
    key_phase: int = 0
    # the connection's next packet number (seeds the program's counter), then, once its first slot is in the
    # maps, hand its numbering to the program (relay.registration.enable); both run in one synchronous step
    next_pn: Callable[[], int] = lambda: 0
    enable: Callable[[], object] = lambda: None
    bind: Callable[[int], None] = lambda slot: None  # the registrar learns slot -> connection
    unbind: Callable[[int], None] = lambda slot: None


@dataclass
class _Conn:
    conn_index: int
    slots: set[int] = field(default_factory=set)


@dataclass
class _FastTrack:
    track_id: int
    conn_id: int
    alias: int
    slots: set[int] = field(default_factory=set)


@dataclass
class KernelFastPathHooks:
    """Allocates slots, connection indexes and track ids, and keeps the controller's maps in step."""

    controller: FastPathController | None
    downstream_of: Callable[[MoqtSession], DownstreamPath | None]
    upstream_of: Callable[[MoqtSession], int | None]
    datagram_track: Callable[[Track], bool]
    full: int = 0  # subscriptions kept on the slow path because a capacity ran out (invariant 6)
    _free_slots: list[int] = field(default_factory=lambda: list(range(SLOT_MAX - 1, -1, -1)))
    _free_indexes: list[int] = field(default_factory=lambda: list(range(SLOT_MAX - 1, -1, -1)))
    _next_track_id: int = 1
    _slot_of: dict[Downstream, int] = field(default_factory=dict)
    _sub_of: dict[int, Downstream] = field(default_factory=dict)
    _path_of: dict[int, DownstreamPath] = field(default_factory=dict)
    _conns: dict[MoqtSession, _Conn] = field(default_factory=dict)
    _tracks: dict[Track, _FastTrack] = field(default_factory=dict)

    def offloaded(self, sub: Downstream) -> bool:
        """True while the kernel forwards this subscription's datagrams (user space must then skip it)."""
        return sub in self._slot_of

    # FastPathHooks

    def subscriber_added(self, track: Track, sub: Downstream) -> None:
        ctl = self.controller
        if ctl is None or sub in self._slot_of or not sub.forward or track.alias is None:
            return
        if sub.start is not None or sub.end_group is not None or not self.datagram_track(track):
            # the programs know no filter gate (section 5.1.2): a gated subscriber would get objects it did not
            # ask for (invariant 3); it stays on the slow path (no hook tells us when the gate lifts)
            return
        path = self.downstream_of(sub.session)
        conn_id = self.upstream_of(track.publisher)
        if path is None or conn_id is None:
            return
        if not self._free_slots or (sub.session not in self._conns and not self._free_indexes):
            self.full += 1
            return
        slot = self._free_slots.pop()
        conn = self._conns.get(sub.session)
        first = conn is None
        if conn is None:
            conn = _Conn(conn_index=self._free_indexes.pop())
        ft = self._tracks.get(track)
        new_track = ft is None
        if ft is None:
            ft = _FastTrack(track_id=self._next_track_id, conn_id=conn_id, alias=track.alias)
        try:
            if new_track:
                ctl.add_track(ft.conn_id, ft.alias, ft.track_id)
            ctl.add_subscriber(
                slot, ft.track_id, path.ifindex, path.addresses, path.dcid, sub.alias,
                next_pn=path.next_pn() if first else 0, conn_index=conn.conn_index, key_phase=path.key_phase,
                seed_pn=first,
            )  # fmt: skip
        except (FastPathFull, OSError, ValueError) as exc:
            # keep this subscription on the slow path; undo whatever part reached the maps
            log.info("fast path refused slot %d: %s", slot, exc)
            self.full += 1
            ctl.remove_subscriber(slot)
            if new_track:
                ctl.remove_track(ft.conn_id, ft.alias, ft.track_id)
            self._free_slots.append(slot)
            if first:
                self._free_indexes.append(conn.conn_index)
            return
        if first:
            path.enable()
        if new_track:
            self._next_track_id += 1
            self._tracks[track] = ft
        ft.slots.add(slot)
        conn.slots.add(slot)
        self._conns[sub.session] = conn
        self._slot_of[sub] = slot
        self._sub_of[slot] = sub
        self._path_of[slot] = path
        path.bind(slot)

    def subscriber_removed(self, track: Track, sub: Downstream) -> None:
        if self.controller is None:
            return
        self._remove_slot(sub)
        ft = self._tracks.get(track)
        if ft is not None and not ft.slots:
            self._drop_track(track)

    def track_ended(self, track: Track) -> None:
        if self.controller is None:
            return
        ft = self._tracks.get(track)
        if ft is None:
            return
        for slot in sorted(ft.slots):
            self._remove_slot(self._sub_of[slot])
        self._drop_track(track)

    def session_closed(self, session: MoqtSession) -> None:
        if self.controller is None:
            return
        for sub in [s for s in self._slot_of if s.session is session]:
            track = sub.track
            self._remove_slot(sub)
            ft = self._tracks.get(track)
            if ft is not None and not ft.slots:
                self._drop_track(track)
        for track in [t for t in self._tracks if t.publisher is session]:
            self.track_ended(track)

    # internals

    def _remove_slot(self, sub: Downstream) -> None:
        assert self.controller is not None
        slot = self._slot_of.pop(sub, None)
        if slot is None:
            return
        self.controller.remove_subscriber(slot)  # fan-out lists first, then the state
        del self._sub_of[slot]
        self._path_of.pop(slot).unbind(slot)
        ft = self._tracks.get(sub.track)
        if ft is not None:
            ft.slots.discard(slot)
        conn = self._conns.get(sub.session)
        if conn is not None:
            conn.slots.discard(slot)
            if not conn.slots:
                del self._conns[sub.session]
                self._free_indexes.append(conn.conn_index)
        self._free_slots.append(slot)

    def _drop_track(self, track: Track) -> None:
        assert self.controller is not None
        ft = self._tracks.pop(track)
        self.controller.remove_track(ft.conn_id, ft.alias, ft.track_id)
