"""The MoQT client verbs and events `relay pub` and `relay sub` use, and the one place they meet the real session.

The tools are written against `MoqtClient` only, so their logic (pacing, PUBLISH_DONE, UNSUBSCRIBE, checks) is
tested in memory with a fake; `SessionClient` implements it on the sans-I/O `relay.moqt.session.MoqtSession` and
aioquic's asyncio client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from crypto_offload import plaintext
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt import session as S
from relay.tools.endpoint import Endpoint

# SUBSCRIBE_ERROR codes (draft-14, SUBSCRIBE_ERROR) -> the names users see.
SUBSCRIBE_ERROR_NAMES = {
    0x0: "INTERNAL_ERROR",
    0x1: "UNAUTHORIZED",
    0x2: "TIMEOUT",
    0x3: "NOT_SUPPORTED",
    0x4: "TRACK_DOES_NOT_EXIST",
    0x5: "INVALID_RANGE",
    0x10: "MALFORMED_AUTH_TOKEN",
    0x12: "EXPIRED_AUTH_TOKEN",
}
# PUBLISH_DONE status codes (draft-14, PUBLISH_DONE).
PUBLISH_DONE_NAMES = {
    0x0: "INTERNAL_ERROR",
    0x1: "UNAUTHORIZED",
    0x2: "TRACK_ENDED",
    0x3: "SUBSCRIPTION_ENDED",
    0x4: "GOING_AWAY",
    0x5: "EXPIRED",
    0x6: "TOO_FAR_BEHIND",
    0x7: "MALFORMED_TRACK",
}


def error_name(code: int, names: dict[int, str]) -> str:
    return names.get(code, f"UNKNOWN_0x{code:x}")


class ToolError(Exception):
    """A failure to report to the user in one line (unreachable relay, rejected request, closed session)."""


class RequestRejected(ToolError):
    """SUBSCRIBE_ERROR / PUBLISH_NAMESPACE_ERROR (draft-14): the code and reason phrase from the wire."""

    def __init__(self, what: str, code: int, reason: str, code_name: str) -> None:
        super().__init__(f"{what} rejected: {code_name} (0x{code:x}): {reason or 'no reason given'}")
        self.code = code
        self.reason = reason
        self.code_name = code_name


@dataclass(frozen=True)
class ObjectReceived:
    """One object of a subscription; `stream` is the QUIC stream id, None for a datagram."""

    request_id: int
    group: int
    subgroup: int
    obj: int
    priority: int
    payload: bytes
    stream: int | None


@dataclass(frozen=True)
class PublishDone:
    """PUBLISH_DONE (draft-14, control message 0x0B): request id, status code, stream count, reason."""

    request_id: int
    status: int
    stream_count: int
    reason: str


@dataclass(frozen=True)
class SubscribeRequested:
    """A SUBSCRIBE addressed to us as publisher (from the relay): answer with subscribe_ok or subscribe_error."""

    request_id: int
    namespace: tuple[bytes, ...]
    track: bytes


@dataclass(frozen=True)
class Unsubscribed:
    """UNSUBSCRIBE (draft-14, 0x0A) of a subscription we publish to."""

    request_id: int


@dataclass(frozen=True)
class SessionClosed:
    reason: str


@dataclass(frozen=True)
class FetchedObject:
    """One object of a FETCH_HEADER stream (draft-14 section 10.4.4), as the relay sent it."""

    request_id: int
    group: int
    subgroup: int
    obj: int
    priority: int
    payload: bytes
    status: int


@dataclass(frozen=True)
class FetchDone:
    """The fetch stream of `request_id` ended (FIN: every object is in; reset: `reset` is its error code)."""

    request_id: int
    reset: int | None = None


Event = ObjectReceived | PublishDone | SubscribeRequested | Unsubscribed | SessionClosed | FetchedObject | FetchDone

# FETCH_ERROR codes (draft-14, FETCH_ERROR) -> names.
FETCH_ERROR_NAMES = {**SUBSCRIBE_ERROR_NAMES, 0x6: "NO_OBJECTS", 0x7: "INVALID_JOINING_REQUEST_ID",
                     0x8: "UNKNOWN_STATUS_IN_RANGE", 0x9: "MALFORMED_TRACK"}  # fmt: skip


class MoqtClient(Protocol):
    """A connected client session (after CLIENT_SETUP / SERVER_SETUP)."""

    async def publish_namespace(self, namespace: tuple[bytes, ...]) -> None: ...

    def publish_namespace_done(self, namespace: tuple[bytes, ...]) -> None: ...

    async def subscribe(self, namespace: tuple[bytes, ...], track: bytes, priority: int, filter_type: int) -> int: ...

    def unsubscribe(self, request_id: int) -> None: ...

    def subscribe_ok(self, request_id: int, alias: int) -> None: ...

    def subscribe_error(self, request_id: int, code: int, reason: str) -> None: ...

    def publish_done(self, request_id: int, status: int, stream_count: int, reason: str) -> None: ...

    async def next_event(self) -> Event: ...

    def send_datagram(self, alias: int, group: int, obj: int, priority: int, payload: bytes) -> None: ...

    def open_subgroup(self, alias: int, group: int, subgroup: int, priority: int) -> int: ...

    def write_object(self, stream: int, obj: int, payload: bytes, fin: bool) -> None: ...

    def finish_stream(self, stream: int) -> None: ...

    async def close(self) -> None: ...


CONNECT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 10.0
# SUBSCRIBE_ERROR / request error code (draft-14): 0x3 = not supported (FETCH, TRACK_STATUS, ... from the relay).
NOT_SUPPORTED = 0x3


class _Protocol(QuicConnectionProtocol):
    """aioquic's asyncio protocol feeding our sans-I/O MoqtSession; its events go to `SessionClient._on_event`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moqt = S.MoqtSession(self._quic, decode_objects=True)
        self.moqt.on_output = self._output
        self._on_event: Callable[[S.MoqtEvent], None] | None = None
        self._early: list[S.MoqtEvent] = []  # SERVER_SETUP can arrive before connect() returns: keep it
        self._flush_pending = False
        self._keepalive: asyncio.TimerHandle | None = None
        self.pings_sent = 0

    def set_event_handler(self, handler: Callable[[S.MoqtEvent], None]) -> None:
        self._on_event = handler
        early, self._early = self._early, []
        for event in early:
            handler(event)

    def _output(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self.transmit()

    def _keep_alive(self) -> None:
        """RFC 9000 section 10.1.2: a PING at a third of the negotiated idle timeout, so a pause in the media (the
        publisher gone until the relay notices, a track not announced yet) does not end our session; a dead relay
        still ends it, about a third of the timeout later (the first PING restarts aioquic's idle timer)."""
        self._keepalive = None
        if self._quic._close_pending or self.moqt.closed:  # noqa: SLF001 - aioquic keeps it private
            return
        self._quic.send_ping(self.pings_sent)
        self.pings_sent += 1
        self.transmit()
        self._keepalive = self._loop.call_later(self._quic._idle_timeout() / 3, self._keep_alive)  # noqa: SLF001

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.HandshakeCompleted) and self._keepalive is None:
            self._keepalive = self._loop.call_later(self._quic._idle_timeout() / 3, self._keep_alive)  # noqa: SLF001
        elif isinstance(event, qe.ConnectionTerminated) and self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self.moqt.handle_quic_event(event)
        while (moqt_event := self.moqt.next_event()) is not None:
            if self._on_event is None:
                self._early.append(moqt_event)
            else:
                self._on_event(moqt_event)


