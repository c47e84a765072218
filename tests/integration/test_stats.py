"""Observability of a real relay process: the control socket's JSON snapshot, `relay stats`, and /metrics."""

from __future__ import annotations

import asyncio
import re
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from relay.stats import read_socket
from tests.integration.relay_process import RELAY_MISSING, have_relay, relay_env, running_relay
from tests.integration.test_pubsub import finish, stop, tool, wait_line
from tests.support import REPO, require


def wait_snapshot(sock: Path, ok: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Poll the socket until `ok(snapshot)` holds (counts, not timings, decide)."""
    deadline = time.monotonic() + timeout
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        snap = asyncio.run(read_socket(sock))
        if ok(snap):
            return snap
        time.sleep(0.2)
    raise AssertionError(f"snapshot never matched: {snap}")


def test_snapshot_stats_command_and_metrics_count_a_publisher_and_two_subscribers(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    sock = tmp_path / "relay.sock"
    with running_relay(tmp_path / "r", extra=["--stats-socket", str(sock), "--metrics", "127.0.0.1:0"]) as relay:
        # printed just after the readiness lines: read on until both came (at once was flaky under load)
        deadline = time.monotonic() + 15
        while not ("stats socket: " in relay.log() and "metrics: " in relay.log()) and time.monotonic() < deadline:
            relay.reader.wait_for("stats socket: ", 0.2)  # reads whatever arrives into the log
        metrics_line = re.search(r"metrics: (http://\S+)", relay.log())
        assert metrics_line and f"stats socket: {sock}" in relay.log(), relay.log()
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        procs: list[subprocess.Popen[str]] = []
        try:
            pub = tool(relay, "pub", "--namespace", "live/cam1", "--track", "video", "--mode", "datagram",
                       "--fps", "30", "--duration", "2", "--start-delay", "4")
            procs.append(pub)
            pub_out = wait_line(pub, "announced", 15)
            sub = tool(relay, "sub", "--namespace", "live/cam1", "--track", "video", "--duration", "12",
                       "--subscribers", "2", "--json", str(tmp_path / "sub.json"))
            procs.append(sub)
            snap = wait_snapshot(sock, lambda s: s["subscribers"] == 2)
            assert snap["tracks"] == 1 and snap["sessions"] == 3  # publisher + 2 subscriber sessions
            assert [t["track"] for t in snap["track_list"]] == ["live/cam1/video"]
            shown = subprocess.run([sys.executable, "-m", "relay.cli", "stats", "--socket", str(sock), "--once"],
                                   capture_output=True, text=True, timeout=30, cwd=REPO, env=relay_env())
            assert shown.returncode == 0, shown.stderr
            assert "sessions 3  tracks 1  subscribers 2" in shown.stdout
            assert shown.stdout.count("live/cam1/video") == 2
            text = urllib.request.urlopen(metrics_line.group(1), timeout=10).read().decode()
            assert "\nmoq_relay_subscribers 2\n" in text and "\nmoq_relay_sessions 3\n" in text
            assert 'moq_relay_track_subscribers{track="live/cam1/video"} 2' in text
            finish(pub, 30, "relay pub", relay, pub_out)
            # 2 s at 30 fps = 60 datagrams in, each copied to both subscribers from user space
            wait_snapshot(sock, lambda s: s["user"]["datagrams_in"] == 60 and s["user"]["copies_out"] == 120)
            text = urllib.request.urlopen(metrics_line.group(1), timeout=10).read().decode()
            assert "\nmoq_relay_user_datagrams_in_total 60\n" in text
            assert "\nmoq_relay_user_copies_out_total 120\n" in text
        finally:
            for p in procs:
                stop(p)
    assert not sock.exists()  # removed at shutdown
