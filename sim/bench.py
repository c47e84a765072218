"""`relay bench`: what the kernel fast path buys, as ratios measured in one run on this machine.

Three parts, each compared against its baseline in the same run (docs/benchmarks.md explains the method):

- **kernel**: cost per copy of the fan-out programs vs the floor, a minimal clone-and-redirect program
  (`bpf.floor_bench`, BPF_PROG_TEST_RUN in a private namespace);
- **relay**: relay cost per delivered copy (relay process CPU from /proc plus the programs' run time from
  bpf_stats) and one-way latency, `--hal sim` with the fast path on vs off, for each subscriber count;
- **engine**: the simulated NIC's user-space crypto engine per packet and suite (it stands for hardware, so it is
  reported apart from the relay).

Writes OUT/bench.json and OUT/summary.md (and PNG plots when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crypto_offload import bench as engine_bench
from crypto_offload.api import CipherSuite
from sim.demo import DemoConfig

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the measurement, the previous value afterwards."""
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(old)


def relay_sweep(counts: list[int], duration: float, fps: int, out: Path) -> list[dict[str, Any]]:
    """Fast path on vs off for each subscriber count, all on one simulated network with unshaped links."""
    from sim.simdemo import SubscriberLink, _one_run  # netlink machinery only when measuring
    from sim.topology import Topology

    rows = []
    prefix = f"bench{os.getpid() % 100000}"
    with Topology.up(prefix, publishers=1, subscribers=max(counts)) as topo, bpf_stats():
        for n in counts:
            links = [SubscriberLink(f"sub{i}", None) for i in range(n)]
            cfg = DemoConfig(subscribers=n, duration=duration, fps=fps, out=out / f"relay-{n}", mode="datagram")
            runs = {}
            for fast in ("on", "off"):
                print(f"relay: {n} subscribers, fast path {fast}", flush=True)
                runs[fast] = _one_run(cfg, topo, links, fast, count_programs=True)
            rows.append(_relay_row(n, runs))
    return rows


def _relay_row(n: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"subscribers": n}
    for fast, run in runs.items():
        s = run["summary"]
        published = int(run["published"].get("objects", 0))
        row[fast] = {
            "us_per_copy": s["relay_us_per_copy"], "copies": s["copies_delivered"],
            "delivery": round(s["copies_delivered"] / (published * n), 4) if published else None,
            "latency_p50_ms": s.get("latency_p50_ms"), "latency_p99_ms": s.get("latency_p99_ms"),
            "kernel_copies": s["kernel_copies"],
        }
    on, off = row["on"]["us_per_copy"], row["off"]["us_per_copy"]
    row["ratio_off_to_on"] = round(off / on, 2) if on and off else None
    return row


def engine_costs(packets: int) -> list[dict[str, Any]]:
    out = []
    for suite in CipherSuite:
        r = engine_bench.best(engine_bench.measure(suite, packets, 1200), engine_bench.measure(suite, packets, 1200))
        out.append({"suite": suite.name, "tx_us": round(r.tx_us, 2), "rx_us": round(r.rx_us, 2)})
    return out


def summary_md(result: dict[str, Any]) -> str:
    k = result["kernel"]
    lines = [
        f"# relay bench, {result['when']}",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "## Kernel cost per copy (fan-out programs vs the floor)",
        "",
        f"{k['copies']} copies of a {k['payload']}-byte object, {k['repeat']} packets: fast path "
        f"{k['fast_ns_per_copy']} ns, floor {k['floor_ns_per_copy']} ns per copy: **{k['ratio_fast_to_floor']}x** "
        "the floor.",
        "",
        "## Relay cost per delivered copy, `--hal sim`, fast path on vs off",
        "",
        "| subscribers | on: us/copy | off: us/copy | off / on | on: p50 / p99 ms | off: p50 / p99 ms | delivery on / off |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["relay"]:
        on, off = r["on"], r["off"]
        lines.append(f"| {r['subscribers']} | {on['us_per_copy']} | {off['us_per_copy']} | {r['ratio_off_to_on']} | "
                     f"{on['latency_p50_ms']} / {on['latency_p99_ms']} | {off['latency_p50_ms']} / "
                     f"{off['latency_p99_ms']} | {on['delivery']} / {off['delivery']} |")
    lines += ["", "## Simulated NIC engine per 1200-byte packet (stands for hardware)", "",
              "| suite | tx us | rx us |", "|---|---|---|"]
    lines += [f"| {e['suite']} | {e['tx_us']} | {e['rx_us']} |" for e in result["engine"]]
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """PNG plots when matplotlib is available (optional: the numbers are in bench.json and summary.md)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = result["relay"]
    xs = [r["subscribers"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for fast, label in (("on", "fast path on"), ("off", "fast path off (user space)")):
        ax.plot(xs, [r[fast]["us_per_copy"] for r in rows], marker="o", label=label)
    ax.set_xlabel("subscribers")
    ax.set_ylabel("relay cost per delivered copy (us)")
    ax.set_title("Relay cost per copy, --hal sim")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    path = out / "relay_cost.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where results go (default ./bench-out)")
    parser.add_argument("--quick", action="store_true", help="one subscriber count, short runs (about 1 minute)")
    parser.add_argument("--subscribers", default="2,8,16", help="comma-separated subscriber counts (default 2,8,16)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of media per run (default 10)")
    parser.add_argument("--fps", type=int, default=60, help="objects per second (1000-byte datagrams, default 60)")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("relay bench: needs root (namespaces, TC programs, bpf_stats); run it as root", file=sys.stderr)
        return 2
    try:
        counts = [int(c) for c in str(args.subscribers).split(",") if c.strip()]
    except ValueError:
        print(f"relay bench: --subscribers {args.subscribers!r}: give counts like 2,8,16", file=sys.stderr)
        return 2
    if not counts or min(counts) < 1 or max(counts) > 64:
        print("relay bench: subscriber counts must be between 1 and 64", file=sys.stderr)
        return 2
    duration = args.duration
    if args.quick:
        counts, duration = [max(counts)] if len(counts) == 1 else [8], min(duration, 4.0)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from bpf.floor_bench import measure as floor_measure

    print("kernel: fan-out programs vs the floor", flush=True)
    kernel = floor_measure(copies=10, repeat=500 if args.quick else 2000).to_json()
    print("engine: simulated NIC crypto per suite", flush=True)
    engine = engine_costs(1000 if args.quick else 5000)
    relay = relay_sweep(counts, duration, args.fps, out)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}",
        "command": "relay bench " + " ".join(sys.argv[2:]),
        "kernel": kernel, "relay": relay, "engine": engine,
    }
    result["plots"] = plots(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "summary.md").write_text(summary_md(result))
    print(summary_md(result))
    print(f"results: {out / 'bench.json'}, {out / 'summary.md'}")
    return 0
