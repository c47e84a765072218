"""Sans-I/O MoQT draft-14 session endpoint on top of aioquic's (also sans-I/O) QuicConnection.

Feed it every QUIC event (`handle_quic_event`), call its verbs (`subscribe`, `subscribe_ok`, `send_datagram`, ...),
take MoQT events out (`next_event`) and send what `datagrams_to_send(now)` returns. It owns the draft-14 session
rules so neither the relay nor a client can forget one:

- raw QUIC, ALPN `moq-00`, QUIC DATAGRAM must be negotiated (section 3.1 / 10.3);
- the control stream is the client's first bidirectional stream; another bidirectional stream, or the control
  stream ending, is a PROTOCOL_VIOLATION (section 3.3);
- CLIENT_SETUP / SERVER_SETUP first, version draft-14 0xff00000e, else VERSION_NEGOTIATION_FAILED (section 9.3);
- request ids: client even, server odd, each new one exactly 2 above the previous (INVALID_REQUEST_ID), below
  MAX_REQUEST_ID (TOO_MANY_REQUESTS); we grant more as the peer uses them, and say REQUESTS_BLOCKED when the peer's
  limit stops us (section 9.1, 9.5, 9.6);
- responses must answer a pending request of the right kind (state table in `relay.moqt.state`);
- GOAWAY (section 9.4); any MoqtError closes the QUIC connection with the error's wire code.

The data plane is handed up raw (bytes plus the Track Alias position) so a relay forwards without re-encoding; with
`decode_objects=True` (clients) the session also parses objects into `ObjectReceived` events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection

from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.state import Input, RequestKind, RequestState, advance
from relay.moqt.varint import NeedMoreData, decode_varint

ALPN = "moq-00"  # section 3.1 (raw QUIC)
DEFAULT_MAX_REQUEST_ID = 100

# --- events ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionReady:
    """Setup completed (section 9.3): requests may flow."""

    version: int
    peer_max_request_id: int
    path: bytes | None = None


@dataclass(frozen=True)
class ControlMessageReceived:
    """A control message that passed every session rule (setup messages are not surfaced)."""

    message: M.ControlMessage


@dataclass(frozen=True)
class DatagramReceived:
    """An OBJECT_DATAGRAM, raw (section 10.3.1); the alias sits at data[alias_offset:alias_offset+alias_length]."""

    data: bytes
    track_alias: int
    alias_offset: int
    alias_length: int
    publisher_priority: int


@dataclass(frozen=True)
class DataStreamOpened:
    """The first bytes of a subgroup stream, once its header's alias and priority are readable (section 10.4.2).

    `data` holds every byte received so far, from stream offset 0 (header included)."""

    stream_id: int
    track_alias: int
    alias_offset: int
    alias_length: int
    publisher_priority: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True)
class DataStreamData:
    """More bytes of an opened subgroup stream; end_stream = FIN."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True)
class DataStreamReset:
    """The peer reset an incoming data stream (RESET_STREAM with its code)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class DataStreamStopped:
    """The peer asked us to stop sending on one of our data streams (STOP_SENDING); we reset it already."""

    stream_id: int
    error_code: int


@dataclass(frozen=True)
class ObjectReceived:
    """A decoded object (decode_objects=True only); stream_id None = it came as a datagram."""

    track_alias: int
    group_id: int
    subgroup_id: int | None
    object_id: int
    publisher_priority: int
    payload: bytes
    status: int
    extensions: O.Extensions
    stream_id: int | None
    end_of_group: bool = False


@dataclass(frozen=True)
class FetchStreamOpened:
    """A FETCH_HEADER stream (section 10.4.4) answering a FETCH we sent; `data` = the bytes after the header.
    Later bytes come as DataStreamData, a reset as DataStreamReset (same stream id)."""

    stream_id: int
    request_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True)
class FetchObjectReceived:
    """One object of a fetch stream (decode_objects=True only)."""

    request_id: int
    stream_id: int
    obj: O.FetchObject


@dataclass(frozen=True)
class SessionClosed:
    """The session is over: `by_peer` says who closed it; error_code is the MoQT session code (section 13.1.1)."""

    error_code: int
    reason: str
    by_peer: bool


MoqtEvent = (
    SessionReady | ControlMessageReceived | DatagramReceived | DataStreamOpened | DataStreamData | DataStreamReset
    | DataStreamStopped | ObjectReceived | SessionClosed | FetchStreamOpened | FetchObjectReceived
)  # fmt: skip


class RequestBlocked(Exception):
    """A local request cannot be sent now: the peer's MAX_REQUEST_ID is reached, or the peer sent GOAWAY."""


class SessionNotReady(Exception):
    """A verb was called before setup completed or after the session closed (a local bug, not the peer's)."""


# --- internals ------------------------------------------------------------------------------------------------------

