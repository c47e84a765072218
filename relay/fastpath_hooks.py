"""`relay.relay.FastPathHooks` that drive `FastPathController`: kernel maps mirror what user space forwards.

Why callbacks for everything transport-shaped: `relay.relay` is sans-I/O and knows sessions, not sockets, CIDs or
devices. The caller (`relay.fastpath_runtime`) answers three questions: is this downstream session an offloaded
connection and where do its packets go (`downstream_of`), which upstream connection id did it register for a
publisher session (`upstream_of`), and is a track in datagram mode (`datagram_track`; stream mode is not in the
fast path yet).

A downstream connection is **enabled** with its first fast-path subscription and stays enabled until its session
closes (invariant 1: once the program numbers a connection's packets, every 1-RTT packet of it must go through the
program, since user space's own counter has moved out of the way). Each subscription adds a slot that shares the
connection's PN counter.

Invariant 3: every removal (UNSUBSCRIBE, track end, session close, a failed add) leaves the maps before the hook
returns; the controller's write order makes in-flight copies drop. With no controller (no BPF object loaded) every
hook does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from relay.fastpath import RECOVERY_CONNS_MAX, SLOT_MAX, Addresses, FastPathController, FastPathFull
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
    # the connection's next packet number (seeds the program's counter), then hand its numbering to the program
    # (relay.registration.enable); both run in one synchronous step
    next_pn: Callable[[], int] = lambda: 0
    enable: Callable[[], object] = lambda: None
    # kernel recovery (issue 5): the connection's max datagram size, to seed its RFC 9002 state; None: user space
    recovery_mds: int | None = None
    # ... and the drop policy's threshold, applied by the egress program from the kernel's window (None: no policy)
    auto_drop_above: int | None = None
    bind: Callable[[int], None] = lambda slot: None  # the registrar learns slot -> connection
    unbind: Callable[[int], None] = lambda slot: None
    released: Callable[[], object] = lambda: None  # the connection left the fast path (its session closed)


@dataclass
class _Conn:
    conn_index: int
    conn_slot: int  # owns the connection's CID entry (user-space renumbering)
    path: DownstreamPath
    slots: set[int] = field(default_factory=set)  # subscription slots

    def all_slots(self) -> list[int]:
        return [self.conn_slot, *sorted(self.slots)]


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
    drop_group_rest: bool = True  # the drop policy's "rest of the group" rule, per new subscription
    on_slot_freed: Callable[[int], None] = lambda slot: None
    _free_slots: list[int] = field(default_factory=lambda: list(range(SLOT_MAX - 1, -1, -1)))
    _free_indexes: list[int] = field(default_factory=lambda: list(range(SLOT_MAX - 1, -1, -1)))
    _next_track_id: int = 1
    _slot_of: dict[Downstream, int] = field(default_factory=dict)
    _sub_of: dict[int, Downstream] = field(default_factory=dict)
    _conns: dict[MoqtSession, _Conn] = field(default_factory=dict)
    _tracks: dict[Track, _FastTrack] = field(default_factory=dict)

    def offloaded(self, sub: Downstream) -> bool:
        """True while the kernel forwards this subscription's datagrams (user space must then skip it)."""
        return sub in self._slot_of

    def slot_of(self, sub: Downstream) -> int | None:
        return self._slot_of.get(sub)

    def enabled(self, session: MoqtSession) -> bool:
        return session in self._conns

    def slots_of(self, session: MoqtSession) -> list[int]:
        """Every slot of an enabled connection, connection slot first (for per-connection exports)."""
        conn = self._conns.get(session)
        return conn.all_slots() if conn is not None else []

    def subscriptions(self) -> list[tuple[Downstream, int]]:
        """Every kernel-served subscription with its slot."""
        return sorted(self._slot_of.items(), key=lambda item: item[1])

    def conn_index(self, session: MoqtSession) -> int:
        """The connection's PN counter index (KeyError when not enabled)."""
        return self._conns[session].conn_index

    def track_id(self, track: Track) -> int | None:
        ft = self._tracks.get(track)
        return ft.track_id if ft is not None else None

    def connection_changed(self, session: MoqtSession, dcid: bytes | None = None, key_phase: int | None = None) -> None:
        """The peer CID in use or the 1-RTT send key phase of an enabled connection changed."""
        conn = self._conns.get(session)
        if self.controller is not None and conn is not None:
            self.controller.change_connection(conn.all_slots(), dcid=dcid, key_phase=key_phase)

    # FastPathHooks

    def subscriber_added(self, track: Track, sub: Downstream) -> None:
        ctl = self.controller
        if ctl is None or sub in self._slot_of or not sub.forward or track.alias is None:
            return
        if sub.start is not None or sub.end_group is not None or not self.datagram_track(track):
            # the programs know no filter gate (section 5.1.2): a gated subscriber would get objects it did not
            # ask for (invariant 3); it stays on the slow path (no hook tells us when the gate lifts)
            return
        conn_id = self.upstream_of(track.publisher)
        if conn_id is None:
            return
        conn = self._conns.get(sub.session) or self._enable(sub.session)
        if conn is None:
            return
        if not self._free_slots:
            self.full += 1
            return
        slot = self._free_slots.pop()
        ft = self._tracks.get(track)
        new_track = ft is None
        if ft is None:
            ft = _FastTrack(track_id=self._next_track_id, conn_id=conn_id, alias=track.alias)
        path = conn.path
        try:
            if new_track:
                ctl.add_track(ft.conn_id, ft.alias, ft.track_id)
            ctl.add_subscriber(
                slot, ft.track_id, path.ifindex, path.addresses, path.dcid, sub.alias, next_pn=0,
                conn_index=conn.conn_index, key_phase=path.key_phase, seed_pn=False,
                drop_group_rest=self.drop_group_rest, recovery=path.recovery_mds is not None,
                auto_threshold=path.auto_drop_above,
            )  # fmt: skip
        except (FastPathFull, OSError, ValueError) as exc:
            # keep this subscription on the slow path; undo whatever part reached the maps
            log.info("fast path refused slot %d: %s", slot, exc)
            self.full += 1
            ctl.remove_subscriber(slot)
            if new_track:
                ctl.remove_track(ft.conn_id, ft.alias, ft.track_id)
            self._free_slots.append(slot)
            return
        if new_track:
            self._next_track_id += 1
            self._tracks[track] = ft
        ft.slots.add(slot)
        conn.slots.add(slot)
        self._slot_of[sub] = slot
        self._sub_of[slot] = sub
        path.bind(slot)
        sub.kernel = True
        track.refresh()

    def abandon(self) -> list[tuple[MoqtSession, int]]:
        """Part of our programs was detached under us (relay.fastpath_watchdog): every subscription goes back to user
        space and leaves the maps (no more copies), every connection leaves renumbering (its CID entry goes), and no
        new subscription joins. Returns the enabled connections (session, connection index): the caller hands their
        numbering back to aioquic."""
        assert self.controller is not None
        for sub in sorted(self._slot_of, key=lambda s: self._slot_of[s]):
            track = sub.track
            self._remove_slot(sub)
            ft = self._tracks.get(track)
            if ft is not None and not ft.slots:
                self._drop_track(track)
        conns = [(session, c.conn_index) for session, c in self._conns.items()]
        for c in self._conns.values():
            self.controller.disable_connection(c.conn_slot)
            c.path.unbind(c.conn_slot)
            c.path.released()
        self._conns.clear()
        self.controller = None  # no new kernel subscription from now on
        return conns

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
        conn = self._conns.pop(session, None)
        if conn is not None:
            self.controller.disable_connection(conn.conn_slot)
            conn.path.unbind(conn.conn_slot)
            conn.path.released()
            self._free_slots.append(conn.conn_slot)
            self._free_indexes.append(conn.conn_index)

    # internals

    def _enable(self, session: MoqtSession) -> _Conn | None:
        """Hand the connection's numbering to the program (first fast-path subscription of an offloaded one)."""
        assert self.controller is not None
        path = self.downstream_of(session)
        if path is None:
            return None
        if len(self._free_slots) < 2 or not self._free_indexes:
            self.full += 1
            return None
        conn = _Conn(conn_index=self._free_indexes.pop(), conn_slot=self._free_slots.pop(), path=path)
        if path.recovery_mds is not None and conn.conn_index >= RECOVERY_CONNS_MAX:
            # no kernel recovery state for this index (maps.h): this connection's copies are registered instead
            path = conn.path = replace(path, recovery_mds=None, auto_drop_above=None)
        try:
            self.controller.enable_connection(
                conn.conn_slot, path.addresses, path.dcid, path.next_pn(), conn.conn_index, path.key_phase,
                recovery_mds=path.recovery_mds,
            )
        except (OSError, ValueError) as exc:
            log.info("fast path refused a connection: %s", exc)
            self.full += 1
            self.controller.disable_connection(conn.conn_slot)
            self._free_slots.append(conn.conn_slot)
            self._free_indexes.append(conn.conn_index)
            return None
        self._conns[session] = conn  # first: enable() may ask for the connection's index
        path.enable()  # same synchronous step: no packet leaves between seeding and the hand-over
        path.bind(conn.conn_slot)
        return conn

    def _remove_slot(self, sub: Downstream) -> None:
        assert self.controller is not None
        slot = self._slot_of.pop(sub, None)
        if slot is None:
            return
        self.controller.remove_subscriber(slot)  # fan-out lists first, then the state
        self.on_slot_freed(slot)
        del self._sub_of[slot]
        sub.kernel = False
        sub.track.refresh()
        ft = self._tracks.get(sub.track)
        if ft is not None:
            ft.slots.discard(slot)
        conn = self._conns.get(sub.session)
        if conn is not None:
            conn.slots.discard(slot)
            conn.path.unbind(slot)
        self._free_slots.append(slot)

    def _drop_track(self, track: Track) -> None:
        assert self.controller is not None
        ft = self._tracks.pop(track)
        self.controller.remove_track(ft.conn_id, ft.alias, ft.track_id)
