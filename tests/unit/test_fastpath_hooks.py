"""relay.fastpath_hooks driven by a real Relay over the in-memory session harness; the controller writes
dict-backed maps that store raw bytes (as the kernel does), so the tests read back what the programs would see."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bpf.structs import (
    CidKey,
    DownstreamCid,
    DownstreamConn,
    DownstreamState,
    FastTrack,
    TrackKey,
    TrackSubs,
    UpstreamConn,
)
from relay.fastpath import FastPathController
from relay.fastpath_hooks import DownstreamPath, KernelFastPathHooks
from relay.moqt import messages as M
from relay.moqt.session import MoqtSession
from relay.relay import Relay, Track
from tests.unit.test_fastpath_controller import ADDR4, BytesMap
from tests.unit.test_relay import NS, World
from tests.unit.test_session_harness import Endpoint, Net, net

__all__ = ["net"]

UPSTREAM_CONN_ID = 3


def _controller() -> tuple[FastPathController, dict[str, BytesMap]]:
    ingress = {"upstream_conns": BytesMap(CidKey, UpstreamConn), "fast_tracks": BytesMap(TrackKey, FastTrack),
               "track_subs": BytesMap(int, TrackSubs)}  # fmt: skip
    egress = {"downstream_conns": BytesMap(int, DownstreamConn), "downstream_state": BytesMap(int, DownstreamState),
              "downstream_cids": BytesMap(CidKey, DownstreamCid)}  # fmt: skip
    return FastPathController(ingress, egress), {**ingress, **egress}


@dataclass
class Transport:
    """Stands for the server wiring: which sessions are offloaded, and what enable/bind calls it saw."""

    offloaded: set[MoqtSession] = field(default_factory=set)
    datagram: bool = True
    enabled: list[MoqtSession] = field(default_factory=list)
    bound: dict[int, MoqtSession] = field(default_factory=dict)
    next_pn: int = 1000
    dcids: dict[MoqtSession, bytes] = field(default_factory=dict)

    def downstream_of(self, session: MoqtSession) -> DownstreamPath | None:
        if session not in self.offloaded:
            return None
        dcid = self.dcids.setdefault(session, bytes([len(self.dcids) + 1]) * 8)
        return DownstreamPath(
            ADDR4, dcid=dcid, ifindex=12, next_pn=lambda: self.next_pn,
            enable=lambda: self.enabled.append(session),
            bind=lambda slot: self.bound.__setitem__(slot, session),
            unbind=self.unbind,
        )  # fmt: skip

    def unbind(self, slot: int) -> None:
        del self.bound[slot]

    def upstream_of(self, session: MoqtSession) -> int | None:
        return UPSTREAM_CONN_ID

    def datagram_track(self, track: Track) -> bool:
        return self.datagram


@dataclass
class Setup:
    world: World
    hooks: KernelFastPathHooks
    tp: Transport
    ctl: FastPathController
    maps: dict[str, BytesMap]

    def subscriber(self, name: str, offloaded: bool = True, track: bytes = b"video") -> Endpoint:
        ep = self.world.client(name)
        assert ep.peer is not None
        if offloaded:
            self.tp.offloaded.add(ep.peer.session)
        ep.session.subscribe(NS, track)
        self.world.net.pump()
        return ep

    def subs_of(self, track_id: int) -> list[int]:
        subs = self.ctl.ingress["track_subs"].lookup(track_id)
        return [] if subs is None else sorted(subs.sub[i].slot for i in range(subs.count))

    def fast_track(self, alias: int) -> int | None:
        ft = self.ctl.ingress["fast_tracks"].lookup(TrackKey(conn_id=UPSTREAM_CONN_ID, alias=alias))
        return None if ft is None else int(ft.track_id)


def _setup(net: Net, with_controller: bool = True) -> Setup:
    tp = Transport()
    ctl, maps = _controller()
    hooks = KernelFastPathHooks(ctl if with_controller else None, tp.downstream_of, tp.upstream_of, tp.datagram_track)
    return Setup(World(net, Relay(hooks=hooks)), hooks, tp, ctl, maps)


def test_offloaded_subscriber_enters_maps_after_subscribe_ok(net: Net) -> None:
    s = _setup(net)
    pub = s.world.publisher()
    a = s.subscriber("a")
    assert s.tp.enabled == [] and s.maps["downstream_conns"].data == {}  # nothing before SUBSCRIBE_OK
    s.world.accept(pub, 6)
    b = s.subscriber("b", offloaded=False)
    assert a.messages(M.SubscribeOk) and b.messages(M.SubscribeOk)
    track_id = s.fast_track(6)
    assert track_id is not None
    (slot,) = s.subs_of(track_id)
    assert a.peer is not None and s.tp.bound[slot] is a.peer.session and s.tp.enabled == [a.peer.session]
    # plus the connection slot, which owns the renumbering of the connection's own packets (invariant 1)
    assert len(s.tp.bound) == 2 and set(s.tp.bound.values()) == {a.peer.session}
    (cid,) = s.maps["downstream_cids"].data
    assert cid == bytes(CidKey.of(s.tp.dcids[a.peer.session]))
    conn = s.ctl.egress["downstream_conns"].lookup(slot)
    assert (conn.alias, conn.enabled) == (a.messages(M.SubscribeOk)[0].track_alias, 1)
    assert s.ctl.next_pn(conn.conn_index) == 1000
    assert s.hooks.offloaded(next(iter(s.hooks._slot_of)))


def test_unsubscribe_removes_before_returning_and_last_one_drops_track(net: Net) -> None:
    s = _setup(net)
    pub = s.world.publisher()
    a = s.subscriber("a")
    s.world.accept(pub, 6)
    c = s.subscriber("c")
    track_id = s.fast_track(6)
    assert track_id is not None and len(s.subs_of(track_id)) == 2
    a.session.unsubscribe(a.messages(M.SubscribeOk)[0].request_id)
    s.world.net.pump()
    # a's connection stays enabled (its slot and CID entry) until it closes
    assert len(s.subs_of(track_id)) == 1 and len(s.maps["downstream_conns"].data) == 3
    assert len(s.tp.bound) == 3 and len(s.maps["downstream_cids"].data) == 2
    c.session.close()
    a.session.close()
    s.world.net.pump()
    assert s.subs_of(track_id) == [] and s.fast_track(6) is None
    assert s.maps["downstream_conns"].data == {} and s.maps["downstream_cids"].data == {}
    assert s.tp.bound == {} and s.hooks._conns == {} and s.hooks._tracks == {}


def test_publisher_gone_removes_everything(net: Net) -> None:
    s = _setup(net)
    pub = s.world.publisher()
    s.subscriber("a")
    s.world.accept(pub, 6)
    s.subscriber("b")
    assert len(s.maps["downstream_conns"].data) == 4  # two connection slots, two subscription slots
    pub.session.close()
    s.world.net.pump()
    assert s.maps["track_subs"].data == {} and s.maps["fast_tracks"].data == {}
    # the subscribers' connections stay enabled: only their connection slots remain
    assert len(s.maps["downstream_conns"].data) == 2 and len(s.tp.bound) == 2


def _two_tracks_on_one_offloaded_connection(net: Net) -> tuple[Any, Any]:
    """One offloaded subscriber connection holding two fast-path subscriptions (video, audio) of one publisher."""
    s = _setup(net)
    pub = s.world.publisher()
    a = s.world.client("a")
    assert a.peer is not None
    s.tp.offloaded.add(a.peer.session)
    a.session.subscribe(NS, b"video")
    s.world.net.pump()
    s.world.accept(pub, 6)
    a.session.subscribe(NS, b"audio")
    s.world.net.pump()
    s.world.accept(pub, 7)
    return s, a


def test_two_tracks_of_one_connection_share_its_counter(net: Net) -> None:
    s, a = _two_tracks_on_one_offloaded_connection(net)
    conns = [s.ctl.egress["downstream_conns"].lookup(slot) for slot in s.tp.bound]
    assert len(conns) == 3 and len({c.conn_index for c in conns}) == 1
    assert s.tp.enabled == [a.peer.session]  # numbering handed over once


@pytest.mark.parametrize("case", ["no_controller", "not_offloaded", "stream_mode", "gated"])
def test_slow_path_cases_touch_no_map(net: Net, case: str) -> None:
    s = _setup(net, with_controller=case != "no_controller")
    s.tp.datagram = case != "stream_mode"
    pub = s.world.publisher()
    a = s.world.client("a")
    assert a.peer is not None
    if case != "not_offloaded":
        s.tp.offloaded.add(a.peer.session)
    if case == "gated":  # an absolute range: the kernel could not stop at its end
        a.session.subscribe(NS, b"video", filter_type=M.FilterType.ABSOLUTE_RANGE, start_location=M.Location(0, 0),
                            end_group=5)  # fmt: skip
    else:
        a.session.subscribe(NS, b"video")
    s.world.net.pump()
    s.world.accept(pub, 6)
    assert a.messages(M.SubscribeOk)
    assert all(not m.data for m in s.maps.values())
    assert s.tp.enabled == [] and s.tp.bound == {}
    a.session.close()
    s.world.net.pump()


def test_full_track_keeps_subscriber_on_slow_path(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("relay.fastpath.TRACK_SUBS_PER_TRACK", 1)
    s = _setup(net)
    pub = s.world.publisher()
    s.subscriber("a")
    s.world.accept(pub, 6)
    b = s.subscriber("b")
    assert b.messages(M.SubscribeOk)
    # b's connection was enabled (renumbering is harmless); its subscription stays on the slow path
    assert s.hooks.full == 1 and len(s.tp.enabled) == 2 and len(s.tp.bound) == 3
    assert len(s.maps["downstream_conns"].data) == 3 and len(s.maps["downstream_state"].data) == 2


def test_direct_hook_calls_remove_synchronously(net: Net) -> None:
    """Invariant 3 at the hook boundary: the maps are clean when subscriber_removed / session_closed return."""
    s = _setup(net)
    pub = s.world.publisher()
    s.subscriber("a")
    s.world.accept(pub, 6)
    (sub,) = list(s.hooks._slot_of)
    s.hooks.subscriber_removed(sub.track, sub)
    assert not sub.kernel and not s.maps["track_subs"].data and len(s.maps["downstream_conns"].data) == 1
    s.hooks.subscriber_added(sub.track, sub)
    assert s.maps["track_subs"].data
    s.hooks.session_closed(sub.session)
    assert _empty_but_counters(s) and s.tp.bound == {} and s.hooks._conns == {}


def _empty_but_counters(s: Setup) -> bool:
    """downstream_state is an array in the kernel (its PN counters are never deleted, only reseeded)."""
    return all(not m.data for name, m in s.maps.items() if name != "downstream_state")


def test_removing_one_track_keeps_the_connections_renumbering(net: Net) -> None:
    """Invariant 1: while any slot of a connection remains, its user-space packets must still be renumbered."""
    s, a = _two_tracks_on_one_offloaded_connection(net)
    a.session.unsubscribe(a.messages(M.SubscribeOk)[0].request_id)
    s.world.net.pump()
    assert len(s.tp.bound) == 2
    assert s.maps["downstream_cids"].data
