"""The real asyncio relay on loopback: one bad session is closed alone; unknown tracks fail fast; the CLI serves.

The first two tests run the server in-process (fast, and the event loop is the one users get); the last one runs
`relay --hal none --listen 127.0.0.1:0` as a child process to check its startup lines, port 0 and SIGTERM -> GOAWAY.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from relay.moqt import errors as E
from relay.quic import MoqtClient, RequestFailed, connect, make_configuration, serve_moqt
from relay.relay import Relay
from relay.tls import ensure_certificates
from tests.support import REPO

NS = ("live", "cam1")


@asynccontextmanager
async def relay_server(state: Path) -> AsyncIterator[tuple[str, str, Relay]]:
    """An in-process relay on 127.0.0.1 (port 0); yields (url, ca path, relay) and always stops it."""
    paths = ensure_certificates(state, "127.0.0.1")
    config = make_configuration(is_client=False, cert=str(paths.cert), key=str(paths.key))
    relay = Relay()
    server = await serve_moqt("127.0.0.1", 0, configuration=config, handler=relay)
    try:
        yield f"moqt://127.0.0.1:{server.port}", str(paths.ca), relay
    finally:
        for conn in list(server.connections):
            conn.close_session(0, "test over")
        server.close()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 20))


def test_malformed_control_message_closes_only_that_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_server(tmp_path) as (url, ca, relay):
            clients: list[MoqtClient] = []
            try:
                pub = await connect(url, ca=ca)
                good = await connect(url, ca=ca)
                bad = await connect(url, ca=ca)
                clients += [pub, good, bad]
                await pub.publish_namespace(NS)
                track = pub.publish_track(NS, "video")
                sub = await good.subscribe(NS, "video")
                await track.wait_subscribed(2)
                # SUBSCRIBE (0x03) whose 2-byte payload is not a SUBSCRIBE: the relay must close *that* session
                bad.conn._quic.send_stream_data(0, b"\x03\x00\x02\xff\xff")
                bad.conn.transmit()
                closed = await asyncio.wait_for(bad.wait_closed(), 3)
                assert (closed.error_code, closed.by_peer) == (E.SessionErrorCode.PROTOCOL_VIOLATION, True)
                for i in range(3):
                    track.send_datagram(0, i, f"dgram {i}".encode(), 1)
                stream = track.open_subgroup(1, 0, 1)
                stream.send(0, b"on a stream")
                stream.end()
                got = [await sub.next(3) for _ in range(4)]
                assert sorted(o.payload for o in got if o is not None) == sorted(
                    [b"dgram 0", b"dgram 1", b"dgram 2", b"on a stream"]
                )
                assert not good.closed.done() and not pub.closed.done()
            finally:
                for c in clients:
                    await c.close()

    run(scenario)


def test_subscribe_to_unknown_namespace_fails_within_100ms(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with relay_server(tmp_path) as (url, ca, _):
            client = await connect(url, ca=ca)
            try:
                start = time.monotonic()
                with pytest.raises(RequestFailed) as info:
                    await client.subscribe(("nobody", "here"), "video", timeout=2)
                elapsed = time.monotonic() - start
                assert info.value.code == E.SubscribeErrorCode.TRACK_DOES_NOT_EXIST
                assert elapsed < 0.1, f"SUBSCRIBE_ERROR took {elapsed * 1000:.1f} ms"
            finally:
                await client.close()

    run(scenario)


def test_cli_serves_on_port_0_and_sends_goaway_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "relay.cli",
        "--hal",
        "none",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first, second = proc.stdout.readline().strip(), proc.stdout.readline().strip()
        assert first.startswith("listening on moqt://127.0.0.1:"), (first, proc.stderr)
        port = int(first.rsplit(":", 1)[1])
        assert port > 0 and second == f"ca: {tmp_path / 'ca.pem'}"

        async def scenario() -> None:
            client = await connect(f"moqt://127.0.0.1:{port}", ca=second[4:])
            try:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(client.goaway.wait(), 3)
                closed = await asyncio.wait_for(client.wait_closed(), 3)
                assert closed.by_peer
            finally:
                await client.close()

        run(scenario)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_cli_explains_a_wrong_listen_address(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "relay.cli",
        "--hal",
        "none",
        "--listen",
        "4443",
        "--state-dir",
        str(tmp_path),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr and "127.0.0.1:4443" in result.stderr
