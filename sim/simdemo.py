"""`relay demo --hal sim`: the simulated network, the NIC engine, the kernel fast path, real processes.

One publisher node and one node per subscriber; one subscriber sits behind a constrained link and one behind a lossy
link, so the report shows what the drop policy and loss recovery do. With `--fast-path both` the same scenario runs
twice on the same network (kernel fast path on, then off) and the verdict compares them. Everything this run
creates (namespaces, NIC engine, TC programs, pins) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.demo import PUBLISH_START_DELAY, DemoConfig, Processes, process_cpu_seconds, relay_argv, wait_ready
from sim.links import LinkShape
from sim.topology import Topology

CONSTRAINED = LinkShape(rate_bps=150_000, direction="down")  # below the stream's ~260 kbit/s at 30 fps
LOSSY = LinkShape(loss=0.03, direction="down")
COUNTERS = "fast path counters: "


@dataclass(frozen=True)
class SubscriberLink:
    node: str
    link: LinkShape | None

    def describe(self) -> str:
        return self.link.describe() if self.link else "unshaped"


def links_for(n: int) -> list[SubscriberLink]:
    """sub0 constrained, sub1 lossy (when there are at least 3 subscribers), the rest unshaped."""
    out = []
    for i in range(n):
        shape = CONSTRAINED if i == 0 and n >= 2 else LOSSY if i == 1 and n >= 3 else None
        out.append(SubscriberLink(f"sub{i}", shape))
    return out


def run_sim_demo(cfg: DemoConfig, fast_paths: list[str]) -> dict[str, Any]:
    """Bring the sim up, run the scenario once per fast-path setting, tear everything down; returns the report."""
    if os.geteuid() != 0:
        raise RuntimeError("relay demo --hal sim needs root (namespaces, veths, TC programs); use --hal none")
    cfg.out.mkdir(parents=True, exist_ok=True)
    prefix = f"demo{os.getpid() % 100000}"
    links = links_for(cfg.subscribers)
    print(f"sim {prefix}: bringing up 1 publisher and {cfg.subscribers} subscriber nodes", flush=True)
    runs = []
    with Topology.up(prefix, publishers=1, subscribers=cfg.subscribers) as topo:
        for sl in links:
            if sl.link is not None:
                topo.set_link(sl.node, sl.link)
        for fast in fast_paths:
            print(f"-- fast path {fast}", flush=True)
            runs.append(_one_run(cfg, topo, links, fast))
    report = {"config": {**{k: str(v) for k, v in vars(cfg).items()}, "hal": "sim", "fast_path": fast_paths},
              "links": {sl.node: sl.describe() for sl in links}, "runs": runs}
    if len(runs) == 2 and all(r["summary"].get("relay_us_per_copy") for r in runs):
        on, off = runs
        report["comparison"] = {"relay_cost_ratio_off_to_on": round(off["summary"]["relay_us_per_copy"]
                                                                    / on["summary"]["relay_us_per_copy"], 2)}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def program_seconds(relay_pid: int) -> float:
    """Run time so far of the relay's pinned fast-path programs (kernel.bpf_stats_enabled=1), 0 without pins."""
    total = 0
    for name in ("server_ingress", "client_egress"):
        pin = Path(f"/sys/fs/bpf/moq-relay-{relay_pid}/{name}")
        if pin.exists():
            out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)], capture_output=True,
                                 text=True, check=False).stdout
            with contextlib.suppress(ValueError):
                total += int(json.loads(out).get("run_time_ns", 0))
    return total / 1e9


