"""`relay demo --hal sim`: the simulated network, the NIC engine, the kernel fast path, real processes.

One publisher node and one node per subscriber; one subscriber sits behind a constrained link and one behind a lossy
link, so the report shows what the drop policy and loss recovery do. With `--fast-path both` the same scenario runs
twice on the same network (kernel fast path on, then off) and the verdict compares them. Everything this run
creates (namespaces, NIC engine, TC programs, pins) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.stats import read_socket
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


@dataclass(frozen=True)
class RunSpec:
    """One scenario run of the demo: the fast-path setting, extra relay options (e.g. `--recovery kernel`) and the
    label it carries in the report ("on", "off", "on/kernel", ...)."""

    fast_path: str
    relay_args: tuple[str, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.fast_path


def run_sim_demo(cfg: DemoConfig, fast_paths: Sequence[str | RunSpec]) -> dict[str, Any]:
    """Bring the sim up, run the scenario once per fast-path setting (or RunSpec), tear everything down; returns
    the report (also written as DIR/report.json and DIR/report.html)."""
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
        for item in fast_paths:
            spec = item if isinstance(item, RunSpec) else RunSpec(item)
            extra = f" ({' '.join(spec.relay_args)})" if spec.relay_args else ""
            print(f"-- fast path {spec.fast_path}{extra}", flush=True)
            run = _one_run(cfg, topo, links, spec.fast_path, relay_args=list(spec.relay_args), label=spec.label,
                           live=True)
            run["label"], run["relay_args"] = spec.name, list(spec.relay_args)
            run["accounting"] = accounting(run, [sl.node for sl in links])
            runs.append(run)
    report = {"config": {**{k: str(v) for k, v in vars(cfg).items()}, "hal": "sim",
                         "fast_path": [it if isinstance(it, str) else it.name for it in fast_paths]},
              "links": {sl.node: sl.describe() for sl in links}, "runs": runs}
    off = next((r for r in runs if r["fast_path"] == "off"), None)
    if off is not None and off["summary"].get("relay_us_per_copy"):
        # relay cost per copy of the user-space path over each fast-path run's, measured in this one report
        ratios = {r["label"]: round(off["summary"]["relay_us_per_copy"] / r["summary"]["relay_us_per_copy"], 2)
                  for r in runs if r is not off and r["summary"].get("relay_us_per_copy")}
        if ratios:
            report["comparison"] = {"relay_cost_ratio_off_to": ratios}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2))
    from sim import report as html_report  # noqa: PLC0415 - matplotlib only once there is something to plot

    html_report.write(cfg.out / "report.json")
    return report


def accounting(run: dict[str, Any], nodes: list[str]) -> list[dict[str, Any]]:
    """Per subscriber, from the relay's own counts (the stats socket's archive of ended subscriptions): every
    published object was sent (user space or kernel) or dropped by policy, and what was sent but not delivered
    was lost on the link. consistent: published == sent + dropped by policy, and 0 <= lost."""
    published = int(run.get("published", {}).get("objects", 0))
    relay = run.get("relay_subscribers") or {}
    rows = []
    for node, sub in zip(nodes, run.get("subscribers", []), strict=False):
        r = relay.get(node)
        delivered = int(sub.get("objects", 0))
        if r is None:
            rows.append({"subscriber": node, "published": published, "delivered": delivered, "relay_counts": False,
                         "consistent": False})
            continue
        backlog = int(r.get("backlog_drops", 0))
        user = int(r.get("datagrams_sent", 0)) - backlog  # a backlog drop discards a datagram already queued
        kernel = int(r.get("kernel_sent", 0))
        policy = {"priority": int(r.get("kernel_priority_drops", 0)),
                  "rest_of_group": int(r.get("kernel_group_drops", 0)), "backlog": backlog}
        dropped = sum(policy.values())
        lost = user + kernel - delivered
        rows.append({"subscriber": node, "published": published, "sent_user": user, "sent_kernel": kernel,
                     "delivered": delivered, "dropped_by_policy": dropped, "drops": policy, "lost": lost,
                     "relay_counts": True, "consistent": published == delivered + dropped + lost and lost >= 0})
    return rows


def program_seconds(relay_pid: int) -> float:
    """Run time so far of the relay's pinned fast-path programs (kernel.bpf_stats_enabled=1), 0 without pins."""
    total = 0
    # Not client_egress: for a clone it runs inside server_ingress (bpf_clone_redirect transmits synchronously, and
    # bpf_stats times the whole run), and for a user-space packet inside the relay's own sendmsg (already in its CPU
    # time). client_ingress: --recovery kernel (recovery_sweep_prog runs in the relay's syscalls: in its CPU too).
    for name in ("server_ingress", "client_ingress"):
        pin = Path(f"/sys/fs/bpf/moq-relay-{relay_pid}/{name}")
        if pin.exists():
            out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)], capture_output=True,
                                 text=True, check=False).stdout
            with contextlib.suppress(ValueError):
                total += int(json.loads(out).get("run_time_ns", 0))
    return total / 1e9


