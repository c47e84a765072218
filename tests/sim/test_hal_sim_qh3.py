"""An independent QUIC stack through our simulated NIC: aiomoqt's interop client (on qh3, not aioquic) runs in a
simulated node against `relay --hal sim`, so every 1-RTT packet it sends is decrypted by our engine and every one it
receives was encrypted by it. All six interop cases must pass, with the engine counting real work and no failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from crypto_offload.control import RemoteKeyInstaller
from tests.integration.relay_process import (
    AIOMOQT_MISSING,
    INTEROP_PYTHON,
    LineReader,
    have_aiomoqt,
    relay_env,
)
from tests.integration.test_interop_aiomoqt import CASES, parse_tap
from tests.support import have_root, require

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.interop]


def test_qh3_peer_through_the_simulated_nic(tmp_path: Path) -> None:
    require(have_root(), "root (namespaces, veths, tc)")
    require(have_aiomoqt(), AIOMOQT_MISSING)
    from sim.state import state_dir
    from sim.topology import Topology, down_prefix

    prefix = f"q{uuid.uuid4().hex[:6]}"
    relay: subprocess.Popen[str] | None = None
    try:
        topo = Topology.up(prefix, publishers=0, subscribers=1)
        relay = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--hal", "sim", "--prefix", prefix, "--state-dir", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=relay_env())
        assert relay.stdout is not None
        reader = LineReader(relay.stdout)
        ready = reader.wait_for("listening on ", timeout=30)
        assert ready is not None, f"relay --hal sim did not start:\n{reader.text()}"
        port = ready.strip().rsplit(":", 1)[1]

        run = topo.run("sub0", [str(INTEROP_PYTHON), "-m", "aiomoqt.examples.moq_interop_client",
                                "-r", f"moqt://relay:{port}", "--tls-disable-verify"], timeout=90)
        results = parse_tap(run.stdout)
        assert sorted(results) == sorted(CASES), f"TAP:\n{run.stdout}\nstderr:\n{run.stderr[-2000:]}"
        failed = {name: diag for name, (ok, diag) in results.items() if not ok}
        assert not failed, f"failed: {failed}\nrelay:\n{reader.text()[-3000:]}"

        stats = RemoteKeyInstaller(str(state_dir() / f"{prefix}.nic.sock")).stats().port
        assert stats.decrypted > 0, "qh3's 1-RTT packets were not decrypted by our engine"
        assert stats.encrypted > 0, "the relay's 1-RTT packets to qh3 were not encrypted by our engine"
        assert stats.auth_failures == 0 and stats.zero_tag_forgery_drops == 0
    finally:
        if relay is not None and relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
        down_prefix(prefix)
    assert not any(ns.startswith(prefix + "-") for ns in os.listdir("/run/netns")), "namespaces left behind"
    assert not (state_dir() / f"{prefix}.nic.sock").exists()
