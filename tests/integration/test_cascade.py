"""Cascading relays on loopback (`relay --upstream`), driven through the commands users run.

pub -> relay A <- relay B <- subscribers on B: every object arrives at every subscriber of B; A gets ONE SUBSCRIBE
per track from B however many subscribers B has (B logs each upstream SUBSCRIBE with a per-track count); three
relays chain end to end; relay A stopping ends B's subscriptions with PUBLISH_DONE while B keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.relay_process import (
    RELAY_MISSING,
    LineReader,
    RelayProcess,
    have_relay,
    relay_env,
    running_relay,
)
from tests.integration.test_pubsub import (
    assert_ended_by_publish_done,
    finish,
    reports,
    run_round,
    stop,
    tool,
    wait_line,
)
from tests.support import REPO, require

NAMESPACE = "live/cam1"
MODE_ARGS = {"datagram": ["--bitrate", "150k"], "stream-per-group": ["--bitrate", "300k"]}


def wait_log(relay: RelayProcess, needle: str, timeout: float = 10.0) -> None:
    """Wait until the relay's output contains `needle` (log lines start with a timestamp, so not a prefix)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in relay.log():
            return
        time.sleep(0.05)
    raise AssertionError(f"relay never logged {needle!r}:\n{relay.log()[-2000:]}")


def upstream_subscribes(relay: RelayProcess) -> list[int]:
    """The per-track counts the relay logged for each SUBSCRIBE it sent upstream."""
    return [int(n) for n in re.findall(r"upstream SUBSCRIBE #(\d+) for live/cam1/video", relay.log())]


@contextlib.contextmanager
def downstream_of(up: RelayProcess, state_dir: Path, insecure: bool = False) -> Iterator[RelayProcess]:
    """A relay cascading to `up` (verifying up's certificate with its CA unless `insecure`); yielded once its
    upstream link is set up."""
    trust = ["--insecure-upstream"] if insecure else ["--upstream-ca", str(up.ca)]
    extra = ["--upstream", up.url, *trust, "-v"]
    with running_relay(state_dir, extra=extra) as relay:
        wait_log(relay, f"upstream {up.url} connected")
        yield relay


def run_chain(edge: RelayProcess, origin: RelayProcess, tmp_path: Path, mode: str, subscribers: int) -> None:
    """Publish 60 objects on `origin`, subscribe on `edge`: every subscriber gets all of them, then PUBLISH_DONE."""
    published, got, status = run_round(origin, edge, tmp_path, mode, subscribers, sub_duration=10)
    assert published["generated"] == 60
    assert len(got) == subscribers
    for r in got:
        where = json.dumps(r)[:1500]
        assert r["objects"] == 60 and r["missing"] == 0 and r["duplicates"] == 0, where
        assert r["errors"] == [] and r["order_violations"] == 0, where
        assert r["publish_done"] is not None and r["publish_done"]["status"] == "TRACK_ENDED", where
        assert r["datagrams"] == (60 if mode == "datagram" else 0), where
    assert status == 0


def test_two_relays_datagram_one_upstream_subscription(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        run_chain(b, a, tmp_path, "datagram", 3)
        assert upstream_subscribes(b) == [1], b.log()[-2000:]  # 3 subscribers on B, one SUBSCRIBE to A


def test_two_relays_stream_per_group(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        run_chain(b, a, tmp_path, "stream-per-group", 3)
        assert upstream_subscribes(b) == [1], b.log()[-2000:]


def test_three_relays_end_to_end(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with (
        running_relay(tmp_path / "a") as a,
        downstream_of(a, tmp_path / "b") as b,
        downstream_of(b, tmp_path / "c", insecure=True) as c,
    ):
        run_chain(c, a, tmp_path, "stream-per-group", 2)
        assert upstream_subscribes(c) == [1] and upstream_subscribes(b) == [1]


def test_upstream_refusal_keeps_its_code(tmp_path: Path) -> None:
    """No publisher anywhere: A's SUBSCRIBE_ERROR (TRACK_DOES_NOT_EXIST, 0x4) reaches B's subscriber as is."""
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        run = subprocess.run(
            [sys.executable, "-m", "relay.cli", "sub", "--url", b.url, "--ca", str(b.ca),
             "--namespace", "nobody/here", "--wait", "0", "--duration", "2"],
            cwd=REPO, env=relay_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert run.returncode == 1, run.stderr
        assert "SUBSCRIBE rejected" in run.stderr and "(0x4)" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        assert "upstream SUBSCRIBE #1 for nobody/here/video" in b.log()  # it was asked upstream, not refused locally


def test_upstream_gone_ends_subscriptions_and_edge_keeps_running(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    sub_json = tmp_path / "sub.json"
    procs: list[subprocess.Popen[str]] = []
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        try:
            publisher = tool(a, "pub", "--namespace", NAMESPACE, "--mode", "stream-per-object", "--gop", "10",
                             "--bitrate", "300k", "--duration", "30", "--start-delay", "2")
            procs.append(publisher)
            wait_line(publisher, "announced", 10)
            subs = tool(b, "sub", "--namespace", NAMESPACE, "--duration", "20", "--subscribers", "3",
                        "--json", str(sub_json))
            procs.append(subs)
            time.sleep(3.5)
            stop(a.proc)  # SIGTERM: A sends GOAWAY and closes every session, B's upstream link included
            finish(subs, 15, "relay sub", b)
        finally:
            for proc in procs:
                stop(proc)
        assert_ended_by_publish_done(reports(sub_json), 3)  # PUBLISH_DONE from B, when its upstream session ended
        assert b.proc.poll() is None, b.log()[-2000:]
        # B still serves: a new SUBSCRIBE is answered (upstream down: refused at once, cleanly)
        run = subprocess.run(
            [sys.executable, "-m", "relay.cli", "sub", "--url", b.url, "--ca", str(b.ca),
             "--namespace", NAMESPACE, "--wait", "0", "--duration", "2"],
            cwd=REPO, env=relay_env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert run.returncode == 1 and "SUBSCRIBE rejected" in run.stderr, run.stderr
        assert "Traceback" not in b.log(), b.log()[-3000:]


@contextlib.contextmanager
def relay_on(state_dir: Path, port: int, extra: tuple[str, ...] = ()) -> Iterator[RelayProcess]:
    """A relay on a given loopback port (running_relay picks a free one): an upstream restarted where it was, or
    relays whose ports must be known before any starts (a cycle)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "relay.cli", "--hal", "none", "--listen", f"127.0.0.1:{port}",
           "--state-dir", str(state_dir), *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=state_dir, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    try:
        assert reader.wait_for("listening on moqt://", 15) is not None, reader.text()
        ca_line = reader.wait_for("ca: ", 15)
        assert ca_line is not None, reader.text()
        yield RelayProcess(proc, "127.0.0.1", port, Path(ca_line[4:].strip()), reader)
    finally:
        stop(proc)


def test_edge_reconnects_to_a_restarted_upstream(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "a") as a, downstream_of(a, tmp_path / "b") as b:
        stop(a.proc)
        wait_log(b, "session ended")
        with relay_on(tmp_path / "a", a.port) as a2:  # same state dir: same CA, B's --upstream-ca still fits
            deadline = time.monotonic() + 10
            linked = f"upstream {a.url} connected"
            while b.log().count(linked) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert b.log().count(linked) == 2, b.log()[-2000:]
            run_chain(b, a2, tmp_path, "datagram", 1)