class SessionClient:
    """`MoqtClient` on relay.moqt.session (sans-I/O) + aioquic's asyncio client."""

    def __init__(self, protocol: _Protocol, transport: asyncio.BaseTransport) -> None:
        self._p = protocol
        self._moqt = protocol.moqt
        self._transport = transport
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, tuple[str, asyncio.Future[M.ControlMessage]]] = {}
        self._aliases: dict[int, int] = {}  # track alias (from SUBSCRIBE_OK) -> our request id
        #: parameters added to every request (e.g. AUTHORIZATION TOKEN, set by `--token`)
        self.request_parameters: M.Parameters = ()
        self._early: list[S.ObjectReceived] = []  # objects that overtook their SUBSCRIBE_OK
        self._closed = False
        self.lab_plaintext = False  # set by connect(): explains an ALPN mismatch from the right side
        self._fetch_streams: dict[int, int] = {}  # fetch stream id -> our FETCH's request id
        protocol.set_event_handler(self._on_event)

    # --- events from the session --------------------------------------------------------------------------------

    def _on_event(self, event: S.MoqtEvent) -> None:
        if isinstance(event, S.SessionReady):
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(event, S.ControlMessageReceived):
            self._on_control(event.message)
        elif isinstance(event, S.ObjectReceived):
            self._on_object(event)
        elif isinstance(event, S.FetchStreamOpened):
            self._fetch_streams[event.stream_id] = event.request_id
        elif isinstance(event, S.FetchObjectReceived):
            o = event.obj
            self._events.put_nowait(FetchedObject(event.request_id, o.group_id, o.subgroup_id, o.object_id,
                                                  o.publisher_priority, o.payload, o.status))
        elif isinstance(event, S.DataStreamData | S.DataStreamReset) and event.stream_id in self._fetch_streams:
            if isinstance(event, S.DataStreamReset) or event.end_stream:
                rid = self._fetch_streams.pop(event.stream_id)
                reset = event.error_code if isinstance(event, S.DataStreamReset) else None
                self._events.put_nowait(FetchDone(rid, reset))
        elif isinstance(event, S.SessionClosed):
            self._closed = True
            reason = f"{event.reason or 'no reason'} (code 0x{event.error_code:x})"
            mismatch = plaintext.mismatch_message(event.error_code, event.reason, self.lab_plaintext)
            failure = ToolError(mismatch or f"the session closed: {reason}")
            if not self.ready.done():
                self.ready.set_exception(failure)
                self.ready.exception()  # mark retrieved: connect() reports it, or nobody waits any more
            for _, fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(failure)
            self._events.put_nowait(SessionClosed(reason))

    def _on_control(self, msg: M.ControlMessage) -> None:
        if isinstance(msg, M.SubscribeOk | M.SubscribeError | M.PublishNamespaceOk | M.PublishNamespaceError
                      | M.FetchOk | M.FetchError):
            entry = self._pending.pop(msg.request_id, None)
            fut = entry[1] if entry is not None else None
            if isinstance(msg, M.SubscribeOk):
                self._aliases[msg.track_alias] = msg.request_id
                early, self._early = self._early, []
                for obj in early:
                    self._on_object(obj)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, M.PublishDone):
            self._events.put_nowait(PublishDone(msg.request_id, msg.status_code, msg.stream_count, msg.reason))
        elif isinstance(msg, M.Subscribe):
            self._events.put_nowait(SubscribeRequested(msg.request_id, tuple(msg.track_namespace), msg.track_name))
        elif isinstance(msg, M.Unsubscribe):
            self._events.put_nowait(Unsubscribed(msg.request_id))
        elif isinstance(msg, M.Fetch | M.TrackStatus | M.Publish | M.SubscribeNamespace):
            self._moqt.reject_request(msg, NOT_SUPPORTED, "a synthetic source serves SUBSCRIBE only")

    def _on_object(self, obj: S.ObjectReceived) -> None:
        rid = self._aliases.get(obj.track_alias)
        if rid is None:
            self._early.append(obj)
            return
        if obj.status != O.ObjectStatus.NORMAL:
            return  # end-of-group / end-of-track markers carry no frame
        self._events.put_nowait(
            ObjectReceived(
                rid, obj.group_id, obj.subgroup_id or 0, obj.object_id, obj.publisher_priority, obj.payload,
                obj.stream_id,
            )  # fmt: skip
        )

    async def _request(self, what: str, send: Callable[[], int]) -> M.ControlMessage:
        if self._closed:
            raise ToolError("the session is closed")
        try:
            rid = send()
        except S.RequestBlocked as exc:
            raise ToolError(f"{what} not sent: {exc}") from None
        fut: asyncio.Future[M.ControlMessage] = self._loop.create_future()
        self._pending[rid] = (what, fut)
        try:
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT_S)
        except TimeoutError:
            self._pending.pop(rid, None)
            raise ToolError(f"no answer to {what} within {REQUEST_TIMEOUT_S:.0f} s") from None

    # --- MoqtClient ---------------------------------------------------------------------------------------------

    async def publish_namespace(self, namespace: tuple[bytes, ...]) -> None:
        reply = await self._request("PUBLISH_NAMESPACE", lambda: self._moqt.publish_namespace(namespace, self.request_parameters))
        if isinstance(reply, M.PublishNamespaceError):
            raise RequestRejected(
                "PUBLISH_NAMESPACE", reply.error_code, reply.reason, error_name(reply.error_code, {})
            )

    def publish_namespace_done(self, namespace: tuple[bytes, ...]) -> None:
        if not self._closed:
            self._moqt.publish_namespace_done(namespace)

    async def subscribe(self, namespace: tuple[bytes, ...], track: bytes, priority: int, filter_type: int) -> int:
        holder: list[int] = []

        def send() -> int:
            rid = self._moqt.subscribe(
                namespace, track, subscriber_priority=priority, filter_type=filter_type,
                parameters=self.request_parameters,
            )  # fmt: skip
            holder.append(rid)
            return rid

        reply = await self._request("SUBSCRIBE", send)
        if isinstance(reply, M.SubscribeError):
            raise RequestRejected(
                "SUBSCRIBE", reply.error_code, reply.reason, error_name(reply.error_code, SUBSCRIBE_ERROR_NAMES)
            )
        return holder[0]

    async def fetch(
        self, namespace: tuple[bytes, ...], track: bytes, start: M.Location, end: M.Location, priority: int
    ) -> tuple[int, M.FetchOk]:
        """Standalone FETCH (draft-14 section 9.16.1); (request id, FETCH_OK); objects follow as FetchedObject
        events, then FetchDone. RequestRejected on FETCH_ERROR."""
        holder: list[int] = []

        def send() -> int:
            rid = self._moqt.fetch(
                priority, standalone=M.StandaloneFetch(namespace, track, start, end),
                parameters=self.request_parameters,
            )  # fmt: skip
            holder.append(rid)
            return rid

        reply = await self._request("FETCH", send)
        if isinstance(reply, M.FetchError):
            raise RequestRejected(
                "FETCH", reply.error_code, reply.reason, error_name(reply.error_code, FETCH_ERROR_NAMES)
            )
        assert isinstance(reply, M.FetchOk)
        return holder[0], reply

    def unsubscribe(self, request_id: int) -> None:
        if not self._closed:
            self._moqt.unsubscribe(request_id)

    def subscribe_ok(self, request_id: int, alias: int) -> None:
        self._moqt.subscribe_ok(request_id, alias)

    def subscribe_error(self, request_id: int, code: int, reason: str) -> None:
        self._moqt.subscribe_error(request_id, code, reason)

    def publish_done(self, request_id: int, status: int, stream_count: int, reason: str) -> None:
        if not self._closed:
            self._moqt.publish_done(request_id, status, stream_count, reason)

    async def next_event(self) -> Event:
        return await self._events.get()

    def send_datagram(self, alias: int, group: int, obj: int, priority: int, payload: bytes) -> None:
        # OBJECT_DATAGRAM (draft-14 section 10.3.1): alias, group, object id, publisher priority, payload.
        if not self._closed:
            self._moqt.send_datagram(O.encode_datagram(O.ObjectDatagram(alias, group, obj, priority, payload)))

    def open_subgroup(self, alias: int, group: int, subgroup: int, priority: int) -> int:
        # SUBGROUP_HEADER (draft-14 section 10.4.2) with an explicit subgroup id.
        header = O.SubgroupHeader(alias, group, priority, O.SubgroupIdMode.EXPLICIT, subgroup)
        return self._moqt.open_subgroup(header)

    def write_object(self, stream: int, obj: int, payload: bytes, fin: bool) -> None:
        if not self._closed:
            self._moqt.send_subgroup_object(stream, O.SubgroupObject(obj, payload), end_stream=fin)

    def finish_stream(self, stream: int) -> None:
        if not self._closed:
            self._moqt.end_subgroup(stream)

    # --- QUIC transport triggers (for tests of NICs that follow key phases and connection IDs) -----------------

    def request_key_update(self) -> None:
        """Start a 1-RTT key update (RFC 9001 section 6): the next packet leaves in the other key phase."""
        if not self._closed:
            self._p._quic.request_key_update()
            self._p.transmit()

    def change_connection_id(self) -> bool:
        """Move to the next connection ID the relay issued and retire the old one (RFC 9000 section 5.1.2);
        False when the relay has issued no spare connection ID (nothing changes then)."""
        if self._closed:
            return False
        quic = self._p._quic
        before = quic._peer_cid.cid
        quic.change_connection_id()
        self._p.transmit()
        return bool(quic._peer_cid.cid != before)

    async def close(self) -> None:
        """Close after what we queued has reached the peer: aioquic drops unsent stream data on close, and the
        last control messages (PUBLISH_DONE, PUBLISH_NAMESPACE_DONE) matter most. A PING's ACK is the signal."""
        if not self._closed:
            self._p.transmit()
            established = self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None
            if established:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(self._p.ping(), CLOSE_TIMEOUT_S)
            self._closed = True
            self._moqt.close()
        self._p.transmit()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._p.wait_closed(), CLOSE_TIMEOUT_S)
        self._transport.close()