_REQUEST_KINDS: dict[type, RequestKind] = {
    M.Subscribe: RequestKind.SUBSCRIBE,
    M.PublishNamespace: RequestKind.PUBLISH_NAMESPACE,
    M.TrackStatus: RequestKind.TRACK_STATUS,
    M.SubscribeNamespace: RequestKind.SUBSCRIBE_NAMESPACE,
    M.Fetch: RequestKind.FETCH,
    M.Publish: RequestKind.PUBLISH,
}
# response type -> (kind it answers, input)
_RESPONSES: dict[type, tuple[RequestKind, Input]] = {
    M.SubscribeOk: (RequestKind.SUBSCRIBE, Input.OK),
    M.SubscribeError: (RequestKind.SUBSCRIBE, Input.ERROR),
    M.PublishNamespaceOk: (RequestKind.PUBLISH_NAMESPACE, Input.OK),
    M.PublishNamespaceError: (RequestKind.PUBLISH_NAMESPACE, Input.ERROR),
    M.TrackStatusOk: (RequestKind.TRACK_STATUS, Input.OK),
    M.TrackStatusError: (RequestKind.TRACK_STATUS, Input.ERROR),
    M.SubscribeNamespaceOk: (RequestKind.SUBSCRIBE_NAMESPACE, Input.OK),
    M.SubscribeNamespaceError: (RequestKind.SUBSCRIBE_NAMESPACE, Input.ERROR),
    M.FetchOk: (RequestKind.FETCH, Input.OK),
    M.FetchError: (RequestKind.FETCH, Input.ERROR),
    M.PublishOk: (RequestKind.PUBLISH, Input.OK),
    M.PublishError: (RequestKind.PUBLISH, Input.ERROR),
}


@dataclass
class _Request:
    kind: RequestKind
    state: RequestState
    message: M.ControlMessage


@dataclass
class _InStream:
    """An incoming unidirectional stream: buffered until the header's alias and priority are readable."""

    buf: bytearray = field(default_factory=bytearray)
    opened: bool = False
    ignored: bool = False
    parser: O.DataStreamParser | None = None
    track_alias: int = 0
    fetch_request: int | None = None  # a FETCH_HEADER stream: the request id of our FETCH


def _is_bidi(stream_id: int) -> bool:
    return stream_id & 2 == 0  # RFC 9000 section 2.1


def _is_client_initiated(stream_id: int) -> bool:
    return stream_id & 1 == 0


MAX_STREAM_BACKLOG = 2 << 20  # bytes aioquic may hold for one data stream we send (unsent + unacknowledged)
MAX_SESSION_BACKLOG = 8 << 20  # bytes of all our data streams together; more: reset them at the next new stream
STALL_SECONDS = 2.0  # a stream over a bound is reset only after its peer acknowledged nothing of it this long
MAX_DATAGRAM_BACKLOG = 1024  # OBJECT_DATAGRAMs waiting for congestion window; older ones are dropped


