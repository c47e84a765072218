"""`relay --hal sim --nic-engine tc`: the scenarios of test_hal_sim.py with the kernel-only crypto engine
(bpf/src/nic_crypto.bpf.c): every object in every mode, no media in clear on the wire, key updates started by
either side, a connection-ID change; the TC engine's counters come over the same control socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.simrelay import SimWorld, check_every_mode_encrypted_on_the_wire, pubsub_round, sim_world
from tests.support import have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root]

TC = ("--nic-engine", "tc")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    require(have_root(), "root (namespaces, veths, tc, BPF)")
    require(have_tool("tcpdump"), "tcpdump")
    with sim_world("t", 2, tmp_path_factory.mktemp("tc-engine")) as w:
        yield w


def test_every_mode_encrypted_on_the_wire_by_tc(world: SimWorld, tmp_path: Path) -> None:
    relay = world.ensure_relay(TC)
    check_every_mode_encrypted_on_the_wire(world, tmp_path)
    assert relay.proc.poll() is None


def test_key_update_started_by_subscribers_tc(world: SimWorld, tmp_path: Path) -> None:
    world.ensure_relay(TC)
    before = world.counters()
    result = pubsub_round(world, tmp_path, "stream-per-group", ("--key-update-after", "20"))
    after = world.counters()
    assert result.problems() == [], result.logs
    assert after.key_phase_switches - before.key_phase_switches >= 2 * len(result.reports)
    assert after.auth_failures == 0 and after.no_key_drops == before.no_key_drops


def test_key_update_started_by_the_relay_tc(world: SimWorld, tmp_path: Path) -> None:
    world.ensure_relay((*TC, "--key-update-every", "0.5"))
    before = world.counters()
    result = pubsub_round(world, tmp_path, "datagram", layout=(("sub0", 2),))
    after = world.counters()
    world.stop_relay()
    assert result.problems() == [], result.logs
    assert after.key_phase_switches - before.key_phase_switches >= 3 * 2
    assert after.auth_failures == 0 and after.no_key_drops == before.no_key_drops


def test_connection_id_change_tc(world: SimWorld, tmp_path: Path) -> None:
    world.ensure_relay(TC)
    before = world.counters()
    result = pubsub_round(world, tmp_path, "stream-per-object", ("--change-cid-after", "15"),
                          layout=(("sub0", 2), ("sub1", 1)))
    after = world.counters()
    assert result.problems() == [], result.logs
    assert after.decrypted > before.decrypted and after.auth_failures == 0
    assert after.no_key_passes - before.no_key_passes <= 1 + len(result.reports), (before, after)
