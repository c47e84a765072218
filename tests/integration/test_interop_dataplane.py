"""Objects framed by an independent implementation reach `relay sub` byte-exact through our relay.

The publisher is tests/interop_peer/aiomoqt_publisher.py under the interop venv: aiomoqt 0.5.3 builds the control
messages, the OBJECT_DATAGRAMs and the SUBGROUP_HEADER streams (cycling through the header encodings), qh3 carries
them. It writes the sha256 of every payload it sent; `relay sub --dump` writes the same for what it received.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.relay_process import (
    AIOMOQT_MISSING,
    INTEROP_PYTHON,
    RELAY_MISSING,
    LineReader,
    have_aiomoqt,
    have_relay,
    relay_env,
    running_relay,
    stop,
)
from tests.support import REPO, require

PEER = REPO / "tests" / "interop_peer" / "aiomoqt_publisher.py"
NAMESPACE = "interop/aiomoqt"


@pytest.mark.interop
@pytest.mark.parametrize("mode", ["datagram", "stream"])
def test_aiomoqt_objects_reach_relay_sub_byte_exact(tmp_path: Path, mode: str) -> None:
    require(have_relay(), RELAY_MISSING)
    require(have_aiomoqt(), AIOMOQT_MISSING)
    sent_path, dump_path, report_path = tmp_path / "sent.json", tmp_path / "dump.jsonl", tmp_path / "sub.json"
    with running_relay(tmp_path / "relay") as relay:
        peer = subprocess.Popen(
            [str(INTEROP_PYTHON), str(PEER), "--url", relay.url, "--namespace", NAMESPACE, "--mode", mode,
             "--groups", "3", "--objects", "10", "--json", str(sent_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        subscriber: subprocess.Popen[str] | None = None
        assert peer.stdout is not None
        said = LineReader(peer.stdout)
        try:
            assert said.wait_for("announced", 10), f"aiomoqt publisher: {said.text()}"
            subscriber = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "sub", "--url", relay.url, "--ca", str(relay.ca),
                 "--namespace", NAMESPACE, "--track", "video", "--duration", "10",
                 "--json", str(report_path), "--dump", str(dump_path)],
                cwd=REPO, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            assert said.wait_for("subscribed", 10), f"aiomoqt publisher: {said.text()}\n{relay.log()[-2000:]}"
            assert said.wait_for("done", 10), f"aiomoqt publisher: {said.text()}"
            out, err = subscriber.communicate(timeout=15)
            assert peer.wait(10) == 0, peer.stderr.read() if peer.stderr else ""
        finally:
            if subscriber is not None:
                stop(subscriber)
            stop(peer)
        relay_log = relay.log()
    context = f"relay sub stdout:\n{out}\nstderr:\n{err}\nrelay:\n{relay_log[-2000:]}"
    assert subscriber.returncode == 0, context
    sent = json.loads(sent_path.read_text())["objects"]
    got = [json.loads(line) for line in dump_path.read_text().splitlines()]
    key = ("group", "object", "priority", "size", "sha256")
    assert [tuple(o[k] for k in key) for o in got] == [tuple(o[k] for k in key) for o in sent], context
    assert all(o["datagram"] == (mode == "datagram") for o in got)
    report = json.loads(report_path.read_text())
    assert report["objects"] == 30 and report["groups"] == 3 and report["decodable"] == 30
    assert report["errors"] == [] and report["missing"] == 0 and report["order_violations"] == 0
    assert report["publish_done"]["status"] == "TRACK_ENDED", report
