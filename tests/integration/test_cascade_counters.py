"""Cascade counters and loop detection with real relay processes (`relay --upstream`, `-v` logs the counters).

Each relay logs every SUBSCRIBE it sends upstream ("upstream SUBSCRIBE #N for NS/TRACK") and every SUBSCRIBE a
downstream relay sends it ("downstream relay SUBSCRIBE #N for NS/TRACK"), N counting per track: with subscribers on
several relays of a chain at once, every N is 1 at every hop. Two relays configured as each other's upstream refuse
a SUBSCRIBE for a track nobody publishes with TRACK_DOES_NOT_EXIST ("relay loop") at once, and keep serving.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.relay_process import (
    RELAY_MISSING,
    RelayProcess,
    free_udp_port,
    have_relay,
    relay_env,
    running_relay,
)
from tests.integration.test_cascade import NAMESPACE, downstream_of, relay_on, wait_log
from tests.integration.test_pubsub import finish, reports, stop, tool, wait_line
from tests.support import REPO, require


def counts(relay: RelayProcess, what: str) -> list[int]:
    """The per-track counts a relay logged for live/cam1/video: what = "upstream" or "downstream relay"."""
    return [int(n) for n in re.findall(rf"{what} SUBSCRIBE #(\d+) for live/cam1/video", relay.log())]


def test_three_relays_several_subscribers_each_one_subscription_per_hop(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    procs: list[subprocess.Popen[str]] = []
    with (
        running_relay(tmp_path / "a", extra=["-v"]) as a,
        downstream_of(a, tmp_path / "b") as b,
        downstream_of(b, tmp_path / "c", insecure=True) as c,
    ):
        try:
            publisher = tool(a, "pub", "--namespace", NAMESPACE, "--track", "video", "--mode", "stream-per-group",
                             "--fps", "30", "--gop", "10", "--duration", "2", "--start-delay", "3",
                             "--bitrate", "300k")
            procs.append(publisher)
            pub_out = wait_line(publisher, "announced", 10)
            subs = {
                name: tool(r, "sub", "--namespace", NAMESPACE, "--track", "video", "--duration", "10",
                           "--subscribers", "3", "--json", str(tmp_path / f"{name}.json"))
                for name, r in (("a", a), ("b", b), ("c", c))
            }
            procs += subs.values()
            finish(publisher, 15, "relay pub", a, pub_out)
            for name, proc in subs.items():
                finish(proc, 20, f"relay sub on {name}", a)
        finally:
            for proc in procs:
                stop(proc)
        for name in ("a", "b", "c"):
            got = reports(tmp_path / f"{name}.json")
            assert len(got) == 3
            for r in got:
                assert r["objects"] == 60 and r["missing"] == 0 and r["errors"] == [], (name, json.dumps(r)[:800])
        time.sleep(0.2)
        # every hop, both sides of every link: exactly one SUBSCRIBE per track
        assert counts(a, "upstream") == [] and counts(a, "downstream relay") == [1], a.log()[-2000:]
        assert counts(b, "upstream") == [1] and counts(b, "downstream relay") == [1], b.log()[-2000:]
        assert counts(c, "upstream") == [1] and counts(c, "downstream relay") == [], c.log()[-2000:]


def relay_at(state_dir: Path, port: int, upstream_port: int) -> contextlib.AbstractContextManager[RelayProcess]:
    """A relay on a fixed port whose upstream is a fixed port (the cycle needs both ports before either starts)."""
    return relay_on(state_dir, port, ("--upstream", f"moqt://127.0.0.1:{upstream_port}", "--insecure-upstream", "-v"))


def test_two_relays_in_a_cycle_refuse_with_track_does_not_exist(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    port_a, port_b = free_udp_port(), free_udp_port()
    with relay_at(tmp_path / "a", port_a, port_b) as a, relay_at(tmp_path / "b", port_b, port_a) as b:
        wait_log(a, f"upstream moqt://127.0.0.1:{port_b} connected", 15)
        wait_log(b, f"upstream moqt://127.0.0.1:{port_a} connected", 15)
        for attempt in (1, 2):
            started = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "relay.cli", "sub", "--url", a.url, "--ca", str(a.ca),
                 "--namespace", NAMESPACE, "--wait", "0", "--duration", "2"],
                cwd=REPO, env=relay_env(), capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert run.returncode == 1, run.stderr
            assert "SUBSCRIBE rejected" in run.stderr and "(0x4)" in run.stderr, run.stderr
            assert "relay loop" in run.stderr, run.stderr
            assert time.monotonic() - started < 10  # answered, not left waiting for a timeout
            time.sleep(0.3)
            # one round per attempt: A sent one, B sent one, A refused the one that came back
            assert counts(a, "upstream") == list(range(1, attempt + 1)), a.log()[-2000:]
            assert counts(b, "upstream") == list(range(1, attempt + 1)), b.log()[-2000:]
            assert a.log().count("relay loop") == attempt, a.log()[-2000:]
        assert a.proc.poll() is None and b.proc.poll() is None
        assert "Traceback" not in a.log() + b.log()
