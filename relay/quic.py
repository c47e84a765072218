"""Thin asyncio adapter: UDP sockets + timers around aioquic's QuicConnection and our sans-I/O MoqtSession.

Everything protocol-shaped lives in `relay.moqt.session`; this module only moves datagrams, arms timers and turns
session events into awaitables for applications (`relay pub`, `relay sub`, tests) or hands them to the relay.

Client API (used by relay/tools and the end-to-end tests)::

    client = await connect("moqt://127.0.0.1:4443", ca="STATE/ca.pem")      # or insecure=True
    sub = await client.subscribe(("live", "cam1"), "video")                   # raises RequestFailed
    async for obj in sub:                                                     # ReceivedObject; ends on PUBLISH_DONE
        ...
    await client.unsubscribe(sub)

    await client.publish_namespace(("live", "cam1"))                          # raises RequestFailed
    track = client.publish_track(("live", "cam1"), "video")                   # answers SUBSCRIBEs for it
    await track.wait_subscribed()
    track.send_datagram(group_id=0, object_id=0, payload=b"...", priority=0)
    stream = track.open_subgroup(group_id=1, subgroup_id=0, priority=0)
    stream.send(object_id=0, payload=b"...")
    stream.end()                                                              # FIN (or stream.reset(code))
    track.end()                                                               # PUBLISH_DONE(TRACK_ENDED)
    await client.close()

Namespaces and names may be given as str or bytes; they go on the wire as UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.logger import QuicFileLogger

from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import (
    ALPN,
    DEFAULT_MAX_REQUEST_ID,
    ControlMessageReceived,
    DataStreamData,
    DataStreamOpened,
    DataStreamReset,
    MoqtEvent,
    MoqtSession,
    ObjectReceived,
    SessionClosed,
    SessionReady,
)

log = logging.getLogger("relay.quic")
DEFAULT_PORT = 4443
MAX_DATAGRAM_FRAME_SIZE = 65536  # RFC 9221 transport parameter: we accept any datagram that fits a packet


def make_configuration(
    *,
    is_client: bool,
    ca: str | None = None,
    insecure: bool = False,
    cert: str | None = None,
    key: str | None = None,
    qlog_dir: str | None = None,
    server_name: str | None = None,
    idle_timeout: float = 30.0,
) -> QuicConfiguration:
    """QUIC settings every MoQT endpoint here shares: ALPN moq-00, DATAGRAM on, optional qlog per connection."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        idle_timeout=idle_timeout,
        server_name=server_name,
        max_data=16 * 1024 * 1024,
        max_stream_data=4 * 1024 * 1024,
    )
    if qlog_dir:
        os.makedirs(qlog_dir, exist_ok=True)
        config.quic_logger = QuicFileLogger(qlog_dir)
    if is_client:
        if insecure:
            config.verify_mode = ssl.CERT_NONE
        elif ca:
            config.load_verify_locations(cafile=ca)
    elif cert and key:
        config.load_cert_chain(cert, key)
    return config


class SessionHandler(Protocol):
    """Who consumes a connection's MoQT events (the relay, or a MoqtClient)."""

    def session_event(self, conn: MoqtConnection, event: MoqtEvent) -> None: ...


@dataclass
class ConnectionHooks:
    """Seams for a HAL: called on a new connection, once 1-RTT keys exist (handshake done), and when it is gone.

    A NIC that does packet protection installs keys in `keys_available` (read them from `conn.quic`)."""

    connection_made: Callable[[MoqtConnection], None] = lambda conn: None
    keys_available: Callable[[MoqtConnection], None] = lambda conn: None
    connection_lost: Callable[[MoqtConnection], None] = lambda conn: None
    # around every received datagram: the kernel fast path registers the packets it sent before aioquic reads an
    # ACK for them (DESIGN invariant 2), and exports what the ACK changed afterwards
    datagram_arriving: Callable[[MoqtConnection], None] = lambda conn: None
    datagram_handled: Callable[[MoqtConnection], None] = lambda conn: None


