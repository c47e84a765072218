"""Cache-backed relay features in memory: late-joiner filters (section 5.1.2) and FETCH (sections 9.16-9.19)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aioquic.quic import events as qe

from relay.cache import CacheLimits, ObjectCache
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import DatagramReceived, DataStreamData, DataStreamOpened, ObjectReceived
from relay.relay import Relay
from tests.unit.test_session_harness import Endpoint, Net, net, ns

__all__ = ["net"]

NS = ns("live", "cam1")
ALIAS = 5


@dataclass
class World:
    net: Net
    relay: Relay

    def client(self, name: str) -> Endpoint:
        c, _ = self.net.pair(name, server_handler=self.relay.handle)
        return c

    def live_track(self) -> tuple[Endpoint, Endpoint]:
        """A publisher with one track and a first (LargestObject) subscriber holding it up."""
        pub = self.client("pub")
        pub.session.publish_namespace(NS)
        first = self.client("first")
        self.net.pump()
        first.session.subscribe(NS, b"video")
        self.net.pump()
        up = pub.messages(M.Subscribe)[-1]
        pub.session.subscribe_ok(up.request_id, ALIAS)
        self.net.pump()
        return pub, first


@pytest.fixture
def world(net: Net) -> World:
    return World(net, Relay(cache=ObjectCache(CacheLimits(max_groups=8))))


def send_group(
    pub: Endpoint, group: int, n: int, *, fin: bool = True, subgroup: int = 0
) -> tuple[int, bytes]:
    """A subgroup stream of n objects; returns (stream id, the bytes sent)."""
    header = O.SubgroupHeader(ALIAS, group, 3, O.SubgroupIdMode.EXPLICIT, subgroup)
    sid = pub.session.open_subgroup(header)
    w = O.SubgroupStreamWriter(header)
    sent = w.header_bytes()
    for oid in range(n):
        obj = O.SubgroupObject(oid, f"g{group}s{subgroup}o{oid}".encode() * 20)
        pub.session.send_subgroup_object(sid, obj)
        sent += w.object_bytes(obj)
    if fin:
        pub.session.end_subgroup(sid)
    return sid, sent


def raw(ep: Endpoint) -> Endpoint:
    ep.session.decode_objects = False
    return ep


def streams_of(ep: Endpoint) -> list[bytes]:
    """Every data stream the endpoint received, reassembled (raw mode)."""
    out = []
    for opened in ep.of(DataStreamOpened):
        chunks = [d.data for d in ep.of(DataStreamData) if d.stream_id == opened.stream_id]
        out.append(opened.data + b"".join(chunks))
    return out


def capture_fetch_streams(ep: Endpoint) -> dict[int, bytearray]:
    """Collect FETCH_HEADER streams before the session (which does not read them yet) sees them."""
    got: dict[int, bytearray] = {}
    inner = ep.session.handle_quic_event

    def handle(ev: qe.QuicEvent) -> None:
        if (isinstance(ev, qe.StreamDataReceived) and ev.stream_id & 2
                and (ev.stream_id in got or ev.data[:1] == bytes([O.FETCH_HEADER_TYPE]))):  # fmt: skip
            got.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            return
        inner(ev)

    ep.session.handle_quic_event = handle  # type: ignore[method-assign,assignment]
    return got


def fetch_objects(data: bytes) -> tuple[O.FetchHeader, list[O.FetchObject]]:
    parser = O.DataStreamParser()
    events = parser.feed(data)
    parser.end()
    header = events[0]
    assert isinstance(header, O.FetchHeader)
    return header, [e for e in events[1:] if isinstance(e, O.FetchObject)]


def payload(group: int, oid: int, subgroup: int = 0) -> bytes:
    return f"g{group}s{subgroup}o{oid}".encode() * 20


def test_absolute_start_late_joiner_gets_cached_groups_byte_exact_then_live(world: World) -> None:
    pub, _ = world.live_track()
    _, g0 = send_group(pub, 0, 2)
    _, g1 = send_group(pub, 1, 3)
    world.net.pump()
    late = raw(world.client("late"))
    late.session.subscribe(
        NS, b"video", filter_type=M.FilterType.ABSOLUTE_START, start_location=M.Location(1, 0)
    )
    world.net.pump()
    (ok,) = late.messages(M.SubscribeOk)
    assert ok.largest_location == M.Location(1, 2)  # the relay's largest, learned from its cache
    assert streams_of(late) == [g1]  # group 0 is before the start: not sent
    _, g2 = send_group(pub, 2, 1)
    world.net.pump()
    assert streams_of(late) == [g1, g2]
    assert g0 not in streams_of(late)


def test_late_joiner_continues_a_stream_still_arriving(world: World) -> None:
    pub, _ = world.live_track()
    sid, head = send_group(pub, 4, 2, fin=False)
    world.net.pump()
    late = raw(world.client("late"))
    late.session.subscribe(
        NS, b"video", filter_type=M.FilterType.ABSOLUTE_START, start_location=M.Location(4, 0)
    )
    world.net.pump()
    header = O.SubgroupHeader(ALIAS, 4, 3, O.SubgroupIdMode.EXPLICIT, 0)
    w = O.SubgroupStreamWriter(header)
    w.previous_object_id = 1
    rest = w.object_bytes(O.SubgroupObject(2, b"tail"))
    pub.session.send_stream_data(sid, rest, end_stream=True)
    world.net.pump()
    assert streams_of(late) == [head + rest]
    opened = late.of(DataStreamOpened)[0]
    assert [d.end_stream for d in late.of(DataStreamData) if d.stream_id == opened.stream_id][-1]


def test_next_group_start_waits_for_the_next_group(world: World) -> None:
    pub, first = world.live_track()
    send_group(pub, 7, 2)
    world.net.pump()
    nxt = world.client("next")
    nxt.session.subscribe(NS, b"video", filter_type=M.FilterType.NEXT_GROUP_START)
    world.net.pump()
    assert nxt.messages(M.SubscribeOk)[0].largest_location == M.Location(7, 1)
    send_group(pub, 7, 1, subgroup=1)  # still group 7: not for this subscriber
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 7, 9, 3, b"late-in-7"))
    send_group(pub, 8, 2)
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 8, 5, 3, b"dgram-in-8"))
    world.net.pump()
    got = {(o.group_id, o.object_id) for o in nxt.of(ObjectReceived)}
    assert got == {(8, 0), (8, 1), (8, 5)}
    assert (7, 9) in {(o.group_id, o.object_id) for o in first.of(ObjectReceived)}


def test_absolute_range_after_the_end_group_sends_nothing_more(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 1, 1)
    world.net.pump()
    sub = world.client("range")
    sub.session.subscribe(
        NS, b"video", filter_type=M.FilterType.ABSOLUTE_RANGE, start_location=M.Location(1, 0), end_group=2
    )
    world.net.pump()
    for g in (2, 3):
        send_group(pub, g, 1)
        pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, g, 9, 3, b"d"))
        world.net.pump()
    assert sorted((o.group_id, o.object_id) for o in sub.of(ObjectReceived)) == [(1, 0), (2, 0), (2, 9)]
    # the range is over once group 3 shows up: PUBLISH_DONE counts the streams sent (group 1 from cache, group 2)
    assert [(m.status_code, m.stream_count) for m in sub.messages(M.PublishDone)] == [
        (E.PublishDoneCode.SUBSCRIPTION_ENDED, 2)
    ]
    bad = world.client("bad")
    rid = bad.session.subscribe(
        NS, b"video", filter_type=M.FilterType.ABSOLUTE_RANGE, start_location=M.Location(5, 0), end_group=4
    )
    world.net.pump()
    assert [(m.request_id, m.error_code) for m in bad.messages(M.SubscribeError)] == [
        (rid, E.SubscribeErrorCode.INVALID_RANGE)
    ]


def test_standalone_fetch_returns_cached_objects_byte_exact(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 0, 2)
    send_group(pub, 1, 3)
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 1, 7, 9, b"datagram", ((4, 1),)))
    world.net.pump()
    f = world.client("fetcher")
    streams = capture_fetch_streams(f)
    rid = f.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(0, 1), M.Location(1, 3)))
    world.net.pump()
    (ok,) = f.messages(M.FetchOk)
    assert (ok.request_id, ok.end_location) == (rid, M.Location(1, 2))
    (data,) = streams.values()
    header, objs = fetch_objects(bytes(data))
    assert header.request_id == rid
    assert [(o.group_id, o.object_id, o.payload) for o in objs] == [
        (0, 1, payload(0, 1)), (1, 0, payload(1, 0)), (1, 1, payload(1, 1)), (1, 2, payload(1, 2)),
    ]  # fmt: skip
    assert {o.publisher_priority for o in objs} == {3}
    # End Location object 0 = the whole end group, datagrams included (their subgroup is their object id)
    rid2 = f.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(1, 2), M.Location(1, 0)))
    world.net.pump()
    _, objs2 = fetch_objects(bytes(list(streams.values())[1]))
    assert [(o.object_id, o.subgroup_id, o.payload, o.extensions) for o in objs2] == [
        (2, 0, payload(1, 2), ()), (7, 7, b"datagram", ((4, 1),)),
    ]  # fmt: skip
    assert f.messages(M.FetchOk)[1].request_id == rid2


def test_fetch_errors_say_why(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 3, 1)
    world.net.pump()
    f = world.client("fetcher")
    capture_fetch_streams(f)
    cases = [
        (M.StandaloneFetch(NS, b"video", M.Location(9, 0), M.Location(9, 0)), E.FetchErrorCode.NO_OBJECTS),
        (M.StandaloneFetch(NS, b"video", M.Location(3, 5), M.Location(3, 2)), E.FetchErrorCode.INVALID_RANGE),
        (M.StandaloneFetch(ns("nobody"), b"x", M.Location(0, 0), M.Location(1, 0)),
         E.FetchErrorCode.TRACK_DOES_NOT_EXIST),
    ]  # fmt: skip
    rids = [f.session.fetch(standalone=sf) for sf, _ in cases]
    f.session.fetch(fetch_type=M.FetchType.RELATIVE_JOINING, joining=M.JoiningFetch(99, 1))
    world.net.pump()
    got = [(m.request_id, m.error_code) for m in f.messages(M.FetchError)]
    assert got[:3] == [(rid, code) for rid, (_, code) in zip(rids, cases, strict=True)]
    assert got[3][1] == E.FetchErrorCode.INVALID_JOINING_REQUEST_ID
    assert f.closed() is None and pub.closed() is None


def test_joining_fetch_fills_the_gap_before_a_largest_object_subscription(world: World) -> None:
    pub, _ = world.live_track()
    for g in range(4):
        send_group(pub, g, 2)
    world.net.pump()
    j = world.client("joiner")
    streams = capture_fetch_streams(j)
    sub_rid = j.session.subscribe(NS, b"video")  # LargestObject: starts after (3, 1)
    world.net.pump()
    assert j.messages(M.SubscribeOk)[0].largest_location == M.Location(3, 1)
    j.session.fetch(fetch_type=M.FetchType.RELATIVE_JOINING, joining=M.JoiningFetch(sub_rid, 1))
    world.net.pump()
    (data,) = streams.values()
    _, objs = fetch_objects(bytes(data))
    assert [(o.group_id, o.object_id) for o in objs] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    j.session.fetch(fetch_type=M.FetchType.ABSOLUTE_JOINING, joining=M.JoiningFetch(sub_rid, 3))
    world.net.pump()
    _, objs = fetch_objects(bytes(list(streams.values())[1]))
    assert [(o.group_id, o.object_id) for o in objs] == [(3, 0), (3, 1)]


def test_fetch_cancel_is_accepted_and_forgets_the_fetch(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 0, 3)
    world.net.pump()
    f = world.client("fetcher")
    capture_fetch_streams(f)
    rid = f.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(0, 0), M.Location(0, 0)))
    world.net.pump()
    assert f.messages(M.FetchOk)
    f.session._send_control(M.FetchCancel(rid))  # no client verb yet: the raw message
    world.net.pump()
    relay_peer = world.relay.peer(world.net.endpoints[-1].session)
    assert rid not in relay_peer.fetches
    assert f.closed() is None


def test_without_a_cache_fetch_is_refused_and_forwarding_is_unchanged(net: Net) -> None:
    w = World(net, Relay())
    pub, first = w.live_track()
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 0, 0, 3, b"x"))
    f = w.client("fetcher")
    f.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(0, 0), M.Location(1, 0)))
    w.net.pump()
    assert [m.error_code for m in f.messages(M.FetchError)] == [E.FetchErrorCode.NO_OBJECTS]
    assert [o.payload for o in first.of(ObjectReceived)] == [b"x"]
    assert not first.of(DatagramReceived)


def test_largest_object_joiner_gets_only_new_objects_and_the_cached_largest(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 2, 3)
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 2, 3, 3, b"last-of-2"))
    world.net.pump()
    late = world.client("late")
    late.session.subscribe(NS, b"video")  # LargestObject (section 5.1.2): starts after {2, 3}
    world.net.pump()
    assert late.messages(M.SubscribeOk)[0].largest_location == M.Location(2, 3)
    assert late.of(ObjectReceived) == []  # nothing old is replayed
    pub.session.send_object_datagram(O.ObjectDatagram(ALIAS, 2, 4, 3, b"next"))
    world.net.pump()
    assert [(o.group_id, o.object_id, o.payload) for o in late.of(ObjectReceived)] == [(2, 4, b"next")]


def test_forward_zero_late_joiner_gets_no_replay(world: World) -> None:
    pub, _ = world.live_track()
    send_group(pub, 0, 2)
    world.net.pump()
    quiet = world.client("quiet")
    quiet.session.subscribe(
        NS, b"video", forward=False, filter_type=M.FilterType.ABSOLUTE_START, start_location=M.Location(0, 0)
    )
    world.net.pump()
    assert quiet.messages(M.SubscribeOk) and quiet.of(ObjectReceived) == []


def test_descending_fetch_sends_newest_group_first(world: World) -> None:
    pub, _ = world.live_track()
    for g in range(3):
        send_group(pub, g, 2)
    world.net.pump()
    f = world.client("fetcher")
    streams = capture_fetch_streams(f)
    f.session.fetch(
        group_order=M.GroupOrder.DESCENDING,
        standalone=M.StandaloneFetch(NS, b"video", M.Location(0, 0), M.Location(2, 0)),
    )
    world.net.pump()
    assert f.messages(M.FetchOk)[0].group_order == M.GroupOrder.DESCENDING
    _, objs = fetch_objects(bytes(next(iter(streams.values()))))
    assert [(o.group_id, o.object_id) for o in objs] == [(2, 0), (2, 1), (1, 0), (1, 1), (0, 0), (0, 1)]
