"""Drive `relay --hal sim` the way a user does, for the acceptance tests (and a CPU measurement, see `main`).

Every child (relay, publisher, subscribers, tcpdump) is a real process we started; each is stopped by its own
handle (SIGTERM, then SIGKILL), and `leftovers()` lists whatever of a prefix survived a teardown.

    python -m tests.sim.simrelay --duration 10 --subscribers 5   # relay CPU per copy, --hal sim vs --hal none
    python -m tests.sim.simrelay --compare-fast-path --mode datagram --subscribers 10   # fast path on vs off
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto_offload.api import Counters
from crypto_offload.control import RemoteKeyInstaller
from sim.demo import process_cpu_seconds
from sim.state import SimStateError, state_dir
from sim.topology import Topology, down_prefix
from tests.integration.relay_process import LineReader, relay_env, stop

STARTUP_TIMEOUT = 30.0
NAMESPACE, TRACK = "live/cam1", "video"
FILL = "SECRETFILLTEXT"
START_DELAY = 3.0  # publisher: announce, then wait this long so every subscriber is subscribed (2 cores, loaded)


@dataclass
class RunningRelay:
    proc: subprocess.Popen[str]
    reader: LineReader
    url_host: str
    port: int
    ca: Path
    extra: tuple[str, ...]


def start_relay(argv: list[str], extra: tuple[str, ...] = ()) -> RunningRelay:
    """Start `relay ...` and wait for its two readiness lines (`listening on`, `ca:`); stopped on failure."""
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", *argv, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=relay_env())
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    try:
        ready = reader.wait_for("listening on moqt://", STARTUP_TIMEOUT)
        ca = reader.wait_for("ca: ", STARTUP_TIMEOUT) if ready else None
        if ready is None or ca is None:
            raise RuntimeError(f"relay {' '.join(argv)} not ready:\n{reader.text()}")
    except BaseException:
        stop(proc)
        raise
    host, port = ready.strip().removeprefix("listening on moqt://").rsplit(":", 1)
    return RunningRelay(proc, reader, host, int(port), Path(ca[4:].strip()), extra)


def sim_relay_argv(prefix: str, state: Path) -> list[str]:
    return ["--hal", "sim", "--prefix", prefix, "--state-dir", str(state)]


@dataclass
class SimWorld:
    """One simulated network and at most one `relay --hal sim` on it, restarted when other options are wanted."""

    topo: Topology
    state: Path
    relay: RunningRelay | None = None

    @property
    def prefix(self) -> str:
        return self.topo.prefix

    def ensure_relay(self, extra: tuple[str, ...] = ()) -> RunningRelay:
        if self.relay is not None and (self.relay.extra != extra or self.relay.proc.poll() is not None):
            self.stop_relay()
        if self.relay is None:
            self.relay = start_relay(sim_relay_argv(self.prefix, self.state), extra)
        return self.relay

    def stop_relay(self) -> None:
        if self.relay is not None:
            stop(self.relay.proc)
            self.relay = None

    def counters(self) -> Counters:
        """The engine's port counters, over its control socket (a second client next to the relay's)."""
        installer = RemoteKeyInstaller(control_socket(self.prefix))
        try:
            return installer.stats().port
        finally:
            installer.close()


@contextlib.contextmanager
def sim_world(tag: str, subscribers: int, tmp: Path) -> Iterator[SimWorld]:
    """A sim with 1 publisher and `subscribers` nodes under a fresh prefix; afterwards nothing of it remains."""
    prefix = f"{tag}{uuid.uuid4().hex[:5]}"
    w: SimWorld | None = None
    try:
        w = SimWorld(Topology.up(prefix, publishers=1, subscribers=subscribers), tmp)
        yield w
    finally:
        if w is not None:
            w.stop_relay()
        with contextlib.suppress(SimStateError):  # already gone: a failed up() removes what it made
            down_prefix(prefix)
    left = leftovers(prefix)
    if left:
        raise AssertionError(f"left behind by sim {prefix}: {left}")


def control_socket(prefix: str) -> str:
    return str(state_dir() / f"{prefix}.nic.sock")


@dataclass
class RoundResult:
    published: dict[str, Any]
    reports: list[dict[str, Any]]
    logs: list[str] = field(default_factory=list)
    relay_cpu_s: float | None = None  # over the publishing window, when asked for

    def problems(self) -> list[str]:
        """Why this round is not "every subscriber got every object, intact" (empty when it is)."""
        want = self.published.get("generated")
        out = [] if want else [f"publisher generated nothing: {self.published}"]
        for i, r in enumerate(self.reports):
            if r.get("objects") != want or r.get("missing") or r.get("error_count") or r.get("duplicates"):
                out.append(f"subscriber {i}: {r.get('objects')}/{want} objects, missing {r.get('missing')}, "
                           f"errors {r.get('errors')}")
        return out


def pubsub_round(world: SimWorld, tmp: Path, mode: str, sub_args: tuple[str, ...] = (), fps: int = 30,
                 duration: float = 2.0, layout: tuple[tuple[str, int], ...] = (("sub0", 4), ("sub1", 1)),
                 bitrate: str = "400k", cpu_pid: int | None = None) -> RoundResult:
    """One publisher in pub0, subscriber processes per `layout` (node, sessions); all started together.

    The publisher waits `--start-delay` after announcing so every subscriber is subscribed before the first object:
    then "every object" is exact. Subscribers end on PUBLISH_DONE (their --duration is only a bound)."""
    relay = world.ensure_relay(world.relay.extra if world.relay else ())
    tmp.mkdir(parents=True, exist_ok=True)
    common = ["--url", f"moqt://{relay.url_host}:{relay.port}", "--ca", str(relay.ca), "--namespace", NAMESPACE, "--track", TRACK]
    tool = [sys.executable, "-m", "relay.cli"]
    pub_json = tmp / f"pub-{mode}.json"
    children: list[subprocess.Popen[str]] = []
    try:
        pub = world.topo.exec("pub0", [*tool, "pub", *common, "--mode", mode, "--fps", str(fps), "--gop", str(fps),
                                       "--bitrate", bitrate, "--duration", str(duration), "--start-delay", str(START_DELAY),
                                       "--fill", FILL, "--json", str(pub_json)],
                              env=relay_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        children.append(pub)
        subs: list[tuple[Path, subprocess.Popen[str]]] = []
        for node, sessions in layout:
            path = tmp / f"{node}-{mode}.json"
            sub = world.topo.exec(node, [*tool, "sub", *common, "--duration", str(duration + 10), "--wait", "8",
                                         "--subscribers", str(sessions), "--json", str(path), *sub_args],
                                  env=relay_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            children.append(sub)
            subs.append((path, sub))
        cpu = _publishing_window_cpu(pub, cpu_pid) if cpu_pid is not None else None
        logs = [child.communicate(timeout=duration + 25)[int(child is not pub)] or "" for child in children]
        published = json.loads(pub_json.read_text()) if pub_json.exists() else {}
        reports: list[dict[str, Any]] = []
        for path, _ in subs:
            data = json.loads(path.read_text()) if path.exists() else {"objects": 0, "errors": ["no report"]}
            reports += data.get("subscribers", [data])
        return RoundResult(published, reports, logs, cpu)
    finally:
        for child in children:
            stop(child)


MODES = ("datagram", "stream-per-object", "stream-per-group")


def check_every_mode_encrypted_on_the_wire(world: SimWorld, tmp: Path) -> None:
    """One round per mode, 5 subscribers each, while both sides of the NIC are captured: every object arrives, the
    wire side never shows the media's fill text, the relay's side does (so the check means something), and the
    NIC engine encrypted and decrypted without a single authentication failure."""
    port = world.topo.port()
    before = world.counters()
    with capture(world.topo, "nic", port.wire_if, tmp / "wire.pcap") as wire, \
            capture(world.topo, "relay", port.relay_if, tmp / "relay.pcap") as inner:
        for mode in MODES:
            result = pubsub_round(world, tmp / mode, mode)
            assert len(result.reports) == 5
            assert result.problems() == [], f"{mode}: {result.problems()}\n{result.logs}"
            assert result.published["objects"] == result.published["generated"] == 60
    after = world.counters()
    wire_bytes, inner_bytes = wire.read_bytes(), inner.read_bytes()
    # Both captures saw the media (5 copies of ~3 x 100 kB), so "no fill text" on the wire means something.
    assert len(wire_bytes) > 500_000 and len(inner_bytes) > 500_000
    assert wire_bytes.count(FILL.encode()) == 0, "media in clear on the wire side of the NIC"
    assert inner_bytes.count(FILL.encode()) > 1000, "the relay's side of the NIC should carry plaintext"
    assert after.decrypted - before.decrypted > 0
    assert after.encrypted - before.encrypted > 1000
    assert after.auth_failures == 0 and after.zero_tag_forgery_drops == 0


def _publishing_window_cpu(pub: subprocess.Popen[str], pid: int) -> float:
    """utime+stime of `pid` from just before the first object until the publisher exits (sim/demo.py's window),
    so session set-up is not charged to the objects."""
    started = time.monotonic()
    first: float | None = None
    while pub.poll() is None:
        if first is None and time.monotonic() - started >= START_DELAY - 0.5:
            first = process_cpu_seconds(pid)
        time.sleep(0.05)
    last = process_cpu_seconds(pid)
    return last - (first if first is not None else last)


@contextlib.contextmanager
def capture(topo: Topology, node: str, ifname: str, path: Path) -> Iterator[Path]:
    """tcpdump (full packets, UDP only) on one interface of a node while the block runs."""
    proc = topo.exec(node, ["tcpdump", "-i", ifname, "-U", "-s", "0", "-w", str(path), "udp"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on IF, ..." once the capture runs
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump on {node}/{ifname} did not start: {line}")
        yield path
    finally:
        stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def leftovers(prefix: str) -> list[str]:
    """What of `prefix` still exists: namespaces, /run/moq-sim files, NIC engine processes."""
    left = [f"namespace {ns}" for ns in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
            if ns.startswith(f"{prefix}-")]
    root = state_dir()
    left += [f"file {p}" for p in (root.iterdir() if root.is_dir() else []) if p.name.startswith(prefix)]
    sock = control_socket(prefix)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"crypto_offload.nic_io" in argv and sock.encode() in argv:
                left.append(f"engine process {pid}")
    return left


# --- measurement: relay CPU per delivered copy, --hal sim vs --hal none --------------------------------------------

def program_run_ns(relay_pid: int) -> int:
    """Run time of the relay's pinned fast-path programs so far (kernel.bpf_stats_enabled must be 1)."""
    total = 0
    # Not client_egress: for a clone it runs inside server_ingress (bpf_clone_redirect transmits synchronously, and
    # bpf_stats times the whole run), and for a user-space packet inside the relay's own sendmsg (already in its CPU
    # time). client_ingress: --recovery kernel (recovery_sweep_prog runs in the relay's syscalls: in its CPU too).
    for name in ("server_ingress", "client_ingress"):
        pin = Path(f"/sys/fs/bpf/moq-relay-{relay_pid}/{name}")
        if pin.exists():
            out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)], capture_output=True,
                                 text=True, check=True).stdout
            total += int(json.loads(out).get("run_time_ns", 0))
    return total