def _one_run(cfg: DemoConfig, topo: Topology, links: list[SubscriberLink], fast: str,
             count_programs: bool = False, *, relay_args: list[str] | None = None, label: str = "",
             live: bool = False) -> dict[str, Any]:
    """One scenario run; the relay's cost is its CPU time (plus its programs' run time with `count_programs`,
    which needs kernel.bpf_stats_enabled=1) over the publishing window. `relay_args` are extra relay options
    for this run (e.g. `--recovery kernel`, `--nic-engine tc`: how `relay bench` compares variants). The relay's
    stats socket is sampled every second (per-subscriber series; with `live`, a terminal view) and read once more
    after the subscribers left, for its archive of their final counts (`relay_subscribers`)."""
    procs = Processes()
    state = Path(tempfile.mkdtemp(prefix="moq-demo-"))
    out = cfg.out / (f"run-{label.replace('/', '-')}" if label else f"fast-path-{fast}")
    sock = state / "stats.sock"
    view = LiveView(sock, topo, links, label or fast, enabled=live)
    out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, Any] = {}
    text = ""
    try:
        relay = procs.start([*relay_argv(), "--hal", "sim", "--prefix", topo.prefix, "--state-dir", str(state),
                             "--fast-path", fast, "--stats-socket", str(sock), *(relay_args or [])],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
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

        cpu = _watch(meter, publisher, [p for _, p in subs], cfg.duration, view)
        view.sample(final=True)  # the archive of ended subscriptions, before the relay stops
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
            "counters": counters, "relay_subscribers": view.final, "series": view.series}


