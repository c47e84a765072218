"""`relay demo`: one publisher, several subscribers, one relay, every part a real process, and a report.

The demo drives the same command-line tools a user runs (`relay`, `relay pub`, `relay sub`), so what it shows is
what a user gets. Each process is started by us, tracked by PID, and ended in a `finally`, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY = re.compile(r"listening on (moqt://\S+)")
CA_LINE = re.compile(r"ca: (\S+)")
PUBLISH_START_DELAY = 5.0  # every subscriber process must be up and subscribed first (2 cores)


@dataclass
class DemoConfig:
    subscribers: int = 4
    duration: float = 10.0
    mode: str = "datagram"
    out: Path = Path("demo-out")
    fps: int = 30
    bitrate: str = "2M"
    namespace: str = "demo/cam1"
    track: str = "video"


@dataclass
class Processes:
    """Every child we started, so teardown ends exactly those."""

    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        child = subprocess.Popen(argv, text=True, **kwargs)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def relay_argv() -> list[str]:
    return [sys.executable, "-m", "relay.cli"]


def wait_ready(relay: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Read the relay's stdout until it prints its URL and CA path (the documented readiness contract)."""
    assert relay.stdout is not None
    url = ca = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (url and ca):
        line = relay.stdout.readline()
        if not line:
            if relay.poll() is not None:
                raise RuntimeError(f"relay exited with status {relay.returncode} before it was ready")
            continue
        if m := READY.search(line):
            url = m.group(1)
        if m := CA_LINE.search(line):
            ca = m.group(1)
    if not (url and ca):
        raise RuntimeError(f"relay not ready after {timeout:.0f} s")
    return url, ca


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (/proc/PID/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    cfg.out.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    state = Path(tempfile.mkdtemp(prefix="moq-demo-"))
    port = free_port()
    try:
        relay = procs.start([*relay_argv(), "--hal", "none", "--listen", f"127.0.0.1:{port}", "--state-dir", str(state)],
                            stdout=subprocess.PIPE)
        url, ca = wait_ready(relay, timeout=20)
        print(f"relay ready at {url}")
        common = ["--url", url, "--ca", ca, "--namespace", cfg.namespace, "--track", cfg.track]
        pub_json = cfg.out / "publisher.json"
        publisher = procs.start([*relay_argv(), "pub", *common, "--fps", str(cfg.fps), "--gop", str(cfg.fps),
                                 "--bitrate", cfg.bitrate, "--mode", cfg.mode, "--duration", str(cfg.duration),
                                 "--start-delay", str(PUBLISH_START_DELAY), "--json", str(pub_json)],
                                stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        subs = []
        for i in range(cfg.subscribers):
            path = cfg.out / f"sub{i}.json"
            subs.append((path, procs.start([*relay_argv(), "sub", *common, "--duration", str(cfg.duration + PUBLISH_START_DELAY + 3),
                                            "--json", str(path)], stdout=subprocess.DEVNULL)))
        start = time.monotonic()
        # Relay CPU is sampled over the publishing window only (after the start delay, until the publisher exits),
        # so session set-up is not charged to the objects.
        cpu_start: float | None = None
        cpu_end: float | None = None
        while publisher.poll() is None or any(p.poll() is None for _, p in subs):
            elapsed = time.monotonic() - start
            if cpu_start is None and elapsed >= PUBLISH_START_DELAY - 0.5:
                cpu_start = process_cpu_seconds(relay.pid)
            if cpu_end is None and publisher.poll() is not None:
                cpu_end = process_cpu_seconds(relay.pid)
            print(f"\r  running {elapsed:5.1f} s of ~{cfg.duration + PUBLISH_START_DELAY + 3:.0f} s", end="", flush=True)
            time.sleep(0.25)
            if elapsed > cfg.duration + 30:
                raise RuntimeError("publisher or subscribers did not finish in time")
        print()
        if cpu_end is None:
            cpu_end = process_cpu_seconds(relay.pid)
        published = json.loads(pub_json.read_text()) if pub_json.exists() else {}
        results: list[dict[str, Any]] = [json.loads(p.read_text()) if p.exists() else {"errors": ["no report"]}
                                         for p, _ in subs]
    finally:
        procs.stop_all()
    copies = sum(int(r.get("objects", 0)) for r in results)
    relay_cpu = max(0.0, (cpu_end or 0.0) - (cpu_start or 0.0))
    p50s = [r["latency_ms"]["p50"] for r in results if (r.get("latency_ms") or {}).get("p50") is not None]
    p99s = [r["latency_ms"]["p99"] for r in results if (r.get("latency_ms") or {}).get("p99") is not None]
    summary = {
        "copies_delivered": copies,
        "relay_cpu_s": round(relay_cpu, 4),
        "relay_cpu_us_per_copy": round(relay_cpu / copies * 1e6, 2) if copies else None,
        "latency_ms_p50_median": sorted(p50s)[len(p50s) // 2] if p50s else None,
        "latency_ms_p99_max": max(p99s) if p99s else None,
    }
    report = {"config": {k: str(v) for k, v in vars(cfg).items()}, "published": published, "subscribers": results,
              "summary": summary}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _ms(value: Any) -> str:
    return f"{value:9.2f}" if isinstance(value, (int, float)) else f"{'-':>9}"


def verdict_table(report: dict[str, Any]) -> str:
    published = report["published"].get("objects", 0)
    lines = [f"{'subscriber':<12}{'objects':>9}{'of':>6}{'decodable':>11}{'p50 ms':>9}{'p99 ms':>9}  errors"]
    for i, sub in enumerate(report["subscribers"]):
        lat = sub.get("latency_ms") or {}
        errors = sub.get("errors", [])
        lines.append(f"{'sub' + str(i):<12}{sub.get('objects', 0):>9}{published:>6}{sub.get('decodable', 0):>11}"
                     f"{_ms(lat.get('p50'))}{_ms(lat.get('p99'))}  {len(errors) if isinstance(errors, list) else errors}")
    summary = report.get("summary", {})
    if summary.get("relay_cpu_us_per_copy") is not None:
        lines.append(f"relay CPU {summary['relay_cpu_s']:.3f} s for {summary['copies_delivered']} copies = "
                     f"{summary['relay_cpu_us_per_copy']:.1f} us per delivered copy (user-space path)")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hal", choices=["none", "sim"], default="none",
                        help="none = everything on loopback, user-space relay; sim = the simulated network and NIC "
                        "(root), one node per subscriber, sub0 behind a constrained link, sub1 behind a lossy one")
    parser.add_argument("--fast-path", choices=["on", "off", "both"], default="both",
                        help="with --hal sim: the kernel fast path on, off, or both one after the other (default)")
    parser.add_argument("--recovery", choices=["kernel", "user", "both"], default="both",
                        help="with the fast path on: who handles the subscribers' ACKs of kernel copies "
                        "(docs/kernel-recovery.md): kernel, user (the thesis design), or both one after the other "
                        "(default)")
    parser.add_argument("--nic-engine", choices=["user", "tc"], default="user",
                        help="with --hal sim: the NIC's crypto engine (docs/tc-crypto-engine.md; default user)")
    parser.add_argument("--subscribers", type=int, default=None,
                        help="number of subscribers (default 4 on loopback, 8 in the sim)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of media to publish (default 10)")
    parser.add_argument("--bitrate", default="2M", help="publisher bitrate (default 2M)")
    parser.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    parser.add_argument("--mode", choices=["datagram", "stream-per-object", "stream-per-group"], default="datagram",
                        help="how the publisher sends objects (default datagram)")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where report.json goes (default ./demo-out)")


def run(args: argparse.Namespace) -> int:
    if args.subscribers is None:
        args.subscribers = 8 if args.hal == "sim" else 4
    if args.subscribers < 1:
        print("relay demo: --subscribers must be at least 1", file=sys.stderr)
        return 2
    cfg = DemoConfig(subscribers=args.subscribers, duration=args.duration, mode=args.mode, out=args.out,
                     fps=args.fps, bitrate=args.bitrate)
    if args.hal == "sim":
        from sim.simdemo import main_sim  # imports the sim's netlink machinery only when asked for

        os.environ["RELAY_NIC_ENGINE"] = args.nic_engine  # hal/sim.py's --nic-engine default in the relays started

        print(f"demo: sim, 1 publisher -> {cfg.subscribers} subscribers, {cfg.mode}, {cfg.duration:.0f} s, "
              f"fast path {args.fast_path}, recovery {args.recovery}")
        return main_sim(cfg, args.fast_path, args.recovery)
    env_note = "" if os.geteuid() == 0 else " (not root: only the loopback demo can run)"
    print(f"demo: 1 publisher -> {cfg.subscribers} subscribers, {cfg.mode}, {cfg.duration:.0f} s{env_note}")
    report = run_demo(cfg)
    print(verdict_table(report))
    print(f"report: {cfg.out / 'report.json'}")
    from sim import report as html_report  # noqa: PLC0415 - matplotlib loads only when a report is written

    print(html_report.text_table(report))
    print(f"report: {html_report.write(cfg.out / 'report.json')}")
    ok = all(not s.get("errors") and s.get("objects", 0) > 0 for s in report["subscribers"])
    return 0 if ok else 1
