"""Soak with the kernel fast path (issue #10, item 1): `relay --hal sim --fast-path on`, the CI soak.

The scenario and verdict are tests/integration/test_soak.py's `run_soak` (its docstring); here the clients run in
the simulated namespaces (publisher in pub0, the staying subscribers in sub0, the idle/churn driver
tests/integration/soak_clients.py in sub1) and each sample also counts the entries of the relay's pinned maps
(/sys/fs/bpf/moq-relay-<pid>/). Whose entries are whose (bpf/src/maps.h):

- per track: track_subs (a track with kernel subscribers), fast_tracks (a publisher's track the kernel copies);
- per subscription: downstream_conns and downstream_cids (the subscriber's connection), and with
  `--recovery kernel` (the default) recovery_conns (the relay's CIDs the subscriber sends to);
- per stream: slot_streams (a subscriber's copy of an upstream stream), fast_streams (the publisher's streams);
- per session: upstream_conns, the relay's CIDs of every session (any session may publish: measured 8 per session,
  so 200 entries with the 20 idle sessions and churn, back to 24 with the publisher and 2 staying subscribers).

Every one of them goes back to its start occupancy at the end and is empty once everyone left (the publisher too).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_soak import IDLE_TIMEOUT, TIMEOUT, Target, run_soak, stats_socket, want_variant
from tests.sim.simrelay import SimWorld, sim_world
from tests.support import have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.bpf, pytest.mark.slow]

MAP_OWNERS = {  # map -> whose entries (test_soak.map_cap)
    "track_subs": "track", "fast_tracks": "track", "downstream_conns": "subscription",
    "downstream_cids": "subscription", "recovery_conns": "subscription", "slot_streams": "stream",
    "fast_streams": "upstream stream", "upstream_conns": "session",
}  # fmt: skip


def map_entries(pin: Path) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return len(json.loads(out))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[SimWorld]:
    want_variant("sim")
    require(have_root(), "root (namespaces, veths, tc, BPF)")
    require(have_tool("bpftool"), "bpftool")
    with sim_world("sk", 2, tmp_path / "state") as w:
        yield w


@pytest.mark.timeout(TIMEOUT)
def test_soak_fast_path(world: SimWorld, tmp_path: Path) -> None:
    relay = world.ensure_relay(("--fast-path", "on", "--idle-timeout", str(IDLE_TIMEOUT)))
    pin = Path(f"/sys/fs/bpf/moq-relay-{relay.proc.pid}")
    owners = {m: owner for m, owner in MAP_OWNERS.items() if (pin / m).exists()}  # recovery_conns: kernel recovery
    assert {"track_subs", "downstream_conns", "downstream_cids"} <= set(owners), sorted(p.name for p in pin.iterdir())

    def launch(node: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return world.topo.exec(node, argv, **kw)

    target = Target(
        relay.proc.pid, f"moqt://{relay.url_host}:{relay.port}", relay.ca,
        stats_socket(relay.reader.text, relay.reader.wait_for), relay.reader.text, launch,
        lambda: {m: map_entries(pin / m) for m in owners}, owners,
        fd_slack=8,  # lookup_addresses (relay/fastpath_runtime.py): 4 fds per new connection while it runs
    )  # fmt: skip
    run_soak(target, tmp_path, lambda: relay.proc.poll() is None)