def _one_run(cfg: DemoConfig, topo: Topology, links: list[SubscriberLink], fast: str,
             count_programs: bool = False) -> dict[str, Any]:
    """One scenario run; the relay's cost is its CPU time (plus its programs' run time with `count_programs`,
    which needs kernel.bpf_stats_enabled=1) over the publishing window."""
    procs = Processes()
    state = Path(tempfile.mkdtemp(prefix="moq-demo-"))
    out = cfg.out / f"fast-path-{fast}"
    out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, Any] = {}
    text = ""
    try:
        relay = procs.start([*relay_argv(), "--hal", "sim", "--prefix", topo.prefix, "--state-dir", str(state),
                             "--fast-path", fast], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url, ca = wait_ready(relay, timeout=30)
        common = ["--url", url, "--ca", ca, "--namespace", cfg.namespace, "--track", cfg.track]
        pub_json = out / "publisher.json"
        publisher = _exec(procs, topo, "pub0", [*relay_argv(), "pub", *common, "--fps", str(cfg.fps), "--gop",
                                                str(cfg.fps), "--bitrate", cfg.bitrate, "--mode", cfg.mode,
                                                "--duration", str(cfg.duration), "--start-delay",
                                                str(PUBLISH_START_DELAY), "--json", str(pub_json)])
        subs = []
        for sl in links:
            path = out / f"{sl.node}.json"
            subs.append((path, _exec(procs, topo, sl.node, [
                *relay_argv(), "sub", *common, "--duration", str(cfg.duration + PUBLISH_START_DELAY + 5),
                "--json", str(path)])))
        pid = relay.pid

        def meter() -> float:
            return process_cpu_seconds(pid) + (program_seconds(pid) if count_programs else 0.0)

        cpu = _watch(meter, publisher, [p for _, p in subs], cfg.duration)
        relay.terminate()
        text, _ = relay.communicate(timeout=15)
        counters = next((json.loads(ln[len(COUNTERS):]) for ln in text.splitlines() if ln.startswith(COUNTERS)), {})
        published = json.loads(pub_json.read_text()) if pub_json.exists() else {}
        results: list[dict[str, Any]] = [json.loads(p.read_text()) if p.exists() else {"errors": ["no report"]}
                                         for p, _ in subs]
    finally:
        procs.stop_all()
    copies = sum(int(r.get("objects", 0)) for r in results)
    kernel = int(counters.get("egress", {}).get("EG_CLONE_SENT", 0))
    eg = counters.get("egress", {})
    p50s = sorted(r["latency_ms"]["p50"] for r in results if (r.get("latency_ms") or {}).get("p50") is not None)
    p99s = [r["latency_ms"]["p99"] for r in results if (r.get("latency_ms") or {}).get("p99") is not None]
    summary = {
        "latency_p50_ms": p50s[len(p50s) // 2] if p50s else None,  # median over subscribers
        "latency_p99_ms": max(p99s) if p99s else None,  # worst subscriber
        "copies_delivered": copies,
        "relay_cpu_s": round(cpu, 4),
        "relay_us_per_copy": round(cpu / copies * 1e6, 1) if copies else None,
        "kernel_copies": kernel,  # sent by the kernel (some are then lost on a lossy or constrained link)
        "policy_drops": {"priority": _count(eg, "EG_PRIORITY_DROP"), "rest_of_group": _count(eg, "EG_GROUP_DROP")},
    }
    return {"fast_path": fast, "published": published, "subscribers": results, "summary": summary,
            "counters": counters}


def _count(counters: dict[str, Any], name: str) -> int:
    return int(counters.get(name, 0))


def _exec(procs: Processes, topo: Topology, node: str, argv: list[str]) -> subprocess.Popen[str]:
    child = topo.exec(node, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    procs.children.append(child)
    return child


def _watch(meter: Callable[[], float], publisher: subprocess.Popen[str], subs: list[subprocess.Popen[str]],
           duration: float) -> float:
    """Progress on one line; the relay's cost (`meter`) over the publishing window (after the start delay, until
    the publisher ends)."""
    start = time.monotonic()
    cpu_start: float | None = None
    cpu_end: float | None = None
    total = duration + PUBLISH_START_DELAY + 5
    tty, ticks = sys.stdout.isatty(), 0
    while publisher.poll() is None or any(p.poll() is None for p in subs):
        elapsed = time.monotonic() - start
        if cpu_start is None and elapsed >= PUBLISH_START_DELAY - 0.5:
            cpu_start = meter()
        if cpu_end is None and publisher.poll() is not None:
            cpu_end = meter()
        done = sum(p.poll() is not None for p in subs)
        if tty or ticks % 20 == 0:  # a refreshing line on a terminal, a line every 5 s in a log
            line = f"  {elapsed:5.1f} s of ~{total:.0f} s, subscribers finished {done}/{len(subs)}"
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
        ticks += 1
        time.sleep(0.25)
        if elapsed > duration + 40:
            raise RuntimeError("publisher or subscribers did not finish in time")
    if tty:
        print()
    if cpu_end is None:
        cpu_end = meter()
    return max(0.0, cpu_end - (cpu_start if cpu_start is not None else cpu_end))


def verdict(report: dict[str, Any]) -> str:
    lines = []
    for run in report["runs"]:
        published = run["published"].get("objects", 0)
        by_prio = run["published"].get("by_priority", {})
        lines.append(f"fast path {run['fast_path']}:")
        lines.append(f"  {'subscriber':<11}{'link':<26}{'objects':>8}{'of':>5}{'I-frames':>10}{'decodable':>11}"
                     f"{'p50 ms':>8}{'p99 ms':>8}")
        for sl_name, sub in zip(report["links"], run["subscribers"], strict=False):
            lat = sub.get("latency_ms") or {}
            i_frames = f"{sub.get('by_priority', {}).get('0', 0)}/{by_prio.get('0', 0)}"
            lines.append(f"  {sl_name:<11}{report['links'][sl_name]:<26}{sub.get('objects', 0):>8}{published:>5}"
                         f"{i_frames:>10}{sub.get('decodable', 0):>11}{_ms(lat.get('p50'))}{_ms(lat.get('p99'))}")
        s = run["summary"]
        lines.append(f"  relay CPU {s['relay_us_per_copy']} us per delivered copy; {s['copies_delivered']} copies "
                     f"delivered, {s['kernel_copies']} sent by the kernel; "
                     f"policy drops: {s['policy_drops']['priority']} by priority, "
                     f"{s['policy_drops']['rest_of_group']} rest of group")
    if "comparison" in report:
        lines.append(f"relay cost per copy, fast path off / on: {report['comparison']['relay_cost_ratio_off_to_on']}x")
    return "\n".join(lines)


def _ms(value: Any) -> str:
    return f"{value:8.2f}" if isinstance(value, (int, float)) else f"{'-':>8}"


def main_sim(cfg: DemoConfig, fast_path: str) -> int:
    fast_paths = ["on", "off"] if fast_path == "both" else [fast_path]
    try:
        report = run_sim_demo(cfg, fast_paths)
    except RuntimeError as exc:
        print(f"relay demo: {exc}", file=sys.stderr)
        return 1
    print(verdict(report))
    print(f"report: {cfg.out / 'report.json'}")
    with contextlib.suppress(KeyError):
        ok = all(not s.get("errors") and s.get("objects", 0) > 0 for r in report["runs"] for s in r["subscribers"])
        return 0 if ok else 1
    return 1
