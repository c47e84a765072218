"""Acceptance of `relay --hal sim`: real publisher and subscriber processes in simulated nodes, the relay in its
namespace, 1-RTT protection done by the simulated NIC's engine.

What must hold (the issue "A simulated SmartNIC that does QUIC packet protection"): every subscriber receives every
object in every publishing mode; the wire never carries the media in clear while the relay's side of the NIC does;
key updates (started by either side) and connection-ID changes lose nothing; Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.state import SimStateError, state_dir
from sim.topology import down_prefix
from tests.integration.relay_process import LineReader, relay_env, stop
from tests.sim.simrelay import (
    SimWorld,
    check_every_mode_encrypted_on_the_wire,
    leftovers,
    pubsub_round,
    sim_world,
)
from tests.support import have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root]



@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    """One sim (1 publisher, 2 subscriber nodes) for the module; the relay is (re)started by the tests."""
    require(have_root(), "root (namespaces, veths, tc)")
    require(have_tool("tcpdump"), "tcpdump")
    with sim_world("h", 2, tmp_path_factory.mktemp("hal-sim")) as w:
        yield w


def test_every_mode_reaches_five_subscribers_encrypted_on_the_wire(world: SimWorld, tmp_path: Path) -> None:

    world.ensure_relay()
    check_every_mode_encrypted_on_the_wire(world, tmp_path)


def test_key_update_started_by_subscribers_loses_nothing(world: SimWorld, tmp_path: Path) -> None:

    world.ensure_relay()
    before = world.counters()
    result = pubsub_round(world, tmp_path, "stream-per-group", ("--key-update-after", "20"))
    after = world.counters()
    assert result.problems() == [], result.logs
    assert all(r["key_updates_requested"] == 1 for r in result.reports)
    # Each subscriber's switch is seen on RX, and the relay's answering switch on TX: at least 2 per session.
    assert after.key_phase_switches - before.key_phase_switches >= 2 * len(result.reports)
    assert after.auth_failures == 0 and after.no_key_drops == before.no_key_drops


@pytest.mark.parametrize("fast_path", ["off", "on"])
def test_key_update_started_by_the_relay_loses_nothing(world: SimWorld, tmp_path: Path, fast_path: str) -> None:

    world.ensure_relay(("--key-update-every", "0.5", "--fast-path", fast_path))
    before = world.counters()
    result = pubsub_round(world, tmp_path, "datagram", layout=(("sub0", 2),))
    after = world.counters()
    world.stop_relay()
    assert result.problems() == [], result.logs
    # Over ~5 s of session at 0.5 s intervals every connection (1 publisher, 2 subscribers) changes phase several
    # times (an update waits until the peer answered the previous one, RFC 9001 section 6.1).
    assert after.key_phase_switches - before.key_phase_switches >= 3 * 2
    assert after.auth_failures == 0 and after.no_key_drops == before.no_key_drops


def test_connection_id_change_by_a_subscriber_loses_nothing(world: SimWorld, tmp_path: Path) -> None:

    world.ensure_relay()
    before = world.counters()
    result = pubsub_round(world, tmp_path, "stream-per-object", ("--change-cid-after", "15"),
                          layout=(("sub0", 2), ("sub1", 1)))
    after = world.counters()
    assert result.problems() == [], result.logs
    assert all(r["cid_changes_requested"] == 1 for r in result.reports)
    assert after.decrypted > before.decrypted and after.auth_failures == 0
    # The new CID's RX key was on the NIC before the subscriber used it. Only each connection's first 1-RTT packet
    # (coalesced with the client's Handshake Finished, before the relay's TLS released the RX key) goes up protected;
    # a missing key for the new CID would add every later packet of 3 sessions.
    connections = 1 + len(result.reports)
    assert after.no_key_passes - before.no_key_passes <= connections, (before, after)


def test_ctrl_c_of_a_relay_that_brought_the_sim_up_leaves_nothing(tmp_path: Path) -> None:
    require(have_root(), "root (namespaces, veths, tc)")

    prefix = f"c{uuid.uuid4().hex[:6]}"
    relay = subprocess.Popen([sys.executable, "-m", "relay.cli", "--hal", "sim", "--prefix", prefix,
                              "--sim-publishers", "0", "--sim-subscribers", "0", "--state-dir", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=relay_env())
    try:
        assert relay.stdout is not None
        reader = LineReader(relay.stdout)
        assert reader.wait_for("ca: ", 30) is not None, reader.text()
        assert (state_dir() / f"{prefix}.nic.sock").exists() and leftovers(prefix) != []
        relay.send_signal(signal.SIGINT)
        assert relay.wait(timeout=20) == 0, reader.rest()
    finally:
        stop(relay)
        if left := leftovers(prefix):
            with contextlib.suppress(SimStateError):
                down_prefix(prefix)
            pytest.fail(f"Ctrl-C left things behind (now removed): {left}")
    assert leftovers(prefix) == []
