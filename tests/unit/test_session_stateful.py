"""Hostile input against the relay's sans-I/O MoQT sessions: hypothesis stateful testing (issue #10, item 3).

A publisher, an honest subscriber and an attacker talk to one in-memory `Relay` (tests/unit/test_session_harness.py).
The attacker mixes valid requests with raw control bytes: request ids of the wrong parity, skipped, reused or beyond
MAX_REQUEST_ID, UNSUBSCRIBE of ids never made, over-long names and namespaces, garbage messages and datagrams.
Invariants after every step: no exception escapes the relay; a session the relay closes is closed with the code the
draft specifies for what was sent; the honest subscriber is never hurt; relay state stays within the limits.
"""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.limits import Limits
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import RequestBlocked
from relay.relay import Relay
from tests.unit.test_session_harness import Endpoint, Net, certs, control, ns

NS = ns("live", "cam1")
WINDOW = 8  # MAX_REQUEST_ID window the relay grants each session (small so the limit is reached)
LIMITS = Limits(
    max_requests_per_session=WINDOW,
    max_subscriptions_per_session=3,
    max_track_name_bytes=64,
    max_namespace_bytes=32,
)
# every code the relay may close an attacker's session with for garbage (anything else is a bug)
GARBAGE_CODES = {
    E.SessionErrorCode.PROTOCOL_VIOLATION,
    E.SessionErrorCode.INVALID_REQUEST_ID,
    E.SessionErrorCode.TOO_MANY_REQUESTS,
    E.SessionErrorCode.KEY_VALUE_FORMATTING_ERROR,
    E.SessionErrorCode.DUPLICATE_TRACK_ALIAS,
    E.SessionErrorCode.MALFORMED_AUTH_TOKEN,
    E.SessionErrorCode.UNKNOWN_AUTH_TOKEN_ALIAS,
    E.SessionErrorCode.DUPLICATE_AUTH_TOKEN_ALIAS,
    E.SessionErrorCode.AUTH_TOKEN_CACHE_OVERFLOW,
}
TRACKS = [b"video", b"audio", b"meta"]
_ROOT = Path(__import__("tempfile").mkdtemp(prefix="moqt-stateful-"))


def _subscribe_bytes(rid: int, namespace: M.Namespace = NS, name: bytes = b"video") -> bytes:
    return M.encode_control(M.Subscribe(rid, namespace, name, 128, M.GroupOrder.PUBLISHER, True,
                                        M.FilterType.LARGEST_OBJECT, None, None, ()))  # fmt: skip