class MoqtConnection(QuicConnectionProtocol):
    """One QUIC connection carrying one MoQT session; feeds the session and hands its events to a handler."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        handler: SessionHandler | None = None,
        hooks: ConnectionHooks | None = None,
        max_request_id: int = DEFAULT_MAX_REQUEST_ID,
        path: bytes | None = None,
        decode_objects: bool = False,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.session = MoqtSession(
            quic, max_request_id=max_request_id, path=path, decode_objects=decode_objects
        )
        self.session.on_output = self._transmit_soon
        self.session.ordered_output = True  # transmit() applies the send order
        self.handler = handler
        self.hooks = hooks or ConnectionHooks()
        self.hooks.connection_made(self)

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        try:
            if isinstance(event, qe.HandshakeCompleted):
                self.hooks.keys_available(self)
            self.session.handle_quic_event(event)
            self.drain()
            if isinstance(event, qe.ConnectionTerminated):
                self.hooks.connection_lost(self)
        except Exception:
            # A bug met by one session must not escape into the shared server socket (asyncio would close it and
            # every other session with it): log it and close this session with INTERNAL_ERROR.
            log.exception("internal error on connection %s", self._quic.host_cid.hex())
            if not self.session.closed:
                self.session.close(E.SessionErrorCode.INTERNAL_ERROR, "internal error")
                with contextlib.suppress(Exception):
                    self.drain()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.hooks.datagram_arriving(self)
        super().datagram_received(data, addr)
        if not self.session.closed:
            self.session.check_peer_closed()
            self.drain()
        self.hooks.datagram_handled(self)

    def rearm_timer(self) -> None:
        """Re-arm aioquic's timer after packets entered its sent history from outside (kernel registration),
        without building packets (what `transmit` would also do)."""
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def drain(self) -> None:
        """Hand every queued session event to the handler (also after local verbs that queue events)."""
        session, handler = self.session, self.handler
        while (ev := session.next_event()) is not None:
            if handler is not None:
                handler.session_event(self, ev)

    def transmit(self) -> None:
        self.session.apply_send_order()
        super().transmit()

    def close_session(self, error_code: int, reason: str) -> None:
        self.session.close(error_code, reason)
        self.drain()
        self.transmit()


# --- server ---------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    """A listening MoQT endpoint: the real bound address (port 0 resolved) and a way to stop."""

    quic_server: QuicServer
    host: str
    port: int
    connections: set[MoqtConnection] = field(default_factory=set)

    def close(self) -> None:
        self.quic_server.close()


async def serve_moqt(
    host: str,
    port: int,
    *,
    configuration: QuicConfiguration,
    handler: SessionHandler,
    hooks: ConnectionHooks | None = None,
    max_request_id: int = DEFAULT_MAX_REQUEST_ID,
) -> Server:
    """Listen for MoQT over raw QUIC; every connection's events go to `handler`."""
    hooks = hooks or ConnectionHooks()
    server_ref: list[Server] = []

    def made(conn: MoqtConnection) -> None:
        if server_ref:
            server_ref[0].connections.add(conn)
        hooks.connection_made(conn)

    def lost(conn: MoqtConnection) -> None:
        if server_ref:
            server_ref[0].connections.discard(conn)
        hooks.connection_lost(conn)

    tracked = dataclasses.replace(hooks, connection_made=made, connection_lost=lost)

    def create(quic: QuicConnection, stream_handler: Any = None) -> MoqtConnection:
        return MoqtConnection(
            quic, stream_handler, handler=handler, hooks=tracked, max_request_id=max_request_id
        )

    quic_server = await serve(host, port, configuration=configuration, create_protocol=create)
    transport = cast(asyncio.DatagramTransport, quic_server._transport)
    sockname = transport.get_extra_info("sockname")
    server = Server(quic_server, host, int(sockname[1]))
    server_ref.append(server)
    return server


# --- client ---------------------------------------------------------------------------------------------------------


class SessionFailed(ConnectionError):
    """The MoQT session could not be set up, or was closed; carries the session error code (section 13.1.1)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"MoQT session closed: code {code:#x} {reason}")
        self.code = code
        self.reason = reason


class RequestFailed(Exception):
    """A SUBSCRIBE / PUBLISH_NAMESPACE was answered with an error (code from the *_ERROR message)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"request failed: code {code:#x} {reason}")
        self.code = code
        self.reason = reason


