"""Relay semantics in memory: routing, aggregation, unsubscribe, PUBLISH_DONE, byte-exact forwarding."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import (
    DatagramReceived,
    DataStreamData,
    DataStreamOpened,
    DataStreamReset,
    ObjectReceived,
)
from relay.relay import Relay
from tests.unit.test_session_harness import Endpoint, Net, control, net, ns

__all__ = ["net"]

NS = ns("live", "cam1")


@dataclass
class World:
    net: Net
    relay: Relay

    def client(self, name: str) -> Endpoint:
        c, _ = self.net.pair(name, server_handler=self.relay.handle)
        return c

    def publisher(self, name: str = "pub", namespace: M.Namespace = NS) -> Endpoint:
        pub = self.client(name)
        pub.session.publish_namespace(namespace)
        self.net.pump()
        assert pub.messages(M.PublishNamespaceOk), pub.events
        return pub

    def accept(self, pub: Endpoint, alias: int, index: int = -1) -> M.Subscribe:
        """The publisher answers its latest (or index-th) SUBSCRIBE with `alias`."""
        sub = pub.messages(M.Subscribe)[index]
        pub.session.subscribe_ok(sub.request_id, alias)
        self.net.pump()
        return sub


@pytest.fixture
def world(net: Net) -> World:
    return World(net, Relay())


def raw(ep: Endpoint) -> Endpoint:
    """Make a subscriber see the raw bytes (DatagramReceived / DataStream*) instead of decoded objects."""
    ep.session.decode_objects = False
    return ep


def test_subscribe_to_unpublished_namespace_fails_at_once(world: World) -> None:
    world.publisher(namespace=ns("other"))
    sub = world.client("s1")
    rid = sub.session.subscribe(ns("othe"), b"video")  # a string prefix is not a field prefix
    world.net.pump()
    assert sub.messages(M.SubscribeError) == [
        M.SubscribeError(rid, E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no publisher for this namespace")
    ]


def test_two_subscribers_share_one_upstream_subscription(world: World) -> None:
    pub = world.publisher(namespace=ns("live"))  # longest prefix: (live) serves (live, cam1)
    s1, s2 = world.client("s1"), world.client("s2")
    r1 = s1.session.subscribe(NS, b"video", subscriber_priority=1)
    r2 = s2.session.subscribe(NS, b"video", subscriber_priority=2)
    world.net.pump()
    (upstream,) = pub.messages(M.Subscribe)
    assert (upstream.track_namespace, upstream.track_name) == (NS, b"video")
    assert s1.messages(M.SubscribeOk) == [] and s2.messages(M.SubscribeOk) == []  # not before the upstream OK
    pub.session.subscribe_ok(upstream.request_id, 5, largest_location=M.Location(7, 1))
    world.net.pump()
    assert s1.messages(M.SubscribeOk) == [M.SubscribeOk(r1, 5, largest_location=M.Location(7, 1))]
    assert s2.messages(M.SubscribeOk) == [M.SubscribeOk(r2, 5, largest_location=M.Location(7, 1))]
    s3 = world.client("s3")  # a late subscriber is answered from the established track
    r3 = s3.session.subscribe(NS, b"video")
    world.net.pump()
    assert len(pub.messages(M.Subscribe)) == 1
    assert [m.request_id for m in s3.messages(M.SubscribeOk)] == [r3]


def test_upstream_error_is_passed_to_every_waiting_subscriber(world: World) -> None:
    pub = world.publisher()
    s1, s2 = world.client("s1"), world.client("s2")
    s1.session.subscribe(NS, b"nope")
    s2.session.subscribe(NS, b"nope")
    world.net.pump()
    (upstream,) = pub.messages(M.Subscribe)
    pub.session.subscribe_error(upstream.request_id, E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no track")
    world.net.pump()
    for s in (s1, s2):
        assert [(m.error_code, m.reason) for m in s.messages(M.SubscribeError)] == [(4, "no track")]
    assert world.relay.tracks == {}


def test_last_unsubscribe_unsubscribes_upstream(world: World) -> None:
    pub = world.publisher()
    s1, s2 = world.client("s1"), world.client("s2")
    r1 = s1.session.subscribe(NS, b"video")
    r2 = s2.session.subscribe(NS, b"video")
    world.net.pump()
    upstream = world.accept(pub, 5)
    s1.session.unsubscribe(r1)
    world.net.pump()
    assert pub.messages(M.Unsubscribe) == []
    s2.session.unsubscribe(r2)
    world.net.pump()
    assert pub.messages(M.Unsubscribe) == [M.Unsubscribe(upstream.request_id)]
    assert world.relay.tracks == {}


def test_publish_done_and_publisher_gone_reach_every_subscriber(world: World) -> None:
    pub = world.publisher()
    s1, s2 = world.client("s1"), world.client("s2")
    r1 = s1.session.subscribe(NS, b"video")
    r2 = s2.session.subscribe(NS, b"audio")
    world.net.pump()
    up_video = world.accept(pub, 1, 0)
    world.accept(pub, 2, 1)
    pub.session.publish_done(up_video.request_id, E.PublishDoneCode.TRACK_ENDED, 0, "over")
    world.net.pump()
    assert s1.messages(M.PublishDone) == [M.PublishDone(r1, E.PublishDoneCode.TRACK_ENDED, 0, "over")]
    pub.session.close()
    world.net.pump()
    assert [(m.request_id, m.status_code) for m in s2.messages(M.PublishDone)] == [
        (r2, E.PublishDoneCode.GOING_AWAY)
    ]
    assert world.relay.tracks == {} and len(world.relay.router) == 0
    s3 = world.client("s3")
    s3.session.subscribe(NS, b"video")
    world.net.pump()
    assert [m.error_code for m in s3.messages(M.SubscribeError)] == [
        E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST
    ]


def test_datagrams_are_forwarded_byte_exact_except_the_alias(world: World) -> None:
    pub_a, pub_b = world.publisher("pa", ns("a")), world.publisher("pb", ns("b"))
    sub, forward_off = raw(world.client("s1")), world.client("s2")
    sub.session.subscribe(ns("a"), b"t")
    world.net.pump()
    world.accept(pub_a, 5)
    sub.session.subscribe(ns("b"), b"t")  # the same upstream alias from another publisher: must be renumbered
    forward_off.session.subscribe(ns("b"), b"t", forward=False)
    world.net.pump()
    world.accept(pub_b, 5)
    (ok_a, ok_b) = sub.messages(M.SubscribeOk)
    assert ok_a.track_alias == 5 and ok_b.track_alias == 0  # same 1-byte varint length
    wire_a = O.encode_datagram(O.ObjectDatagram(5, 10, 3, 2, b"payload-a", ((2, 7),)))
    wire_b = O.encode_datagram(O.ObjectDatagram(5, 11, 4, 9, b"payload-b"))
    pub_a.session.send_datagram(wire_a)
    pub_b.session.send_datagram(wire_b)
    world.net.pump()
    got = sorted(d.data for d in sub.of(DatagramReceived))
    assert got == sorted([wire_a, wire_b[:1] + b"\x00" + wire_b[2:]])
    assert forward_off.of(ObjectReceived) == []  # forward=0: nothing sent
    assert forward_off.messages(M.SubscribeOk) != []


def test_subgroup_stream_forwarded_in_order_with_fin(world: World) -> None:
    pub = world.publisher()
    subs = [raw(world.client(f"s{i}")) for i in range(2)]
    for s in subs:
        s.session.subscribe(NS, b"video")
    world.net.pump()
    world.accept(pub, 1000)  # a 2-byte alias
    header = O.SubgroupHeader(1000, 42, 3, O.SubgroupIdMode.EXPLICIT, 1)
    sid = pub.session.open_subgroup(header)
    sent = O.encode_subgroup_header(header)
    writer = O.SubgroupStreamWriter(header)
    writer.header_bytes()
    for oid in range(5):
        obj = O.SubgroupObject(oid, bytes([oid]) * (300 * oid))
        pub.session.send_subgroup_object(sid, obj)
        sent += writer.object_bytes(obj)
        world.net.pump()
    pub.session.end_subgroup(sid)
    world.net.pump()
    for s in subs:
        (opened,) = s.of(DataStreamOpened)
        chunks = [d for d in s.of(DataStreamData) if d.stream_id == opened.stream_id]
        received = opened.data + b"".join(c.data for c in chunks)
        assert received == sent  # alias 1000 was free on both: unchanged bytes
        assert chunks[-1].end_stream  # FIN propagated


def test_subgroup_stream_reset_is_propagated(world: World) -> None:
    pub = world.publisher()
    sub = raw(world.client("s1"))
    sub.session.subscribe(NS, b"video")
    world.net.pump()
    world.accept(pub, 3)
    sid = pub.session.open_subgroup(O.SubgroupHeader(3, 1, 0, O.SubgroupIdMode.EXPLICIT, 0))
    pub.session.send_subgroup_object(sid, O.SubgroupObject(0, b"x" * 100))
    world.net.pump()
    pub.session.reset_data_stream(sid, E.ResetStreamCode.DELIVERY_TIMEOUT)
    world.net.pump()
    (opened,) = sub.of(DataStreamOpened)
    assert sub.of(DataStreamReset) == [DataStreamReset(opened.stream_id, E.ResetStreamCode.DELIVERY_TIMEOUT)]


def test_malformed_control_closes_only_that_session(world: World) -> None:
    pub = world.publisher()
    good, bad = world.client("good"), world.client("bad")
    good.session.subscribe(NS, b"video")
    bad.session.subscribe(NS, b"video")
    world.net.pump()
    world.accept(pub, 2)
    control(bad, b"\x03\x00\x02\xff\xff")  # SUBSCRIBE whose payload is garbage
    world.net.pump()
    assert bad.closed() is not None and bad.closed().error_code == E.SessionErrorCode.PROTOCOL_VIOLATION  # type: ignore[union-attr]
    pub.session.send_object_datagram(O.ObjectDatagram(2, 1, 0, 0, b"still here"))
    world.net.pump()
    assert [o.payload for o in good.of(ObjectReceived)] == [b"still here"]
    assert pub.messages(M.Unsubscribe) == []  # the good subscriber keeps the track alive


def test_namespace_done_withdraws_the_route(world: World) -> None:
    pub = world.publisher()
    pub.session.publish_namespace_done(NS)
    world.net.pump()
    sub = world.client("s1")
    sub.session.subscribe(NS, b"video")
    world.net.pump()
    assert [m.error_code for m in sub.messages(M.SubscribeError)] == [
        E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST
    ]
    assert pub.messages(M.Subscribe) == []


def test_fanout_order_follows_subscriber_priority(world: World) -> None:
    pub = world.publisher()
    low, high = world.client("low"), world.client("high")
    low.session.subscribe(NS, b"video", subscriber_priority=200)
    high.session.subscribe(NS, b"video", subscriber_priority=1)
    world.net.pump()
    world.accept(pub, 1)
    (track,) = world.relay.tracks.values()
    assert [s.subscriber_priority for s in track.fanout] == [1, 200]


def test_publish_done_waits_for_the_streams_it_counts(world: World) -> None:
    pub = world.publisher()
    sub = raw(world.client("s1"))
    rid = sub.session.subscribe(NS, b"video")
    world.net.pump()
    upstream = world.accept(pub, 4)
    pub.session.publish_done(upstream.request_id, E.PublishDoneCode.TRACK_ENDED, 1, "end")
    world.net.pump()
    assert sub.messages(M.PublishDone) == []  # the announced stream has not arrived yet
    sid = pub.session.open_subgroup(O.SubgroupHeader(4, 9, 0, O.SubgroupIdMode.EXPLICIT, 0))
    pub.session.send_subgroup_object(sid, O.SubgroupObject(0, b"late"), end_stream=True)
    world.net.pump()
    assert sub.messages(M.PublishDone) == [M.PublishDone(rid, E.PublishDoneCode.TRACK_ENDED, 1, "end")]
    assert len(sub.of(DataStreamOpened)) == 1
    assert world.relay.live == set()  # everything released once the stream finished


def test_stream_header_alias_is_rewritten_in_place(world: World) -> None:
    pa, pb = world.publisher("pa", ns("a")), world.publisher("pb", ns("b"))
    sub = raw(world.client("s1"))
    sub.session.subscribe(ns("a"), b"t")
    world.net.pump()
    world.accept(pa, 70)
    sub.session.subscribe(ns("b"), b"t")
    world.net.pump()
    world.accept(pb, 70)
    assert [m.track_alias for m in sub.messages(M.SubscribeOk)] == [70, 64]  # both 2-byte varints
    header = O.SubgroupHeader(70, 5, 1, O.SubgroupIdMode.EXPLICIT, 2)
    writer = O.SubgroupStreamWriter(header)
    sent = writer.header_bytes() + writer.object_bytes(O.SubgroupObject(0, b"abc"))
    sid = pb.session.open_data_stream(sent, end_stream=True)
    assert sid >= 0
    world.net.pump()
    (opened,) = sub.of(DataStreamOpened)
    assert opened.track_alias == 64
    assert opened.data == sent[:1] + bytes([0x40, 64]) + sent[3:]


@dataclass
class Recorder:
    calls: list[tuple[str, object]]

    def subscriber_added(self, track: object, sub: object) -> None:
        self.calls.append(("added", (sub.session, sub.alias)))  # type: ignore[attr-defined]

    def subscriber_removed(self, track: object, sub: object) -> None:
        self.calls.append(("removed", sub.alias))  # type: ignore[attr-defined]

    def track_ended(self, track: object) -> None:
        self.calls.append(("ended", track.key))  # type: ignore[attr-defined]

    def session_closed(self, session: object) -> None:
        self.calls.append(("closed", session))


def test_fast_path_hooks_and_subscriber_going_away(net: Net) -> None:
    rec = Recorder([])
    world = World(net, Relay(hooks=rec))
    pub = world.publisher()
    sub = world.client("s1")
    sub.session.subscribe(NS, b"video")
    world.net.pump()
    upstream = world.accept(pub, 6)
    relay_side = sub.peer
    assert relay_side is not None
    assert ("added", (relay_side.session, 6)) in rec.calls
    sub.session.close()
    world.net.pump()
    assert pub.messages(M.Unsubscribe) == [M.Unsubscribe(upstream.request_id)]  # the last subscriber left
    assert [c[0] for c in rec.calls] == ["added", "removed", "ended", "closed"]
    assert rec.calls[-1] == ("closed", relay_side.session)


def test_publisher_gone_mid_stream_resets_downstream_streams(world: World) -> None:
    pub = world.publisher()
    sub = raw(world.client("s1"))
    rid = sub.session.subscribe(NS, b"video")
    world.net.pump()
    world.accept(pub, 2)
    sid = pub.session.open_subgroup(O.SubgroupHeader(2, 1, 0, O.SubgroupIdMode.EXPLICIT, 0))
    pub.session.send_subgroup_object(sid, O.SubgroupObject(0, b"half"))
    world.net.pump()
    pub.session.close()
    world.net.pump()
    (opened,) = sub.of(DataStreamOpened)
    assert sub.of(DataStreamReset) == [DataStreamReset(opened.stream_id, E.ResetStreamCode.SESSION_CLOSED)]
    assert sub.messages(M.PublishDone) == [
        M.PublishDone(rid, E.PublishDoneCode.GOING_AWAY, 1, "publisher went away")
    ]
    assert world.relay.live == set() and world.relay.tracks == {}
