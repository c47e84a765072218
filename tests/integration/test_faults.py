"""Faults on loopback with real processes (issue #10, item 2): the relay's SIGTERM and a publisher's SIGKILL.

- SIGTERM to the relay: every session (publisher and subscribers) gets GOAWAY (section 9.4), then the relay exits 0.
- SIGKILL to a `relay pub` mid-group: no CONNECTION_CLOSE reaches the relay, so it notices at its QUIC idle timeout
  (`relay --idle-timeout`, 3 s here); then every subscriber gets PUBLISH_DONE, and can subscribe again once a new
  publisher announces the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.quic import MoqtClient, RequestFailed, Subscription, connect
from tests.integration.relay_process import (
    RELAY_MISSING,
    LineReader,
    RelayProcess,
    have_relay,
    relay_env,
    running_relay,
    stop,
)
from tests.support import REPO, require

NAMESPACE = "live/cam1"
IDLE = 3.0


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def publisher(relay: RelayProcess) -> tuple[subprocess.Popen[str], LineReader]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "pub", "--url", relay.url, "--ca", str(relay.ca), "--namespace", NAMESPACE,
         "--mode", "stream-per-group", "--gop", "60", "--fps", "30", "--bitrate", "200k", "--duration", "120"],
        cwd=REPO, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    if reader.wait_for("announced", 15) is None:
        stop(proc)
        raise AssertionError(f"relay pub did not announce: {reader.text()} {relay.log()[-1500:]}")
    return proc, reader


@contextlib.asynccontextmanager
async def keepalive(client: MoqtClient, every: float = 0.5) -> AsyncIterator[None]:
    """PINGs from the subscriber, so its own session outlives the idle timeout that ends the dead publisher's."""

    async def loop() -> None:
        uid = 0
        while True:
            uid += 1
            client.conn._quic.send_ping(uid)
            client.conn.transmit()
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def subscribe_retrying(client: MoqtClient, deadline: float) -> Subscription:
    """SUBSCRIBE until the relay knows a publisher (a new one may still be announcing)."""
    while True:
        try:
            return await client.subscribe(NAMESPACE, "video")
        except RequestFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture
def relay(tmp_path: Path) -> RelayProcess:  # type: ignore[misc]
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay", extra=["--idle-timeout", str(IDLE)]) as proc:
        yield proc


def test_publisher_killed_mid_group_ends_subscriptions_then_resubscribe_works(relay: RelayProcess) -> None:
    pub, _ = publisher(relay)
    pub2: subprocess.Popen[str] | None = None
    try:

        async def scenario() -> None:
            nonlocal pub2
            client = await connect(relay.url, ca=str(relay.ca))
            try:
                async with keepalive(client):
                    subs = [await client.subscribe(NAMESPACE, "video") for _ in range(2)]
                    seen = [await subs[0].next(10) for _ in range(5)]
                    assert all(o is not None and o.object_id > 0 or o is not None for o in seen)
                    os.kill(pub.pid, signal.SIGKILL)  # mid-group: GOP 60 at 30 fps is 2 s per group
                    pub.wait(5)
                    killed = time.monotonic()
                    for sub in subs:  # drain to the end: None once PUBLISH_DONE (or the stream resets) arrives
                        while await sub.next(IDLE + 15) is not None:
                            pass
                    noticed = time.monotonic() - killed
                    assert all(s.done is not None for s in subs), "the relay must end each subscription"
                    assert noticed < IDLE + 10, f"PUBLISH_DONE {noticed:.1f} s after the kill"
                    assert client.closed.done() is False, "only the subscription ends, not the session"
                    pub2 = publisher(relay)[0]
                    again = await subscribe_retrying(client, time.monotonic() + 15)
                    assert await again.next(10) is not None, "a new publisher's objects reach a resubscriber"
            finally:
                await client.close()

        run(scenario)
    finally:
        stop(pub)
        if pub2 is not None:
            stop(pub2)


def test_sigterm_sends_goaway_to_every_session_then_exits_0(relay: RelayProcess) -> None:
    async def scenario() -> None:
        pub = await connect(relay.url, ca=str(relay.ca))
        await pub.publish_namespace(NAMESPACE)
        subs = [await connect(relay.url, ca=str(relay.ca)) for _ in range(3)]
        idle = await connect(relay.url, ca=str(relay.ca))  # set up, never made a request
        clients = [pub, *subs, idle]
        try:
            relay.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*(c.goaway.wait() for c in clients)), 10)
            closed = await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in clients)), 10)
            assert all(c.by_peer for c in closed)
        finally:
            for c in clients:
                await c.close()

    run(scenario)
    assert relay.proc.wait(10) == 0, relay.log()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_stopped_subscriber_cannot_grow_relay_memory(tmp_path: Path) -> None:
    """A `relay sub` frozen with SIGSTOP (no ACK, no credit) while a publisher sends 16 Mbit/s in stream mode. The
    relay's RSS is compared with the same relay's growth with a subscriber that reads (that one grew 1.4 MiB/s
    until relay/cache.py freed evicted groups at once; now it is flat, docs/operations.md), so the verdict is
    relative: over 16 s the stall may add at most 8 MiB to what the same relay grows with a reading subscriber
    (unbounded, it would add the ~32 MB sent meanwhile; relay/moqt/session.py resets streams past 2 MiB, or all of a
    session's past 8 MiB)."""
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay") as relay:  # default idle timeout (30 s): the stall outlasts the window
        pub = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "pub", "--url", relay.url, "--ca", str(relay.ca), "--namespace",
             NAMESPACE, "--mode", "stream-per-group", "--gop", "30", "--fps", "30", "--bitrate", "16M",
             "--duration", "90"],
            cwd=REPO, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        subs: list[subprocess.Popen[str]] = []

        def subscriber() -> subprocess.Popen[str]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "sub", "--url", relay.url, "--ca", str(relay.ca), "--namespace",
                 NAMESPACE, "--duration", "80"],
                cwd=REPO, env=relay_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            subs.append(proc)
            return proc

        def window(seconds: float = 16) -> int:
            start = _rss(relay.proc.pid)
            time.sleep(seconds)
            return _rss(relay.proc.pid) - start

        try:
            assert pub.stdout is not None and LineReader(pub.stdout).wait_for("announced", 15) is not None
            reader = subscriber()
            time.sleep(8)  # the track cache (8 MiB) fills
            reading = window()
            stop(reader)
            frozen = subscriber()
            time.sleep(4)  # subscribed and receiving
            os.kill(frozen.pid, signal.SIGSTOP)
            time.sleep(6)  # the stall bound (8 + 2 MiB) fills
            stalled = window()
            assert relay.proc.poll() is None, relay.log()
            print(f"relay RSS over 16 s at 16 Mbit/s: reading subscriber +{reading / 2**20:.1f} MiB, "
                  f"stopped subscriber +{stalled / 2**20:.1f} MiB")
            assert stalled < reading + (8 << 20), (reading, stalled)
        finally:
            for proc in subs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                stop(proc)
            stop(pub)
