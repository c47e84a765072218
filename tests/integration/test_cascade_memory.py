"""Cascades in memory (no sockets, fake clock): relays chained through real MoqtSessions, as `--upstream` links them.

Aggregation is proven by the counters at every hop (`Relay.counters`, relay/counters.py): each relay sends exactly one
upstream SUBSCRIBE per track and its upstream receives exactly one relay SUBSCRIBE for it, however many subscribers
each relay has. Relays configured in a cycle refuse the request that came round (TRACK_DOES_NOT_EXIST) instead of
subscribing forever, and the refusal reaches the subscriber.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

from relay.cache import CacheLimits, ObjectCache
from relay.counters import RELAY_PATH_PARAMETER, relay_path
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import (
    DataStreamData,
    FetchObjectReceived,
    FetchStreamOpened,
    MoqtSession,
    ObjectReceived,
)
from relay.relay import Relay
from relay.upstream import UpstreamLink
from tests.unit.test_session_harness import Endpoint, Net, net, ns

__all__ = ["net"]

NS = ns("live", "cam1")
KEY = (NS, b"video")


@dataclass
class Link:
    """relay.upstream.UpstreamLink's part the relay uses: the session to the upstream relay."""

    endpoint: Endpoint

    def session(self) -> MoqtSession | None:
        return self.endpoint.session

    def count_subscribe(self, namespace: M.Namespace, track: bytes) -> None:
        return None


def link(net: Net, down: Relay, up: Relay, name: str) -> Endpoint:
    """`down --upstream up`: a client session from `down` to `up`, its events handled by `down` (raw objects)."""
    client, _ = net.pair(name, server_handler=up.handle)
    client.session.decode_objects = False
    client.handler = down.handle
    down.upstream = Link(client)
    return client


def subscriber(net: Net, relay: Relay, name: str) -> Endpoint:
    c, _ = net.pair(name, server_handler=relay.handle)
    c.session.subscribe(NS, b"video")
    return c


def test_three_chained_relays_one_upstream_subscription_per_track_per_relay(net: Net) -> None:
    a, b, c = Relay(), Relay(), Relay()
    link(net, b, a, "b->a")
    link(net, c, b, "c->b")
    pub, _ = net.pair("pub", server_handler=a.handle)
    pub.session.publish_namespace(NS)
    net.pump()
    subs = [subscriber(net, r, f"{name}{i}") for r, name in ((a, "a"), (b, "b"), (c, "c")) for i in range(3)]
    net.pump()
    [up] = pub.messages(M.Subscribe)  # one SUBSCRIBE reaches the publisher for 9 subscribers on 3 relays
    pub.session.subscribe_ok(up.request_id, 7)
    net.pump()
    assert all(len(s.messages(M.SubscribeOk)) == 1 for s in subs)
    for oid in range(5):
        pub.session.send_object_datagram(O.ObjectDatagram(7, 0, oid, 3, b"o%d" % oid))
        net.pump()
    for s in subs:
        assert [o.payload for o in s.of(ObjectReceived)] == [b"o%d" % i for i in range(5)], s.name
    # the counters at every hop: one SUBSCRIBE sent upstream per relay, one received from each downstream relay
    assert a.counters.upstream_subscribes == {} and a.counters.relay_subscribes == {KEY: 1}
    assert b.counters.upstream_subscribes == {KEY: 1} and b.counters.relay_subscribes == {KEY: 1}
    assert c.counters.upstream_subscribes == {KEY: 1} and c.counters.relay_subscribes == {}
    assert b.counters.snapshot()["upstream_subscribes_by_track"] == {"live/cam1/video": 1}
    assert a.counters.loops_refused == b.counters.loops_refused == c.counters.loops_refused == 0


def test_the_relay_path_names_every_relay_crossed(net: Net) -> None:
    a, b, c = Relay(), Relay(), Relay()
    link(net, b, a, "b->a")
    link(net, c, b, "c->b")
    at_a = net.endpoints[1]  # a's side of the b->a session: what a received from b
    pub, _ = net.pair("pub", server_handler=a.handle)
    pub.session.publish_namespace(NS)
    net.pump()
    subscriber(net, c, "s")
    net.pump()
    [from_b] = at_a.messages(M.Subscribe)
    assert relay_path(from_b.parameters) == (c.relay_id, b.relay_id)
    [up] = pub.messages(M.Subscribe)
    assert M.get_parameter(up.parameters, RELAY_PATH_PARAMETER) is None  # a local publisher gets no path


