"""Faults of `relay --hal sim` (issue #10, item 2), with real processes in the simulated network.

- A subscriber killed with SIGKILL sends no CONNECTION_CLOSE: at the relay's idle timeout (3 s here) its session,
  its subscriptions and its fast-path entries in the pinned maps (/sys/fs/bpf/moq-relay-<pid>/) are gone, while the
  publisher's stay.
- The NIC's crypto engine process killed: the relay notices (the engine is its child: SIGCHLD, hal/sim.py
  `_watch_engine`), prints a clear error, and stops through its normal exit path (no 1-RTT packet can be protected
  any more; the NIC namespace does not bridge in engine mode, so nothing goes out in plaintext meanwhile).
- A full map at run time (`downstream_cids` filled through its pin): new subscribers are served in user space,
  counted (`connections.refused_full`), and go to the kernel again once there is room.
- A full registration ring at run time (4 KiB via `[fastpath] registration_ring`, relay stalled by SIGSTOP):
  `EG_RING_FULL` counted, stream subscribers still get every object, the relay keeps serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bpf import libbpf
from bpf.structs import CidKey, DownstreamCid
from relay.fastpath import SLOT_MAX
from relay.stats import read_socket
from tests.integration.relay_process import relay_env, stop
from tests.sim.simrelay import NAMESPACE, START_DELAY, TRACK, RunningRelay, SimWorld, pubsub_round, sim_world
from tests.support import have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.bpf]

IDLE = 3.0
SUBSCRIBER_MAPS = ("track_subs", "downstream_conns", "downstream_cids")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimWorld]:
    require(have_root(), "root (namespaces, veths, tc, BPF)")
    require(have_tool("bpftool"), "bpftool")
    with sim_world("flt", 1, tmp_path_factory.mktemp("faults")) as w:
        yield w


def pinned_entries(pin: Path, name: str) -> int:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin / name)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return len(json.loads(out))


def wait_until(what: str, ok: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.5)


def stats(relay: RunningRelay) -> dict[str, Any]:
    lines = [ln for ln in relay.reader.text().splitlines() if ln.startswith("stats socket: ")]
    assert lines, relay.reader.text()
    return asyncio.run(read_socket(Path(lines[-1].split(": ", 1)[1].strip())))


def media(world: SimWorld, relay: RunningRelay, node: str, role: str, *args: str) -> subprocess.Popen[str]:
    common = ["--url", f"moqt://{relay.url_host}:{relay.port}", "--ca", str(relay.ca), "--namespace", NAMESPACE,
              "--track", TRACK]  # fmt: skip
    return world.topo.exec(node, [sys.executable, "-m", "relay.cli", role, *common, *args], env=relay_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def test_killed_subscriber_state_and_map_entries_gone_after_idle_timeout(world: SimWorld) -> None:
    relay = world.ensure_relay(("--fast-path", "on", "--idle-timeout", str(IDLE)))
    pin = Path(f"/sys/fs/bpf/moq-relay-{relay.proc.pid}")
    pub = media(world, relay, "pub0", "pub", "--mode", "datagram", "--fps", "30", "--bitrate", "400k",
                "--duration", "60")  # fmt: skip
    sub = media(world, relay, "sub0", "sub", "--subscribers", "2", "--duration", "60", "--wait", "15")
    try:
        wait_until("both subscriptions", lambda: stats(relay)["subscribers"] == 2, 30)
        wait_until("the kernel serves them", lambda: pinned_entries(pin, "downstream_conns") >= 2, 15)
        time.sleep(1)
        before = {name: pinned_entries(pin, name) for name in SUBSCRIBER_MAPS}
        assert all(before.values()), before
        os.kill(sub.pid, signal.SIGKILL)  # no CONNECTION_CLOSE, no UNSUBSCRIBE
        sub.wait(5)
        killed = time.monotonic()
        wait_until("the subscriber's map entries removed",
                   lambda: all(pinned_entries(pin, name) == 0 for name in SUBSCRIBER_MAPS), IDLE + 20)  # fmt: skip
        gone_after = time.monotonic() - killed
        s = stats(relay)
        assert (s["sessions"], s["subscribers"]) == (1, 0), s  # the publisher's session only
        assert pinned_entries(pin, "upstream_conns") >= 1, "the publisher's entries (one per CID) stay"
        assert pub.poll() is None and relay.proc.poll() is None
        print(
            f"killed subscriber: map entries {before} -> 0 after {gone_after:.1f} s (idle timeout {IDLE} s)"
        )
    finally:
        stop(sub)
        stop(pub)
        world.stop_relay()
    assert not pin.exists()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_nic_engine_killed_relay_reports_and_stops(world: SimWorld) -> None:
    relay = world.ensure_relay()
    pub = media(world, relay, "pub0", "pub", "--mode", "stream-per-group", "--fps", "30", "--bitrate", "400k",
                "--duration", "60")  # fmt: skip
    sub = media(world, relay, "sub0", "sub", "--duration", "60", "--wait", "15")
    try:
        wait_until("a subscriber", lambda: stats(relay)["subscribers"] >= 1, 30)
        engines = [c for c in _children(relay.proc.pid)
                   if b"crypto_offload" in Path(f"/proc/{c}/cmdline").read_bytes()]  # fmt: skip
        assert len(engines) == 1, engines
        os.kill(engines[0], signal.SIGKILL)
        code = relay.proc.wait(20)  # not a hang: the relay stops by itself
        out = relay.reader.rest()
        assert "the NIC engine (pid" in out and "exited with status -9" in out, out[-2000:]
        assert "stopping the relay" in out
        assert code == 1, out[-2000:]  # a failure, not a clean stop
    finally:
        stop(sub)
        stop(pub)
        world.relay = None


# --- a full map or ring buffer at run time: slow path, counted, never a crash -------------------------------------

DOWNSTREAM_CIDS_MAX = 4096  # bpf/src/maps.h


def fill_pinned_map(pin: Path, keys: list[bytes], value: bytes) -> int:
    """Write junk entries through a pinned map (as another root process could) until it refuses: how many went in."""
    so = libbpf.lib()
    fd = so.bpf_obj_get(str(pin).encode())
    assert fd >= 0, f"bpf_obj_get({pin}): {os.strerror(ctypes.get_errno())}"
    try:
        val = ctypes.create_string_buffer(value, len(value))
        for n, key in enumerate(keys):
            if so.bpf_map_update_elem(fd, ctypes.create_string_buffer(key, len(key)), val, 0) < 0:
                return n  # E2BIG: the map is full
        return len(keys)
    finally:
        os.close(fd)


def delete_pinned_keys(pin: Path, keys: list[bytes]) -> None:
    so = libbpf.lib()
    fd = so.bpf_obj_get(str(pin).encode())
    assert fd >= 0
    try:
        for key in keys:
            so.bpf_map_delete_elem(fd, ctypes.create_string_buffer(key, len(key)))
    finally:
        os.close(fd)


def fast_counters(relay: RunningRelay) -> dict[str, Any]:
    c = stats(relay)["providers"]["fastpath"]
    assert "error" not in c, c
    return c


def test_full_cid_map_new_subscribers_stay_in_user_space_then_kernel_again(
    world: SimWorld, tmp_path: Path
) -> None:
    """`downstream_cids` (one entry per enabled subscriber connection) filled to max_entries from outside: new
    subscribers are served in user space, every object arrives, the refusals show as `connections.refused_full`
    in `relay stats`; once the junk is gone the next subscribers are the kernel's again."""
    relay = world.ensure_relay(("--fast-path", "on"))
    pin = Path(f"/sys/fs/bpf/moq-relay-{relay.proc.pid}")
    junk = [bytes(CidKey.of(b"\xee" * 12 + i.to_bytes(8, "big"))) for i in range(DOWNSTREAM_CIDS_MAX)]
    value = bytes(DownstreamCid(slot=SLOT_MAX - 1))
    added = fill_pinned_map(pin / "downstream_cids", junk, value)
    try:
        assert added == DOWNSTREAM_CIDS_MAX == pinned_entries(pin, "downstream_cids")  # no subscriber yet
        before = fast_counters(relay)
        full = pubsub_round(world, tmp_path / "full", "datagram", layout=(("sub0", 2),))
        assert not full.problems(), full.problems()  # every object, from user space
        mid = fast_counters(relay)
        assert mid["connections"]["refused_full"] - before["connections"]["refused_full"] >= 2, mid[
            "connections"
        ]
        assert mid["connections"]["enabled_connections"] == before["connections"]["enabled_connections"]
        assert mid["egress"]["EG_CLONE_SENT"] == before["egress"]["EG_CLONE_SENT"]  # not one kernel copy
        assert relay.proc.poll() is None
    finally:
        delete_pinned_keys(pin / "downstream_cids", junk[:added])
    assert pinned_entries(pin, "downstream_cids") == 0
    again = pubsub_round(world, tmp_path / "again", "datagram", layout=(("sub0", 2),))
    assert not again.problems(), again.problems()
    after = fast_counters(relay)
    assert after["connections"]["enabled_connections"] - mid["connections"]["enabled_connections"] == 2
    assert after["connections"]["refused_full"] == mid["connections"]["refused_full"]
    objects = int(again.published["generated"])
    assert after["egress"]["EG_CLONE_SENT"] - mid["egress"]["EG_CLONE_SENT"] >= objects  # the kernel's copies
    out = relay.reader.text()
    assert "Traceback" not in out, out[-3000:]
    print(
        f"full downstream_cids: {added} junk entries, refused_full {before['connections']['refused_full']} -> "
        f"{mid['connections']['refused_full']}, {objects} objects x 2 subscribers from user space; then "
        f"{after['egress']['EG_CLONE_SENT'] - mid['egress']['EG_CLONE_SENT']} kernel copies"
    )


