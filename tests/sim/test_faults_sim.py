"""Faults of `relay --hal sim` (issue #10, item 2), with real processes in the simulated network.

- A subscriber killed with SIGKILL sends no CONNECTION_CLOSE: at the relay's idle timeout (3 s here) its session,
  its subscriptions and its fast-path entries in the pinned maps (/sys/fs/bpf/moq-relay-<pid>/) are gone, while the
  publisher's stay.
- The NIC's crypto engine process killed: the relay notices (the engine is its child: SIGCHLD, hal/sim.py
  `_watch_engine`), prints a clear error, and stops through its normal exit path (no 1-RTT packet can be protected
  any more; the NIC namespace does not bridge in engine mode, so nothing goes out in plaintext meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.stats import read_socket
from tests.integration.relay_process import relay_env, stop
from tests.sim.simrelay import NAMESPACE, TRACK, RunningRelay, SimWorld, sim_world
from tests.support import have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.bpf]

IDLE = 3.0
SUBSCRIBER_MAPS = ("track_subs", "downstream_conns", "downstream_cids")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    require(have_root(), "root (namespaces, veths, tc, BPF)")
    require(have_tool("bpftool"), "bpftool")
    with sim_world("flt", 1, tmp_path_factory.mktemp("faults")) as w:
        yield w


def pinned_entries(pin: Path, name: str) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin / name)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return len(json.loads(out))


def wait_until(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.5)


def stats(relay: RunningRelay) -> dict[str, Any]:
    lines = [ln for ln in relay.reader.text().splitlines() if ln.startswith("stats socket: ")]
    assert lines, relay.reader.text()
    return asyncio.run(read_socket(Path(lines[-1].split(": ", 1)[1].strip())))


def media(world: SimWorld, relay: RunningRelay, node: str, role: str, *args: str) -> subprocess.Popen[str]:
    common = ["--url", f"moqt://{relay.url_host}:{relay.port}", "--ca", str(relay.ca), "--namespace", NAMESPACE,
              "--track", TRACK]  # fmt: skip
    return world.topo.exec(node, [sys.executable, "-m", "relay.cli", role, *common, *args], env=relay_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def test_killed_subscriber_state_and_map_entries_gone_after_idle_timeout(world: SimWorld) -> None:
    relay = world.ensure_relay(("--fast-path", "on", "--idle-timeout", str(IDLE)))
    pin = Path(f"/sys/fs/bpf/moq-relay-{relay.proc.pid}")
    pub = media(world, relay, "pub0", "pub", "--mode", "datagram", "--fps", "30", "--bitrate", "400k",
                "--duration", "60")  # fmt: skip
    sub = media(world, relay, "sub0", "sub", "--subscribers", "2", "--duration", "60", "--wait", "15")
    try:
        wait_until("both subscriptions", lambda: stats(relay)["subscribers"] == 2, 30)
        wait_until("the kernel serves them", lambda: pinned_entries(pin, "downstream_conns") >= 2, 15)
        time.sleep(1)
        before = {name: pinned_entries(pin, name) for name in SUBSCRIBER_MAPS}
        assert all(before.values()), before
        os.kill(sub.pid, signal.SIGKILL)  # no CONNECTION_CLOSE, no UNSUBSCRIBE
        sub.wait(5)
        killed = time.monotonic()
        wait_until("the subscriber's map entries removed",
                   lambda: all(pinned_entries(pin, name) == 0 for name in SUBSCRIBER_MAPS), IDLE + 20)  # fmt: skip
        gone_after = time.monotonic() - killed
        s = stats(relay)
        assert (s["sessions"], s["subscribers"]) == (1, 0), s  # the publisher's session only
        assert pinned_entries(pin, "upstream_conns") >= 1, "the publisher's entries (one per CID) stay"
        assert pub.poll() is None and relay.proc.poll() is None
        print(
            f"killed subscriber: map entries {before} -> 0 after {gone_after:.1f} s (idle timeout {IDLE} s)"
        )
    finally:
        stop(sub)
        stop(pub)
        world.stop_relay()
    assert not pin.exists()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_nic_engine_killed_relay_reports_and_stops(world: SimWorld) -> None:
    relay = world.ensure_relay()
    pub = media(world, relay, "pub0", "pub", "--mode", "stream-per-group", "--fps", "30", "--bitrate", "400k",
                "--duration", "60")  # fmt: skip
    sub = media(world, relay, "sub0", "sub", "--duration", "60", "--wait", "15")
    try:
        wait_until("a subscriber", lambda: stats(relay)["subscribers"] >= 1, 30)
        engines = [c for c in _children(relay.proc.pid)
                   if b"crypto_offload" in Path(f"/proc/{c}/cmdline").read_bytes()]  # fmt: skip
        assert len(engines) == 1, engines
        os.kill(engines[0], signal.SIGKILL)
        code = relay.proc.wait(20)  # not a hang: the relay stops by itself
        out = relay.reader.rest()
        assert "the NIC engine (pid" in out and "exited with status -9" in out, out[-2000:]
        assert "stopping the relay" in out
        assert code == 1, out[-2000:]  # a failure, not a clean stop
    finally:
        stop(sub)
        stop(pub)
        world.relay = None
