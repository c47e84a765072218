"""MoqtSession rules, in memory: setup and version negotiation, control stream rules, request ids, answers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import (
    ObjectReceived,
    RequestBlocked,
    SessionClosed,
    SessionReady,
)
from tests.unit.test_session_harness import Endpoint, Net, control, net, ns

__all__ = ["net"]  # the fixture, re-exported for pytest

SUB = M.Subscribe(0, ns("live"), b"video")


def closed_with(ep: Endpoint, code: int) -> SessionClosed:
    """`ep` saw its session closed by the peer with `code`."""
    closed = ep.closed()
    assert closed is not None, f"{ep.name} session still open"
    assert closed.error_code == code, closed
    return closed


def test_setup_exchanges_version_and_request_limits(net: Net) -> None:
    client, server = net.pair(client_max_request_id=10, server_max_request_id=20)
    (c_ready,) = client.of(SessionReady)
    (s_ready,) = server.of(SessionReady)
    assert c_ready.version == s_ready.version == 0xFF00000E
    assert c_ready.peer_max_request_id == 20
    assert s_ready.peer_max_request_id == 10
    assert client.quic._remote_max_datagram_frame_size is not None  # DATAGRAM negotiated


def test_version_mismatch_closes_with_version_negotiation_failed(net: Net) -> None:
    first = M.encode_control(M.ClientSetup((0xFF00000D,), ((M.SetupParameter.MAX_REQUEST_ID, 5),)))
    client, server = net.pair(client_first=first)
    closed_with(client, E.SessionErrorCode.VERSION_NEGOTIATION_FAILED)
    assert not server.session.ready
    assert server.closed() == SessionClosed(0x15, server.closed().reason, by_peer=False)  # type: ignore[union-attr]


def test_first_message_must_be_setup(net: Net) -> None:
    client, server = net.pair(client_first=M.encode_control(SUB))
    closed_with(client, E.SessionErrorCode.PROTOCOL_VIOLATION)


def test_client_without_datagram_support_is_refused(net: Net) -> None:
    client, server = net.pair(client_datagrams=False)
    closed_with(client, E.SessionErrorCode.PROTOCOL_VIOLATION)
    assert "DATAGRAM" in server.closed().reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(M.encode_control(M.ClientSetup((M.DRAFT_14,))), id="second-setup"),
        pytest.param(b"\x3f\x00\x00", id="unknown-type"),
        pytest.param(b"\x03\x00\x01\x00", id="truncated-subscribe"),
    ],
)
def test_bad_control_message_closes_with_protocol_violation(net: Net, wire: bytes) -> None:
    client, server = net.pair()
    control(client, wire)
    net.pump()
    closed_with(client, E.SessionErrorCode.PROTOCOL_VIOLATION)


def test_closing_the_control_stream_is_a_protocol_violation(net: Net) -> None:
    client, server = net.pair()
    client.quic.send_stream_data(0, b"", end_stream=True)
    net.pump()
    closed_with(client, E.SessionErrorCode.PROTOCOL_VIOLATION)


def test_second_bidirectional_stream_is_a_protocol_violation(net: Net) -> None:
    client, server = net.pair()
    sid = client.quic.get_next_available_stream_id(is_unidirectional=False)
    assert sid != 0
    client.quic.send_stream_data(sid, b"\x00")
    net.pump()
    closed_with(client, E.SessionErrorCode.PROTOCOL_VIOLATION)


@pytest.mark.parametrize(
    ("request_id", "code"),
    [
        (1, E.SessionErrorCode.INVALID_REQUEST_ID),  # odd = server parity
        (2, E.SessionErrorCode.INVALID_REQUEST_ID),  # skips 0
        (200, E.SessionErrorCode.TOO_MANY_REQUESTS),  # beyond MAX_REQUEST_ID 100
    ],
)
def test_request_id_rules(net: Net, request_id: int, code: int) -> None:
    client, server = net.pair()
    control(client, M.encode_control(M.Subscribe(request_id, ns("live"), b"video")))
    net.pump()
    closed_with(client, code)


def test_requests_blocked_when_peer_limit_reached(net: Net) -> None:
    client, server = net.pair(server_max_request_id=1)
    assert client.session.subscribe(ns("a"), b"t") == 0
    with pytest.raises(RequestBlocked):
        client.session.subscribe(ns("a"), b"t2")
    net.pump()
    assert server.messages(M.RequestsBlocked) == [M.RequestsBlocked(1)]
    assert [m.request_id for m in server.messages(M.Subscribe)] == [0]


def test_request_ids_are_granted_as_they_are_used(net: Net) -> None:
    client, server = net.pair(server_max_request_id=4)
    for _ in range(6):  # 6 requests through a window of 2 ids (ids 0..10)
        rid = client.session.subscribe(ns("a"), b"t")
        net.pump()
        server.session.subscribe_error(rid, E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST)
        net.pump()
    assert client.closed() is None and server.closed() is None
    assert client.session.peer_max_request_id > 10
    assert [m.request_id for m in client.messages(M.MaxRequestId)] == sorted(
        m.request_id for m in client.messages(M.MaxRequestId)
    )


def test_max_request_id_must_increase(net: Net) -> None:
    client, server = net.pair(server_max_request_id=10)
    control(server, M.encode_control(M.MaxRequestId(5)))
    net.pump()
    closed_with(server, E.SessionErrorCode.PROTOCOL_VIOLATION)


def test_subscribe_ok_and_error_reach_the_subscriber(net: Net) -> None:
    client, server = net.pair()
    r0 = client.session.subscribe(ns("live", "cam"), b"video", subscriber_priority=7, forward=False)
    r1 = client.session.subscribe(ns("live", "cam"), b"audio")
    net.pump()
    sub0, sub1 = server.messages(M.Subscribe)
    assert (sub0.request_id, sub0.track_namespace, sub0.subscriber_priority, sub0.forward) == (
        r0, (b"live", b"cam"), 7, False,
    )  # fmt: skip
    server.session.subscribe_ok(r0, 9, largest_location=M.Location(3, 4))
    server.session.subscribe_error(r1, E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "nope")
    net.pump()
    assert client.messages(M.SubscribeOk) == [M.SubscribeOk(r0, 9, largest_location=M.Location(3, 4))]
    assert client.messages(M.SubscribeError) == [M.SubscribeError(r1, 4, "nope")]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (M.SubscribeOk(0, 1), E.SessionErrorCode.PROTOCOL_VIOLATION),  # a second answer
        (M.SubscribeOk(2, 5), E.SessionErrorCode.PROTOCOL_VIOLATION),  # request never made
        (M.PublishNamespaceOk(0), E.SessionErrorCode.PROTOCOL_VIOLATION),  # wrong kind
    ],
)
def test_bad_answers_close_the_session(net: Net, answer: M.ControlMessage, code: int) -> None:
    client, server = net.pair()
    client.session.subscribe(ns("a"), b"t")
    net.pump()
    server.session.subscribe_ok(0, 1)
    control(server, M.encode_control(answer))
    net.pump()
    closed_with(server, code)


def test_duplicate_track_alias_closes_the_session(net: Net) -> None:
    client, server = net.pair()
    client.session.subscribe(ns("a"), b"t1")
    client.session.subscribe(ns("a"), b"t2")
    net.pump()
    server.session.subscribe_ok(0, 3)
    server.session.subscribe_ok(2, 3)
    net.pump()
    closed_with(server, E.SessionErrorCode.DUPLICATE_TRACK_ALIAS)


def test_goaway_stops_new_requests_and_client_goaway_uri_is_refused(net: Net) -> None:
    client, server = net.pair()
    server.session.goaway("moqt://other:4443")
    net.pump()
    assert client.messages(M.GoAway) == [M.GoAway("moqt://other:4443")]
    with pytest.raises(RequestBlocked):
        client.session.subscribe(ns("a"), b"t")
    other_client, other_server = net.pair("d")
    control(other_client, M.encode_control(M.GoAway("moqt://x")))
    net.pump()
    closed_with(other_client, E.SessionErrorCode.PROTOCOL_VIOLATION)


def test_objects_decode_from_datagrams_and_subgroup_streams(net: Net) -> None:
    client, server = net.pair()
    client.session.subscribe(ns("a"), b"t")
    net.pump()
    server.session.subscribe_ok(0, 5)
    server.session.send_object_datagram(O.ObjectDatagram(5, 1, 2, 9, b"dgram"))
    sid = server.session.open_subgroup(O.SubgroupHeader(5, 3, 4, O.SubgroupIdMode.EXPLICIT, 6))
    server.session.send_subgroup_object(sid, O.SubgroupObject(0, b"first"))
    server.session.send_subgroup_object(sid, O.SubgroupObject(2, b"second"), end_stream=True)
    net.pump()
    got = [(o.group_id, o.subgroup_id, o.object_id, o.publisher_priority, o.payload, o.stream_id is None)
           for o in client.of(ObjectReceived)]  # fmt: skip
    assert got == [
        (1, None, 2, 9, b"dgram", True),
        (3, 6, 0, 4, b"first", False),
        (3, 6, 2, 4, b"second", False),
    ]
    assert client.closed() is None


def test_close_carries_the_error_code_to_the_peer(net: Net) -> None:
    client, server = net.pair()
    server.session.close(E.SessionErrorCode.GOAWAY_TIMEOUT, "bye")
    net.pump()
    assert client.closed() == SessionClosed(0x10, "bye", by_peer=True)
    assert server.closed() == SessionClosed(0x10, "bye", by_peer=False)


def test_datagrams_leave_in_priority_order(net: Net) -> None:
    client, server = net.pair()
    client.session.subscribe(ns("a"), b"t")
    net.pump()
    server.session.subscribe_ok(0, 1)
    server.session.ordered_output = True  # the adapter sorts before each transmit (datagrams_to_send does)
    for sub_prio, pub_prio, tag in [(5, 1, b"c"), (1, 9, b"b"), (1, 2, b"a"), (9, 0, b"d")]:
        server.session.send_object_datagram(O.ObjectDatagram(1, 0, 0, pub_prio, tag), sub_prio)
    net.pump()
    assert [o.payload for o in client.of(ObjectReceived)] == [b"a", b"b", b"c", b"d"]


def test_unsubscribe_before_the_answer_tolerates_a_late_answer(net: Net) -> None:
    client, server = net.pair()
    rid = client.session.subscribe(ns("a"), b"t")
    client.session.unsubscribe(rid)
    net.pump()
    server.session.subscribe_error(rid, E.SubscribeErrorCode.TIMEOUT)
    net.pump()
    assert client.closed() is None and server.closed() is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=64))
def test_any_control_bytes_either_parse_or_close_with_a_session_code(net: Net, garbage: bytes) -> None:
    """Whatever a peer writes after setup, the session never raises out of the event loop; if it closes, the code
    is a MoQT session code."""
    client, server = net.pair(f"g{len(net.endpoints)}")
    control(client, garbage)
    net.pump()
    closed = client.closed()
    if closed is not None:
        assert closed.error_code in set(E.SessionErrorCode)


def test_streams_are_served_by_subscriber_then_publisher_priority(net: Net) -> None:
    client, server = net.pair()
    for track in (b"t1", b"t2", b"t3"):
        client.session.subscribe(ns("a"), track)
    net.pump()
    for rid, alias in ((0, 1), (2, 2), (4, 3)):
        server.session.subscribe_ok(rid, alias)
    net.pump()
    # opened worst first; all pending in the same flight
    for alias, sub_prio, pub_prio in ((1, 9, 0), (2, 1, 7), (3, 1, 2)):
        sid = server.session.open_subgroup(O.SubgroupHeader(alias, 0, pub_prio), sub_prio)
        server.session.send_subgroup_object(sid, O.SubgroupObject(0, bytes([alias])), end_stream=True)
    net.pump()
    assert [o.track_alias for o in client.of(ObjectReceived)] == [3, 2, 1]