def test_two_relays_in_a_cycle_refuse_instead_of_subscribing_forever(net: Net) -> None:
    a, b = Relay(), Relay()
    link(net, a, b, "a->b")
    link(net, b, a, "b->a")
    s = subscriber(net, a, "s")
    net.pump()
    net.advance(1.0)
    [err] = s.messages(M.SubscribeError)
    assert err.error_code == E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST and "relay loop" in err.reason
    assert a.counters.loops_refused == 1 and b.counters.loops_refused == 0
    assert a.counters.upstream_subscribes == {KEY: 1} and b.counters.upstream_subscribes == {KEY: 1}
    assert a.counters.relay_subscribes == {KEY: 1} and b.counters.relay_subscribes == {KEY: 1}
    assert a.tracks == {} and b.tracks == {} and not a.live and not b.live  # nothing left waiting
    # a second try is refused the same way: one more round, not an endless one
    s.session.subscribe(NS, b"video")
    net.pump()
    assert len(s.messages(M.SubscribeError)) == 2 and a.counters.loops_refused == 2
    assert a.counters.upstream_subscribes == {KEY: 2}


def test_a_publisher_inside_the_cycle_is_still_reached(net: Net) -> None:
    a, b = Relay(), Relay()
    link(net, a, b, "a->b")
    link(net, b, a, "b->a")
    pub, _ = net.pair("pub", server_handler=b.handle)
    pub.session.publish_namespace(NS)
    net.pump()
    s = subscriber(net, a, "s")
    net.pump()
    [up] = pub.messages(M.Subscribe)
    pub.session.subscribe_ok(up.request_id, 3)
    net.pump()
    assert len(s.messages(M.SubscribeOk)) == 1 and a.counters.loops_refused == b.counters.loops_refused == 0


def test_a_path_too_long_or_malformed_is_refused(net: Net) -> None:
    a = Relay()
    c, _ = net.pair("c", server_handler=a.handle)
    c.session.subscribe(NS, b"video", parameters=((RELAY_PATH_PARAMETER, b"\x01" * 8 * 17),))
    c.session.subscribe(NS, b"video", parameters=((RELAY_PATH_PARAMETER, b"\x01" * 5),))
    net.pump()
    errs = c.messages(M.SubscribeError)
    assert [e.error_code for e in errs] == [E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST] * 2
    assert a.counters.loops_refused == 2


# --- FETCH over a cascade -------------------------------------------------------------------------------------------


def cached_world(net: Net) -> tuple[Relay, Relay, Endpoint, Endpoint]:
    """A (origin, a publisher and a first subscriber there, 3 groups cached) <- B (its cache empty for the track)."""
    a = Relay(cache=ObjectCache(CacheLimits(max_groups=8)))
    b = Relay(cache=ObjectCache(CacheLimits(max_groups=8)))
    link(net, b, a, "b->a")
    pub, _ = net.pair("pub", server_handler=a.handle)
    pub.session.publish_namespace(NS)
    net.pump()
    first = subscriber(net, a, "first")
    net.pump()
    [up] = pub.messages(M.Subscribe)
    pub.session.subscribe_ok(up.request_id, 7)
    net.pump()
    for group in range(3):
        header = O.SubgroupHeader(7, group, 3, O.SubgroupIdMode.EXPLICIT, 0)
        sid = pub.session.open_subgroup(header)
        for oid in range(3):
            pub.session.send_subgroup_object(sid, O.SubgroupObject(oid, b"g%do%d" % (group, oid) * 30), oid == 2)
        net.pump()
    return a, b, pub, first


def fetched(ep: Endpoint, request_id: int) -> bytes:
    """The fetch stream answering `request_id`, reassembled (the client reads it raw)."""
    [opened] = [e for e in ep.of(FetchStreamOpened) if e.request_id == request_id]
    return opened.data + b"".join(d.data for d in ep.of(DataStreamData) if d.stream_id == opened.stream_id)


def test_standalone_fetch_missing_locally_is_answered_by_the_upstream_byte_exact(net: Net) -> None:
    a, b, _, _ = cached_world(net)
    direct, _ = net.pair("direct", server_handler=a.handle)  # the same FETCH asked of A itself, for comparison
    edge, _ = net.pair("edge", server_handler=b.handle)
    direct.session.decode_objects = edge.session.decode_objects = False
    want = M.StandaloneFetch(NS, b"video", M.Location(0, 1), M.Location(2, 2))
    rid_a = direct.session.fetch(standalone=want)
    rid_b = edge.session.fetch(standalone=want)
    net.pump()
    [ok_a], [ok_b] = direct.messages(M.FetchOk), edge.messages(M.FetchOk)
    assert ok_b.request_id == rid_b and (ok_b.end_location, ok_b.group_order) == (ok_a.end_location, ok_a.group_order)
    # the objects after the FETCH_HEADER are the upstream's bytes, unchanged
    assert fetched(edge, rid_b) == fetched(direct, rid_a) and len(fetched(edge, rid_b)) > 300
    parser = O.DataStreamParser()
    objs = [e for e in parser.feed(O.encode_fetch_header(O.FetchHeader(rid_b)) + fetched(edge, rid_b))
            if isinstance(e, O.FetchObject)]
    assert [(o.group_id, o.object_id) for o in objs] == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert b.upstream_fetches.forwarded == {KEY: 1}