class MoqtSession:
    """One MoQT session over one QuicConnection, usable as client or server (the QUIC role decides)."""

    def __init__(
        self,
        quic: QuicConnection,
        *,
        max_request_id: int = DEFAULT_MAX_REQUEST_ID,
        path: bytes | None = None,
        decode_objects: bool = False,
    ) -> None:
        self.quic = quic
        self.is_client: bool = quic.configuration.is_client
        self.decode_objects = decode_objects
        self.path = path
        self.version: int | None = None
        self.ready = False
        self.closed = False
        self.goaway_received: str | None = None
        self.goaway_sent = False
        #: called whenever the session queued output, so an adapter can schedule a transmit
        self.on_output: Callable[[], None] | None = None
        #: True when the adapter calls `apply_send_order()` (or `datagrams_to_send`) before every transmit; only
        #: then are datagrams held back to be sorted, so an adapter that does not know about it loses nothing
        self.ordered_output = False
        self._events: deque[MoqtEvent] = deque()
        self._control_id: int | None = None
        self._control_parser = M.ControlStreamParser()
        # request ids (section 9.1): ours and the peer's
        self._window = max_request_id
        self._local_max_request_id = max_request_id  # the peer may use ids < this
        self._peer_max_request_id = 0  # we may use ids < this
        self._blocked_sent_at = -1
        self._next_request_id = 0 if self.is_client else 1
        self._next_peer_request_id = 1 if self.is_client else 0
        self._sent: dict[int, _Request] = {}
        self._received: dict[int, _Request] = {}
        self._inbound_aliases: dict[int, int] = {}  # alias -> our SUBSCRIBE's request id
        self._in_streams: dict[int, _InStream] = {}
        self._writers: dict[int, O.SubgroupStreamWriter] = {}
        # send order (lower first): stream id -> key, plus datagrams waiting for the next transmit
        self._stream_order: dict[int, tuple[int, int]] = {}
        self._order_keys: set[tuple[int, int]] = set()  # distinct keys: one key means nothing to sort
        self._datagram_batch: list[tuple[tuple[int, int], int, bytes]] = []
        self._datagram_seq = 0
        # flow-control stall policy (send_stream_data, send_datagram); counters for tests and stats
        self.max_stream_backlog = MAX_STREAM_BACKLOG
        self.max_datagram_backlog = MAX_DATAGRAM_BACKLOG
        self.max_session_backlog = MAX_SESSION_BACKLOG
        self.stall_resets = 0
        self.datagrams_dropped = 0
        self._stalled: set[int] = set()
        self._progress: dict[int, tuple[int, float]] = {}  # stream over a bound -> (acked offset, since when)
        self.stall_seconds = STALL_SECONDS
        self.clock: Callable[[], float] = time.monotonic

    # --- feeding ----------------------------------------------------------------------------------------------------

    def handle_quic_event(self, event: qe.QuicEvent) -> None:
        """Feed one event from `quic.next_event()`; protocol errors close the session with their wire code."""
        if self.closed:
            return
        try:
            self._dispatch(event)
        except E.MoqtError as exc:
            self.close(int(exc.code), exc.reason or type(exc).__name__)

    def next_event(self) -> MoqtEvent | None:
        return self._events.popleft() if self._events else None

    def pump(self) -> None:
        """Move every pending QUIC event of the connection into the session (adapters call this after I/O)."""
        while (event := self.quic.next_event()) is not None:
            self.handle_quic_event(event)
        self.check_peer_closed()

    def check_peer_closed(self) -> None:
        """Report a peer's CONNECTION_CLOSE at once: aioquic emits ConnectionTerminated only after draining
        (3 PTO, RFC 9000 section 10.2), and a relay must stop forwarding to a closed session long before that."""
        close = getattr(self.quic, "_close_event", None)
        if close is not None and not self.closed:
            self.closed = True
            self._events.append(SessionClosed(close.error_code, close.reason_phrase, by_peer=True))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        """The QUIC datagrams to put on the wire, after applying the MoQT send order to pending data."""
        self.ordered_output = True
        self.apply_send_order()
        return self.quic.datagrams_to_send(now=now)

    # --- QUIC event dispatch ----------------------------------------------------------------------------------------

    def _dispatch(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.StreamDataReceived):
            sid = event.stream_id
            if _is_bidi(sid):
                self._on_control_bytes(sid, event.data, event.end_stream)
            elif _is_client_initiated(sid) != self.is_client:
                self._on_data_stream(sid, event.data, event.end_stream)
            else:  # cannot happen with aioquic (it rejects it), kept for other stacks
                raise E.ProtocolViolation("data on our own unidirectional stream")
        elif isinstance(event, qe.DatagramFrameReceived):
            self._on_datagram(event.data)
        elif isinstance(event, qe.StreamReset):
            if event.stream_id == self._control_id:
                raise E.ProtocolViolation("control stream reset")
            st = self._in_streams.pop(event.stream_id, None)
            if st is not None and st.opened and not st.ignored:
                self._events.append(DataStreamReset(event.stream_id, event.error_code))
        elif isinstance(event, qe.StopSendingReceived):
            if event.stream_id == self._control_id:
                raise E.ProtocolViolation("STOP_SENDING on the control stream")
            if self._writers.pop(event.stream_id, None) is not None or event.stream_id in self._stream_order:
                self.quic.reset_stream(event.stream_id, event.error_code)
                self._wrote()
            self._events.append(DataStreamStopped(event.stream_id, event.error_code))
        elif isinstance(event, qe.HandshakeCompleted):
            self._on_handshake(event)
        elif isinstance(event, qe.ConnectionTerminated):
            self.closed = True
            self._events.append(SessionClosed(event.error_code, event.reason_phrase, by_peer=True))

    def _on_handshake(self, event: qe.HandshakeCompleted) -> None:
        if event.alpn_protocol != ALPN:
            raise E.ProtocolViolation(f"ALPN {event.alpn_protocol!r}, expected {ALPN!r}")
        if getattr(self.quic, "_remote_max_datagram_frame_size", None) is None:
            raise E.ProtocolViolation("the peer did not negotiate QUIC DATAGRAM (RFC 9221)")
        if self.is_client:
            self._control_id = self.quic.get_next_available_stream_id(is_unidirectional=False)
            params: list[M.Parameter] = [(M.SetupParameter.MAX_REQUEST_ID, self._local_max_request_id)]
            if self.path is not None:
                params.append((M.SetupParameter.PATH, self.path))
            self._send_control(M.ClientSetup(M.SUPPORTED_VERSIONS, tuple(params)))

    # --- control stream ---------------------------------------------------------------------------------------------

    def _on_control_bytes(self, sid: int, data: bytes, fin: bool) -> None:
        if self._control_id is None and not self.is_client and _is_client_initiated(sid):
            self._control_id = sid
        if sid != self._control_id:
            raise E.ProtocolViolation("only one bidirectional stream (the control stream) is allowed")
        for msg in self._control_parser.feed(data):
            self._on_control(msg)
        if fin:
            raise E.ProtocolViolation("the control stream was closed")

    def _on_control(self, msg: M.ControlMessage) -> None:
        if not self.ready:
            self._on_setup(msg)
            return
        if isinstance(msg, M.ClientSetup | M.ServerSetup):
            raise E.ProtocolViolation("second setup message")
        kind = _REQUEST_KINDS.get(type(msg))
        if kind is not None:
            rid = msg.request_id  # type: ignore[union-attr]
            self._accept_peer_request_id(rid)
            self._received[rid] = _Request(kind, RequestState.PENDING, msg)
        elif type(msg) in _RESPONSES:
            self._on_response(msg)
        elif isinstance(msg, M.SubscribeUpdate):
            self._accept_peer_request_id(msg.request_id)
        elif isinstance(msg, M.Unsubscribe | M.FetchCancel):
            self._end_received(msg.request_id)
        elif isinstance(msg, M.PublishDone):
            self._end_sent(msg.request_id)
        elif isinstance(msg, M.PublishNamespaceDone):
            self._end_by_namespace(self._received, msg.track_namespace)
        elif isinstance(msg, M.PublishNamespaceCancel):
            self._end_by_namespace(self._sent, msg.track_namespace)
        elif isinstance(msg, M.MaxRequestId):
            if msg.request_id <= self._peer_max_request_id:
                raise E.ProtocolViolation("MAX_REQUEST_ID must increase (section 9.5)")
            self._peer_max_request_id = msg.request_id
        elif isinstance(msg, M.GoAway):
            if self.goaway_received is not None:
                raise E.ProtocolViolation("second GOAWAY")
            if not self.is_client and msg.new_session_uri:
                raise E.ProtocolViolation("GOAWAY from a client must not carry a URI (section 9.4)")
            self.goaway_received = msg.new_session_uri
        self._events.append(ControlMessageReceived(msg))

    def _on_setup(self, msg: M.ControlMessage) -> None:
        params: M.Parameters
        if not self.is_client and isinstance(msg, M.ClientSetup):
            if M.DRAFT_14 not in msg.supported_versions:
                offered = ", ".join(hex(v) for v in msg.supported_versions)
                raise E.VersionNegotiationFailed(f"no common version (offered {offered}, we speak draft-14)")
            params = msg.parameters
            path = M.get_parameter(params, M.SetupParameter.PATH)
            self.path = path if isinstance(path, bytes) else None
            self.version = M.DRAFT_14
            self._send_control(
                M.ServerSetup(M.DRAFT_14, ((M.SetupParameter.MAX_REQUEST_ID, self._local_max_request_id),))
            )
        elif self.is_client and isinstance(msg, M.ServerSetup):
            if msg.selected_version not in M.SUPPORTED_VERSIONS:
                raise E.VersionNegotiationFailed(
                    f"server selected {msg.selected_version:#x}, which we did not offer"
                )
            params = msg.parameters
            self.version = msg.selected_version
        else:
            raise E.ProtocolViolation(f"expected the peer's setup message first, got {type(msg).__name__}")
        peer_max = M.get_parameter(params, M.SetupParameter.MAX_REQUEST_ID)
        self._peer_max_request_id = peer_max if isinstance(peer_max, int) else 0
        self.ready = True
        self._events.append(SessionReady(self.version, self._peer_max_request_id, self.path))

    def _accept_peer_request_id(self, rid: int) -> None:
        """Section 9.1: parity by role, strictly the next id, below our MAX_REQUEST_ID; grant more as ids are used."""
        if rid % 2 != (1 if self.is_client else 0):
            raise E.InvalidRequestId(f"request id {rid} has the wrong parity for the peer's role")
        if rid >= self._local_max_request_id:
            raise E.TooManyRequests(f"request id {rid} >= MAX_REQUEST_ID {self._local_max_request_id}")
        if rid != self._next_peer_request_id:
            raise E.InvalidRequestId(f"request id {rid}, expected {self._next_peer_request_id}")
        self._next_peer_request_id = rid + 2
        if self._local_max_request_id - self._next_peer_request_id < self._window // 2:
            self._local_max_request_id = self._next_peer_request_id + self._window
            self._send_control(M.MaxRequestId(self._local_max_request_id))

    def _on_response(self, msg: M.ControlMessage) -> None:
        kind, step = _RESPONSES[type(msg)]
        rid: int = msg.request_id  # type: ignore[union-attr]
        req = self._sent.get(rid)
        if req is None or req.kind is not kind:
            raise E.ProtocolViolation(
                f"{type(msg).__name__} for request {rid}, which is not a pending {kind.value}"
            )
        if req.state is RequestState.CLOSED and kind is RequestKind.SUBSCRIBE:
            # We unsubscribed before the answer arrived (section 9.11): a late answer is legal, nothing to bind.
            return
        req.state = advance(req.state, step, kind.value)
        if isinstance(msg, M.SubscribeOk):
            if msg.track_alias in self._inbound_aliases:
                raise E.DuplicateTrackAlias(f"track alias {msg.track_alias} already in use")
            self._inbound_aliases[msg.track_alias] = rid

    def _end_received(self, rid: int) -> None:
        req = self._received.get(rid)
        if req is None:
            if rid >= self._next_peer_request_id:
                raise E.ProtocolViolation(f"request {rid} was never made")
            return
        if req.state is not RequestState.CLOSED:
            req.state = advance(req.state, Input.END)

    def _end_sent(self, rid: int) -> None:
        req = self._sent.get(rid)
        if req is None:
            raise E.ProtocolViolation(f"PUBLISH_DONE for request {rid}, which we never sent")
        if req.state is not RequestState.CLOSED:
            req.state = advance(req.state, Input.END)
        self._free_alias(rid)

    def _free_alias(self, rid: int) -> None:
        """The subscription is over: its alias is no longer "being used" (section 9.8), so the publisher (a relay
        that frees aliases) may hand it to a later subscription without a DUPLICATE_TRACK_ALIAS close."""
        for alias in [a for a, r in self._inbound_aliases.items() if r == rid]:
            del self._inbound_aliases[alias]

    @staticmethod
    def _end_by_namespace(table: dict[int, _Request], namespace: M.Namespace) -> None:
        for req in table.values():
            if (
                req.kind is RequestKind.PUBLISH_NAMESPACE
                and req.state is not RequestState.CLOSED
                and req.message.track_namespace == namespace  # type: ignore[union-attr]
            ):
                req.state = RequestState.CLOSED

    # --- data plane in ----------------------------------------------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        if self.decode_objects:
            d = O.decode_datagram(data)
            self._events.append(
                ObjectReceived(
                    d.track_alias,
                    d.group_id,
                    None,
                    d.object_id,
                    d.publisher_priority,
                    d.payload,
                    d.status,
                    d.extensions,
                    None,
                    d.end_of_group,
                )  # fmt: skip
            )
            return
        off = O.datagram_offsets(data)
        alias = _read_alias(data, off.track_alias_offset, off.track_alias_length)
        self._events.append(
            DatagramReceived(
                data, alias, off.track_alias_offset, off.track_alias_length, data[off.priority_offset]
            )
        )

    def _on_data_stream(self, sid: int, data: bytes, fin: bool) -> None:
        st = self._in_streams.get(sid)
        if st is None:
            st = self._in_streams[sid] = _InStream()
        if st.ignored:
            if fin:
                del self._in_streams[sid]
            return
        decode = self.decode_objects
        if st.opened:
            if decode:
                self._decode_stream(sid, st, data, fin)  # objects first, then the chunk / FIN marker
            self._events.append(DataStreamData(sid, data, fin))
        else:
            st.buf += data
            if not st.buf:
                if fin:
                    del self._in_streams[sid]
                return
            if st.buf[0] == O.FETCH_HEADER_TYPE:  # section 10.4.4: the answer to a FETCH of ours
                self._on_fetch_stream(sid, st, fin)
                return
            try:
                off = O.subgroup_header_offsets(st.buf)
                if len(st.buf) <= off.priority_offset:
                    raise NeedMoreData("publisher priority")
            except NeedMoreData:
                if fin:
                    raise E.ProtocolViolation("data stream ended inside its header") from None
                return
            st.opened = True
            st.track_alias = _read_alias(st.buf, off.track_alias_offset, off.track_alias_length)
            first = bytes(st.buf)
            st.buf = bytearray()
            self._events.append(
                DataStreamOpened(
                    sid,
                    st.track_alias,
                    off.track_alias_offset,
                    off.track_alias_length,
                    first[off.priority_offset],
                    first,
                    fin and not decode,
                )  # fmt: skip
            )
            if (
                decode
            ):  # decoded objects sit between the open and the FIN marker, so a FIN never overtakes them
                self._decode_stream(sid, st, first, fin)
                if fin:
                    self._events.append(DataStreamData(sid, b"", True))
        if fin:
            self._in_streams.pop(sid, None)

    def _on_fetch_stream(self, sid: int, st: _InStream, fin: bool) -> None:
        """FETCH_HEADER = type 0x05, Request ID (section 10.4.4): accepted for a FETCH we sent, else STOP_SENDING."""
        try:
            _, pos = decode_varint(st.buf, 0)
            request_id, used = decode_varint(st.buf, pos)
        except NeedMoreData:
            if fin:
                raise E.ProtocolViolation("fetch stream ended inside its header") from None
            return
        req = self._sent.get(request_id)
        if req is None or req.kind is not RequestKind.FETCH:
            st.ignored = True
            self.quic.stop_stream(sid, E.ResetStreamCode.CANCELLED)
            self._wrote()
            return
        st.opened, st.fetch_request = True, request_id
        rest = bytes(st.buf[used:])
        st.buf = bytearray()
        self._events.append(FetchStreamOpened(sid, request_id, rest, fin and not self.decode_objects))
        if self.decode_objects:
            self._decode_stream(sid, st, O.encode_fetch_header(O.FetchHeader(request_id)) + rest, fin)
            if fin:
                self._events.append(DataStreamData(sid, b"", True))
        if fin:
            self._in_streams.pop(sid, None)

    def _decode_stream(self, sid: int, st: _InStream, data: bytes, fin: bool) -> None:
        if st.parser is None:
            st.parser = O.DataStreamParser()
        for item in st.parser.feed(data):
            if isinstance(item, O.FetchObject) and st.fetch_request is not None:
                self._events.append(FetchObjectReceived(st.fetch_request, sid, item))
            elif isinstance(item, O.SubgroupObject):
                hdr = st.parser.header
                assert isinstance(hdr, O.SubgroupHeader)
                self._events.append(
                    ObjectReceived(
                        hdr.track_alias,
                        hdr.group_id,
                        st.parser.subgroup_id,
                        item.object_id,
                        hdr.publisher_priority,
                        item.payload,
                        item.status,
                        item.extensions,
                        sid,
                    )  # fmt: skip
                )
        if fin:
            st.parser.end()

    # --- control verbs ----------------------------------------------------------------------------------------------

    def _send_control(self, msg: M.ControlMessage) -> None:
        if self._control_id is None or self.closed:
            raise SessionNotReady(f"cannot send {type(msg).__name__}: no control stream")
        self.quic.send_stream_data(self._control_id, M.encode_control(msg))
        self._wrote()

    def _require_ready(self) -> None:
        if not self.ready or self.closed:
            raise SessionNotReady("the session is not set up (or already closed)")

    def _new_request(self, kind: RequestKind, build: Callable[[int], M.ControlMessage]) -> int:
        self._require_ready()
        if self.goaway_received is not None:
            raise RequestBlocked("the peer sent GOAWAY: no new requests on this session (section 9.4)")
        rid = self._next_request_id
        if rid >= self._peer_max_request_id:
            if self._blocked_sent_at != self._peer_max_request_id:
                self._blocked_sent_at = self._peer_max_request_id
                self._send_control(M.RequestsBlocked(self._peer_max_request_id))
            raise RequestBlocked(f"peer's MAX_REQUEST_ID {self._peer_max_request_id} reached")
        self._next_request_id = rid + 2
        msg = build(rid)
        self._sent[rid] = _Request(kind, RequestState.PENDING, msg)
        self._send_control(msg)
        return rid

    def _answer(self, rid: int, kind: RequestKind, step: Input) -> bool:
        """Advance a request the peer made, by our own answer; False when the peer already cancelled it (nothing to
        send: UNSUBSCRIBE overtook our answer). Answering twice or a request never made is a local bug (ValueError)."""
        self._require_ready()
        req = self._received.get(rid)
        if req is None or req.kind is not kind:
            raise ValueError(f"no {kind.value} request {rid} from the peer")
        if req.state is RequestState.CLOSED:
            return False
        try:
            req.state = advance(req.state, step, kind.value)
        except E.ProtocolViolation as exc:
            raise ValueError(str(exc)) from None
        return True

    def subscribe(
        self,
        namespace: M.Namespace,
        track_name: bytes,
        *,
        subscriber_priority: int = 128,
        group_order: int = M.GroupOrder.PUBLISHER,
        forward: bool = True,
        filter_type: int = M.FilterType.LARGEST_OBJECT,
        start_location: M.Location | None = None,
        end_group: int | None = None,
        parameters: M.Parameters = (),
    ) -> int:
        """Send SUBSCRIBE (section 9.7); returns its request id. RequestBlocked when the peer's limit is reached."""
        return self._new_request(
            RequestKind.SUBSCRIBE,
            lambda rid: M.Subscribe(
                rid,
                namespace,
                track_name,
                subscriber_priority,
                group_order,
                forward,
                filter_type,
                start_location,
                end_group,
                parameters,
            ),  # fmt: skip
        )

    def subscribe_ok(
        self,
        request_id: int,
        track_alias: int,
        *,
        expires: int = 0,
        group_order: int = M.GroupOrder.ASCENDING,
        largest_location: M.Location | None = None,
        parameters: M.Parameters = (),
    ) -> None:
        """Answer a SUBSCRIBE with SUBSCRIBE_OK (section 9.8); the track alias is ours to choose."""
        if self._answer(request_id, RequestKind.SUBSCRIBE, Input.OK):
            self._send_control(
                M.SubscribeOk(request_id, track_alias, expires, group_order, largest_location, parameters)
            )

    def subscribe_error(self, request_id: int, code: int, reason: str = "") -> None:
        """Answer a SUBSCRIBE with SUBSCRIBE_ERROR (section 9.9)."""
        if self._answer(request_id, RequestKind.SUBSCRIBE, Input.ERROR):
            self._send_control(M.SubscribeError(request_id, code, reason))

    def unsubscribe(self, request_id: int) -> None:
        """End our subscription (section 9.11); objects may still arrive for a while."""
        self._require_ready()
        req = self._sent.get(request_id)
        if req is None or req.kind is not RequestKind.SUBSCRIBE:
            raise ValueError(f"no subscription {request_id}")
        if req.state is RequestState.CLOSED:
            return
        req.state = advance(req.state, Input.END)
        self._free_alias(request_id)
        self._send_control(M.Unsubscribe(request_id))

    def publish_done(self, request_id: int, status_code: int, stream_count: int, reason: str = "") -> None:
        """End a subscription the peer made to us (section 9.12); no-op if it already ended."""
        self._require_ready()
        req = self._received.get(request_id)
        if req is None or req.kind is not RequestKind.SUBSCRIBE:
            raise ValueError(f"no subscription {request_id} from the peer")
        if req.state is not RequestState.ESTABLISHED:
            return
        req.state = advance(req.state, Input.END)
        self._send_control(M.PublishDone(request_id, status_code, stream_count, reason))

    def publish_namespace(self, namespace: M.Namespace, parameters: M.Parameters = ()) -> int:
        """Send PUBLISH_NAMESPACE (section 9.23); returns its request id."""
        return self._new_request(
            RequestKind.PUBLISH_NAMESPACE, lambda rid: M.PublishNamespace(rid, namespace, parameters)
        )

    def publish_namespace_ok(self, request_id: int) -> None:
        if self._answer(request_id, RequestKind.PUBLISH_NAMESPACE, Input.OK):
            self._send_control(M.PublishNamespaceOk(request_id))

    def publish_namespace_error(self, request_id: int, code: int, reason: str = "") -> None:
        if self._answer(request_id, RequestKind.PUBLISH_NAMESPACE, Input.ERROR):
            self._send_control(M.PublishNamespaceError(request_id, code, reason))

    def publish_namespace_done(self, namespace: M.Namespace) -> None:
        """Withdraw a namespace we published (section 9.26)."""
        self._require_ready()
        self._end_by_namespace(self._sent, namespace)
        self._send_control(M.PublishNamespaceDone(namespace))

    def publish_namespace_cancel(self, namespace: M.Namespace, code: int, reason: str = "") -> None:
        """Stop accepting a namespace the peer published (section 9.27)."""
        self._require_ready()
        self._end_by_namespace(self._received, namespace)
        self._send_control(M.PublishNamespaceCancel(namespace, code, reason))

    def fetch(
        self,
        subscriber_priority: int = 128,
        group_order: int = M.GroupOrder.PUBLISHER,
        *,
        standalone: M.StandaloneFetch | None = None,
        joining: M.JoiningFetch | None = None,
        fetch_type: int = M.FetchType.STANDALONE,
        parameters: M.Parameters = (),
    ) -> int:
        """Send FETCH (section 9.16); returns its request id. (Objects arrive on a FETCH_HEADER stream.)"""
        return self._new_request(
            RequestKind.FETCH,
            lambda rid: M.Fetch(rid, subscriber_priority, group_order, fetch_type, standalone, joining, parameters),
        )

    def fetch_ok(
        self,
        request_id: int,
        end_location: M.Location,
        *,
        group_order: int = M.GroupOrder.ASCENDING,
        end_of_track: bool = False,
        parameters: M.Parameters = (),
    ) -> bool:
        """Answer a FETCH with FETCH_OK (section 9.17); False when the peer already cancelled it."""
        if not self._answer(request_id, RequestKind.FETCH, Input.OK):
            return False
        self._send_control(M.FetchOk(request_id, group_order, end_of_track, end_location, parameters))
        return True

    def reject_request(self, message: M.ControlMessage, code: int, reason: str) -> None:
        """Answer a request kind we do not serve (FETCH, TRACK_STATUS, PUBLISH, SUBSCRIBE_NAMESPACE) with its error."""
        rid: int = message.request_id  # type: ignore[union-attr]
        kind = _REQUEST_KINDS[type(message)]
        if not self._answer(rid, kind, Input.ERROR):
            return
        err: M.ControlMessage
        if isinstance(message, M.Fetch):
            err = M.FetchError(rid, code, reason)
        elif isinstance(message, M.TrackStatus):
            err = M.TrackStatusError(rid, code, reason)
        elif isinstance(message, M.Publish):
            err = M.PublishError(rid, code, reason)
        elif isinstance(message, M.SubscribeNamespace):
            err = M.SubscribeNamespaceError(rid, code, reason)
        elif isinstance(message, M.Subscribe):
            err = M.SubscribeError(rid, code, reason)
        else:
            err = M.PublishNamespaceError(rid, code, reason)
        self._send_control(err)

    def goaway(self, new_session_uri: str = "") -> None:
        """Ask the peer to move to another session (section 9.4); sent at most once."""
        self._require_ready()
        if not self.goaway_sent:
            self.goaway_sent = True
            self._send_control(M.GoAway(new_session_uri))

    def close(self, error_code: int = E.SessionErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the QUIC connection with a MoQT session error code (application CONNECTION_CLOSE)."""
        if self.closed:
            return
        self.closed = True
        self.quic.close(error_code=error_code, reason_phrase=reason)
        self._events.append(SessionClosed(error_code, reason, by_peer=False))
        self._wrote()

    @property
    def peer_max_request_id(self) -> int:
        return self._peer_max_request_id

    @property
    def local_max_request_id(self) -> int:
        return self._local_max_request_id

    # --- data plane out ---------------------------------------------------------------------------------------------

    def send_datagram(self, data: bytes, order: tuple[int, int] | None = None) -> None:
        """Queue one raw OBJECT_DATAGRAM; `order` = (subscriber priority, publisher priority), lower goes first."""
        pending = getattr(self.quic, "_datagrams_pending", None)
        if pending is not None and len(pending) >= self.max_datagram_backlog:
            pending.popleft()  # stall policy: datagrams are unreliable, the oldest waiting one goes first
            self.datagrams_dropped += 1
        if order is None or not self.ordered_output:
            self.quic.send_datagram_frame(data)
        else:
            self._datagram_seq += 1
            self._datagram_batch.append((order, self._datagram_seq, data))
        self._wrote()

    def send_object_datagram(self, obj: O.ObjectDatagram, subscriber_priority: int = 128) -> None:
        self.send_datagram(O.encode_datagram(obj), (subscriber_priority, obj.publisher_priority))

    def open_data_stream(
        self, first: bytes, end_stream: bool = False, order: tuple[int, int] | None = None
    ) -> int:
        """Open a unidirectional stream with raw first bytes (a relay's rewritten subgroup header and beyond).

        Stall policy, session level: when the streams already open hold more than `max_session_backlog` bytes in
        aioquic (the peer is far behind on every stream, e.g. it withholds MAX_DATA), every one of them is reset
        (DELIVERY_TIMEOUT, reported as DataStreamStopped) and the new stream starts the peer afresh."""
        streams = getattr(self.quic, "_streams", {})
        for gone in [sid for sid in self._progress if sid not in streams]:
            del self._progress[gone]
        if self._total_backlog() > self.max_session_backlog:
            for old in list(streams):
                behind = old != self._control_id and old not in self._stalled and self._backlog(old) > 0
                if behind and self._no_progress_for(old) >= self.stall_seconds:
                    self._stall(old)
        sid = self.quic.get_next_available_stream_id(is_unidirectional=True)
        if order is not None:
            self._stream_order[sid] = order
            self._order_keys.add(order)
        self.quic.send_stream_data(sid, first, end_stream)
        self._wrote()
        return sid

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue data on one of our streams. Flow-control stall policy (docs/operations.md): a data stream whose
        unacknowledged backlog passes `max_stream_backlog` (a peer that stopped reading or granting credit) is reset
        with DELIVERY_TIMEOUT and reported as DataStreamStopped, so the relay stops copying into it; later writes
        to it are discarded. The relay's memory per stalled stream stays below the bound."""
        if stream_id in self._stalled:
            return
        self.quic.send_stream_data(stream_id, data, end_stream)
        if stream_id != self._control_id and self._backlog(stream_id) > self.max_stream_backlog:
            if self._no_progress_for(stream_id) >= self.stall_seconds:
                self._stall(stream_id)
        else:
            self._progress.pop(stream_id, None)
        self._wrote()

    def _no_progress_for(self, stream_id: int) -> float:
        """Seconds since the peer last acknowledged data of this stream (0 when first asked): a burst to a healthy
        peer (a big object, a cache replay) is over the backlog bound only until its ACKs come, a stalled peer's
        stays there."""
        sender = getattr(getattr(self.quic, "_streams", {}).get(stream_id), "sender", None)
        acked = getattr(sender, "_buffer_start", 0)
        now = self.clock()
        seen = self._progress.get(stream_id)
        if seen is None or seen[0] != acked:
            self._progress[stream_id] = (acked, now)
            return 0.0
        return now - seen[1]

    def _stall(self, stream_id: int) -> None:
        self._progress.pop(stream_id, None)
        self._stalled.add(stream_id)
        self.stall_resets += 1
        self._writers.pop(stream_id, None)
        self._stream_order.pop(stream_id, None)
        self.quic.reset_stream(stream_id, E.ResetStreamCode.DELIVERY_TIMEOUT)
        # aioquic keeps the data until the peer acknowledges the reset (a stalled peer may never): nothing reads it
        # after reset() (get_frame asserts, on_data_delivery returns early), so free it now
        buf = getattr(getattr(getattr(self.quic, "_streams", {}).get(stream_id), "sender", None), "_buffer", None)
        if isinstance(buf, bytearray):
            buf.clear()
        self._events.append(DataStreamStopped(stream_id, E.ResetStreamCode.DELIVERY_TIMEOUT))

    def _total_backlog(self) -> int:
        return sum(self._backlog(sid) for sid in getattr(self.quic, "_streams", {}) if sid != self._control_id)

    def _backlog(self, stream_id: int) -> int:
        """Bytes aioquic still holds for a stream we send on (unsent + unacknowledged)."""
        stream = getattr(self.quic, "_streams", {}).get(stream_id)
        sender = getattr(stream, "sender", None)
        return len(getattr(sender, "_buffer", b""))

    def reset_data_stream(self, stream_id: int, error_code: int) -> None:
        """RESET_STREAM on one of our data streams (section 10.4: codes in errors.ResetStreamCode)."""
        self._writers.pop(stream_id, None)
        self.quic.reset_stream(stream_id, error_code)
        self._wrote()

    def open_subgroup(self, header: O.SubgroupHeader, subscriber_priority: int = 128) -> int:
        """Open a subgroup stream and send its header (section 10.4.2); objects follow with `send_subgroup_object`."""
        writer = O.SubgroupStreamWriter(header)
        sid = self.open_data_stream(
            writer.header_bytes(), order=(subscriber_priority, header.publisher_priority)
        )
        self._writers[sid] = writer
        return sid

    def send_subgroup_object(self, stream_id: int, obj: O.SubgroupObject, end_stream: bool = False) -> None:
        if stream_id in self._stalled:
            return
        writer = self._writers[stream_id]
        self.send_stream_data(stream_id, writer.object_bytes(obj), end_stream)
        if end_stream:
            del self._writers[stream_id]

    def end_subgroup(self, stream_id: int) -> None:
        """FIN the subgroup stream (the subgroup is complete)."""
        self._writers.pop(stream_id, None)
        self.send_stream_data(stream_id, b"", end_stream=True)

    # --- send order -------------------------------------------------------------------------------------------------

    def _wrote(self) -> None:
        if self.on_output is not None:
            self.on_output()

    def apply_send_order(self) -> None:
        """Lower (subscriber priority, publisher priority) goes first (draft-14 section 7).

        aioquic has no priority API: it serves `_streams_queue` round robin and writes pending datagrams FIFO before
        streams. We sort that queue (stable, so round robin stays within one priority; the control stream, with no
        key, first) and hand over each batch of datagrams in priority order. With a single key in use (one track,
        one priority) the sort is skipped: it would change nothing but cost a pass over every stream per packet."""
        if self._datagram_batch:
            self._datagram_batch.sort()
            for _, _, data in self._datagram_batch:
                self.quic.send_datagram_frame(data)
            self._datagram_batch.clear()
        queue = getattr(self.quic, "_streams_queue", None)
        if queue and len(queue) > 1 and len(self._order_keys) > 1:
            order = self._stream_order
            queue.sort(key=lambda s: order.get(s.stream_id, (-1, -1)))
            if len(order) > 2 * len(queue) + 64:
                live = {s.stream_id for s in queue}
                for sid in [sid for sid in order if sid not in live]:
                    del order[sid]
                self._order_keys = set(order.values())


def _read_alias(data: bytes | bytearray, offset: int, length: int) -> int:
    value = data[offset] & 0x3F
    for i in range(1, length):
        value = (value << 8) | data[offset + i]
    return value
