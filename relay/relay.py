"""Relay semantics on top of MoqtSession: namespaces, subscription aggregation, and object fan-out.

Sans-I/O like the session: `Relay.handle(session, event)` is fed every session event; it answers on sessions and
the sessions' `on_output` callbacks make the adapter transmit. Draft-14 rules applied here (sections 8, 9):

- PUBLISH_NAMESPACE routes a namespace prefix (whole tuple fields, longest prefix) to the publishing session;
- SUBSCRIBE is aggregated: one upstream SUBSCRIBE per track, shared by every downstream subscriber; a downstream
  SUBSCRIBE_OK only after the upstream one; TRACK_DOES_NOT_EXIST at once when no publisher covers the namespace;
- the last UNSUBSCRIBE unsubscribes upstream; PUBLISH_DONE (or the publisher going away) ends every subscriber;
- objects reach every forwarding subscriber unchanged except the track alias (`Forwarder`, the only per-object code);
- with a cache (`relay.cache`), each track keeps its latest groups as received: late joiners with an absolute filter
  are served from it, NextGroupStart waits for the next group, FETCH (standalone and joining) is answered from it;
- with an `Authorizer` (`relay.auth`) and `Limits` (`relay.limits`), requests are refused with their own error codes.

The fast-path controller hooks in through `FastPathHooks`: it hears every subscriber added/removed (with session,
aliases, priorities) and every session closed, so kernel maps can mirror exactly what user space forwards.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay import counters as C
from relay.auth import Action, Authorizer
from relay.cache import CachedStream, FetchedObject, ObjectCache, TrackCache, datagram_location, stream_group
from relay.limits import Limits, namespace_bytes
from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import (
    ControlMessageReceived,
    DatagramReceived,
    DataStreamData,
    DataStreamOpened,
    DataStreamReset,
    DataStreamStopped,
    FetchStreamOpened,
    MoqtEvent,
    MoqtSession,
    RequestBlocked,
    SessionClosed,
    SessionReady,
)
from relay.moqt.varint import NeedMoreData, encode_varint, varint_len
from relay.router import NamespaceTaken, Router
from relay.upstream import UpstreamFetches

log = logging.getLogger("relay")

TrackKey = tuple[M.Namespace, bytes]
_VARINT_RANGES = {1: (0, 0x3F), 2: (0x40, 0x3FFF), 4: (0x4000, 0x3FFF_FFFF), 8: (0x4000_0000, (1 << 62) - 1)}
MAX_ORPHAN_STREAMS = 64  # per publisher session: streams that arrived before their SUBSCRIBE_OK


@dataclass(eq=False)
class Downstream:
    """One downstream subscription (a subscriber's SUBSCRIBE), with its relay-chosen alias."""

    session: MoqtSession
    request_id: int
    subscriber_priority: int
    forward: bool
    track: Track
    seq: int
    alias: int = -1
    alias_bytes: bytes = b""
    streams_sent: int = 0
    # upstream stream id -> our stream id on this subscriber's connection
    streams: dict[int, int] = field(default_factory=dict)
    request: M.Subscribe | None = None  # the SUBSCRIBE (its filter, section 9.7)
    # filter gate (section 5.1.2): nothing before `start`, no group after `end_group`; None = open
    start: M.Location | None = None
    end_group: int | None = None
    # the Largest Location in our SUBSCRIBE_OK (where a joining FETCH ends, section 9.16.2)
    joined_at: M.Location | None = None
    range_done: bool = False  # an object past end_group arrived: PUBLISH_DONE sent, open streams still finish
    kernel: bool = False  # the kernel fast path sends this subscription's datagrams (relay.fastpath_hooks)
    datagrams_sent: int = 0  # object datagrams user space sent (the kernel's copies are counted per slot)

    def sort_key(self) -> tuple[int, int]:
        return (self.subscriber_priority, self.seq)


@dataclass(eq=False)
class Track:
    """One upstream track, shared by every downstream subscriber (aggregation)."""

    key: TrackKey
    publisher: MoqtSession
    request_id: int
    alias: int | None = None
    ok: M.SubscribeOk | None = None
    subscribers: list[Downstream] = field(default_factory=list)  # sorted: subscriber priority, then arrival
    pending: list[Downstream] = field(default_factory=list)  # waiting for the upstream SUBSCRIBE_OK
    # fan-out list of the forwarding subscribers, rebuilt when membership changes (kept off the per-object path)
    fanout: tuple[Downstream, ...] = ()
    user_fanout: tuple[Downstream, ...] = ()  # ... of which not served by the kernel (datagrams only)
    upstream_streams: int = 0  # subgroup streams the publisher opened for this track
    open_streams: int = 0  # ... of which not yet finished or reset
    ending: M.PublishDone | None = None  # the publisher's PUBLISH_DONE, waiting for its streams to arrive
    done_sent: bool = False
    cache: TrackCache | None = None
    gated: bool = False  # some forwarding subscriber has a filter gate: check locations per object

    def refresh(self) -> None:
        self.subscribers.sort(key=Downstream.sort_key)
        self.fanout = tuple(s for s in self.subscribers if s.forward)
        self.user_fanout = tuple(s for s in self.fanout if not s.kernel)
        self.gated = any(s.start is not None or s.end_group is not None for s in self.fanout)


class FastPathHooks(Protocol):
    """What a fast-path controller (kernel forwarding) needs to mirror user-space forwarding state."""

    def subscriber_added(self, track: Track, sub: Downstream) -> None: ...
    def subscriber_removed(self, track: Track, sub: Downstream) -> None: ...
    def track_ended(self, track: Track) -> None: ...
    def session_closed(self, session: MoqtSession) -> None: ...


class UpstreamSource(Protocol):
    """Where SUBSCRIBEs go when no local publisher covers the namespace (cascading relays, `relay.upstream`)."""

    def session(self) -> MoqtSession | None: ...
    def count_subscribe(self, namespace: M.Namespace, track: bytes) -> None: ...


class NoFastPath:
    """Default hooks: everything stays in user space."""

    def subscriber_added(self, track: Track, sub: Downstream) -> None:
        return None

    def subscriber_removed(self, track: Track, sub: Downstream) -> None:
        return None

    def track_ended(self, track: Track) -> None:
        return None

    def session_closed(self, session: MoqtSession) -> None:
        return None


@dataclass
class _Orphan:
    """An upstream stream whose alias is not bound yet (its data overtook SUBSCRIBE_OK)."""

    alias: int
    alias_offset: int
    alias_length: int
    publisher_priority: int
    data: bytearray
    fin: bool = False


@dataclass
class _UpStream:
    track: Track
    alias_offset: int
    alias_length: int
    publisher_priority: int
    cached: CachedStream | None = None


def _admits(sub: Downstream, group: int, obj: int) -> bool:
    """The subscriber's filter lets (group, obj) through; passing a later group than the start opens the gate."""
    if sub.range_done:
        return False  # PUBLISH_DONE already counted the streams: nothing new may follow (section 9.12)
    start = sub.start
    if start is not None and (group < start.group or (group == start.group and obj < start.object)):
        return False
    return sub.end_group is None or group <= sub.end_group


class Forwarder:
    """The only per-object code: an upstream datagram or stream chunk in, one copy per forwarding subscriber out.

    Each copy is the publisher's bytes with just the Track Alias replaced (draft-14 section 8: a relay must not change
    object fields); a subgroup stream maps to one stream per subscriber, chunks pass through in order, FIN and
    RESET_STREAM propagate. A kernel fast path later replaces these methods for enabled connections."""

    def __init__(
        self,
        on_ending_progress: Callable[[Track], None] | None = None,
        on_range_end: Callable[[Downstream], None] | None = None,
    ) -> None:
        #: called on stream open/close of a track whose publisher already sent PUBLISH_DONE
        self.on_ending_progress = on_ending_progress or (lambda track: None)
        #: called once per subscriber when an object past its AbsoluteRange end group arrives
        self.on_range_end = on_range_end or (lambda sub: None)
        self._tracks: dict[
            tuple[MoqtSession, int], Track
        ] = {}  # (publisher session, upstream alias) -> track
        self._streams: dict[tuple[MoqtSession, int], _UpStream] = {}  # (publisher session, upstream stream)
        self._orphans: dict[tuple[MoqtSession, int], _Orphan] = {}
        self.datagrams_in = 0
        self.copies_out = 0
        #: did the kernel already copy this datagram (track, bytes, end of its alias) to its kernel-served
        #: subscribers? An upstream packet the kernel parser refused reaches them through user space instead.
        self.kernel_copied: Callable[[Track, bytes, int], bool] = lambda track, data, end: False
        #: a kernel-served subscription's stream was opened here: (track, sub, upstream id, its id, bytes written);
        #: the kernel copies the rest of that stream's data (relay.stream_copies)
        self.kernel_stream_opened: Callable[[Track, Downstream, int, int, int], None] = lambda *args: None
        #: an upstream stream ended (FIN or reset), or a subscriber stopped its copy (STOP_SENDING)
        self.upstream_stream_ended: Callable[[MoqtSession, int], None] = lambda session, stream_id: None
        self.kernel_stream_stopped: Callable[[Downstream, int], None] = lambda sub, stream_id: None

    def bind(self, track: Track) -> None:
        """The track's upstream alias is known: route its data, and replay streams that arrived early."""
        assert track.alias is not None
        self._tracks[(track.publisher, track.alias)] = track
        for key, orphan in list(self._orphans.items()):
            if key[0] is track.publisher and orphan.alias == track.alias:
                del self._orphans[key]
                self.stream_opened(
                    track.publisher,
                    DataStreamOpened(
                        key[1],
                        orphan.alias,
                        orphan.alias_offset,
                        orphan.alias_length,
                        orphan.publisher_priority,
                        bytes(orphan.data),
                        orphan.fin,
                    ),  # fmt: skip
                )

    def unbind(self, track: Track) -> None:
        if track.alias is not None:
            self._tracks.pop((track.publisher, track.alias), None)
        for key in [k for k, up in self._streams.items() if up.track is track]:
            del self._streams[key]

    def forget_session(self, session: MoqtSession) -> None:
        for table in (self._tracks, self._streams, self._orphans):
            for key in [k for k in table if k[0] is session]:
                del table[key]

    def datagram(self, session: MoqtSession, ev: DatagramReceived) -> None:
        track = self._tracks.get((session, ev.track_alias))
        if track is None:
            return  # not (or no longer) subscribed: datagrams are unreliable, dropping is allowed
        self.datagrams_in += 1
        data, off, end = ev.data, ev.alias_offset, ev.alias_offset + ev.alias_length
        prio = ev.publisher_priority
        if track.cache is not None:
            track.cache.add_datagram(data, off, ev.alias_length)
        fanout = track.fanout
        if len(track.user_fanout) != len(fanout) and self.kernel_copied(track, data, end):
            fanout = track.user_fanout
        if track.gated:
            self._datagram_gated(track, ev, fanout)
            return
        for sub in fanout:
            out = data if sub.alias == ev.track_alias else data[:off] + sub.alias_bytes + data[end:]
            sub.session.send_datagram(out, (sub.subscriber_priority, prio))
            sub.datagrams_sent += 1
        self.copies_out += len(fanout)

    def _datagram_gated(self, track: Track, ev: DatagramReceived, fanout: tuple[Downstream, ...]) -> None:
        data, off, end = ev.data, ev.alias_offset, ev.alias_offset + ev.alias_length
        try:
            group, obj = datagram_location(data, end)
        except (NeedMoreData, IndexError):
            return
        opened = False
        for sub in fanout:
            if not _admits(sub, group, obj):
                if sub.end_group is not None and group > sub.end_group and not sub.range_done:
                    self.on_range_end(sub)
                continue
            if sub.start is not None and group > sub.start.group:
                sub.start, opened = None, True
            out = data if sub.alias == ev.track_alias else data[:off] + sub.alias_bytes + data[end:]
            sub.session.send_datagram(out, (sub.subscriber_priority, ev.publisher_priority))
            sub.datagrams_sent += 1
            self.copies_out += 1
        if opened:
            track.refresh()

    def upstream_id(self, track: Track, cached: CachedStream) -> int | None:
        """The publisher's stream id of a cached stream still arriving (a late joiner continues it live)."""
        for (session, sid), up in self._streams.items():
            if up.cached is cached and session is track.publisher:
                return sid
        return None

    def stream_opened(self, session: MoqtSession, ev: DataStreamOpened) -> None:
        track = self._tracks.get((session, ev.track_alias))
        if track is None:
            if sum(1 for k in self._orphans if k[0] is session) < MAX_ORPHAN_STREAMS:
                self._orphans[(session, ev.stream_id)] = _Orphan(
                    ev.track_alias, ev.alias_offset, ev.alias_length, ev.publisher_priority,
                    bytearray(ev.data), ev.end_stream,
                )  # fmt: skip
            return
        track.upstream_streams += 1
        data, off, end = ev.data, ev.alias_offset, ev.alias_offset + ev.alias_length
        cached = None
        if track.cache is not None:
            cached = track.cache.open_stream(data, off, ev.alias_length, ev.publisher_priority)
            if cached is not None and ev.end_stream:
                cached.done = True
        if not ev.end_stream:
            track.open_streams += 1
            self._streams[(session, ev.stream_id)] = _UpStream(
                track, ev.alias_offset, ev.alias_length, ev.publisher_priority, cached
            )
        fanout = track.fanout
        if track.gated:
            # stream granularity: a subgroup stream goes whole to the subscribers its group admits
            group = stream_group(data, end)
            for s in fanout:
                if s.end_group is not None and group > s.end_group and not s.range_done:
                    self.on_range_end(s)
            fanout = tuple(s for s in fanout if _admits(s, group, 1 << 62))
            if any(s.start is not None and group > s.start.group for s in fanout):
                for s in fanout:
                    if s.start is not None and group > s.start.group:
                        s.start = None
                track.refresh()
        for sub in fanout:
            out = data if sub.alias == ev.track_alias else data[:off] + sub.alias_bytes + data[end:]
            sid = sub.session.open_data_stream(
                out, ev.end_stream, (sub.subscriber_priority, ev.publisher_priority)
            )
            sub.streams_sent += 1
            if not ev.end_stream:
                sub.streams[ev.stream_id] = sid
                if sub.kernel:
                    self.kernel_stream_opened(track, sub, ev.stream_id, sid, len(out))
        self.copies_out += len(fanout)
        if track.ending is not None:
            self.on_ending_progress(track)

    def stream_data(self, session: MoqtSession, ev: DataStreamData) -> None:
        key = (session, ev.stream_id)
        up = self._streams.get(key)
        if up is None:
            orphan = self._orphans.get(key)
            if orphan is not None:
                orphan.data += ev.data
                orphan.fin = ev.end_stream
            return
        usid = ev.stream_id
        if up.cached is not None and up.track.cache is not None:
            up.track.cache.append(up.cached, ev.data, ev.end_stream)
        for sub in up.track.fanout:
            sid = sub.streams.get(usid)
            if sid is not None:
                sub.session.send_stream_data(sid, ev.data, ev.end_stream)
                if ev.end_stream:
                    del sub.streams[usid]
        if ev.end_stream:
            del self._streams[key]
            self.upstream_stream_ended(session, usid)
            up.track.open_streams -= 1
            if up.track.ending is not None:
                self.on_ending_progress(up.track)

    def stream_reset(self, session: MoqtSession, ev: DataStreamReset) -> None:
        self._orphans.pop((session, ev.stream_id), None)
        up = self._streams.pop((session, ev.stream_id), None)
        if up is None:
            return
        self.upstream_stream_ended(session, ev.stream_id)
        for sub in up.track.fanout:
            sid = sub.streams.pop(ev.stream_id, None)
            if sid is not None and not sub.session.closed:
                sub.session.reset_data_stream(sid, ev.error_code)
        up.track.open_streams -= 1
        if up.track.ending is not None:
            self.on_ending_progress(up.track)

    def stream_stopped(self, sub_session: MoqtSession, ev: DataStreamStopped, subs: list[Downstream]) -> None:
        """A subscriber sent STOP_SENDING: stop copying into that stream (the session already reset it)."""
        for sub in subs:
            for usid, sid in list(sub.streams.items()):
                if sid == ev.stream_id:
                    del sub.streams[usid]
                    self.kernel_stream_stopped(sub, usid)


@dataclass(eq=False)
class _Peer:
    """What the relay knows about one session, in both roles."""

    session: MoqtSession
    subs: dict[int, Downstream] = field(default_factory=dict)  # its SUBSCRIBEs to us, by request id
    aliases: set[int] = field(default_factory=set)  # aliases we chose towards it
    upstream: dict[int, Track] = field(default_factory=dict)  # our SUBSCRIBEs to it, by request id
    fetches: dict[int, int] = field(
        default_factory=dict
    )  # its FETCHes we answer: request id -> our stream id


class Relay:
    """The user-space relay; plug it into `relay.quic.serve_moqt` as the session handler."""

    def __init__(
        self,
        hooks: FastPathHooks | None = None,
        *,
        cache: ObjectCache | None = None,
        auth: Authorizer | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.hooks: FastPathHooks = hooks or NoFastPath()
        self.cache = cache if cache is not None and cache.enabled else None
        self.auth = auth or Authorizer()
        self.limits = limits or Limits()
        self.router: Router[MoqtSession] = Router()
        self.forwarder = Forwarder(self._check_ending, self._range_end)
        self.tracks: dict[TrackKey, Track] = {}  # tracks new subscribers can join
        self.live: set[Track] = (
            set()
        )  # every track with forwarding state (incl. ended ones with open streams)
        self._peers: dict[MoqtSession, _Peer] = {}
        self._seq = itertools.count()
        #: the upstream relay for namespaces no local publisher covers (relay.upstream.UpstreamLink), or None
        self.upstream: UpstreamSource | None = None
        #: cascade counters (relay.counters): upstream SUBSCRIBEs sent, downstream relays' SUBSCRIBEs, loops refused
        self.counters = C.RelayCounters()
        self.upstream_fetches = UpstreamFetches()  # FETCHes forwarded upstream on a cache miss (relay.upstream)
        self.relay_id = C.new_relay_id()  # this relay on a RELAY_PATH (loop detection, relay.counters)
        #: the fast path's figures for one subscription (its slot's sends and drops, the kernel's window with kernel
        #: recovery), for stats and reports; set by relay.fastpath_runtime.KernelFastPath.install
        self.subscription_counts: Callable[[Downstream], dict[str, Any] | None] = lambda sub: None

    def subscriptions_of(self, session: MoqtSession) -> list[Downstream]:
        """The session's live subscriptions (those already answered with SUBSCRIBE_OK and still forwarding state)."""
        peer = self._peers.get(session)
        if peer is None:
            return []
        return [sub for sub in peer.subs.values() if sub in sub.track.subscribers]

    # --- adapter entry points ---------------------------------------------------------------------------------------

    def session_event(self, conn: object, event: MoqtEvent) -> None:
        """relay.quic.SessionHandler: `conn` is a MoqtConnection carrying `.session`."""
        self.handle(conn.session, event)  # type: ignore[attr-defined]

    def handle(self, session: MoqtSession, event: MoqtEvent) -> None:
        fw = self.forwarder
        if isinstance(event, DatagramReceived):
            fw.datagram(session, event)
        elif isinstance(event, DataStreamData):
            if not self.upstream_fetches.data(session, event):
                fw.stream_data(session, event)
        elif isinstance(event, DataStreamOpened):
            fw.stream_opened(session, event)
        elif isinstance(event, DataStreamReset):
            if not self.upstream_fetches.reset(session, event):
                fw.stream_reset(session, event)
        elif isinstance(event, FetchStreamOpened):
            self.upstream_fetches.opened(session, event)
        elif isinstance(event, ControlMessageReceived):
            self._on_control(session, event.message)
        elif isinstance(event, DataStreamStopped):
            peer = self._peers.get(session)
            if peer is not None:
                fw.stream_stopped(session, event, list(peer.subs.values()))
        elif isinstance(event, SessionReady):
            cap = self.limits.max_sessions
            if cap and sum(1 for s in self._peers if not s.closed) >= cap:
                session.close(E.SessionErrorCode.INTERNAL_ERROR, "relay at its session limit")
                return
            self.peer(session)  # known from setup on, so GOAWAY reaches sessions that never sent a request
        elif isinstance(event, SessionClosed):
            self._on_closed(session, event)

    def goaway_all(self, uri: str = "") -> None:
        """Shutdown step one: GOAWAY to every session that is set up (section 9.4)."""
        for session in list(self._peers):
            if session.ready and not session.closed:
                session.goaway(uri)

    def peer(self, session: MoqtSession) -> _Peer:
        p = self._peers.get(session)
        if p is None:
            p = self._peers[session] = _Peer(session)
        return p

    # --- control ----------------------------------------------------------------------------------------------------

    def _on_control(self, session: MoqtSession, msg: M.ControlMessage) -> None:
        peer = self.peer(session)
        if isinstance(msg, M.Subscribe):
            self._on_subscribe(peer, msg)
        elif isinstance(msg, M.SubscribeOk):
            self._on_upstream_ok(peer, msg)
        elif isinstance(msg, M.SubscribeError):
            self._on_upstream_error(peer, msg)
        elif isinstance(msg, M.Unsubscribe):
            sub = peer.subs.pop(msg.request_id, None)
            if sub is not None:
                self._remove_subscriber(sub)
        elif isinstance(msg, M.PublishDone):
            track = peer.upstream.pop(msg.request_id, None)
            if track is not None:
                track.ending = msg
                self._check_ending(track)
        elif isinstance(msg, M.PublishNamespace):
            refusal = self.auth.check(Action.PUBLISH, msg.track_namespace, msg.parameters)
            if refusal is not None:
                session.publish_namespace_error(msg.request_id, int(refusal.code), refusal.reason)
                return
            if namespace_bytes(msg.track_namespace) > self.limits.max_namespace_bytes:
                session.publish_namespace_error(
                    msg.request_id,
                    E.PublishNamespaceErrorCode.NOT_SUPPORTED,
                    "namespace longer than this relay allows",
                )
                return
            try:
                self.router.add(msg.track_namespace, session)
            except NamespaceTaken:
                session.publish_namespace_error(
                    msg.request_id,
                    E.PublishNamespaceErrorCode.UNINTERESTED,
                    "namespace published by another session",
                )
                return
            session.publish_namespace_ok(msg.request_id)
        elif isinstance(msg, M.PublishNamespaceDone):
            self.router.remove(msg.track_namespace, session)
        elif isinstance(msg, M.SubscribeUpdate):
            sub = peer.subs.get(msg.subscription_request_id)
            if sub is not None:
                sub.subscriber_priority = msg.subscriber_priority
                sub.forward = msg.forward
                sub.track.refresh()
        elif isinstance(msg, M.FetchOk | M.FetchError):
            self.upstream_fetches.answer(session, msg)
        elif isinstance(msg, M.Fetch):
            self._on_fetch(peer, msg)
        elif isinstance(msg, M.FetchCancel):
            sid = peer.fetches.pop(msg.request_id, None)
            if sid is not None and not session.closed:
                session.reset_data_stream(sid, E.ResetStreamCode.CANCELLED)  # no-op once fully acknowledged
        elif isinstance(msg, M.TrackStatus | M.Publish | M.SubscribeNamespace):
            session.reject_request(msg, E.SubscribeErrorCode.NOT_SUPPORTED, "not supported by this relay")

    def _refuse_subscribe(self, peer: _Peer, msg: M.Subscribe) -> tuple[int, str] | None:
        """Authorization, limits and filter sanity, before any state is made (section 9.9 codes)."""
        refusal = self.auth.check(Action.SUBSCRIBE, msg.track_namespace, msg.parameters)
        if refusal is not None:
            return int(refusal.code), refusal.reason
        lim = self.limits
        if namespace_bytes(msg.track_namespace) > lim.max_namespace_bytes:
            return E.SubscribeErrorCode.NOT_SUPPORTED, "namespace longer than this relay allows"
        if namespace_bytes(msg.track_namespace) + len(msg.track_name) > lim.max_track_name_bytes:
            return E.SubscribeErrorCode.NOT_SUPPORTED, "track name longer than this relay allows"
        if lim.max_subscriptions_per_session and len(peer.subs) >= lim.max_subscriptions_per_session:
            return E.SubscribeErrorCode.INTERNAL_ERROR, "subscription limit of this session reached"
        if (
            msg.filter_type == M.FilterType.ABSOLUTE_RANGE
            and msg.start_location is not None
            and msg.end_group is not None
            and msg.end_group < msg.start_location.group
        ):
            return E.SubscribeErrorCode.INVALID_RANGE, "end group before start group"
        return None

    def _on_subscribe(self, peer: _Peer, msg: M.Subscribe) -> None:
        session = peer.session
        refused = self._refuse_subscribe(peer, msg)
        path = C.relay_path(msg.parameters)  # set when a downstream relay sent it (relay.counters)
        if path is not None:
            n = self.counters.count_relay((msg.track_namespace, msg.track_name))
            log.info("downstream relay SUBSCRIBE #%d for %s", n, C.track_label((msg.track_namespace, msg.track_name)))
            looped = C.loop_reason(self.relay_id, path)
            if refused is None and looped is not None:
                self.counters.loops_refused += 1
                log.warning("refused SUBSCRIBE for %s: %s", C.track_label((msg.track_namespace, msg.track_name)), looped)
                refused = (E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST, looped)
        if refused is not None:
            session.subscribe_error(msg.request_id, refused[0], refused[1])
            return
        key = (msg.track_namespace, msg.track_name)
        track = self.tracks.get(key)
        if track is None:
            route = self.router.lookup(msg.track_namespace)
            # cascading (relay.upstream): no local publisher -> ask the upstream relay, if one is configured and up
            up = self.upstream.session() if route is None and self.upstream is not None else None
            if route is None and up is None:
                session.subscribe_error(
                    msg.request_id,
                    E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST,
                    "no publisher for this namespace",
                )
                return
            publisher = route[1] if route is not None else up
            assert publisher is not None
            try:
                rid = publisher.subscribe(
                    msg.track_namespace, msg.track_name, subscriber_priority=msg.subscriber_priority,
                    group_order=msg.group_order, forward=True,
                    parameters=C.forward_parameters(self.relay_id, path) if publisher is up else (),
                )  # fmt: skip
            except RequestBlocked as exc:
                session.subscribe_error(msg.request_id, E.SubscribeErrorCode.INTERNAL_ERROR, str(exc))
                return
            if publisher is up and self.upstream is not None:
                self.counters.count_upstream((msg.track_namespace, msg.track_name))
                self.upstream.count_subscribe(msg.track_namespace, msg.track_name)
            track = self.tracks[key] = Track(key, publisher, rid)
            if self.cache is not None:
                track.cache = self.cache.track(key)
            self.live.add(track)
            self.peer(publisher).upstream[rid] = track
        sub = Downstream(
            session, msg.request_id, msg.subscriber_priority, msg.forward, track, next(self._seq), request=msg
        )
        peer.subs[msg.request_id] = sub
        if track.ok is None:
            track.pending.append(sub)
        else:
            self._accept(track, sub)

    def _accept(self, track: Track, sub: Downstream) -> None:
        """Downstream SUBSCRIBE_OK with a relay-chosen alias that keeps the publisher's alias length."""
        assert track.ok is not None and track.alias is not None
        peer = self.peer(sub.session)
        sub.alias = choose_alias(track.alias, peer.aliases)
        sub.alias_bytes = encode_varint(sub.alias)
        peer.aliases.add(sub.alias)
        ok = track.ok
        largest = self._largest(track)
        replay = self._apply_filter(sub, largest)
        sub.session.subscribe_ok(
            sub.request_id, sub.alias, expires=ok.expires, group_order=ok.group_order,
            largest_location=largest,
        )  # fmt: skip
        track.subscribers.append(sub)
        if replay and sub.forward:
            self._replay(track, sub)
        track.refresh()
        self.hooks.subscriber_added(track, sub)

    @staticmethod
    def _range_end(sub: Downstream) -> None:
        """AbsoluteRange complete (section 5.1.2): PUBLISH_DONE SUBSCRIPTION_ENDED with the streams sent (9.12). The
        subscriber stays in the fan-out so streams of its last groups still finish; nothing new is admitted."""
        sub.range_done = True
        if not sub.session.closed:
            sub.session.publish_done(
                sub.request_id,
                E.PublishDoneCode.SUBSCRIPTION_ENDED,
                sub.streams_sent,
                "end of the requested range",
            )

    def _largest(self, track: Track) -> M.Location | None:
        """SUBSCRIBE_OK's Largest Location (section 9.8): the largest object we know of, upstream's or cached."""
        assert track.ok is not None
        best = track.ok.largest_location
        cached = track.cache.largest() if track.cache is not None else None
        if cached is not None and (best is None or cached > best):
            best = cached
        return best

    @staticmethod
    def _apply_filter(sub: Downstream, largest: M.Location | None) -> bool:
        """Set the subscriber's gate from its filter (section 5.1.2); True = objects from the cache are due first.

        LargestObject starts after the largest object: everything forwarded from now on qualifies, no gate.
        NextGroupStart starts at {largest group + 1, 0}. AbsoluteStart / AbsoluteRange start where asked; the part
        already cached (start <= largest) is replayed from the cache."""
        sub.joined_at = largest
        msg = sub.request
        if msg is None:
            return False
        ftype = msg.filter_type
        if ftype == M.FilterType.NEXT_GROUP_START:
            sub.start = M.Location(largest.group + 1, 0) if largest is not None else None
            return False
        if (
            ftype in (M.FilterType.ABSOLUTE_START, M.FilterType.ABSOLUTE_RANGE)
            and msg.start_location is not None
        ):
            sub.start = msg.start_location
            if ftype == M.FilterType.ABSOLUTE_RANGE:
                sub.end_group = msg.end_group
            return largest is not None and msg.start_location <= largest and sub.track.cache is not None
        return False

    def _replay(self, track: Track, sub: Downstream) -> None:
        """Send a late joiner what the cache holds from its start on, as received (alias spliced); a stream still
        arriving continues live on the same downstream stream. Afterwards only live objects follow: the gate opens."""
        tc, start = track.cache, sub.start
        assert tc is not None and start is not None
        for g in list(tc.groups.values()):
            if g.group < start.group or (sub.end_group is not None and g.group > sub.end_group):
                continue
            for d in g.datagrams:
                if (d.group, d.object_id) >= (start.group, start.object):
                    sub.session.send_datagram(
                        d.with_alias(sub.alias_bytes), (sub.subscriber_priority, d.data[0])
                    )
            for st in g.streams:
                if g.group == start.group and start.object > 0 and _first_object_id(st) < start.object:
                    continue  # stream granularity: never send objects before the start
                usid = None if st.done else self.forwarder.upstream_id(track, st)
                if not st.done and usid is None:
                    continue  # reset upstream: incomplete, and nothing more will come
                sid = sub.session.open_data_stream(
                    st.with_alias(sub.alias_bytes), st.done, (sub.subscriber_priority, st.publisher_priority)
                )
                sub.streams_sent += 1
                if usid is not None:
                    sub.streams[usid] = sid
        if sub.end_group is None or sub.end_group >= start.group:
            sub.start = None

    # --- FETCH (section 9.16) ---------------------------------------------------------------------------------------

    def _on_fetch(self, peer: _Peer, msg: M.Fetch) -> None:
        session = peer.session
        code, reason, found = self._fetch_objects(peer, msg)
        if code in (E.FetchErrorCode.NO_OBJECTS, E.FetchErrorCode.TRACK_DOES_NOT_EXIST) and self._fetch_upstream(
            peer, msg
        ):
            return  # a cache miss for a track the upstream relay serves: asked there (relay.upstream)
        if code is not None:
            session.reject_request(msg, code, reason)
            return
        if msg.group_order == M.GroupOrder.DESCENDING:  # groups newest first, objects ascending inside (9.16)
            found.sort(key=lambda o: (-o.location.group, o.location.object))
            order = M.GroupOrder.DESCENDING
        else:
            order = M.GroupOrder.ASCENDING
        end = max(o.location for o in found)
        if not session.fetch_ok(msg.request_id, end, group_order=order):
            return
        data = O.encode_fetch_header(O.FetchHeader(msg.request_id)) + b"".join(
            O.encode_fetch_object(o.fetch_object()) for o in found
        )
        peer.fetches[msg.request_id] = session.open_data_stream(
            data, True, (msg.subscriber_priority, found[0].publisher_priority)
        )

    def _fetch_upstream(self, peer: _Peer, msg: M.Fetch) -> bool:
        """Forward a FETCH the cache cannot answer to the upstream relay, when no local publisher has the namespace;
        a joining FETCH goes as the standalone range it covers (section 9.16.2)."""
        up = self.upstream.session() if self.upstream is not None else None
        if up is None:
            return False
        if msg.standalone is not None:
            standalone = msg.standalone
        else:
            j = msg.joining
            sub = peer.subs.get(j.joining_request_id) if j is not None else None
            if j is None or sub is None or sub.joined_at is None:
                return False
            largest = sub.joined_at
            first = j.joining_start if msg.fetch_type == M.FetchType.ABSOLUTE_JOINING else max(
                0, largest.group - j.joining_start
            )
            standalone = M.StandaloneFetch(
                sub.track.key[0], sub.track.key[1], M.Location(first, 0), M.Location(largest.group, largest.object + 1)
            )
        if self.router.lookup(standalone.track_namespace) is not None:
            return False
        path = C.relay_path(msg.parameters)
        if C.loop_reason(self.relay_id, path) is not None:
            return False
        return self.upstream_fetches.forward(
            up, peer.session, msg, standalone, C.forward_parameters(self.relay_id, path)
        )

    def _fetch_objects(self, peer: _Peer, msg: M.Fetch) -> tuple[int | None, str, list[FetchedObject]]:
        """(error code or None, reason, objects) for a FETCH, from the cache only (no upstream FETCH yet)."""
        FE = E.FetchErrorCode
        if msg.standalone is not None:
            sf = msg.standalone
            key: TrackKey = (sf.track_namespace, sf.track_name)
            start, end = sf.start_location, sf.end_location
            # End Location is "the end plus 1"; Object 0 means the whole End Group (section 9.16.1)
            end_excl = M.Location(end.group + 1, 0) if end.object == 0 else end
            if end_excl <= start:
                return FE.INVALID_RANGE, "end before start", []
        else:
            j = msg.joining
            assert j is not None
            sub = peer.subs.get(j.joining_request_id)
            if sub is None:
                return FE.INVALID_JOINING_REQUEST_ID, "no such subscription on this session", []
            key = sub.track.key
            largest = sub.joined_at
            if largest is None:
                return FE.NO_OBJECTS, "the subscription started with no objects", []
            if msg.fetch_type == M.FetchType.ABSOLUTE_JOINING:
                first = j.joining_start
            else:
                first = max(0, largest.group - j.joining_start)
            start = M.Location(first, 0)
            end_excl = M.Location(largest.group, largest.object + 1)  # up to where the subscription starts
        refusal = self.auth.check(Action.SUBSCRIBE, key[0], msg.parameters)
        if refusal is not None:
            return int(refusal.code), refusal.reason, []
        tc = self.cache.get(key) if self.cache is not None else None
        if tc is None:
            if key in self.tracks or self.router.lookup(key[0]) is not None:
                return FE.NO_OBJECTS, "nothing cached for this track", []
            return FE.TRACK_DOES_NOT_EXIST, "no such track", []
        found = list(tc.objects(start, end_excl))
        if not found:
            return FE.NO_OBJECTS, "no cached objects in the range", []
        return None, "", found

    def _on_upstream_ok(self, peer: _Peer, msg: M.SubscribeOk) -> None:
        track = peer.upstream.get(msg.request_id)
        if track is None:  # we unsubscribed meanwhile
            return
        track.ok = msg
        track.alias = msg.track_alias
        self.forwarder.bind(track)
        pending, track.pending = track.pending, []
        for sub in pending:
            if not sub.session.closed:
                self._accept(track, sub)

    def fail_upstream(self, track: Track, code: int, reason: str) -> bool:
        """Give up an upstream SUBSCRIBE still waiting for its answer (relay.upstream's answer timeout): UNSUBSCRIBE
        upstream, SUBSCRIBE_ERROR `code` to every subscriber waiting on it. False if it was answered meanwhile."""
        pub_peer = self._peers.get(track.publisher)
        if track.ok is not None or pub_peer is None or pub_peer.upstream.get(track.request_id) is not track:
            return False
        self._on_upstream_error(pub_peer, M.SubscribeError(track.request_id, code, reason))
        if not track.publisher.closed:
            track.publisher.unsubscribe(track.request_id)
        return True

    def _on_upstream_error(self, peer: _Peer, msg: M.SubscribeError) -> None:
        track = peer.upstream.pop(msg.request_id, None)
        if track is None:
            return
        self.tracks.pop(track.key, None)
        self.live.discard(track)
        for sub in track.pending:
            self._forget_request(sub)
            if not sub.session.closed:
                sub.session.subscribe_error(sub.request_id, msg.error_code, msg.reason)

    def _remove_subscriber(self, sub: Downstream) -> None:
        track = sub.track
        if sub in track.pending:
            track.pending.remove(sub)
        elif sub in track.subscribers:
            track.subscribers.remove(sub)
            track.refresh()
            sub_peer = self._peers.get(sub.session)
            if sub_peer is not None:
                sub_peer.aliases.discard(sub.alias)
            for sid in sub.streams.values():
                if not sub.session.closed:
                    sub.session.reset_data_stream(sid, E.ResetStreamCode.CANCELLED)
            sub.streams.clear()
            self.hooks.subscriber_removed(track, sub)
        if not track.subscribers and not track.pending:
            # the last subscriber left: unsubscribe upstream (section 9.11)
            if self.tracks.get(track.key) is track:
                del self.tracks[track.key]
            pub_peer = self._peers.get(track.publisher)
            still_upstream = (
                pub_peer is not None and pub_peer.upstream.pop(track.request_id, None) is not None
            )
            if still_upstream and not track.publisher.closed:
                track.publisher.unsubscribe(track.request_id)
            self.live.discard(track)
            self.forwarder.unbind(track)
            self.hooks.track_ended(track)

    def _forget_request(self, sub: Downstream) -> None:
        peer = self._peers.get(sub.session)
        if peer is not None:
            peer.subs.pop(sub.request_id, None)

    def _check_ending(self, track: Track) -> None:
        """PUBLISH_DONE downstream once the publisher's announced streams all arrived (section 9.12 Stream Count);
        forwarding state goes once those streams have finished too."""
        done = track.ending
        if done is None:
            return
        if not track.done_sent and track.upstream_streams >= done.stream_count:
            self._end_track(track, done.status_code, done.reason)
        if track.done_sent and track.open_streams <= 0:
            self._release(track)

    def _end_track(self, track: Track, status: int, reason: str) -> None:
        """The publisher ended the track (or left): PUBLISH_DONE to every subscriber, errors to pending ones.
        Streams still open keep flowing to the subscribers until they finish (the fan-out list stays)."""
        track.done_sent = True
        if self.tracks.get(track.key) is track:
            del self.tracks[track.key]
        for sub in track.subscribers:
            self._forget_request(sub)
            if not sub.session.closed:
                sub.session.publish_done(sub.request_id, status, sub.streams_sent, reason)
        for sub in track.pending:
            self._forget_request(sub)
            if not sub.session.closed:
                sub.session.subscribe_error(sub.request_id, E.SubscribeErrorCode.INTERNAL_ERROR, reason)
        track.pending.clear()

    def _release(self, track: Track) -> None:
        """Forget an ended track: no more forwarding, aliases free again, the fast path told."""
        if track not in self.live:
            return
        self.live.discard(track)
        self.forwarder.unbind(track)
        for sub in track.subscribers:
            # streams still open can never finish now (the publisher is gone): reset them (section 10.4)
            for sid in sub.streams.values():
                if not sub.session.closed:
                    sub.session.reset_data_stream(sid, E.ResetStreamCode.SESSION_CLOSED)
            sub.streams.clear()
            peer = self._peers.get(sub.session)
            if peer is not None:
                peer.aliases.discard(sub.alias)
            self.hooks.subscriber_removed(track, sub)
        track.subscribers.clear()
        track.fanout = track.user_fanout = ()
        self.hooks.track_ended(track)

    def _on_closed(self, session: MoqtSession, ev: SessionClosed) -> None:
        log.info(
            "session closed: code %#x %s (by %s)", ev.error_code, ev.reason, "peer" if ev.by_peer else "us"
        )
        peer = self._peers.pop(session, None)
        self.router.remove_owner(session)
        if peer is not None:
            peer.fetches.clear()
        self.upstream_fetches.forget(session)
        if peer is not None:
            peer.upstream.clear()
            for sub in list(peer.subs.values()):
                self._remove_subscriber(sub)
        for track in [t for t in self.live if t.publisher is session]:
            if not track.done_sent:
                self._end_track(track, E.PublishDoneCode.GOING_AWAY, "publisher went away")
            self._release(track)
        self.forwarder.forget_session(session)
        self.hooks.session_closed(session)


def _first_object_id(st: CachedStream) -> int:
    """The first Object ID on a cached subgroup stream (parsed on demand: late joiners only)."""
    parser = O.DataStreamParser()
    for ev in parser.feed(st.data()):
        if isinstance(ev, O.SubgroupObject):
            return ev.object_id
    return 1 << 62


def choose_alias(upstream_alias: int, used: set[int]) -> int:
    """The downstream alias: the publisher's own if free, else the lowest free one of the same varint length
    (so rewriting never moves bytes), else the lowest free one at all."""
    if upstream_alias not in used:
        return upstream_alias
    lo, hi = _VARINT_RANGES[varint_len(upstream_alias)]
    for candidate in range(lo, min(hi, lo + len(used) + 1) + 1):
        if candidate not in used:
            return candidate
    candidate = 0
    while candidate in used:
        candidate += 1
    return candidate