async def connect(endpoint: Endpoint, *, lab_plaintext: bool = False) -> MoqtClient:
    """Open a MoQT session (QUIC handshake + CLIENT_SETUP/SERVER_SETUP); ToolError says why it failed.

    The session's own SessionReady is the one readiness signal (it implies the handshake), so a relay that never
    answers costs CONNECT_TIMEOUT_S and leaves nothing behind.
    """
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[S.ALPN],
        max_datagram_frame_size=65536,  # RFC 9221: MoQT needs DATAGRAM (draft-14 section 3.1)
        server_name=endpoint.host,
    )
    if endpoint.insecure:
        config.verify_mode = ssl.CERT_NONE
    else:
        config.load_verify_locations(cafile=str(endpoint.ca))
    quic_class = QuicConnection
    if lab_plaintext:  # INSECURE: 1-RTT in clear (crypto_offload/plaintext.py); ALPN tells the relay
        plaintext.configure(config)
        quic_class = plaintext.LabPlaintextQuicConnection
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(quic_class(configuration=config)), family=family
        )
    except OSError as exc:
        raise ToolError(f"cannot reach {endpoint.url}: {exc}") from None
    assert isinstance(protocol, _Protocol)
    client = SessionClient(protocol, transport)
    client.lab_plaintext = lab_plaintext
    protocol.connect(addr)
    try:
        await asyncio.wait_for(asyncio.shield(client.ready), CONNECT_TIMEOUT_S)
    except TimeoutError:
        await client.close()
        raise ToolError(f"no MoQT session with {endpoint.url} within {CONNECT_TIMEOUT_S:.0f} s "
                        "(nothing listening, or it is not a draft-14 relay)") from None
    except ToolError as exc:
        await client.close()
        raise ToolError(f"{endpoint.url}: {exc}") from None
    return client