class RelayUnderAttack(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net(certs(_ROOT))
        self.relay = Relay(limits=LIMITS)
        self.pub = self._client("pub")
        self.pub.session.publish_namespace(NS)
        self.honest = self._client("honest")
        self.net.pump()
        self.honest_rid = self.honest.session.subscribe(NS, b"video")
        self.net.pump()
        self.aliases = 0
        self.accepted: list[int] = []  # upstream SUBSCRIBE ids the publisher answered OK
        self._accept_pending()
        self.attacker = self._client("attacker")
        self.expected_close: set[int] | None = None  # codes allowed for the attacker's next close
        self.attacker_rids: list[int] = []
        self.generation = 0

    # --- helpers ------------------------------------------------------------------------------------------------

    def _client(self, name: str) -> Endpoint:
        c, _ = self.net.pair(name, server_handler=self.relay.handle, server_max_request_id=WINDOW)
        return c

    def _server(self, ep: Endpoint) -> Endpoint:
        assert ep.peer is not None
        return ep.peer

    def _accept_pending(self) -> None:
        for sub in self.pub.messages(M.Subscribe):
            if sub.request_id in self.accepted:
                continue
            req = self.pub.session._received.get(sub.request_id)
            if req is None or req.state.name != "PENDING":
                continue
            self.aliases += 1
            self.pub.session.subscribe_ok(sub.request_id, self.aliases)
            self.accepted.append(sub.request_id)
        self.net.pump()

    def _attacker_step(self, expect: set[int] | None) -> None:
        """Pump; if the relay closed the attacker, check the code and reconnect a fresh attacker."""
        self.expected_close = expect
        self.net.pump()
        closed = self._server(self.attacker).session.closed
        if expect is not None:
            assert closed, f"relay kept a session open after a request that must close it ({expect})"
        if closed:
            ev = self.attacker.closed()
            assert ev is not None, self.attacker.events
            allowed = expect if expect is not None else GARBAGE_CODES
            assert ev.error_code in allowed, (ev.error_code, ev.reason, allowed)
            self._reconnect()

    def _reconnect(self) -> None:
        self.generation += 1
        if not self.attacker.session.closed:
            self.attacker.session.close()
        self.net.pump()
        self.net.endpoints = [e for e in self.net.endpoints if e not in (self.attacker, self.attacker.peer)]
        self.attacker = self._client(f"attacker{self.generation}")
        self.attacker_rids = []

    # --- valid traffic ------------------------------------------------------------------------------------------

    @rule(track=st.sampled_from(TRACKS))
    def subscribe(self, track: bytes) -> None:
        try:
            rid = self.attacker.session.subscribe(NS, track)
        except RequestBlocked:
            return
        self.attacker_rids.append(rid)
        self._attacker_step(None)
        self._accept_pending()
        answers = [m for m in self.attacker.messages(M.SubscribeOk) + self.attacker.messages(M.SubscribeError)
                   if m.request_id == rid]  # fmt: skip
        assert len(answers) <= 1

    @precondition(lambda self: bool(self.attacker_rids))
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.attacker_rids))
        self.attacker.session.unsubscribe(rid)
        self._attacker_step(None)

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data(), code=st.sampled_from(list(E.PublishDoneCode)))
    def publish_done(self, data: st.DataObject, code: int) -> None:
        rid = data.draw(st.sampled_from(self.accepted))
        self.pub.session.publish_done(rid, code, 0, "done")
        self.net.pump()

    @rule(group=st.integers(0, 3), payload=st.binary(max_size=64))
    def publisher_datagram(self, group: int, payload: bytes) -> None:
        for alias in range(1, self.aliases + 1):
            self.pub.session.send_object_datagram(O.ObjectDatagram(alias, group, 0, 0, payload))
        self.net.pump()

    # --- limits -------------------------------------------------------------------------------------------------

    @rule(extra=st.integers(1, 200), in_namespace=st.booleans())
    def over_long_name(self, extra: int, in_namespace: bool) -> None:
        """Names over the limits: SUBSCRIBE_ERROR NOT_SUPPORTED, the session stays up (relay/limits.py)."""
        namespace: M.Namespace
        if in_namespace:
            namespace, name = (b"live", b"n" * (LIMITS.max_namespace_bytes + extra)), b"video"
        else:
            namespace, name = NS, b"t" * (LIMITS.max_track_name_bytes + extra)
        try:
            rid = self.attacker.session.subscribe(namespace, name)
        except RequestBlocked:
            return
        self.attacker_rids.append(rid)
        self._attacker_step(None)
        errors = [m for m in self.attacker.messages(M.SubscribeError) if m.request_id == rid]
        assert [e.error_code for e in errors] == [E.SubscribeErrorCode.NOT_SUPPORTED]

    @rule(fields=st.integers(M.MAX_NAMESPACE_FIELDS + 1, 64))
    def too_many_namespace_fields(self, fields: int) -> None:
        """Section 2.4.1: more than 32 namespace fields is a PROTOCOL_VIOLATION."""
        server = self._server(self.attacker).session
        rid = server._next_peer_request_id
        # hand-built SUBSCRIBE: type, length, rid, field count, fields..., then the rest of a valid one
        w = M.Writer()
        w.push_varint(rid)
        w.push_varint(fields)
        for _ in range(fields):
            w.push_varint(1)
            w.push_bytes(b"x")
        payload = w.data() + _subscribe_tail(_subscribe_bytes(rid))
        control(self.attacker, bytes([M.MessageType.SUBSCRIBE]) + len(payload).to_bytes(2, "big") + payload)
        self._attacker_step({E.SessionErrorCode.PROTOCOL_VIOLATION})

    @rule(length=st.integers(M.MAX_REASON_LENGTH + 1, 3000))
    def over_long_reason(self, length: int) -> None:
        """Section 1.4.3: a reason phrase over 1024 bytes is a PROTOCOL_VIOLATION (in a SUBSCRIBE_ERROR)."""
        w = M.Writer()
        w.push_varint(1)  # request id
        w.push_varint(0)  # error code
        w.push_varint(length)
        w.push_bytes(b"r" * length)
        payload = w.data()
        control(self.attacker, bytes([M.MessageType.SUBSCRIBE_ERROR]) + len(payload).to_bytes(2, "big") + payload)
        self._attacker_step({E.SessionErrorCode.PROTOCOL_VIOLATION})

    # --- request ids (section 9.1) ------------------------------------------------------------------------------

    @rule(how=st.sampled_from(["parity", "skip", "reuse", "beyond"]), skip=st.integers(1, 50))
    def bad_request_id(self, how: str, skip: int) -> None:
        server = self._server(self.attacker).session
        nxt, limit = server._next_peer_request_id, server._local_max_request_id
        codes: set[int]
        if how == "parity":
            rid, codes = nxt + 1, {E.SessionErrorCode.INVALID_REQUEST_ID}
        elif how == "skip":
            rid = nxt + 2 * skip
            codes = {E.SessionErrorCode.TOO_MANY_REQUESTS if rid >= limit else E.SessionErrorCode.INVALID_REQUEST_ID}
        elif how == "reuse":
            if nxt == 0:
                return
            rid, codes = nxt - 2, {E.SessionErrorCode.INVALID_REQUEST_ID}
        else:
            rid, codes = limit + (limit % 2) + 2 * skip, {E.SessionErrorCode.TOO_MANY_REQUESTS}
        control(self.attacker, _subscribe_bytes(rid))
        self._attacker_step(codes)

    @rule(ahead=st.integers(0, 40))
    def unsubscribe_never_made(self, ahead: int) -> None:
        server = self._server(self.attacker).session
        rid = server._next_peer_request_id + 2 * ahead
        control(self.attacker, M.encode_control(M.Unsubscribe(rid)))
        self._attacker_step({E.SessionErrorCode.PROTOCOL_VIOLATION})

    # --- garbage ------------------------------------------------------------------------------------------------

    @rule(msg_type=st.integers(0, 0x60), payload=st.binary(max_size=80))
    def garbage_control(self, msg_type: int, payload: bytes) -> None:
        """A framed message of any type with any payload: processed, refused, or the session closed - never a crash.
        Whatever it did to the request-id bookkeeping, the attacker starts afresh afterwards."""
        control(self.attacker, bytes([msg_type]) + len(payload).to_bytes(2, "big") + payload)
        self._attacker_step(None)
        if not self._server(self.attacker).session.closed:
            self._reconnect()

    @rule(data=st.binary(max_size=200))
    def garbage_datagram(self, data: bytes) -> None:
        self.attacker.session.send_datagram(data)
        self._attacker_step(None)

    # --- invariants ---------------------------------------------------------------------------------------------

    @invariant()
    def honest_subscriber_unharmed(self) -> None:
        assert self.honest.closed() is None, self.honest.events
        assert not self.pub.session.closed

    @invariant()
    def state_bounded(self) -> None:
        for p in self.relay._peers.values():
            assert len(p.subs) <= LIMITS.max_subscriptions_per_session
        open_sessions = [s for s in self.relay._peers if not s.closed]
        assert len(open_sessions) <= 3
        for ep in self.net.endpoints:
            assert ep.session._control_parser.buffered < 1 << 16
            assert len(ep.session._in_streams) <= 16