def test_registration_ring_overflow_counted_relay_keeps_serving(world: SimWorld, tmp_path: Path) -> None:
    """A 4 KiB `reg_events` ring ([fastpath] registration_ring, ~56 records) and a relay that stalls 1.5 s (SIGSTOP:
    a long pause, the kernel keeps copying): copies the program cannot record are not sent and counted
    (EG_RING_FULL). Subgroup streams: aioquic sends the data of every unrecorded copy itself, so every subscriber
    still gets every object, and the relay keeps running without an exception."""
    cfg = tmp_path / "relay.toml"
    cfg.write_text("[fastpath]\nregistration_ring = 4096\n")
    relay = world.ensure_relay(("--fast-path", "on", "--recovery", "user", "--config", str(cfg)))
    pid = relay.proc.pid
    ring = subprocess.run(["bpftool", "-j", "map", "show", "pinned", f"/sys/fs/bpf/moq-relay-{pid}/reg_events"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert json.loads(ring)["max_entries"] == 4096  # the config's size, applied before load
    before = fast_counters(relay)["egress"]["EG_RING_FULL"]

    def stall() -> None:
        time.sleep(START_DELAY + 3.0)  # objects are flowing
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)
        finally:
            os.kill(pid, signal.SIGCONT)

    staller = threading.Thread(target=stall)
    staller.start()
    try:
        result = pubsub_round(
            world, tmp_path / "ring", "stream-per-group", layout=(("sub0", 3),), duration=6.0
        )
    finally:
        staller.join()
    c = fast_counters(relay)
    overflowed = c["egress"]["EG_RING_FULL"] - before
    assert overflowed > 0, c["egress"]
    assert relay.proc.poll() is None
    assert not result.problems(), (result.problems(), c["egress"], c["registration"], c["streams"])
    out = relay.reader.text()
    assert "Traceback" not in out and "Exception" not in out, out[-3000:]
    print(
        f"registration ring 4 KiB, relay stalled 1.5 s: EG_RING_FULL {overflowed}, "
        f"{result.published['generated']} objects x 3 subscribers all delivered; registration {c['registration']}"
    )


# --- a publisher killed mid-group, with the kernel fast path --------------------------------------------------------

PUBLISHER_MAPS = ("upstream_conns", "fast_tracks", "track_subs", "fast_streams")


def test_killed_publisher_publish_done_maps_emptied_then_kernel_again(world: SimWorld, tmp_path: Path) -> None:
    """SIGKILL of a publisher whose subgroup streams the kernel copies to two subscribers: at the relay's idle
    timeout both subscriptions end with PUBLISH_DONE, every kernel entry of that track and connection is gone, and
    a new publisher's objects reach a new subscriber through the kernel again."""
    relay = world.ensure_relay(("--fast-path", "on", "--idle-timeout", str(IDLE)))
    pin = Path(f"/sys/fs/bpf/moq-relay-{relay.proc.pid}")
    report = tmp_path / "sub.json"
    pub = media(world, relay, "pub0", "pub", "--mode", "stream-per-group", "--fps", "30", "--gop", "90",
                "--bitrate", "400k", "--duration", "60")  # fmt: skip
    sub = media(world, relay, "sub0", "sub", "--subscribers", "2", "--duration", "60", "--wait", "15",
                "--json", str(report))  # fmt: skip
    try:
        wait_until("both subscriptions", lambda: stats(relay)["subscribers"] == 2, 30)
        wait_until("the kernel copies the track", lambda: pinned_entries(pin, "track_subs") >= 1
                   and pinned_entries(pin, "fast_streams") >= 1, 20)  # fmt: skip
        time.sleep(1.0)  # mid-group: a group is 3 s
        before = {name: pinned_entries(pin, name) for name in PUBLISHER_MAPS}
        streamed = fast_counters(relay)["egress"]["EG_STREAM_SENT"]  # the subgroup streams' kernel copies
        copies = fast_counters(relay)["egress"]["EG_CLONE_SENT"]
        os.kill(pub.pid, signal.SIGKILL)  # no PUBLISH_DONE, no CONNECTION_CLOSE: only the idle timeout tells
        pub.wait(5)
        killed = time.monotonic()
        assert sub.wait(IDLE + 20) == 0  # `relay sub` ends once every subscription got PUBLISH_DONE
        noticed = time.monotonic() - killed
        ends = [s.get("publish_done") for s in json.loads(report.read_text())["subscribers"]]
        assert len(ends) == 2 and all(e is not None for e in ends), ends
        wait_until("every kernel entry of the track and the publisher removed",
                   lambda: all(pinned_entries(pin, name) == 0 for name in PUBLISHER_MAPS), 10)  # fmt: skip
        assert streamed > 0 and relay.proc.poll() is None
        again = pubsub_round(world, tmp_path / "again", "datagram", layout=(("sub0", 1),))
        assert not again.problems(), again.problems()
        after = fast_counters(relay)["egress"]["EG_CLONE_SENT"]
        assert after - copies >= int(again.published["generated"])  # the new subscriber's copies: the kernel's
        assert "Traceback" not in relay.reader.text()
        print(f"killed publisher: PUBLISH_DONE to 2 subscribers {noticed:.1f} s after the kill (idle timeout {IDLE} s); "
              f"kernel entries {before} -> 0; a new publisher's {again.published['generated']} objects via the kernel")
    finally:
        stop(sub)
        stop(pub)
