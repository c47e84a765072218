"""Soak (issue #10, item 1): a relay under steady load and churn keeps its memory, descriptors and state flat.

For MOQ_SOAK_SECONDS (default 120 in CI; `MOQ_SOAK_SECONDS=600` for the on-demand run, docs/operations.md):

- one `relay pub` at 4 Mbit/s in stream-per-group mode (a stream per group: the per-stream state must go away);
- one `relay sub --subscribers 2` (two sessions) that stays the whole time and checks every object;
- IDLE_SESSIONS sessions that only PING;
- churn: a client connects, subscribes, reads, unsubscribes, subscribes again, then either closes or vanishes
  without a CONNECTION_CLOSE (every third one; the relay drops it at its idle timeout, 5 s here), and again.

Every SAMPLE_EVERY seconds the relay's RSS, open fds, threads, sessions and subscribers are sampled. After the warm-up
(the cache fills in its first groups), the verdict:

- RSS: the least-squares slope is under MAX_RSS_SLOPE (80 KiB/s). Why that figure: the leak this test was written
  for (evicted cache groups kept by a reference cycle, relay/cache.py `_release`) grew 1.4 MiB/s at 16 Mbit/s, so
  ~350 KiB/s at this rate: over 4x the bound; the fixed relay measures ~25 KiB/s (native heap, not Python objects:
  gc counts and Python blocks stay flat), so the bound leaves 3x for a loaded CI machine. Over 600 s it allows at
  most 47 MiB.
- fds and threads: no more than 2 above their value at the end of the warm-up (a UDP socket serves every session).
- sessions and subscribers never exceed what the scenario can have open at once (churn leftovers are bounded by
  the idle timeout), and once everyone left, the relay holds no session, subscription or track.
- the staying subscribers got every object between their first and last: no sequence gap, no duplicate, no
  integrity error, and at least 90 % of fps x duration objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from relay.quic import MoqtClient, RequestFailed, connect
from relay.stats import read_socket
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

SOAK_SECONDS = float(os.environ.get("MOQ_SOAK_SECONDS", "120"))
WARMUP = max(20.0, SOAK_SECONDS * 0.2)
SAMPLE_EVERY = 3.0
IDLE_TIMEOUT = 5.0
IDLE_SESSIONS = 20
STEADY = 2
FPS = 30
MAX_RSS_SLOPE = 80 << 10  # bytes per second, see the module docstring
NAMESPACE = "soak/cam1"


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    threads: int
    sessions: int
    subscribers: int


@dataclass
class Churn:
    cycles: int = 0
    vanished: int = 0
    objects: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _stats_socket(relay: RelayProcess) -> Path:
    relay.reader.wait_for("stats socket: ", 15)
    for line in relay.log().splitlines():
        if line.startswith("stats socket: "):
            return Path(line.split(": ", 1)[1].strip())
    raise AssertionError(f"the relay printed no stats socket:\n{relay.log()}")


async def _sample(relay: RelayProcess, sock: Path, t0: float) -> Sample:
    pid = relay.proc.pid
    snap = await read_socket(sock)
    return Sample(
        time.monotonic() - t0, _status(pid, "VmRSS") * 1024, len(os.listdir(f"/proc/{pid}/fd")),
        _status(pid, "Threads"), int(snap["sessions"]), int(snap["subscribers"]),
    )  # fmt: skip


async def _idle(relay: RelayProcess, stop_at: float) -> None:
    """Sessions that never make a request: PING often enough to outlive the idle timeout."""
    clients = [await connect(relay.url, ca=str(relay.ca)) for _ in range(IDLE_SESSIONS)]
    try:
        uid = 0
        while time.monotonic() < stop_at:
            uid += 1
            for c in clients:
                c.conn._quic.send_ping(uid)
                c.conn.transmit()
            await asyncio.sleep(1.0)
    finally:
        for c in clients:
            await c.close()


async def _churn(relay: RelayProcess, stop_at: float, churn: Churn) -> None:
    while time.monotonic() < stop_at:
        churn.cycles += 1
        client: MoqtClient | None = None
        try:
            client = await connect(relay.url, ca=str(relay.ca))
            for _ in range(2):  # subscribe, read, unsubscribe, and once more in the same session
                sub = await client.subscribe(NAMESPACE, "video")
                for _ in range(5):
                    if await sub.next(5) is not None:
                        churn.objects += 1
                await client.unsubscribe(sub)
            if churn.cycles % 3 == 0:  # vanish: no CONNECTION_CLOSE, the relay finds out at its idle timeout
                client.conn.transmit = lambda: None  # type: ignore[method-assign]  # no more packets, no timer
                client._transport.close()
                churn.vanished += 1
                client = None
        except RequestFailed:
            churn.refused += 1  # the publisher is not announced yet (start) or gone (end)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on: the soak must see every failure
            churn.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                await client.close()
        await asyncio.sleep(0.3)


def _slope(samples: list[Sample], attr: str) -> float:
    xs = [s.t for s in samples]
    ys = [float(getattr(s, attr)) for s in samples]
    return statistics.linear_regression(xs, ys).slope


def test_soak_relay_stays_flat_and_delivers_every_object(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay", extra=["--idle-timeout", str(IDLE_TIMEOUT)]) as relay:
        sock = _stats_socket(relay)
        pub = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "pub", "--url", relay.url, "--ca", str(relay.ca), "--namespace",
             NAMESPACE, "--mode", "stream-per-group", "--gop", "30", "--fps", str(FPS), "--bitrate", "4M",
             "--duration", str(SOAK_SECONDS + 30)],
            cwd=REPO, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        steady: subprocess.Popen[str] | None = None
        try:
            assert pub.stdout is not None
            assert LineReader(pub.stdout).wait_for("announced", 15) is not None, relay.log()
            report = tmp_path / "steady.json"
            steady = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "sub", "--url", relay.url, "--ca", str(relay.ca), "--namespace",
                 NAMESPACE, "--subscribers", str(STEADY), "--duration", str(SOAK_SECONDS), "--json", str(report)],
                cwd=REPO, env=relay_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            churn = Churn()

            async def scenario() -> list[Sample]:
                t0 = time.monotonic()
                stop_at = t0 + SOAK_SECONDS
                tasks = [
                    asyncio.create_task(_idle(relay, stop_at)),
                    asyncio.create_task(_churn(relay, stop_at, churn)),
                ]
                samples: list[Sample] = []
                try:
                    while time.monotonic() < stop_at:
                        await asyncio.sleep(SAMPLE_EVERY)
                        assert relay.proc.poll() is None, relay.log()[-3000:]
                        samples.append(await _sample(relay, sock, t0))
                    await asyncio.wait_for(asyncio.gather(*tasks), 60)
                finally:
                    for t in tasks:
                        t.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await t
                return samples

            samples = asyncio.run(scenario())
            assert steady.wait(60) == 0, steady.stderr.read() if steady.stderr else ""
            stop(pub)

            async def settled() -> Sample:
                """Everyone left: within the idle timeout (vanished clients) the relay holds nothing."""
                deadline = time.monotonic() + IDLE_TIMEOUT + 15
                while True:
                    s = await _sample(relay, sock, 0)
                    snap = await read_socket(sock)
                    empty = s.sessions == 0 and s.subscribers == 0 and snap["tracks"] == 0
                    if empty or time.monotonic() > deadline:
                        return s
                    await asyncio.sleep(1)

            final = asyncio.run(settled())
        finally:
            if steady is not None:
                stop(steady)
            stop(pub)

    warm = [s for s in samples if s.t >= WARMUP]
    assert len(warm) >= 5, f"too few samples after the warm-up: {samples}"
    rss_slope = _slope(warm, "rss")
    base = warm[0]
    reports = json.loads(report.read_text())["subscribers"]
    figures = {
        "seconds": SOAK_SECONDS,
        "rss_mib": [
            round(samples[0].rss / 2**20, 1),
            round(base.rss / 2**20, 1),
            round(samples[-1].rss / 2**20, 1),
        ],
        "rss_slope_kib_s": round(rss_slope / 1024, 2),
        "fds": [base.fds, max(s.fds for s in warm), final.fds],
        "threads": [base.threads, max(s.threads for s in warm)],
        "sessions_max": max(s.sessions for s in samples),
        "sessions_end": final.sessions,
        "subscribers_end": final.subscribers,
        "churn_cycles": churn.cycles,
        "churn_vanished": churn.vanished,
        "objects": [r["objects"] for r in reports],
        "missing": [r["missing"] for r in reports],
        "rss_series_mib": [round(s.rss / 2**20, 1) for s in samples[:: max(1, len(samples) // 20)]],
    }
    print("soak:", json.dumps(figures))
    assert not churn.errors, churn.errors[:5]
    assert churn.cycles >= SOAK_SECONDS / 10, figures
    assert rss_slope < MAX_RSS_SLOPE, figures
    assert max(s.fds for s in warm) <= base.fds + 2, figures
    assert max(s.threads for s in warm) <= base.threads + 2, figures
    # steady: STEADY + publisher + idle; churn: one live client plus the vanished ones of the last idle timeout
    assert max(s.sessions for s in samples) <= STEADY + 1 + IDLE_SESSIONS + 1 + 4, figures
    assert (final.sessions, final.subscribers) == (0, 0), figures
    for r in reports:
        assert r["missing"] == 0 and r["duplicates"] == 0 and r["error_count"] == 0, r
        assert r["objects"] >= 0.9 * FPS * (SOAK_SECONDS - 5), r