class LiveView:
    """Per-subscriber figures sampled once a second: the relay's side from its stats socket (objects sent by user
    space and by the kernel, policy drops, cwnd / in flight / RTT as aioquic sees the connection), the delivered
    side from the switch port's transmitted bytes towards each subscriber (after the link's shaping and loss).
    `final`: the relay's last word per subscriber node (its archive of ended subscriptions), read after the run.
    Without `enabled` (relay bench) only that final read is made: per-second sampling would add to the relay CPU
    the bench measures."""

    def __init__(self, sock: Path, topo: Topology, links: list[SubscriberLink], label: str, enabled: bool) -> None:
        self.sock, self.label, self.enabled = sock, label, enabled
        self.nodes = [sl.node for sl in links]
        self.link_of = {sl.node: sl.describe() for sl in links}
        self.node_of_ip: dict[str, str] = {}
        for n in self.nodes:
            node = topo.node(n)
            self.node_of_ip[str(node.ipv4)] = self.node_of_ip[str(node.ipv6)] = n
        self.switch_ns = topo.state.switch_ns
        self.port_of = {n: topo.node(n).switch_if for n in self.nodes}
        self.series: dict[str, dict[str, list[float]]] = {
            n: {"t": [], "delivered_bps": [], "sent_per_s": []} for n in self.nodes}
        self.current: dict[str, dict[str, Any]] = {}
        self.rates: dict[str, tuple[float, float]] = {}  # node -> (delivered bit/s, sent objects/s)
        self.final: dict[str, dict[str, Any]] = {}
        self._prev: dict[str, tuple[float, int, int]] = {}  # node -> (t, tx bytes, sent objects)
        self._lines = 0

    def _node(self, entry: dict[str, Any]) -> str | None:
        return self.node_of_ip.get(str(entry.get("peer", "")).removeprefix("::ffff:"))

    def _relay_entries(self) -> dict[str, dict[str, Any]] | None:
        try:
            snap = asyncio.run(read_socket(self.sock, timeout=2.0))
        except (OSError, TimeoutError, ValueError):
            return None
        out: dict[str, dict[str, Any]] = {}
        for t in snap.get("track_list", []):
            for e in t.get("subscribers", []):
                if (node := self._node(e)) is not None:
                    out[node] = e
        for e in snap.get("ended_subscriptions", []):  # final figures win over a live one of the same peer
            if (node := self._node(e)) is not None:
                out[node] = {**e, "ended": True}
        return out

    def _tx_bytes(self) -> dict[str, int]:
        argv = ["ip", "-n", self.switch_ns, "-j", "-s", "link", "show"]
        try:
            data = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout or "[]")
        except (OSError, subprocess.SubprocessError, ValueError):
            return {}
        by_if = {d.get("ifname"): int(d.get("stats64", {}).get("tx", {}).get("bytes", 0)) for d in data}
        return {n: by_if[i] for n, i in self.port_of.items() if i in by_if}

    @staticmethod
    def sent(entry: dict[str, Any]) -> int:
        return (int(entry.get("datagrams_sent", 0)) - int(entry.get("backlog_drops", 0))
                + int(entry.get("kernel_sent", 0)))

    def sample(self, elapsed: float = 0.0, final: bool = False) -> None:
        if final:
            self.final = self._relay_entries() or {}
            return
        if not self.enabled:
            return
        entries = self._relay_entries() or {}
        self.current.update(entries)
        tx = self._tx_bytes()
        now = elapsed  # seconds since the subscribers started (the publisher starts ~PUBLISH_START_DELAY later)
        for n in self.nodes:
            sent = self.sent(self.current[n]) if n in self.current else 0
            if n in tx and n in self._prev:
                t0, b0, s0 = self._prev[n]
                dt = max(now - t0, 1e-3)
                rate, per_s = (tx[n] - b0) * 8 / dt, (sent - s0) / dt
                self.rates[n] = (rate, per_s)
                series = self.series[n]
                series["t"].append(round(now, 2))
                series["delivered_bps"].append(round(rate))
                series["sent_per_s"].append(round(per_s, 1))
            if n in tx:
                self._prev[n] = (now, tx[n], sent)

    def table(self) -> list[str]:
        lines = [f"  {'subscriber':<10} {'link':<24} {'kbit/s':>7} {'sent/s':>7} {'kernel':>7} "
                 f"{'drops: prio':>11} {'group':>6} {'backlog':>7} {'cwnd KB':>8} {'flight KB':>9} {'rtt ms':>7}"]
        for n in self.nodes:
            e = self.current.get(n, {})
            rate, per_s = self.rates.get(n, (0.0, 0.0))
            sent = self.sent(e) if e else 0
            share = f"{100 * int(e.get('kernel_sent', 0)) / sent:.0f} %" if sent else "-"
            cwnd = f"{e['cwnd'] / 1024:.1f}" if "cwnd" in e else "-"
            flight = f"{e['bytes_in_flight'] / 1024:.1f}" if "bytes_in_flight" in e else "-"
            rtt = f"{e['rtt_ms']:.1f}" if e.get("rtt_ms") is not None else "-"
            state = " (ended)" if e.get("ended") else ""
            lines.append(f"  {n:<10} {self.link_of[n][:24]:<24} {rate / 1e3:>7.0f} {per_s:>7.1f} {share:>7} "
                         f"{e.get('kernel_priority_drops', 0):>11} {e.get('kernel_group_drops', 0):>6} "
                         f"{e.get('backlog_drops', 0):>7} {cwnd:>8} {flight:>9} {rtt:>7}{state}")
        return lines

    def draw(self, progress: str) -> None:
        """Redraw the block in place (ANSI: cursor up, clear to the end of the screen)."""
        text = "\n".join([f"fast path {self.label}: {progress.strip()}", *self.table()])
        up = f"\x1b[{self._lines}F\x1b[J" if self._lines else ""
        print(up + text, flush=True)
        self._lines = text.count("\n") + 1

    def summary(self) -> str:
        """One line's worth for a log: delivered kbit/s per subscriber, the kernel's share, policy drops."""
        rates = " ".join(f"{n}={self.rates.get(n, (0.0, 0.0))[0] / 1e3:.0f}" for n in self.nodes)
        sent = sum(self.sent(e) for e in self.current.values())
        kernel = sum(int(e.get("kernel_sent", 0)) for e in self.current.values())
        drops = sum(int(e.get("kernel_priority_drops", 0)) + int(e.get("kernel_group_drops", 0))
                    + int(e.get("backlog_drops", 0)) for e in self.current.values())
        share = f"{100 * kernel / sent:.0f} %" if sent else "-"
        return f"; kbit/s {rates}; kernel share {share}; policy drops {drops}"