def _subscribe_tail(encoded: bytes) -> bytes:
    """The fields of an encoded SUBSCRIBE after its namespace (track name, priority, ..., parameters)."""
    # encoded = type(1) length(2) rid(1) count(1) "live"(1+4) "cam1"(1+4) | tail
    return encoded[3 + 1 + 1 + 5 + 5 :]


TestRelayUnderAttack = RelayUnderAttack.TestCase
TestRelayUnderAttack.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_alias_of_an_ended_subscription_may_be_reused(tmp_path: Path) -> None:
    """A relay frees an alias at PUBLISH_DONE (or UNSUBSCRIBE) and may give it to the next SUBSCRIBE: found by
    tests/integration/test_faults.py (resubscribe after a killed publisher closed the session with 0x5)."""
    net = Net(certs(_ROOT))
    client, server = net.pair()
    for end in ("publish_done", "unsubscribe", "publish_done"):
        rid = client.session.subscribe(NS, b"video")
        net.pump()
        server.session.subscribe_ok(rid, 3)
        net.pump()
        if end == "publish_done":
            server.session.publish_done(rid, E.PublishDoneCode.TRACK_ENDED, 0)
        else:
            client.session.unsubscribe(rid)
        net.pump()
        assert client.closed() is None and server.closed() is None, client.events
    rid = client.session.subscribe(NS, b"video")
    rid2 = client.session.subscribe(NS, b"audio")
    net.pump()
    server.session.subscribe_ok(rid, 3)
    server.session.subscribe_ok(rid2, 3)  # a live alias still may not be used twice
    net.pump()
    closed = client.closed()
    assert closed is not None and closed.error_code == E.SessionErrorCode.DUPLICATE_TRACK_ALIAS


