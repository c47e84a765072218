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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from aioquic.quic.connection import QuicConnection

from relay.moqt import errors as E
from relay.moqt.session import MoqtSession
from relay.quic import MoqtConnection, SessionHandler, make_configuration, parse_url

log = logging.getLogger("relay.upstream")


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
        log.info(
            "upstream SUBSCRIBE #%d for %s/%s",
            self.subscribes[(namespace, track)],
            "/".join(f.decode(errors="replace") for f in namespace),
            track.decode(errors="replace"),
        )

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
            if waited >= self.keepalive:
                waited = 0.0
                conn._quic.send_ping(0)
                conn.transmit()