def _count(counters: dict[str, Any], name: str) -> int:
    return int(counters.get(name, 0))


def _exec(procs: Processes, topo: Topology, node: str, argv: list[str]) -> subprocess.Popen[str]:
    child = topo.exec(node, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    procs.children.append(child)
    return child


def _watch(meter: Callable[[], float], publisher: subprocess.Popen[str], subs: list[subprocess.Popen[str]],
           duration: float, view: LiveView | None = None) -> float:
    """Progress (and every second the live view's sample); the relay's cost (`meter`) over the publishing window
    (after the start delay, until the publisher ends)."""
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
        line = f"  {elapsed:5.1f} s of ~{total:.0f} s, subscribers finished {done}/{len(subs)}"
        if view is not None and ticks % 4 == 0:
            view.sample(elapsed)
        if view is not None and view.enabled and tty:
            if ticks % 4 == 0:  # a block redrawn in place every second
                view.draw(line)
        elif tty or ticks % 20 == 0:  # a refreshing line on a terminal, a line every 5 s in a log
            if view is not None and view.enabled and not tty:
                line += view.summary()
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
        ticks += 1
        time.sleep(0.25)
        if elapsed > duration + 40:
            raise RuntimeError("publisher or subscribers did not finish in time")
    if tty and not (view is not None and view.enabled):
        print()
    if cpu_end is None:
        cpu_end = meter()
    return max(0.0, cpu_end - (cpu_start if cpu_start is not None else cpu_end))


def verdict(report: dict[str, Any]) -> str:
    lines = []
    for run in report["runs"]:
        published = run["published"].get("objects", 0)
        by_prio = run["published"].get("by_priority", {})
        lines.append(f"fast path {run.get('label', run['fast_path'])}:")
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
        acc = run.get("accounting") or []
        if acc:
            bad = [a["subscriber"] for a in acc if not a["consistent"]]
            lines.append("  relay accounting (published = delivered + dropped by policy + lost, relay's counts): "
                         + ("adds up for every subscriber" if not bad else f"does NOT add up for {', '.join(bad)}"))
    for label, ratio in report.get("comparison", {}).get("relay_cost_ratio_off_to", {}).items():
        lines.append(f"relay cost per copy, fast path off / {label}: {ratio}x")
    return "\n".join(lines)


def _ms(value: Any) -> str:
    return f"{value:8.2f}" if isinstance(value, (int, float)) else f"{'-':>8}"


def run_specs(fast_path: str, recovery: str) -> list[str | RunSpec]:
    """The runs of one demo: the fast path on (once per recovery design asked for), then off."""
    runs: list[str | RunSpec] = []
    if fast_path in ("on", "both"):
        for rec in ("kernel", "user") if recovery == "both" else (recovery,):
            runs.append(RunSpec("on", ("--recovery", rec), f"on/{rec}"))
    if fast_path in ("off", "both"):
        runs.append("off")
    return runs


def main_sim(cfg: DemoConfig, fast_path: str, recovery: str = "kernel") -> int:
    fast_paths = run_specs(fast_path, recovery)
    try:
        report = run_sim_demo(cfg, fast_paths)
    except RuntimeError as exc:
        print(f"relay demo: {exc}", file=sys.stderr)
        return 1
    print(verdict(report))
    print(f"report: {cfg.out / 'report.json'}")
    print(f"report: {cfg.out / 'report.html'}")
    with contextlib.suppress(KeyError):
        ok = all(not s.get("errors") and s.get("objects", 0) > 0 for r in report["runs"] for s in r["subscribers"])
        return 0 if ok else 1
    return 1