def test_stalled_subscriber_cannot_grow_relay_memory(tmp_path: Path) -> None:
    """Flow-control stall: a subscriber whose packets never reach the relay (no ACK, no MAX_DATA) while the publisher
    sends 24 MB in 1 s-groups. What aioquic holds for it stays under the session bound (+ one stream), its streams
    are reset with DELIVERY_TIMEOUT, and the subscriber that reads still gets every object, and a big burst."""
    from relay.moqt.session import ObjectReceived

    net = Net(certs(_ROOT))
    relay = Relay()
    pub, _ = net.pair("pub", server_handler=relay.handle)
    pub.session.publish_namespace(NS)
    good, good_relay = net.pair("good", server_handler=relay.handle)
    slow, slow_relay = net.pair("slow", server_handler=relay.handle)
    net.pump()
    good.session.subscribe(NS, b"video")
    slow.session.subscribe(NS, b"video")
    net.pump()
    (sub,) = pub.messages(M.Subscribe)
    pub.session.subscribe_ok(sub.request_id, 1)
    net.pump()
    net.filter = lambda ep, data: None if ep is slow else data  # the slow subscriber goes silent
    session = slow_relay.session
    session.stall_seconds = 0.0  # the in-memory clock does not move: no ACK at all is a stall at once
    peak = 0
    payload = bytes(100_000)
    for group in range(40):
        sid = pub.session.open_subgroup(O.SubgroupHeader(1, group, 128, O.SubgroupIdMode.ZERO, 0))
        for oid in range(6):
            pub.session.send_subgroup_object(sid, O.SubgroupObject(oid, payload))
            net.pump()
            peak = max(peak, session._total_backlog())
        pub.session.end_subgroup(sid)
        net.pump()
    assert session.stall_resets > 0
    assert peak <= session.max_session_backlog + session.max_stream_backlog + 2 * len(payload), peak
    assert len(good.of(ObjectReceived)) == 40 * 6
    assert not session.closed and good.closed() is None
    # a burst to a healthy peer (one 3 MB object, over the 2 MiB stream bound until ACKs come) is not a stall
    sid = pub.session.open_subgroup(O.SubgroupHeader(1, 40, 128, O.SubgroupIdMode.ZERO, 0))
    pub.session.send_subgroup_object(sid, O.SubgroupObject(0, bytes(3_000_000)), end_stream=True)
    net.pump(rounds=5000)
    assert good_relay.session.stall_resets == 0
    assert [o.payload for o in good.of(ObjectReceived)][-1] == bytes(3_000_000)