def test_upstream_fetch_error_keeps_its_code(net: Net) -> None:
    a, b, _, _ = cached_world(net)
    edge, _ = net.pair("edge", server_handler=b.handle)
    edge.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(50, 0), M.Location(51, 0)))
    edge.session.fetch(standalone=M.StandaloneFetch(ns("nobody"), b"x", M.Location(0, 0), M.Location(1, 0)))
    net.pump()
    assert [e.error_code for e in edge.messages(M.FetchError)] == [
        E.FetchErrorCode.NO_OBJECTS, E.FetchErrorCode.TRACK_DOES_NOT_EXIST,
    ]  # fmt: skip


def test_joining_fetch_over_a_cascade(net: Net) -> None:
    a, b, _, _ = cached_world(net)
    late, _ = net.pair("late", server_handler=b.handle)
    late.session.decode_objects = False
    sub_rid = late.session.subscribe(NS, b"video")
    net.pump()
    [ok] = late.messages(M.SubscribeOk)
    assert ok.largest_location == M.Location(2, 2)  # from A, through B's upstream SUBSCRIBE_OK
    rid = late.session.fetch(joining=M.JoiningFetch(sub_rid, 1), fetch_type=M.FetchType.RELATIVE_JOINING)
    net.pump()
    [fok] = late.messages(M.FetchOk)
    assert fok.request_id == rid
    parser = O.DataStreamParser()
    objs = [e for e in parser.feed(O.encode_fetch_header(O.FetchHeader(rid)) + fetched(late, rid))
            if isinstance(e, O.FetchObject)]
    # one group back from the largest, up to and including the largest object: the gap before the subscription
    assert [(o.group_id, o.object_id, o.payload) for o in objs] == [
        (g, o, b"g%do%d" % (g, o) * 30) for g in (1, 2) for o in range(3)
    ]
    assert b.upstream_fetches.forwarded == {KEY: 1} and a.upstream_fetches.forwarded == {}


def test_client_session_decodes_fetched_objects(net: Net) -> None:
    a, b, _, _ = cached_world(net)
    edge, _ = net.pair("edge", server_handler=b.handle)  # decode_objects=True: what `relay sub --fetch` reads
    rid = edge.session.fetch(standalone=M.StandaloneFetch(NS, b"video", M.Location(2, 0), M.Location(3, 0)))
    net.pump()
    got = [(e.request_id, e.obj.group_id, e.obj.object_id) for e in edge.of(FetchObjectReceived)]
    assert got == [(rid, 2, 0), (rid, 2, 1), (rid, 2, 2)]


def test_a_cycle_race_is_cleared_by_the_upstream_answer_timeout(net: Net) -> None:
    """Subscribers on both relays of a cycle at once: each relay's SUBSCRIBE joins the other's pending one (no loop
    on either path). UpstreamLink's answer timeout gives up with TIMEOUT and leaves nothing pending."""
    a, b = Relay(), Relay()
    links = []
    for down, up, name in ((a, b, "a->b"), (b, a, "b->a")):
        client, _ = net.pair(name, server_handler=up.handle)
        client.session.decode_objects = False
        client.handler = down.handle
        ul = UpstreamLink("moqt://127.0.0.1:1", down)
        ul.conn = SimpleNamespace(session=client.session)  # type: ignore[assignment]
        down.upstream = ul
        links.append(ul)
    s1, _ = net.pair("s1", server_handler=a.handle)
    s2, _ = net.pair("s2", server_handler=b.handle)
    s1.session.subscribe(NS, b"video")
    s2.session.subscribe(NS, b"video")
    net.pump()
    assert s1.messages(M.SubscribeError) == s2.messages(M.SubscribeError) == []  # both stuck
    assert a.counters.loops_refused == b.counters.loops_refused == 0
    later = time.monotonic() + links[0].answer_timeout + 1
    assert links[0].expire(later) == 1
    links[1].expire(later)
    net.pump()
    for s in (s1, s2):
        [err] = s.messages(M.SubscribeError)
        assert err.error_code == E.SubscribeErrorCode.TIMEOUT, err
    assert a.tracks == {} == b.tracks and not a.live and not b.live