def _field(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def to_namespace(ns: str | bytes | Sequence[str | bytes]) -> M.Namespace:
    """('live', 'cam1'), 'live/cam1' or b'live' -> a tuple of bytes fields (section 2.4.1)."""
    if isinstance(ns, str | bytes):
        parts = [p for p in _field(ns).split(b"/") if p]
        return tuple(parts)
    return tuple(_field(p) for p in ns)


@dataclass(frozen=True)
class ReceivedObject:
    """One object as a subscriber sees it; received_at is wall-clock seconds (latency = received_at - sent)."""

    group_id: int
    subgroup_id: int | None
    object_id: int
    publisher_priority: int
    payload: bytes
    status: int
    extensions: O.Extensions
    via_datagram: bool
    received_at: float
    end_of_group: bool = False


class Subscription:
    """A live subscription: iterate it (async) for objects, or set `on_object` to get them by callback."""

    def __init__(self, client: MoqtClient, request_id: int, namespace: M.Namespace, track: bytes) -> None:
        self.client = client
        self.request_id = request_id
        self.namespace = namespace
        self.track = track
        self.track_alias: int | None = None
        self.ok: M.SubscribeOk | None = None
        self.done: M.PublishDone | None = None
        self.on_object: Callable[[ReceivedObject], None] | None = None
        self._queue: asyncio.Queue[ReceivedObject | None] = asyncio.Queue()
        self._open_streams: set[int] = set()
        self._streams_seen = 0
        self._finished = False

    def __aiter__(self) -> AsyncIterator[ReceivedObject]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ReceivedObject]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def next(self, timeout: float | None = None) -> ReceivedObject | None:
        """The next object, or None when the subscription ended (TimeoutError after `timeout`)."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._queue.put_nowait(None)  # stay ended for later calls
        return item

    def _deliver(self, obj: ReceivedObject) -> None:
        if self.on_object is not None:
            self.on_object(obj)
        else:
            self._queue.put_nowait(obj)

    def _maybe_finish(self) -> None:
        """End after PUBLISH_DONE once every announced stream has finished (section 9.12 Stream Count)."""
        if self._finished or self.done is None:
            return
        if not self._open_streams and self._streams_seen >= self.done.stream_count:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._queue.put_nowait(None)


@dataclass
class _TrackSubscriber:
    request_id: int
    track_alias: int
    forward: bool
    subscriber_priority: int
    streams: int = 0


class SubgroupStream:
    """A publisher's subgroup: one QUIC stream per current subscriber, the same objects on each."""

    def __init__(self, track: PublishedTrack, header: O.SubgroupHeader) -> None:
        self.track = track
        self.header = header
        session = track.client.session
        self._streams: list[int] = []
        for sub in track._subscribers.values():
            if not sub.forward:
                continue
            hdr = O.SubgroupHeader(
                sub.track_alias, header.group_id, header.publisher_priority, header.subgroup_id_mode,
                header.subgroup_id, header.extensions_present, header.end_of_group,
            )  # fmt: skip
            self._streams.append(session.open_subgroup(hdr, sub.subscriber_priority))
            sub.streams += 1

    def send(
        self,
        object_id: int,
        payload: bytes,
        *,
        extensions: O.Extensions = (),
        status: int = O.ObjectStatus.NORMAL,
        end: bool = False,
    ) -> None:
        """Send one object (ids must increase on a stream, section 10.4.2); end=True also FINs the stream."""
        obj = O.SubgroupObject(object_id, payload, extensions, status)
        session = self.track.client.session
        for sid in self._streams:
            session.send_subgroup_object(sid, obj, end_stream=end)

    def end(self) -> None:
        session = self.track.client.session
        for sid in self._streams:
            session.end_subgroup(sid)

    def reset(self, code: int = E.ResetStreamCode.CANCELLED) -> None:
        session = self.track.client.session
        for sid in self._streams:
            session.reset_data_stream(sid, code)


