"""Our relay on loopback, driven only through the commands users run: `relay`, `relay pub`, `relay sub`.

1 publisher -> 20 subscribers (one `relay sub --subscribers 20` process, 20 sessions on one event loop) for every
mode: every object arrives, once, intact, in order within its stream, and PUBLISH_DONE ends every subscription.
UNSUBSCRIBE stops delivery; a publisher that goes away (SIGTERM: it closes without PUBLISH_DONE) still leaves every
subscriber with a PUBLISH_DONE from the relay.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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
FANOUT = 20
# Low bitrate: datagram mode cuts frames to one packet, and 2 cores must carry 20 sessions plus the relay.
MODE_ARGS = {
    "datagram": ["--bitrate", "150k"],
    "stream-per-object": ["--bitrate", "300k"],
    "stream-per-group": ["--bitrate", "300k"],
}


def tool(relay: RelayProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay.cli", *args[:1], "--url", relay.url, "--ca", str(relay.ca), *args[1:]],
        cwd=REPO, env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> LineReader:
    """Wait for a line of a tool's stdout; returns the reader so the rest of stdout stays readable."""
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    if reader.wait_for(prefix, timeout) is None:
        err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        raise AssertionError(f"no {prefix!r} within {timeout} s; stdout: {reader.text()} stderr: {err}")
    return reader


def finish(
    proc: subprocess.Popen[str], timeout: float, what: str, relay: RelayProcess, reader: LineReader | None = None
) -> tuple[int, str]:
    """Wait for a tool to exit on its own; its stdout (what `reader` has not consumed yet, if given)."""
    try:
        if reader is None:
            out, err = proc.communicate(timeout=timeout)
        else:
            proc.wait(timeout)
            out, err = reader.rest(), proc.stderr.read() if proc.stderr else ""
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"{what} did not finish in {timeout} s; relay:\n{relay.log()[-2000:]}") from None
    assert proc.returncode in (0, 3), f"{what} exited {proc.returncode}: {err}\nrelay:\n{relay.log()[-2000:]}"
    return proc.returncode, out


