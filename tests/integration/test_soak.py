"""Soak (issue #10, item 1): a relay under steady load and churn keeps its memory, descriptors, tasks and state flat.

Two variants share this scenario (`run_soak`) and verdict:

- `tests/sim/test_soak_sim.py` (CI): `relay --hal sim` with the kernel fast path, clients in simulated namespaces;
  it also samples the pinned subscriber maps. This is the one CI runs (120 s).
- `test_soak_loopback` here: the relay on loopback without the fast path; on demand only (`MOQ_SOAK_HAL=none`, or
  `all` for both), so CI runs one soak, not two.

For MOQ_SOAK_SECONDS (default 120; `MOQ_SOAK_SECONDS=600` for the on-demand run, docs/operations.md):

- one `relay pub` at 4 Mbit/s in stream-per-group mode (a stream per group: the per-stream state must go away);
- one `relay sub --subscribers 2` (two sessions) that stays the whole time and checks every object;
- the client driver (tests/integration/soak_clients.py, a child process): IDLE_SESSIONS sessions that only PING, and
  churn: a client connects, subscribes, reads, unsubscribes, subscribes again, then either closes or vanishes
  without a CONNECTION_CLOSE (every third one; the relay drops it at its idle timeout, 5 s here), and again.
  It stops TAIL seconds before the end, so the relay can be seen back at "only the staying clients".

Samples: at the start (staying clients only, before the driver), every SAMPLE_EVERY seconds, at the end (driver
gone, vanished sessions timed out, staying clients still there) and once everyone left: the relay's RSS, open fds,
threads, asyncio tasks and sessions/subscribers (stats socket), and with the fast path the pinned maps' entries.
The verdict:

- RSS: after the warm-up (the cache fills in its first groups), the least-squares slope is under MAX_RSS_SLOPE
  (80 KiB/s). Why that figure: the leak this test was written for (evicted cache groups kept by a reference cycle,
  relay/cache.py `_release`) grew 1.4 MiB/s at 16 Mbit/s, so ~350 KiB/s at this rate: over 4x the bound; the
  fixed relay measures ~25 KiB/s (native heap, not Python objects), so the bound leaves 3x for a loaded CI
  machine. Over 600 s it allows at most 47 MiB.
- fds and threads: no more than 2 above their value at the end of the warm-up (a UDP socket serves every session;
  with the fast path, fds: 8, as each new connection's address lookup holds a netlink socket and pyroute2's
  helpers, 4 fds, while it runs), and the fds at the end at most 1 above the start.
- asyncio tasks (the stats snapshot's `tasks`): never more than TASK_SLACK (3) above the value after the warm-up,
  and at the end (same clients as at the start) at most 2 above the start: a task leaked per session or per
  subscription would grow with every churn cycle (the relay runs its sessions without a task each: 3 tasks on
  loopback, 5 with the fast path, flat under churn).
- sessions and subscribers never exceed what the scenario can have open at once (churn leftovers are bounded by
  the idle timeout); at the end the relay holds exactly the staying clients, and once everyone left nothing.
- maps (fast path): subscriber maps never above what the scenario can hold, back to their start occupancy at the
  end, and empty once everyone left.
- the staying subscribers got every object between their first and last: no sequence gap, no duplicate, no
  integrity error, and at least 90 % of fps x duration objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.stats import read_socket
from tests.integration.relay_process import (
    RELAY_MISSING,
    LineReader,
    have_relay,
    relay_env,
    running_relay,
    stop,
)
from tests.integration.soak_clients import NAMESPACE, TRACK
from tests.support import REPO, require

SOAK_SECONDS = float(os.environ.get("MOQ_SOAK_SECONDS", "120"))
SOAK_HAL = os.environ.get("MOQ_SOAK_HAL", "sim")  # which variants run: sim (CI), none (loopback), all
WARMUP = max(20.0, SOAK_SECONDS * 0.2)
SAMPLE_EVERY = 3.0
IDLE_TIMEOUT = 5.0
TAIL = IDLE_TIMEOUT + 10  # the driver stops this long before the end: the vanished sessions time out meanwhile
IDLE_SESSIONS = 20
STEADY = 2
CHURN_AT_ONCE = 5  # churn sessions the relay can hold at once: one live plus the vanished ones of an idle timeout
TASK_SLACK = 3
FPS = 30
MAX_RSS_SLOPE = 80 << 10  # bytes per second, see the module docstring
TIMEOUT = SOAK_SECONDS + 240  # pytest-timeout: the whole soak plus set-up and teardown


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    threads: int
    tasks: int
    sessions: int
    subscribers: int
    tracks: int
    maps: dict[str, int] = field(default_factory=dict)


@dataclass
class Target:
    """One running relay, whatever its HAL: how to reach it, and how to start a client next to it."""

    pid: int
    url: str
    ca: Path
    sock: Path
    log: Callable[[], str]
    launch: Callable[..., subprocess.Popen[str]]  # (node, argv, **popen kwargs): a client in that node
    count_maps: Callable[[], dict[str, int]] = dict  # entries per pinned map (fast path), {} without
    map_owner: dict[str, str] = field(default_factory=dict)  # map -> whose entries (map_cap)
    fd_slack: int = 2  # transient fds above the warm-up value, e.g. the fast path's per-connection route lookup


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def stats_socket(log: Callable[[], str], wait: Callable[[str, float], Any]) -> Path:
    for _ in range(2):  # already printed (and read), or wait for it once
        for line in log().splitlines():
            if line.startswith("stats socket: "):
                return Path(line.split(": ", 1)[1].strip())
        wait("stats socket: ", 15)
    raise AssertionError(f"the relay printed no stats socket:\n{log()}")


def sample(target: Target, t0: float) -> Sample:
    pid = target.pid
    snap = asyncio.run(read_socket(target.sock))
    return Sample(
        time.monotonic() - t0, _status(pid, "VmRSS") * 1024, len(os.listdir(f"/proc/{pid}/fd")),
        _status(pid, "Threads"), int(snap["tasks"]), int(snap["sessions"]), int(snap["subscribers"]),
        int(snap["tracks"]), target.count_maps(),
    )  # fmt: skip


def _slope(samples: list[Sample], attr: str) -> float:
    xs = [s.t for s in samples]
    ys = [float(getattr(s, attr)) for s in samples]
    return statistics.linear_regression(xs, ys).slope


def _poll(target: Target, t0: float, ok: Callable[[Sample], bool], timeout: float) -> Sample:
    """Sample until `ok` holds or `timeout` passes; the last sample either way (the verdict says what was wrong)."""
    deadline = time.monotonic() + timeout
    while True:
        s = sample(target, t0)
        if ok(s) or time.monotonic() > deadline:
            return s
        time.sleep(1)


def _tool(role: str, target: Target, *args: str) -> list[str]:
    return [sys.executable, "-m", "relay.cli", role, "--url", target.url, "--ca", str(target.ca), "--namespace",
            NAMESPACE, "--track", TRACK, *args]  # fmt: skip


def run_soak(target: Target, tmp: Path, alive: Callable[[], bool]) -> dict[str, Any]:
    """The scenario and its verdict (module docstring); returns the figures it printed."""
    popen: dict[str, Any] = {"cwd": REPO, "env": relay_env(), "text": True}
    pub = target.launch("pub0", _tool("pub", target, "--mode", "stream-per-group", "--gop", "30", "--fps", str(FPS),
                                      "--bitrate", "4M", "--duration", str(SOAK_SECONDS + 60)),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)  # fmt: skip
    children = [pub]
    report, churn_json = tmp / "steady.json", tmp / "churn.json"
    try:
        assert pub.stdout is not None
        assert LineReader(pub.stdout).wait_for("announced", 20) is not None, target.log()[-3000:]
        steady = target.launch("sub0", _tool("sub", target, "--subscribers", str(STEADY), "--duration",
                                             str(SOAK_SECONDS), "--wait", "10", "--json", str(report)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)  # fmt: skip
        children.append(steady)
        t0 = time.monotonic()
        sub_maps = tuple(m for m, owner in target.map_owner.items() if owner == "subscription")
        start = _poll(target, t0, lambda s: s.subscribers == STEADY and all(s.maps.get(m) for m in sub_maps), 30)
        assert start.subscribers == STEADY, (start, target.log()[-3000:])
        driver = target.launch(
            "sub1",
            [sys.executable, "-m", "tests.integration.soak_clients", "--url", target.url, "--ca", str(target.ca),
             "--seconds", str(SOAK_SECONDS - TAIL), "--idle", str(IDLE_SESSIONS), "--json", str(churn_json)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen,
        )  # fmt: skip
        children.append(driver)
        samples = [start]
        while time.monotonic() < t0 + SOAK_SECONDS - TAIL:
            time.sleep(SAMPLE_EVERY)
            assert alive(), target.log()[-3000:]
            samples.append(sample(target, t0))
        _, driver_err = driver.communicate(timeout=60)
        assert driver.returncode == 0, driver_err
        # The end: the driver's sessions closed or timed out, the staying clients still there.
        end = _poll(target, t0, lambda s: (s.sessions, s.subscribers) == (STEADY + 1, STEADY)
                    and s.maps == start.maps, TAIL - 2)  # fmt: skip
        samples.append(end)
        _, steady_err = steady.communicate(timeout=90)
        assert steady.returncode == 0, steady_err
        stop(pub)
        # Everyone left: within the idle timeout the relay holds nothing (vanished clients are long gone).
        final = _poll(target, t0, lambda s: (s.sessions, s.subscribers, s.tracks) == (0, 0, 0)
                      and not any(s.maps.values()), IDLE_TIMEOUT + 15)  # fmt: skip
    finally:
        for child in children:
            stop(child)

    churn = json.loads(churn_json.read_text())
    reports = json.loads(report.read_text())["subscribers"]
    # relay/collector.py, wired in relay/serve.py: ended connections are freed by its passes, not by chance
    memory = asyncio.run(read_socket(target.sock))["providers"]["memory"]
    warm = [s for s in samples if s.t >= WARMUP]
    assert len(warm) >= 5, f"too few samples after the warm-up: {samples}"
    rss_slope = _slope(warm, "rss")
    base = warm[0]
    figures: dict[str, Any] = {
        "seconds": SOAK_SECONDS,
        "rss_mib": [round(s.rss / 2**20, 1) for s in (start, base, end)],  # start, after warm-up, end
        "rss_slope_kib_s": round(rss_slope / 1024, 2),
        "fds": [start.fds, base.fds, max(s.fds for s in warm), end.fds, final.fds],  # start, warm, max, end, left
        "threads": [start.threads, base.threads, max(s.threads for s in warm), end.threads],
        "tasks": [start.tasks, base.tasks, max(s.tasks for s in warm), end.tasks, final.tasks],
        "sessions_max": max(s.sessions for s in samples),
        "sessions_end": [end.sessions, final.sessions],
        "subscribers_max": max(s.subscribers for s in samples),
        "maps": {m: {"start": start.maps[m], "max": max(s.maps[m] for s in samples), "end": end.maps[m],
                     "left": final.maps[m]} for m in start.maps},  # fmt: skip
        "gc": memory,
        "churn_cycles": churn["cycles"],
        "churn_vanished": churn["vanished"],
        "churn_objects": churn["objects"],
        "objects_expected_min": int(0.9 * FPS * (SOAK_SECONDS - 5)),
        "objects": [r["objects"] for r in reports],
        "missing": [r["missing"] for r in reports],
        "rss_series_mib": [round(s.rss / 2**20, 1) for s in samples[:: max(1, len(samples) // 20)]],
    }
    print("soak:", json.dumps(figures))
    assert not churn["errors"], churn["errors"][:5]
    assert churn["idle_sessions"] == IDLE_SESSIONS, churn
    assert churn["cycles"] >= SOAK_SECONDS / 10, figures
    assert memory["connections_ended"] >= churn["cycles"] and memory["gc_passes"] >= 1, figures
    assert memory["gc_freed_objects"] >= 50 * memory["connections_ended"], figures  # ~90 garbage objects each
    assert max(s.fds for s in warm) <= base.fds + target.fd_slack, figures
    assert end.fds <= start.fds + 1, figures  # the same clients as at the start: no fd left behind by the churn
    assert max(s.threads for s in warm) <= base.threads + 2, figures
    assert max(s.tasks for s in warm) <= base.tasks + TASK_SLACK, figures
    assert end.tasks <= start.tasks + 2, figures
    # steady: STEADY + publisher + idle; churn: one live client plus the vanished ones of the last idle timeout
    assert max(s.sessions for s in samples) <= STEADY + 1 + IDLE_SESSIONS + CHURN_AT_ONCE, figures
    assert max(s.subscribers for s in samples) <= STEADY + CHURN_AT_ONCE, figures
    assert (end.sessions, end.subscribers) == (STEADY + 1, STEADY), figures
    assert (final.sessions, final.subscribers, final.tracks) == (0, 0, 0), figures
    for m, owner in target.map_owner.items():
        assert max(s.maps[m] for s in samples) <= map_cap(owner, start.maps[m]), (m, figures)
        assert end.maps[m] == start.maps[m], (m, figures)  # back to what the staying clients need
        assert final.maps[m] == 0, (m, figures)  # everyone left, the publisher too
    for r in reports:
        assert r["missing"] == 0 and r["duplicates"] == 0 and r["error_count"] == 0, r
        assert r["objects"] >= 0.9 * FPS * (SOAK_SECONDS - 5), r
    assert rss_slope < MAX_RSS_SLOPE, figures  # last: the other verdicts hold or not whatever the RSS does
    return figures


def map_cap(owner: str, start: int) -> int:
    """The most entries a map can hold in this scenario, from its start occupancy (staying clients only) per owner.

    "track": entries per track (one track); "subscription": per subscription (STEADY at the start, at most
    STEADY + CHURN_AT_ONCE at once), e.g. 2 slots or 8 CIDs each; "session": per session (the relay's CIDs of every
    session, STEADY + publisher at the start); "stream": per subscription, and twice that (at a group boundary the
    old and the new group's stream are both open); "upstream stream": the publisher's streams, twice the start."""
    if owner == "track":
        return start
    if owner == "upstream stream":
        return 2 * max(1, start)
    if owner == "session":
        return max(1, start // (STEADY + 1)) * (STEADY + 1 + IDLE_SESSIONS + CHURN_AT_ONCE)
    per_sub = max(1, start // STEADY) * (2 if owner == "stream" else 1)
    return per_sub * (STEADY + CHURN_AT_ONCE)


def want_variant(hal: str) -> None:
    """CI runs one soak (the sim one); the other on demand: MOQ_SOAK_HAL=none|sim|all."""
    if SOAK_HAL not in (hal, "all"):
        pytest.skip(f"the {hal} soak runs on demand: MOQ_SOAK_HAL={hal} (or all); CI runs the sim one")


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_soak_loopback(tmp_path: Path) -> None:
    """The relay on loopback, no fast path (--hal none): RSS, fds, threads, tasks, sessions, objects."""
    want_variant("none")
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay", extra=["--idle-timeout", str(IDLE_TIMEOUT)]) as relay:

        def launch(_node: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
            return subprocess.Popen(argv, **kw)

        target = Target(relay.proc.pid, relay.url, relay.ca, stats_socket(relay.log, relay.reader.wait_for),
                        relay.log, launch)  # fmt: skip
        run_soak(target, tmp_path, lambda: relay.proc.poll() is None)