class PublishedTrack:
    """A track this client serves: SUBSCRIBEs for it are accepted with a fresh alias, objects go to each subscriber."""

    def __init__(self, client: MoqtClient, namespace: M.Namespace, name: bytes) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self._subscribers: dict[int, _TrackSubscriber] = {}
        self._subscribed = asyncio.Event()
        self.largest: M.Location | None = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def wait_subscribed(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    def send_datagram(
        self,
        group_id: int,
        object_id: int,
        payload: bytes,
        priority: int = 128,
        *,
        extensions: O.Extensions = (),
        status: int = O.ObjectStatus.NORMAL,
        end_of_group: bool = False,
    ) -> int:
        """Send one object as an OBJECT_DATAGRAM to every forwarding subscriber; returns the copies sent."""
        self.largest = M.Location(group_id, object_id)
        sent = 0
        for sub in self._subscribers.values():
            if sub.forward:
                obj = O.ObjectDatagram(
                    sub.track_alias, group_id, object_id, priority, payload, extensions, status, end_of_group
                )
                self.client.session.send_object_datagram(obj, sub.subscriber_priority)
                sent += 1
        return sent

    def open_subgroup(
        self, group_id: int, subgroup_id: int = 0, priority: int = 128, *, end_of_group: bool = False
    ) -> SubgroupStream:
        """Open a subgroup stream (explicit Subgroup ID header) towards every forwarding subscriber."""
        header = O.SubgroupHeader(
            0, group_id, priority, O.SubgroupIdMode.EXPLICIT, subgroup_id, False, end_of_group
        )
        return SubgroupStream(self, header)

    def end(self, status: int = E.PublishDoneCode.TRACK_ENDED, reason: str = "track ended") -> None:
        """PUBLISH_DONE to every subscriber (section 9.12), with the number of streams each was sent."""
        for rid, sub in list(self._subscribers.items()):
            self.client.session.publish_done(rid, status, sub.streams, reason)
            del self._subscribers[rid]


class MoqtClient:
    """The client side of a session, both roles: subscriber and publisher. Build it with `connect()`."""

    def __init__(self, conn: MoqtConnection, transport: asyncio.DatagramTransport) -> None:
        self.conn = conn
        self.session = conn.session
        self._transport = transport
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[SessionReady] = loop.create_future()
        self.closed: asyncio.Future[SessionClosed] = loop.create_future()
        self.goaway = asyncio.Event()
        self.goaway_uri: str | None = None
        self._pending: dict[int, asyncio.Future[M.ControlMessage]] = {}
        self._subs: dict[int, Subscription] = {}
        self._subs_by_alias: dict[int, Subscription] = {}
        self._early: dict[int, list[ReceivedObject]] = {}
        self._stream_alias: dict[int, int] = {}
        self._tracks: dict[tuple[M.Namespace, bytes], PublishedTrack] = {}
        self._track_subs: dict[int, PublishedTrack] = {}
        self._next_alias = 1
        self.on_message: Callable[[M.ControlMessage], None] | None = None

    # -- subscriber --

    async def subscribe(
        self,
        namespace: str | bytes | Sequence[str | bytes],
        track: str | bytes,
        *,
        priority: int = 128,
        forward: bool = True,
        group_order: int = M.GroupOrder.PUBLISHER,
        filter_type: int = M.FilterType.LARGEST_OBJECT,
        start_location: M.Location | None = None,
        end_group: int | None = None,
        timeout: float = 5.0,
    ) -> Subscription:
        """SUBSCRIBE and wait for the answer: a Subscription on SUBSCRIBE_OK, RequestFailed on SUBSCRIBE_ERROR."""
        ns, name = to_namespace(namespace), _field(track)
        rid = self.session.subscribe(
            ns, name, subscriber_priority=priority, forward=forward, group_order=group_order,
            filter_type=filter_type, start_location=start_location, end_group=end_group,
        )  # fmt: skip
        sub = Subscription(self, rid, ns, name)
        self._subs[rid] = sub
        try:
            answer = await self._await_answer(rid, timeout)
        except BaseException:
            self._subs.pop(rid, None)
            raise
        if isinstance(answer, M.SubscribeError):
            self._subs.pop(rid, None)
            raise RequestFailed(answer.error_code, answer.reason)
        assert isinstance(answer, M.SubscribeOk)
        sub.ok = answer
        sub.track_alias = answer.track_alias
        self._subs_by_alias[answer.track_alias] = sub
        for obj in self._early.pop(answer.track_alias, []):
            sub._deliver(obj)
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """UNSUBSCRIBE; the subscription's iterator ends at once."""
        if not self.session.closed:
            self.session.unsubscribe(sub.request_id)
        self._subs.pop(sub.request_id, None)
        if sub.track_alias is not None:
            self._subs_by_alias.pop(sub.track_alias, None)
        sub._finish()

    # -- publisher --

    async def publish_namespace(
        self, namespace: str | bytes | Sequence[str | bytes], timeout: float = 5.0
    ) -> None:
        """PUBLISH_NAMESPACE and wait for PUBLISH_NAMESPACE_OK (RequestFailed on _ERROR)."""
        rid = self.session.publish_namespace(to_namespace(namespace))
        answer = await self._await_answer(rid, timeout)
        if isinstance(answer, M.PublishNamespaceError):
            raise RequestFailed(answer.error_code, answer.reason)

    def publish_namespace_done(self, namespace: str | bytes | Sequence[str | bytes]) -> None:
        self.session.publish_namespace_done(to_namespace(namespace))

    def publish_track(
        self, namespace: str | bytes | Sequence[str | bytes], track: str | bytes
    ) -> PublishedTrack:
        """Serve a track: SUBSCRIBEs naming it get SUBSCRIBE_OK; others get TRACK_DOES_NOT_EXIST."""
        key = (to_namespace(namespace), _field(track))
        pt = self._tracks.get(key)
        if pt is None:
            pt = self._tracks[key] = PublishedTrack(self, *key)
        return pt

    # -- lifecycle --

    async def close(self, code: int = E.SessionErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the session and the socket; waits (briefly) for the CONNECTION_CLOSE to go out."""
        if not self.session.closed:
            # aioquic drops unsent stream data on close: let the last control messages (PUBLISH_DONE...) land
            self.conn.transmit()
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(self.conn.ping(), 1.0)
        if not self.session.closed:
            self.conn.close_session(code, reason)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.conn.wait_closed(), 1.0)
        self._transport.close()

    async def wait_closed(self) -> SessionClosed:
        return await asyncio.shield(self.closed)

    # -- plumbing --

    async def _await_answer(self, rid: int, timeout: float) -> M.ControlMessage:
        fut: asyncio.Future[M.ControlMessage] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            waiting: set[asyncio.Future[Any]] = {fut, self.closed}
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pending.pop(rid, None)
        if fut in done:
            return fut.result()
        if self.closed.done():
            c = self.closed.result()
            raise SessionFailed(c.error_code, c.reason)
        raise TimeoutError(f"no answer to request {rid} within {timeout}s")

    def session_event(self, conn: MoqtConnection, event: MoqtEvent) -> None:
        if isinstance(event, ObjectReceived):
            self._on_object(event)
        elif isinstance(event, ControlMessageReceived):
            self._on_control(event.message)
        elif isinstance(event, DataStreamOpened):
            self._stream_alias[event.stream_id] = event.track_alias
            sub = self._subs_by_alias.get(event.track_alias)
            if sub is not None:
                sub._streams_seen += 1
                if event.end_stream:
                    sub._maybe_finish()
                else:
                    sub._open_streams.add(event.stream_id)
        elif isinstance(event, DataStreamData | DataStreamReset):
            if isinstance(event, DataStreamData) and not event.end_stream:
                return
            alias = self._stream_alias.pop(event.stream_id, None)
            sub = self._subs_by_alias.get(alias) if alias is not None else None
            if sub is not None:
                sub._open_streams.discard(event.stream_id)
                sub._maybe_finish()
        elif isinstance(event, SessionReady):
            if not self.ready.done():
                self.ready.set_result(event)
        elif isinstance(event, SessionClosed):
            if not self.closed.done():
                self.closed.set_result(event)
            if not self.ready.done():
                self.ready.set_exception(SessionFailed(event.error_code, event.reason))
            for sub in self._subs.values():
                sub._finish()

    def _on_object(self, ev: ObjectReceived) -> None:
        obj = ReceivedObject(
            ev.group_id, ev.subgroup_id, ev.object_id, ev.publisher_priority, ev.payload, ev.status,
            ev.extensions, ev.stream_id is None, time.time(), ev.end_of_group,
        )  # fmt: skip
        sub = self._subs_by_alias.get(ev.track_alias)
        if sub is not None:
            sub._deliver(obj)
        else:  # objects may overtake SUBSCRIBE_OK (other streams); keep a few until it arrives
            if ev.track_alias in self._early or len(self._early) < 16:
                early = self._early.setdefault(ev.track_alias, [])
                if len(early) < 256:
                    early.append(obj)

    def _on_control(self, msg: M.ControlMessage) -> None:
        rid = getattr(msg, "request_id", None)
        if isinstance(msg, M.SubscribeOk | M.SubscribeError | M.PublishNamespaceOk | M.PublishNamespaceError):
            fut = self._pending.get(cast(int, rid))
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, M.PublishDone):
            sub = self._subs.get(msg.request_id)
            if sub is not None:
                sub.done = msg
                sub._maybe_finish()
        elif isinstance(msg, M.Subscribe):
            self._on_subscribe(msg)
        elif isinstance(msg, M.Unsubscribe):
            pt = self._track_subs.pop(msg.request_id, None)
            if pt is not None:
                pt._subscribers.pop(msg.request_id, None)
                if not pt._subscribers:
                    pt._subscribed.clear()
        elif isinstance(msg, M.GoAway):
            self.goaway_uri = msg.new_session_uri
            self.goaway.set()
        elif isinstance(msg, M.Fetch | M.TrackStatus | M.Publish | M.SubscribeNamespace | M.PublishNamespace):
            self.session.reject_request(
                msg, E.SubscribeErrorCode.NOT_SUPPORTED, "not supported by this client"
            )
        if self.on_message is not None:
            self.on_message(msg)

    def _on_subscribe(self, msg: M.Subscribe) -> None:
        pt = self._tracks.get((msg.track_namespace, msg.track_name))
        if pt is None:
            self.session.subscribe_error(
                msg.request_id, E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no such track"
            )
            return
        alias = self._next_alias
        self._next_alias += 1
        self.session.subscribe_ok(msg.request_id, alias, largest_location=pt.largest)
        pt._subscribers[msg.request_id] = _TrackSubscriber(
            msg.request_id, alias, msg.forward, msg.subscriber_priority
        )
        self._track_subs[msg.request_id] = pt
        pt._subscribed.set()


def parse_url(url: str) -> tuple[str, int, bytes | None]:
    """moqt://host:port/path -> (host, port, path or None); ValueError says what a valid URL looks like."""
    parts = urlsplit(url)
    if parts.scheme != "moqt" or not parts.hostname:
        raise ValueError(f"bad URL {url!r}: expected moqt://HOST:PORT[/PATH]")
    path = parts.path.encode() if parts.path not in ("", "/") else None
    return parts.hostname, parts.port or DEFAULT_PORT, path


async def connect(
    url: str,
    *,
    ca: str | None = None,
    insecure: bool = False,
    qlog_dir: str | None = None,
    max_request_id: int = DEFAULT_MAX_REQUEST_ID,
    timeout: float = 5.0,
) -> MoqtClient:
    """Connect over raw QUIC and complete MoQT setup; SessionFailed / TimeoutError when that does not happen."""
    host, port, path = parse_url(url)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    config = make_configuration(is_client=True, ca=ca, insecure=insecure, qlog_dir=qlog_dir, server_name=host)
    quic = QuicConnection(configuration=config)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: MoqtConnection(quic, max_request_id=max_request_id, path=path, decode_objects=True),
        family=family,
        local_addr=("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0),
    )
    conn = cast(MoqtConnection, proto)
    client = MoqtClient(conn, cast(asyncio.DatagramTransport, transport))
    conn.handler = client
    conn.connect(cast(Any, addr))
    try:
        await asyncio.wait_for(asyncio.shield(client.ready), timeout)
    except BaseException:
        if not conn.session.closed:
            conn.close_session(E.SessionErrorCode.NO_ERROR, "setup abandoned")
        transport.close()
        raise
    return client
