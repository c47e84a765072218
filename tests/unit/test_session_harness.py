"""In-memory network for sans-I/O MoQT tests: pairs of aioquic QuicConnections, datagrams pumped between them.

Like aioquic's own tests: no sockets, a fake clock, deterministic and fast. Shared by test_session*.py and
test_relay*.py (import it from `tests.unit.test_session_harness`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aioquic.quic.connection import QuicConnection

from relay.moqt import messages as M
from relay.moqt.session import ControlMessageReceived, MoqtEvent, MoqtSession, SessionClosed
from relay.quic import make_configuration
from relay.tls import CertPaths, ensure_certificates

T = TypeVar("T")
CLIENT_ADDR = ("198.18.0.1", 40000)
SERVER_ADDR = ("198.18.0.2", 4443)
_CERTS: dict[str, CertPaths] = {}


def certs(tmp_root: Path) -> CertPaths:
    """One CA + leaf per test run (key generation is the slow part)."""
    if "p" not in _CERTS:
        _CERTS["p"] = ensure_certificates(tmp_root, "localhost")
    return _CERTS["p"]


@dataclass(eq=False)
class Endpoint:
    name: str
    quic: QuicConnection
    session: MoqtSession
    handler: Callable[[MoqtSession, MoqtEvent], None] | None = None
    events: list[MoqtEvent] = field(default_factory=list)
    peer: Endpoint | None = None
    addr: tuple[str, int] = CLIENT_ADDR

    def messages(self, kind: type[T]) -> list[T]:
        return [
            e.message
            for e in self.events
            if isinstance(e, ControlMessageReceived) and isinstance(e.message, kind)
        ]

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    def closed(self) -> SessionClosed | None:
        found = self.of(SessionClosed)
        return found[0] if found else None


class Net:
    """Every endpoint pair on one fake clock; `pump()` runs until nothing more is sent."""

    def __init__(self, cert_paths: CertPaths) -> None:
        self.certs = cert_paths
        self.now = 1000.0
        self.endpoints: list[Endpoint] = []
        # a hook to drop or alter datagrams in flight: (sender, data) -> data or None
        self.filter: Callable[[Endpoint, bytes], bytes | None] | None = None

    def pair(
        self,
        name: str = "c",
        *,
        server_handler: Callable[[MoqtSession, MoqtEvent], None] | None = None,
        client_max_request_id: int = 100,
        server_max_request_id: int = 100,
        client_datagrams: bool = True,
        setup: bool = True,
        client_first: bytes | None = None,
    ) -> tuple[Endpoint, Endpoint]:
        """A client and a server endpoint; `client_first` replaces CLIENT_SETUP with raw control-stream bytes."""
        ccfg = make_configuration(is_client=True, ca=str(self.certs.ca), server_name="localhost")
        if not client_datagrams:
            ccfg.max_datagram_frame_size = None
        scfg = make_configuration(is_client=False, cert=str(self.certs.cert), key=str(self.certs.key))
        cq = QuicConnection(configuration=ccfg)
        sq = QuicConnection(
            configuration=scfg, original_destination_connection_id=cq.original_destination_connection_id
        )
        session_cls = MoqtSession if client_first is None else _raw_first(client_first)
        client = Endpoint(
            name, cq, session_cls(cq, max_request_id=client_max_request_id, decode_objects=True)
        )
        server = Endpoint(
            name + "@relay", sq, MoqtSession(sq, max_request_id=server_max_request_id), server_handler,
            addr=SERVER_ADDR,
        )  # fmt: skip
        client.peer, server.peer = server, client
        self.endpoints += [client, server]
        cq.connect(SERVER_ADDR, now=self.now)
        if setup:
            self.pump()
        return client, server

    def _deliver(self, ep: Endpoint) -> None:
        ep.session.pump()
        while (ev := ep.session.next_event()) is not None:
            ep.events.append(ev)
            if ep.handler is not None:
                ep.handler(ep.session, ev)

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = False
            for ep in list(self.endpoints):
                self._deliver(ep)
                assert ep.peer is not None
                for data, _ in ep.session.datagrams_to_send(self.now):
                    moved = True
                    if self.filter is not None:
                        filtered = self.filter(ep, data)
                        if filtered is None:
                            continue
                        data = filtered
                    ep.peer.quic.receive_datagram(data, ep.addr, now=self.now)
            for ep in self.endpoints:
                self._deliver(ep)
            self.now += 0.001
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """Let timers fire (loss recovery, idle) in small steps."""
        end = self.now + seconds
        while self.now < end:
            self.now += 0.01
            for ep in self.endpoints:
                timer = ep.quic.get_timer()
                if timer is not None and timer <= self.now:
                    ep.quic.handle_timer(self.now)
            self.pump()


def _raw_first(first: bytes) -> type[MoqtSession]:
    class RawFirst(MoqtSession):
        def _on_handshake(self, event: Any) -> None:
            self._control_id = self.quic.get_next_available_stream_id()
            self.quic.send_stream_data(self._control_id, first)

    return RawFirst


@pytest.fixture
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield Net(certs(tmp_path_factory.getbasetemp() / "moqt-certs"))


def ns(*parts: str) -> M.Namespace:
    return tuple(p.encode() for p in parts)


def control(ep: Endpoint, data: bytes) -> None:
    """Write raw bytes on `ep`'s control stream (bypassing the session's own checks)."""
    sid = ep.session._control_id
    assert sid is not None
    ep.quic.send_stream_data(sid, data)


def test_harness_sets_up_a_session_in_memory(net: Net) -> None:
    client, server = net.pair()
    assert client.session.ready and server.session.ready
    assert client.session.version == server.session.version == M.DRAFT_14
    assert client.closed() is None and server.closed() is None
