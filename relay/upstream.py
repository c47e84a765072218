"""Cascading relays: one client session from this relay to an upstream relay (`relay --upstream moqt://HOST:PORT`).

Why it is this small: the upstream session is handed to the same `Relay` as every accepted session, so the relay
treats the upstream relay exactly like a local publisher. When a SUBSCRIBE names a namespace no local publisher
announced, `Relay` asks `UpstreamLink.session()` and subscribes there; aggregation (one upstream SUBSCRIBE per
track), SUBSCRIBE_OK after the upstream's, SUBSCRIBE_ERROR with the upstream's code, object forwarding and
PUBLISH_DONE when the upstream session ends all come from the existing relay code, unchanged.

The link is opened at start and reopened (after `retry` seconds) whenever it fails or ends, so a restarted upstream
is picked up without restarting this relay. A PING every `keepalive` seconds keeps an idle link from timing out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from aioquic.quic.connection import QuicConnection

from relay.moqt import errors as E
from relay.moqt import messages as M
from relay.moqt import objects as O
from relay.moqt.session import DataStreamData, DataStreamReset, FetchStreamOpened, MoqtSession, RequestBlocked
from relay.quic import MoqtConnection, SessionHandler, make_configuration, parse_url

log = logging.getLogger("relay.upstream")


def _label(key: tuple[tuple[bytes, ...], bytes]) -> str:
    return "/".join(f.decode(errors="replace") for f in key[0]) + "/" + key[1].decode(errors="replace")


@dataclass
class UpstreamLink:
    """The one client session to the upstream relay, kept open while this relay runs."""

    url: str
    handler: SessionHandler
    ca: str | None = None
    insecure: bool = False
    retry: float = 1.0
    keepalive: float = 5.0
    connect_timeout: float = 5.0
    conn: MoqtConnection | None = None
    connects: int = 0  # sessions set up so far (1 + reconnections)
    #: SUBSCRIBEs sent upstream per (namespace, track): the aggregation is visible in this counter and the log
    subscribes: Counter[tuple[tuple[bytes, ...], bytes]] = field(default_factory=Counter)
    #: an upstream SUBSCRIBE unanswered this long is given up (TIMEOUT): breaks waits that no loop check can see
    answer_timeout: float = 8.0
    _asked: dict[tuple[tuple[bytes, ...], bytes], float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _transport: asyncio.DatagramTransport | None = None

    def __post_init__(self) -> None:
        parse_url(self.url)  # ValueError at once for a malformed URL

    def session(self) -> MoqtSession | None:
        """The upstream session if it is set up and open, else None (the relay then refuses the SUBSCRIBE)."""
        conn = self.conn
        if conn is None or not conn.session.ready or conn.session.closed:
            return None
        return conn.session

    def count_subscribe(self, namespace: tuple[bytes, ...], track: bytes) -> None:
        """Record one SUBSCRIBE sent upstream (called by the relay hook)."""
        self.subscribes[(namespace, track)] += 1
        self._asked[(namespace, track)] = time.monotonic()
        log.info(
            "upstream SUBSCRIBE #%d for %s/%s",
            self.subscribes[(namespace, track)],
            "/".join(f.decode(errors="replace") for f in namespace),
            track.decode(errors="replace"),
        )

    def expire(self, now: float) -> int:
        """Fail upstream SUBSCRIBEs unanswered for `answer_timeout` s with TIMEOUT (0x2); how many were failed."""
        conn = self.conn
        fail = getattr(self.handler, "fail_upstream", None)
        tracks = getattr(self.handler, "tracks", None)
        if conn is None or fail is None or tracks is None:
            return 0
        failed = 0
        for key, asked in list(self._asked.items()):
            track = tracks.get(key)
            if track is None or track.ok is not None or track.publisher is not conn.session:
                del self._asked[key]
            elif now - asked >= self.answer_timeout:
                del self._asked[key]
                reason = f"no answer from the upstream relay in {self.answer_timeout:g} s"
                if fail(track, E.SubscribeErrorCode.TIMEOUT, reason):
                    failed += 1
                    log.warning("upstream SUBSCRIBE for %s unanswered: given up (TIMEOUT)", _label(key))
        return failed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Close the session (the upstream relay ends our subscriptions there) and stop reconnecting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._close()

    def _close(self) -> None:
        conn = self.conn
        if conn is not None and not conn.session.closed:
            with contextlib.suppress(Exception):
                conn.close_session(E.SessionErrorCode.NO_ERROR, "relay shutting down")
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def _run(self) -> None:
        while True:
            try:
                await self._connect()
                self.connects += 1
                log.warning("upstream %s connected", self.url)
                await self._hold()
                log.warning("upstream %s session ended", self.url)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.warning("upstream %s unavailable: %s", self.url, exc)
            self._close()
            await asyncio.sleep(self.retry)

    async def _connect(self) -> None:
        host, port, path = parse_url(self.url)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        config = make_configuration(is_client=True, ca=self.ca, insecure=self.insecure, server_name=host)
        quic = QuicConnection(configuration=config)
        transport, proto = await loop.create_datagram_endpoint(
            # decode_objects=False: the relay forwards upstream bytes as received (alias spliced), like a publisher's
            lambda: MoqtConnection(quic, handler=self.handler, path=path, decode_objects=False),
            family=family,
            local_addr=("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0),
        )
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.conn = cast(MoqtConnection, proto)
        self.conn.connect(cast(Any, addr))
        deadline = loop.time() + self.connect_timeout
        while not self.conn.session.ready:
            if self.conn.session.closed:
                raise ConnectionError("upstream refused the MoQT session")
            if loop.time() > deadline:
                raise TimeoutError(f"no MoQT setup within {self.connect_timeout}s")
            await asyncio.sleep(0.02)

    async def _hold(self) -> None:
        """Until the session ends: PING now and then (an idle link must not time out under live subscriptions)."""
        conn = self.conn
        assert conn is not None
        waited = 0.0
        while not conn.session.closed:
            await asyncio.sleep(0.1)
            waited += 0.1
            self.expire(time.monotonic())
            if waited >= self.keepalive:
                waited = 0.0
                conn._quic.send_ping(0)
                conn.transmit()


@dataclass(eq=False)
class _Fetch:
    """One downstream FETCH this relay forwarded upstream."""

    down: MoqtSession
    request: M.Fetch  # the downstream FETCH (its request id, priority; reject_request needs the message)
    cancelled: bool = False


class UpstreamFetches:
    """FETCHes the local cache cannot answer, forwarded to the upstream relay and relayed back byte-exact.

    The downstream FETCH becomes one standalone FETCH upstream (a joining FETCH is turned into the standalone range
    it stands for). FETCH_OK / FETCH_ERROR are passed on with their fields and codes; the upstream's FETCH_HEADER
    stream is copied to a new fetch stream downstream with only the header's Request ID replaced, every object
    byte after it unchanged (draft-14 section 10.4.4), FIN and RESET_STREAM included."""

    def __init__(self) -> None:
        self._by_request: dict[tuple[MoqtSession, int], _Fetch] = {}  # (upstream session, our request id)
        self._streams: dict[tuple[MoqtSession, int], tuple[_Fetch, int]] = {}  # upstream stream -> ours
        #: FETCHes forwarded upstream per track
        self.forwarded: Counter[tuple[tuple[bytes, ...], bytes]] = Counter()

    def forward(
        self, up: MoqtSession, down: MoqtSession, msg: M.Fetch, standalone: M.StandaloneFetch,
        parameters: M.Parameters,
    ) -> bool:
        """Send the FETCH upstream; False when the upstream cannot take a request now (answer locally then)."""
        try:
            rid = up.fetch(
                msg.subscriber_priority, msg.group_order, standalone=standalone,
                fetch_type=M.FetchType.STANDALONE, parameters=parameters,
            )  # fmt: skip
        except RequestBlocked:
            return False
        self._by_request[(up, rid)] = _Fetch(down, msg)
        key = (standalone.track_namespace, standalone.track_name)
        self.forwarded[key] += 1
        log.info("upstream FETCH #%d for %s", self.forwarded[key],
                 "/".join(f.decode(errors="replace") for f in key[0]) + "/" + key[1].decode(errors="replace"))
        return True

    def answer(self, up: MoqtSession, msg: M.FetchOk | M.FetchError) -> bool:
        """The upstream's FETCH_OK / FETCH_ERROR, passed on; False if it answers no FETCH of ours."""
        f = self._by_request.get((up, msg.request_id))
        if f is None:
            return False
        if isinstance(msg, M.FetchError):
            del self._by_request[(up, msg.request_id)]
            if not f.down.closed:
                f.down.reject_request(f.request, msg.error_code, msg.reason)
        elif not f.down.closed:
            f.cancelled = not f.down.fetch_ok(
                f.request.request_id, msg.end_location, group_order=msg.group_order,
                end_of_track=msg.end_of_track, parameters=(),
            )  # fmt: skip
        return True

    def opened(self, up: MoqtSession, ev: FetchStreamOpened) -> None:
        f = self._by_request.get((up, ev.request_id))
        if f is None or f.cancelled or f.down.closed:
            return
        header = O.encode_fetch_header(O.FetchHeader(f.request.request_id))
        sid = f.down.open_data_stream(header + ev.data, ev.end_stream, (f.request.subscriber_priority, 0))
        if ev.end_stream:
            self._by_request.pop((up, ev.request_id), None)
        else:
            self._streams[(up, ev.stream_id)] = (f, sid)

    def data(self, up: MoqtSession, ev: DataStreamData) -> bool:
        """More bytes of an upstream fetch stream, copied downstream; False if the stream is not a fetch stream."""
        entry = self._streams.get((up, ev.stream_id))
        if entry is None:
            return False
        f, sid = entry
        if not f.down.closed:
            f.down.send_stream_data(sid, ev.data, ev.end_stream)
        if ev.end_stream:
            self._done(up, ev.stream_id, f)
        return True

    def reset(self, up: MoqtSession, ev: DataStreamReset) -> bool:
        entry = self._streams.get((up, ev.stream_id))
        if entry is None:
            return False
        f, sid = entry
        if not f.down.closed:
            f.down.reset_data_stream(sid, ev.error_code)
        self._done(up, ev.stream_id, f)
        return True

    def _done(self, up: MoqtSession, stream_id: int, f: _Fetch) -> None:
        del self._streams[(up, stream_id)]
        for key in [k for k, v in self._by_request.items() if v is f]:
            del self._by_request[key]

    def forget(self, session: MoqtSession) -> None:
        """A session closed (upstream or downstream): drop its fetches; open downstream streams are reset."""
        for key, (f, sid) in list(self._streams.items()):
            if key[0] is session or f.down is session:
                del self._streams[key]
                if f.down is not session and not f.down.closed:
                    f.down.reset_data_stream(sid, E.ResetStreamCode.SESSION_CLOSED)
        for key in [k for k, f in self._by_request.items() if k[0] is session or f.down is session]:
            f = self._by_request.pop(key)
            if key[0] is session and not f.down.closed and not f.cancelled:
                with contextlib.suppress(ValueError):  # already answered with FETCH_OK: the stream reset says it
                    f.down.reject_request(f.request, E.FetchErrorCode.INTERNAL_ERROR, "upstream relay went away")