def reports(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    return list(data["subscribers"]) if "subscribers" in data else [data]


@pytest.fixture
def relay(tmp_path: Path) -> Any:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay") as proc:
        yield proc


def run_round(origin: RelayProcess, edge: RelayProcess, tmp_path: Path, mode: str, subscribers: int,
              sub_duration: float = 12) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Publish 60 objects (2 s, 30 fps, GOP 10) on `origin`, subscribe `subscribers` sessions on `edge` (the same
    relay, or one chained to it); returns the publisher's report, the subscribers' reports and `relay sub`'s status."""
    pub_json, sub_json = tmp_path / "pub.json", tmp_path / "sub.json"
    procs: list[subprocess.Popen[str]] = []
    try:
        publisher = tool(origin, "pub", "--namespace", NAMESPACE, "--track", "video", "--mode", mode, "--fps", "30",
                         "--gop", "10", "--duration", "2", "--start-delay", "3", "--json", str(pub_json),
                         *MODE_ARGS[mode])
        procs.append(publisher)
        pub_out = wait_line(publisher, "announced", 10)
        subs = tool(edge, "sub", "--namespace", NAMESPACE, "--track", "video", "--duration", str(sub_duration),
                    "--subscribers", str(subscribers), "--json", str(sub_json))
        procs.append(subs)
        finish(publisher, 15, "relay pub", origin, pub_out)
        status, _ = finish(subs, 15, "relay sub", edge)
    finally:
        for proc in procs:
            stop(proc)
    return json.loads(pub_json.read_text()), reports(sub_json), status


def assert_ended_by_publish_done(got: list[dict[str, Any]], subscribers: int) -> None:
    """Every subscriber received something, saw no error, and was ended by PUBLISH_DONE, not by its --duration."""
    assert len(got) == subscribers
    for r in got:
        assert r["objects"] > 0 and r["errors"] == [], r
        assert r["publish_done"] is not None, r
        assert r["elapsed_s"] < 15, r


@pytest.mark.parametrize("mode", list(MODE_ARGS))
def test_one_publisher_twenty_subscribers(relay: RelayProcess, tmp_path: Path, mode: str) -> None:
    published, got, status = run_round(relay, relay, tmp_path, mode, FANOUT)
    assert published["generated"] == 60 and not published["aborted"]
    assert len(got) == FANOUT
    for i, r in enumerate(got):
        where = f"subscriber {i}: {json.dumps(r)[:1500]}"
        assert r["objects"] == 60 and r["first_seq"] == 0 and r["missing"] == 0, where
        assert r["groups"] == 6 and r["decodable"] == 60, where
        assert r["errors"] == [] and r["order_violations"] == 0 and r["duplicates"] == 0, where
        assert r["publish_done"] is not None and r["publish_done"]["status"] == "TRACK_ENDED", where
        if mode == "datagram":
            assert r["datagrams"] == 60, where
        else:
            assert r["datagrams"] == 0, where
        if mode == "stream-per-group":
            assert r["streams"] == 6, where
    assert status == 0


def test_unsubscribe_stops_delivery(relay: RelayProcess, tmp_path: Path) -> None:
    a_json, b_json = tmp_path / "a.json", tmp_path / "b.json"
    procs: list[subprocess.Popen[str]] = []
    try:
        publisher = tool(relay, "pub", "--namespace", NAMESPACE, "--mode", "stream-per-group", "--gop", "10",
                         "--bitrate", "300k", "--duration", "4", "--start-delay", "2")
        procs.append(publisher)
        pub_out = wait_line(publisher, "announced", 10)
        leaver = tool(relay, "sub", "--namespace", NAMESPACE, "--duration", "6", "--unsubscribe-after-objects", "30",
                      "--json", str(a_json))
        stayer = tool(relay, "sub", "--namespace", NAMESPACE, "--duration", "10", "--json", str(b_json))
        procs += [leaver, stayer]
        finish(publisher, 15, "relay pub", relay, pub_out)
        finish(leaver, 15, "relay sub (unsubscribing)", relay)
        finish(stayer, 15, "relay sub", relay)
    finally:
        for proc in procs:
            stop(proc)
    [a], [b] = reports(a_json), reports(b_json)
    assert b["objects"] == 120 and b["errors"] == [], b
    # UNSUBSCRIBE left after 30 of the 120 objects: only what was already in flight (< 0.5 s of media) may follow.
    assert 30 <= a["objects"] < 45 and a["objects_after_unsubscribe"] < 15, a
    assert a["objects_late_after_unsubscribe"] == 0, a
    assert a["errors"] == [] and a["order_violations"] == 0, a


def test_publisher_gone_sends_publish_done_to_every_subscriber(relay: RelayProcess, tmp_path: Path) -> None:
    sub_json = tmp_path / "sub.json"
    procs: list[subprocess.Popen[str]] = []
    try:
        publisher = tool(relay, "pub", "--namespace", NAMESPACE, "--mode", "stream-per-object", "--gop", "10",
                         "--bitrate", "300k", "--duration", "30", "--start-delay", "2")
        procs.append(publisher)
        pub_out = wait_line(publisher, "announced", 10)
        subscribers = tool(relay, "sub", "--namespace", NAMESPACE, "--duration", "20", "--subscribers", "5",
                           "--json", str(sub_json))
        procs.append(subscribers)
        time.sleep(3.5)
        publisher.send_signal(signal.SIGTERM)  # closes the session without PUBLISH_DONE
        publisher.wait(10)
        assert json.loads(pub_out.rest().strip().splitlines()[-1])["aborted"] is True
        finish(subscribers, 15, "relay sub", relay)
    finally:
        for proc in procs:
            stop(proc)
    assert_ended_by_publish_done(reports(sub_json), 5)  # from the relay: the publisher never sent one


def test_subscribe_error_names_the_code_and_exits_1(relay: RelayProcess) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "relay.cli", "sub", "--url", relay.url, "--ca", str(relay.ca),
         "--namespace", "nobody/here", "--wait", "0", "--duration", "2"],
        cwd=REPO, env=relay_env(), capture_output=True, text=True, timeout=30,
    )
    assert run.returncode == 1, run.stderr
    line = run.stderr.strip()
    assert line.startswith("relay sub: SUBSCRIBE rejected: ") and "(0x" in line, line
    assert "Traceback" not in run.stderr


def test_pub_and_sub_keep_their_sessions_alive_through_a_silent_pause(tmp_path: Path) -> None:
    """A relay with a 1.5 s idle timeout, and 4 s between the publisher's announcement and its first object: no
    media flows, yet neither session times out, because `relay pub` and `relay sub` send a PING at a third of the
    negotiated idle timeout (RFC 9000 section 10.1.2). Every object then arrives."""
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "r", extra=["--idle-timeout", "1.5"]) as relay:
        pub = tool(relay, "pub", "--namespace", NAMESPACE, "--mode", "datagram", "--fps", "30", "--duration", "1",
                   "--start-delay", "4", "--bitrate", "150k")  # fmt: skip
        sub = None
        try:
            pub_out = wait_line(pub, "announced", 15)
            sub = tool(relay, "sub", "--namespace", NAMESPACE, "--duration", "20", "--json", str(tmp_path / "s.json"))
            finish(pub, 30, "relay pub", relay, pub_out)
            finish(sub, 40, "relay sub", relay)
        finally:
            stop(pub)
            if sub is not None:
                stop(sub)
    (r,) = reports(tmp_path / "s.json")
    assert r["session_closed"] is None and r["publish_done"] is not None, r
    assert r["objects"] == 30 and r["missing"] == 0, r
