"""Insecure lab plaintext mode end to end on loopback, through the commands users run: `relay --hal none
--insecure-lab-plaintext`, `relay pub` and `relay sub` with the option deliver every object (and the media is
readable on the wire when a capture is possible); a side without the option is refused at the handshake with a
message naming the option, in both directions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.relay_process import (
    RELAY_MISSING,
    RelayProcess,
    have_relay,
    relay_env,
    running_relay,
    stop,
)
from tests.support import REPO, have_tool, require

OPTION = "--insecure-lab-plaintext"
FILL = "LABPLAINTEXTFILL"


def tool(relay: RelayProcess, *args: str, lab: bool = True) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "relay.cli", args[0], "--url", relay.url, "--ca", str(relay.ca), *args[1:]]
    return subprocess.Popen(cmd + ([OPTION] if lab else []), cwd=REPO, env=relay_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def pub_and_sub(relay: RelayProcess, tmp_path: Path) -> tuple[dict[str, object], str, str]:
    sub_json = tmp_path / "sub.json"
    pub = tool(relay, "pub", "--namespace", "lab/cam", "--fps", "30", "--gop", "10", "--duration", "2",
               "--start-delay", "2", "--bitrate", "300k", "--fill", FILL)
    time.sleep(1.0)
    sub = tool(relay, "sub", "--namespace", "lab/cam", "--duration", "10", "--wait", "5", "--json", str(sub_json))
    try:
        _, pub_err = pub.communicate(timeout=30)
        _, sub_err = sub.communicate(timeout=30)
    finally:
        stop(pub)
        stop(sub)
    assert pub.returncode == 0, pub_err
    assert sub.returncode == 0, f"{sub_err}\nrelay:\n{relay.log()[-2000:]}"
    return json.loads(sub_json.read_text()), pub_err, sub_err


@pytest.fixture
def lab_relay(tmp_path: Path) -> RelayProcess:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay", extra=[OPTION]) as proc:
        yield proc


def test_pub_relay_sub_all_in_lab_plaintext_deliver_everything(lab_relay: RelayProcess, tmp_path: Path) -> None:
    report, pub_err, sub_err = pub_and_sub(lab_relay, tmp_path)
    assert report["objects"] == 60 and report["error_count"] == 0 and report["missing"] == 0, report
    for err in (pub_err, sub_err, lab_relay.log()):
        assert "INSECURE LAB PLAINTEXT MODE" in err
    assert "1-RTT: INSECURE LAB PLAINTEXT (ALPN moq-00-insecure-lab-plaintext" in lab_relay.log()


def test_media_is_readable_on_the_wire(lab_relay: RelayProcess, tmp_path: Path) -> None:
    require(os.geteuid() == 0 and have_tool("tcpdump"), "root and tcpdump (capture on lo)")
    pcap = tmp_path / "lo.pcap"
    cap = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-w", str(pcap), "udp", "port", str(lab_relay.port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        report, _, _ = pub_and_sub(lab_relay, tmp_path)
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    assert report["objects"] == 60
    assert pcap.read_bytes().count(FILL.encode()) > 60  # every object's payload crossed lo in clear


def test_subscriber_without_the_option_is_refused(lab_relay: RelayProcess) -> None:
    sub = tool(lab_relay, "sub", "--namespace", "lab/cam", "--duration", "2", lab=False)
    _, err = sub.communicate(timeout=30)
    assert sub.returncode == 1
    assert "the peer speaks no ALPN we offered (moq-00); if it runs in insecure lab plaintext mode, give " \
           f"{OPTION} here too" in err
    assert "this endpoint runs insecure lab plaintext mode" in err  # the relay's own CONNECTION_CLOSE reason
    deadline = time.monotonic() + 5
    while "refused a peer not in insecure lab plaintext mode" not in lab_relay.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "refused a peer not in insecure lab plaintext mode" in lab_relay.log()


def test_publisher_with_the_option_is_refused_by_a_normal_relay(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    with running_relay(tmp_path / "relay") as relay:
        pub = tool(relay, "pub", "--namespace", "lab/cam", "--duration", "1")
        _, err = pub.communicate(timeout=30)
    assert pub.returncode == 1
    assert f"the peer refused insecure lab plaintext mode (no common ALPN: we offered only " \
           f"moq-00-insecure-lab-plaintext); it was not started with {OPTION}" in err
