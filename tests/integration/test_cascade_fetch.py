"""FETCH over a cascade with real relay processes, read by `relay sub --fetch`.

A publisher on relay A (a subscriber there keeps the track, so A caches it); relay B, downstream of A, has nothing
cached for it: a FETCH on B is forwarded to A and its objects come back byte-exact (the same sizes and sha256 as the
same FETCH asked of A directly); B logs "upstream FETCH #1". A FETCH nobody can answer keeps A's error code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.relay_process import RELAY_MISSING, RelayProcess, have_relay, relay_env, running_relay
from tests.integration.test_cascade import NAMESPACE, downstream_of
from tests.integration.test_pubsub import stop, tool, wait_line
from tests.support import REPO, require


def fetch(relay: RelayProcess, rng: str, dump: Path, namespace: str = NAMESPACE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "sub", "--url", relay.url, "--ca", str(relay.ca), "--namespace",
         namespace, "--track", "video", "--fetch", rng, "--duration", "10", "--dump", str(dump)],
        cwd=REPO, env=relay_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_fetch_on_the_edge_is_answered_by_the_origin_byte_exact(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    procs: list[subprocess.Popen[str]] = []
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        try:
            publisher = tool(a, "pub", "--namespace", NAMESPACE, "--track", "video", "--mode", "stream-per-group",
                             "--fps", "30", "--gop", "60", "--duration", "8", "--start-delay", "1",
                             "--bitrate", "300k")
            procs.append(publisher)
            wait_line(publisher, "announced", 10)
            holder = tool(a, "sub", "--namespace", NAMESPACE, "--track", "video", "--duration", "12")
            procs.append(holder)
            time.sleep(4.5)  # group 0 (60 objects, 2 s) is complete and cached on A
            direct = fetch(a, "0:0", tmp_path / "direct.jsonl")
            relayed = fetch(b, "0:0", tmp_path / "relayed.jsonl")
            missing = fetch(b, "0:0", tmp_path / "none.jsonl", namespace="nobody/here")
        finally:
            for proc in procs:
                stop(proc)
        for run in (direct, relayed):
            assert run.returncode == 0, run.stderr + b.log()[-2000:]
        rep_a, rep_b = json.loads(direct.stdout), json.loads(relayed.stdout)
        assert rep_a["objects"] == rep_b["objects"] == 60 and rep_b["complete"] and rep_b["groups"] == [0], rep_b
        assert rep_b["fetch_ok_end"] == rep_a["fetch_ok_end"]
        objs_a = [json.loads(x) for x in (tmp_path / "direct.jsonl").read_text().splitlines()]
        objs_b = [json.loads(x) for x in (tmp_path / "relayed.jsonl").read_text().splitlines()]
        assert objs_b == objs_a  # ids, priority, size and sha256 of every payload
        assert "upstream FETCH #1 for live/cam1/video" in b.log(), b.log()[-2000:]
        assert missing.returncode == 1 and "FETCH rejected" in missing.stderr and "(0x4)" in missing.stderr
        assert "Traceback" not in a.log() + b.log()