def _measure(world: SimWorld, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One round with the relay's CPU sampled over the publishing window (plus its programs' run time)."""
    assert world.relay is not None
    pid = world.relay.proc.pid
    before = program_run_ns(pid)
    result = pubsub_round(world, tmp, args.mode, duration=args.duration, layout=(("sub0", args.subscribers),),
                          bitrate=args.bitrate, cpu_pid=pid, fps=args.fps)
    prog_s = (program_run_ns(pid) - before) / 1e9
    cpu = result.relay_cpu_s or 0.0
    copies = sum(int(r.get("objects", 0)) for r in result.reports)
    p50 = [r["latency_ms"]["p50"] for r in result.reports if r.get("latency_ms", {}).get("p50") is not None]
    p99 = [r["latency_ms"]["p99"] for r in result.reports if r.get("latency_ms", {}).get("p99") is not None]
    return {"copies": copies, "relay_cpu_s": round(cpu, 3), "programs_s": round(prog_s, 4),
            "us_per_copy": round((cpu + prog_s) / copies * 1e6, 1) if copies else None,
            "latency_p50_ms_median": round(sorted(p50)[len(p50) // 2], 3) if p50 else None,
            "latency_p99_ms_max": round(max(p99), 3) if p99 else None, "problems": result.problems()}


def compare_fast_path(args: argparse.Namespace) -> dict[str, Any]:
    """--hal sim with the kernel fast path on vs off, same sim, same workload, one run (bpf_stats on meanwhile)."""
    prefix = f"m{os.getpid() % 100000}"
    tmp = Path(tempfile.mkdtemp(prefix="moq-measure-"))
    out: dict[str, Any] = {}
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats_path.read_text().strip()
    stats_path.write_text("1")
    topo = Topology.up(prefix, publishers=1, subscribers=1)
    world = SimWorld(topo, tmp / "state")
    try:
        for mode in ("on", "off"):
            world.ensure_relay(("--fast-path", mode, *args.relay_arg))
            out[f"fast_path_{mode}"] = _measure(world, tmp / mode, args)
            world.stop_relay()
    finally:
        world.stop_relay()
        topo.down()
        stats_path.write_text(old)
    on, off = out["fast_path_on"]["us_per_copy"], out["fast_path_off"]["us_per_copy"]
    if on and off:
        out["ratio_off_to_on"] = round(off / on, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--mode", default="stream-per-group")
    parser.add_argument("--bitrate", default="2M")
    parser.add_argument("--fps", type=int, default=30, help="objects per second (datagram mode: at most 1000 B each)")
    parser.add_argument("--relay-arg", action="append", default=[], help="extra relay argument (repeatable)")
    parser.add_argument("--compare-fast-path", action="store_true",
                        help="--hal sim with the fast path on vs off (instead of --hal sim vs --hal none)")
    args = parser.parse_args()
    if args.compare_fast_path:
        print(json.dumps(compare_fast_path(args), indent=2))
        return 0
    prefix = f"m{os.getpid() % 100000}"
    tmp = Path(tempfile.mkdtemp(prefix="moq-measure-"))
    out: dict[str, Any] = {}
    topo = Topology.up(prefix, publishers=1, subscribers=1)
    world = SimWorld(topo, tmp / "state")
    try:
        world.ensure_relay()
        out["sim"] = _measure(world, tmp / "sim", args)
        world.stop_relay()
        # --hal none on the same nodes and path: the NIC is back in passthrough, the relay protects in software.
        none_relay = _none_relay_in_sim(world, tmp)
        try:
            world.relay = none_relay
            out["none"] = _measure(world, tmp / "none", args)
        finally:
            world.relay = None
            stop(none_relay.proc)
    finally:
        world.stop_relay()
        topo.down()
    print(json.dumps(out, indent=2))
    return 0


def _none_relay_in_sim(world: SimWorld, tmp: Path) -> RunningRelay:
    """`relay --hal none` inside the sim's relay namespace, with the NIC in passthrough: same nodes, same path."""
    proc = world.topo.exec("relay", [sys.executable, "-m", "relay.cli", "--hal", "none", "--listen",
                                     f"{world.topo.relay_address}:4443", "--state-dir", str(tmp / "none-state")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=relay_env())
    assert proc.stdout is not None
    reader = LineReader(proc.stdout)
    ca = reader.wait_for("ca: ", STARTUP_TIMEOUT)
    if ca is None:
        stop(proc)
        raise RuntimeError(f"relay --hal none not ready:\n{reader.text()}")
    return RunningRelay(proc, reader, world.topo.relay_address, 4443, Path(ca[4:].strip()), ())


if __name__ == "__main__":
    sys.exit(main())
