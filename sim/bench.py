"""`relay bench`: what the kernel fast path buys, as ratios measured in one run on this machine.

Every comparison is made against its baseline in the same run (docs/benchmarks.md explains the method):

- **kernel**: cost per copy of the fan-out programs vs the floor, a minimal clone-and-redirect program
  (`bpf.floor_bench`, BPF_PROG_TEST_RUN in a private namespace);
- **relay**, per simulated NIC engine (`--nic-engine user|tc|both`), `--hal sim`, three relay variants: `off` (fast
  path off, every copy from user space), `user` (fast path on, `--recovery user`) and `kernel` (fast path on,
  `--recovery kernel`; recorded as unavailable while the relay does not accept it). Sweeps: subscriber count,
  bitrate (objects per second at fixed subscribers), datagram vs stream-per-group, a maximum-subscribers search
  (doubling until delivery drops below 99.9 % or the time budget ends), and the relay's added one-way latency
  (packet capture with kernel timestamps on the relay's own interface). Cost per delivered copy = relay process
  CPU from /proc plus its programs' run time from bpf_stats, over the publishing window;
- **engines**: the simulated NIC's crypto per packet: the user-space engine per suite, and the TC engine vs the
  user-space engine per payload size (`crypto_offload.tc_bench`). They stand for hardware, so they are reported
  apart from the relay.

Writes OUT/bench.json, OUT/summary.md and PNG plots (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto_offload import bench as engine_bench
from crypto_offload.api import CipherSuite
from sim.demo import DemoConfig, relay_argv

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
VARIANTS = ("off", "user", "kernel")  # fast path off; on with --recovery user; on with --recovery kernel
GOOD_DELIVERY = 0.999  # "maximum subscribers": the largest count whose delivery stays at or above this
DATAGRAM_BYTES = 1000  # relay pub's datagram payload cap: every datagram-mode object is this size here
BASE_FPS = 60


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the measurement, the previous value afterwards."""
    old = BPF_STATS.read_text().strip()
    BPF_STATS.write_text("1")
    try:
        yield
    finally:
        BPF_STATS.write_text(old)


def recovery_modes() -> set[str]:
    """The `--recovery` choices this relay build accepts, from `relay --help` (the serve options)."""
    text = subprocess.run([*relay_argv(), "--help"], capture_output=True, text=True, check=False, timeout=60).stdout
    m = re.search(r"--recovery \{([^}]*)\}", text)
    return set(m.group(1).split(",")) if m else set()


def variant_args(variant: str, engine: str) -> tuple[str, list[str]]:
    """(`--fast-path` value, extra relay options) of one variant on one NIC engine."""
    nic = ["--nic-engine", engine]
    if variant == "off":
        return "off", nic
    return "on", [*nic, "--recovery", variant]


# --- the relay's added latency: one capture on the relay's interface ------------------------------------------

MAGIC = b"MQSV"  # relay.tools.media: the synthetic payload's header starts with it, the sequence number 14 bytes on
SEQ_OFFSET = 14
PACKET_OUTGOING = 4  # linux/if_packet.h
SO_TIMESTAMPNS = 35  # asm-generic/socket.h (also SCM_TIMESTAMPNS)
ETH_P_ALL = 0x0003


def capture(iface: str, out: Path) -> None:
    """Until SIGTERM: kernel receive/transmit timestamps of every media packet on `iface`; writes the added
    latency of each sent copy (its transmit time minus the arrival of the same object) to `out`.

    Runs in the relay's namespace. The taps sit before TC ingress and after TC egress, so the figure covers what
    the relay host adds (programs, clone, redirect; or socket, event loop, aioquic) and nothing of the NIC engine,
    the links or the client processes.
    """
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    arrived: dict[int, int] = {}
    added: list[int] = []
    unmatched = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((iface, 0))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.settimeout(0.2)
        print("capturing", flush=True)
        while not stop:
            try:
                data, anc, _flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            at = data.find(MAGIC)
            if at < 0 or len(data) < at + SEQ_OFFSET + 8:
                continue
            stamp = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                          if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
            if stamp is None:
                continue
            ns = stamp[0] * 1_000_000_000 + stamp[1]
            (seq,) = struct.unpack_from("!Q", data, at + SEQ_OFFSET)
            if addr[2] == PACKET_OUTGOING:
                if seq in arrived:
                    added.append(ns - arrived[seq])
                else:
                    unmatched += 1
            else:
                arrived.setdefault(seq, ns)
    out.write_text(json.dumps({"added_ns": added, "objects_in": len(arrived), "unmatched_out": unmatched}))


def latency_summary(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    added = sorted(data["added_ns"])
    if not added:
        return {"copies": 0, "objects_in": data["objects_in"], "p50_us": None, "p99_us": None}
    return {"copies": len(added), "objects_in": data["objects_in"], "unmatched_out": data["unmatched_out"],
            "p50_us": round(added[len(added) // 2] / 1000, 1),
            "p99_us": round(added[min(len(added) - 1, int(len(added) * 0.99))] / 1000, 1)}


# --- runs ------------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One bench run: the network, what is measured, and what is known to be unavailable."""

    out: Path
    duration: float
    modes: set[str]
    unavailable: dict[str, str] = field(default_factory=dict)  # variant -> why
    topo: Any = None
    quick: bool = False  # the bitrate and mode sweeps compare `off` with the best fast-path variant only

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v not in self.unavailable]

    def one(self, engine: str, variant: str, n: int, fps: int = BASE_FPS, mode: str = "datagram",
            capture_latency: bool = False, start_delay: float | None = None) -> dict[str, Any]:
        """One relay run; a variant the relay refuses is recorded as unavailable, never fatal."""
        import sim.simdemo as simdemo  # netlink machinery only when measuring
        from sim.simdemo import SubscriberLink

        if variant in self.unavailable:
            return {"available": False, "reason": self.unavailable[variant]}
        tag = f"{engine}-{variant}-{mode}-{fps}fps-{n}"
        print(f"relay: nic engine {engine}, {variant}, {n} subscribers, {fps} objects/s, {mode}", flush=True)
        # Datagram objects are capped at 1000 bytes: ask for more, get 1000-byte objects at `fps`. Streams carry
        # the same bytes per second (60 x 1000 B = 480 kbit/s at 60 objects/s), as frames of varying size.
        bitrate = str(16_000 * fps) if mode == "datagram" else str(8 * DATAGRAM_BYTES * fps)
        cfg = DemoConfig(subscribers=n, duration=self.duration, fps=fps, out=self.out / "runs" / tag, mode=mode,
                         bitrate=bitrate)
        links = [SubscriberLink(f"sub{i}", None) for i in range(n)]
        fast, extra = variant_args(variant, engine)
        cap = None
        cap_path = self.out / "runs" / f"{tag}.capture.json"
        old_delay = simdemo.PUBLISH_START_DELAY
        try:
            if capture_latency:
                cap_path.parent.mkdir(parents=True, exist_ok=True)
                cap = self.topo.exec("relay", [sys.executable, "-m", "sim.bench", "capture", "--iface", "eth0",
                                               "--out", str(cap_path)], stdout=subprocess.PIPE, text=True)
                assert cap.stdout is not None
                cap.stdout.readline()  # "capturing": the socket is bound before the relay starts
            if start_delay is not None:
                # Many client processes on two cores take longer to start than the default delay; objects
                # published before a subscriber is up would count against the relay.
                simdemo.PUBLISH_START_DELAY = start_delay
            run = simdemo._one_run(cfg, self.topo, links, fast, count_programs=True, relay_args=extra)
        except RuntimeError as exc:
            if variant == "kernel" and "before it was ready" in str(exc):
                self.unavailable[variant] = f"the relay did not start with --recovery {variant} ({engine} NIC): {exc}"
                return {"available": False, "reason": self.unavailable[variant]}
            return {"available": True, "error": str(exc), "delivery": 0.0}
        finally:
            simdemo.PUBLISH_START_DELAY = old_delay
            if cap is not None:
                cap.send_signal(signal.SIGTERM)
                cap.wait(timeout=30)
        s = run["summary"]
        published = int(run["published"].get("objects", 0))
        row: dict[str, Any] = {
            "available": True, "us_per_copy": s["relay_us_per_copy"], "copies": s["copies_delivered"],
            "published": published, "delivery": round(s["copies_delivered"] / (published * n), 4) if published else 0.0,
            "latency_p50_ms": s.get("latency_p50_ms"), "latency_p99_ms": s.get("latency_p99_ms"),
            "kernel_copies": s["kernel_copies"],
            # subscriber processes that wrote no report (failed to connect or subscribe: on two cores, client
            # start-up under load), apart from objects lost on the way
            "no_report": sum(1 for r in run["subscribers"] if "no report" in (r.get("errors") or [])),
        }
        connected = n - row["no_report"]
        row["delivery_connected"] = round(s["copies_delivered"] / (published * connected), 4) if published and connected else 0.0
        if cap is not None and cap_path.exists():
            row["added_latency"] = latency_summary(cap_path)
        return row


def ratios(variants: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """off/user and off/kernel of the cost per copy: how many times cheaper each fast-path variant is."""
    off = variants.get("off", {}).get("us_per_copy")
    out: dict[str, float | None] = {}
    for v in ("user", "kernel"):
        on = variants.get(v, {}).get("us_per_copy")
        out[f"off/{v}"] = round(off / on, 2) if off and on else None
    return out


def row(b: Bench, engine: str, n: int, fps: int = BASE_FPS, mode: str = "datagram",
        capture_latency: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    skipped = {"available": False, "reason": "not measured in --quick"}
    runs = {v: b.one(engine, v, n, fps, mode, capture_latency) if only is None or v in only else skipped
            for v in VARIANTS}
    return {"subscribers": n, "fps": fps, "mode": mode,
            "mbit_per_subscriber": round(fps * DATAGRAM_BYTES * 8 / 1e6, 2), "variants": runs, "ratios": ratios(runs)}


def max_subscribers_search(b: Bench, engine: str, sweep: list[dict[str, Any]], cap: int,
                           budget: float) -> dict[str, Any]:
    """Double the subscriber count from the sweep's largest until delivery drops below 99.9 %, the cap, or the
    time budget; measured with the best fast-path variant available."""
    variant = "kernel" if "kernel" in b.variants() else "user"
    tried = [{"subscribers": r["subscribers"], "delivery": r["variants"][variant].get("delivery")} for r in sweep
             if r["variants"].get(variant, {}).get("available")]
    ok = [t["subscribers"] for t in tried if (t["delivery"] or 0) >= GOOD_DELIVERY]
    largest = max(ok) if ok else 0
    if len(ok) < len(tried):
        return {"variant": variant, "tried": tried, "largest_ok": largest, "stopped": "delivery below 99.9 % in the sweep"}
    n, start = max(r["subscribers"] for r in sweep) * 2, time.monotonic()
    stopped = f"cap of {cap} subscribers" if cap > max(r["subscribers"] for r in sweep) else "not searched beyond the sweep"
    while n <= cap:
        if time.monotonic() - start > budget:
            stopped = f"time budget ({budget:.0f} s) spent"
            break
        r = b.one(engine, variant, n, start_delay=min(16.0, max(5.0, 0.25 * n)))
        tried.append({"subscribers": n, "delivery": r.get("delivery"), "us_per_copy": r.get("us_per_copy"),
                      "no_report": r.get("no_report"), "delivery_connected": r.get("delivery_connected"), **({"error": r["error"]} if "error" in r else {})})
        if (r.get("delivery") or 0) < GOOD_DELIVERY:
            stopped = f"delivery {r.get('delivery')} at {n} subscribers"
            break
        largest, n = n, n * 2
    return {"variant": variant, "tried": tried, "largest_ok": largest, "stopped": stopped}


def marginal(rows: list[dict[str, Any]], duration: float) -> dict[str, dict[str, float] | None]:
    """Per variant, a least-squares line through the bitrate sweep's points (relay CPU over the window vs copies
    delivered): the slope is the marginal cost of one more copy, the intercept the cost that does not depend on
    the copies (timers, polling, the event loop waking up), per second. The average cost per copy mixes both."""
    out: dict[str, dict[str, float] | None] = {}
    for v in VARIANTS:
        pts = [(r["variants"][v]["copies"], r["variants"][v]["us_per_copy"] * r["variants"][v]["copies"])
               for r in rows if r["variants"][v].get("us_per_copy")]
        if len(pts) < 2:
            out[v] = None
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
        out[v] = {"us_per_copy": round(slope, 1), "fixed_ms_per_s": round((my - slope * mx) / duration / 1000, 1)}
    return out


def per_core(sweep: list[dict[str, Any]], fps: int) -> dict[str, int | None]:
    """Subscribers one core could serve at `fps` objects/s, projected from the cost per copy at the largest count."""
    last = sweep[-1]["variants"]
    return {v: int(1e6 / (last[v]["us_per_copy"] * fps)) if last.get(v, {}).get("us_per_copy") else None
            for v in VARIANTS}


def engine_run(b: Bench, engine: str, counts: list[int], fixed: int, rates: list[int], search_cap: int,
               budget: float) -> dict[str, Any]:
    sweep = [row(b, engine, n, capture_latency=(n == fixed)) for n in counts]
    at_fixed = next(r for r in sweep if r["subscribers"] == fixed)
    only = ["off", b.variants()[-1]] if b.quick else None
    bitrate = sorted([at_fixed, *(row(b, engine, fixed, fps, only=only) for fps in rates if fps != BASE_FPS)],
                     key=lambda r: r["fps"])
    mode = [at_fixed, row(b, engine, fixed, mode="stream-per-group", only=only)]
    latency = {v: at_fixed["variants"][v].get("added_latency") for v in VARIANTS
               if at_fixed["variants"][v].get("available")}
    search = max_subscribers_search(b, engine, sweep, search_cap, budget)
    slope = marginal(bitrate, b.duration)
    off = slope.get("off")
    ratio = {f"off/{v}": round(off["us_per_copy"] / m["us_per_copy"], 2)
             for v in ("user", "kernel") if off and (m := slope.get(v)) and m["us_per_copy"] > 0}
    return {"subscribers": sweep, "bitrate": bitrate, "mode": mode, "added_latency": latency,
            "max_subscribers": search, "per_core": per_core(sweep, BASE_FPS), "marginal": slope,
            # one core minus the copy-independent part, over the marginal cost of a subscriber at 60 objects/s
            "per_core_marginal": {v: int((1000 - m["fixed_ms_per_s"]) * 1000 / (m["us_per_copy"] * BASE_FPS))
                                  if m and m["us_per_copy"] > 0 else None for v, m in slope.items()},
            "marginal_ratios": ratio}


def engine_costs(packets: int) -> list[dict[str, Any]]:
    out = []
    for suite in CipherSuite:
        r = engine_bench.best(engine_bench.measure(suite, packets, 1200), engine_bench.measure(suite, packets, 1200))
        out.append({"suite": suite.name, "tx_us": round(r.tx_us, 2), "rx_us": round(r.rx_us, 2)})
    return out


def tc_engine_costs(packets: int, rounds: int) -> list[dict[str, Any]]:
    from crypto_offload import tc_bench

    return [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
            for r in tc_bench.run([100, 500, 1200], packets, rounds)]


# --- reporting -------------------------------------------------------------------------------------------------


def _v(r: dict[str, Any], key: str) -> str:
    if not r.get("available", True):
        return "n/a"
    value = r.get(key)
    return "-" if value is None else f"{value}"


def _pct(r: dict[str, Any]) -> str:
    if not r.get("available", True):
        return "n/a"
    d = r.get("delivery")
    return "-" if d is None else f"{d * 100:.1f} %"


def _table(rows: list[dict[str, Any]], first: str, key: str) -> list[str]:
    lines = [f"| {first} | us/copy off | us/copy user | us/copy kernel | off / user | off / kernel | "
             "p50 / p99 ms off | p50 / p99 ms user | delivery off / user / kernel |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, q = r["variants"], r["ratios"]
        lines.append(f"| {r[key]} | {_v(v['off'], 'us_per_copy')} | {_v(v['user'], 'us_per_copy')} | "
                     f"{_v(v['kernel'], 'us_per_copy')} | {q['off/user'] or '-'} | {q['off/kernel'] or '-'} | "
                     f"{_v(v['off'], 'latency_p50_ms')} / {_v(v['off'], 'latency_p99_ms')} | "
                     f"{_v(v['user'], 'latency_p50_ms')} / {_v(v['user'], 'latency_p99_ms')} | "
                     f"{_pct(v['off'])} / {_pct(v['user'])} / {_pct(v['kernel'])} |")
    return lines


def summary_md(result: dict[str, Any]) -> str:
    k = result["kernel"]
    lines = [
        f"# relay bench, {result['when']}", "",
        f"Machine: {result['machine']}. Command: `{result['command']}` ({result['elapsed_s']} s).", "",
        "Variants: `off` = fast path off (user-space relay); `user` = fast path on, `--recovery user`; `kernel` = "
        "fast path on, `--recovery kernel`. " + "".join(f"`{v}` unavailable: {why}. "
                                                       for v, why in result["unavailable"].items()), "",
        "## Kernel cost per copy (fan-out programs vs the floor)", "",
        f"{k['copies']} copies of a {k['payload']}-byte object, {k['repeat']} packets: fast path "
        f"{k['fast_ns_per_copy']} ns, floor {k['floor_ns_per_copy']} ns per copy: **{k['ratio_fast_to_floor']}x** "
        "the floor.",
    ]
    for engine, e in result["nic_engines"].items():
        fixed = e["bitrate"][0]["subscribers"]
        lines += ["", f"## NIC engine `{engine}`", "",
                  f"### Relay cost per delivered copy by subscriber count ({BASE_FPS} objects/s of {DATAGRAM_BYTES} B, "
                  "datagrams)", "", *_table(e["subscribers"], "subscribers", "subscribers"), "",
                  f"### Bitrate sweep, {fixed} subscribers ({DATAGRAM_BYTES}-byte datagrams; Mbit/s per subscriber)",
                  "", *_table(e["bitrate"], "Mbit/s", "mbit_per_subscriber"), "",
                  "Marginal cost per copy (slope of relay CPU vs copies over the bitrate sweep) and the part that "
                  "does not depend on copies (intercept, per second of run): "
                  + "; ".join(f"`{v}` {m['us_per_copy']} us/copy + {m['fixed_ms_per_s']} ms/s" if m else f"`{v}` n/a"
                              for v, m in e["marginal"].items())
                  + ". Marginal ratios: " + (", ".join(f"{k} **{x}**" for k, x in e["marginal_ratios"].items())
                                             or "n/a") + ".", "",
                  f"### Datagram vs stream-per-group, {fixed} subscribers, same bytes per second", "",
                  *_table(e["mode"], "mode", "mode"), "", "### Added one-way latency in the relay host "
                  f"({fixed} subscribers; capture on the relay's interface)", "",
                  "| variant | copies | p50 us | p99 us |", "|---|---|---|---|"]
        for v, lat in e["added_latency"].items():
            if lat:
                lines.append(f"| {v} | {lat['copies']} | {lat['p50_us']} | {lat['p99_us']} |")
        ms = e["max_subscribers"]
        tried = ", ".join(f"{t['subscribers']}: {_pct(t)}" + (f" ({t['no_report']} subscriber processes wrote no "
                                                             f"report; the others got {t['delivery_connected']:.1%})"
                                                             if t.get("no_report") else "")
                          for t in ms.get("tried", []))
        lines += ["", f"### Maximum subscribers (delivery >= 99.9 %), variant `{ms.get('variant', '-')}`", "",
                  f"Largest measured with delivery >= 99.9 %: **{ms.get('largest_ok', '-')}**; stopped: "
                  f"{ms['stopped']}. Tried: {tried or '-'}.", "",
                  "Projected subscribers one core serves at 60 objects/s (1e6 / (us per copy x 60), at the largest "
                  "sweep count): " + ", ".join(f"`{v}` {n if n is not None else 'n/a'}" for v, n in e["per_core"].items())
                  + "; from the marginal cost ((1 s - copy-independent part) / (marginal us per copy x 60)): "
                  + ", ".join(f"`{v}` {n if n is not None else 'n/a'}" for v, n in e["per_core_marginal"].items())
                  + "."]
    lines += ["", "## Simulated NIC engines per packet (stand for hardware)", "",
              "User-space engine, 1200-byte packets:", "", "| suite | tx us | rx us |", "|---|---|---|"]
    lines += [f"| {e['suite']} | {e['tx_us']} | {e['rx_us']} |" for e in result["engine"]]
    lines += ["", "TC engine (bpf_stats run time per program) vs user-space engine, ChaCha20-Poly1305:", "",
              "| UDP payload | tc tx us | tc rx us | user tx us | user rx us |", "|---|---|---|---|---|"]
    lines += [f"| {r['size']} B | {r['tc_tx_us']} | {r['tc_rx_us']} | {r['user_tx_us']} | {r['user_rx_us']} |"
              for r in result["tc_engine"]]
    return "\n".join(lines) + "\n"


STYLE = {"off": ("tab:red", "fast path off (user space)"), "user": ("tab:blue", "fast path on, --recovery user"),
         "kernel": ("tab:green", "fast path on, --recovery kernel")}
LINE = {"user": "-", "tc": "--"}


def plots(result: dict[str, Any], out: Path) -> list[str]:
    """PNG plots when matplotlib is available (optional: the numbers are in bench.json and summary.md)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return []
    names = []
    engines = result["nic_engines"]

    def cost_lines(ax: Any, part: str, x: str) -> None:
        for engine, e in engines.items():
            for v in VARIANTS:
                pts = [(r[x], r["variants"][v]["us_per_copy"]) for r in e[part] if r["variants"][v].get("us_per_copy")]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", color=STYLE[v][0], linestyle=LINE[engine],
                            label=f"{STYLE[v][1]}, NIC engine {engine}")
        ax.set_ylabel("relay cost per delivered copy (us)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cost_lines(a1, "subscribers", "subscribers")
    a1.set_xlabel("subscribers")
    a1.set_title(f"Cost per copy vs subscribers ({BASE_FPS} objects/s)")
    cost_lines(a2, "bitrate", "mbit_per_subscriber")
    a2.set_xlabel(f"Mbit/s per subscriber ({DATAGRAM_BYTES}-byte datagrams)")
    first = next(iter(engines.values()))
    a2.set_title(f"Cost per copy vs bitrate ({first['bitrate'][0]['subscribers']} subscribers)")
    fig.tight_layout()
    fig.savefig(out / "relay_cost.png", dpi=110)
    plt.close(fig)
    names.append("relay_cost.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels, p50, p99, colors = [], [], [], []
    for engine, e in engines.items():
        for v, lat in e["added_latency"].items():
            if lat and lat.get("p50_us") is not None:
                labels.append(f"{v}\n({engine} NIC)")
                p50.append(lat["p50_us"])
                p99.append(lat["p99_us"])
                colors.append(STYLE[v][0])
    xs = range(len(labels))
    a1.bar([x - 0.2 for x in xs], p50, width=0.4, color=colors, label="p50")
    a1.bar([x + 0.2 for x in xs], p99, width=0.4, color=colors, alpha=0.45, hatch="//", label="p99")
    a1.set_xticks(list(xs), labels, fontsize=8)
    a1.set_yscale("log")
    a1.set_ylabel("added one-way latency in the relay host (us, log)")
    a1.set_title("Relay's added latency (solid p50, hatched p99)")
    a1.legend(handles=[Patch(facecolor="gray", label="p50"), Patch(facecolor="gray", alpha=0.45, hatch="//",
                                                                     label="p99")])
    a1.grid(alpha=0.3, axis="y")
    for engine, e in engines.items():
        tried = [t for t in e["max_subscribers"].get("tried", []) if t.get("delivery") is not None]
        if tried:
            a2.plot([t["subscribers"] for t in tried], [t["delivery"] * 100 for t in tried], marker="o",
                    linestyle=LINE[engine], label=f"NIC engine {engine}, {e['max_subscribers']['variant']}")
    a2.axhline(GOOD_DELIVERY * 100, color="gray", linestyle=":", label="99.9 %")
    a2.set_xscale("log", base=2)
    counts = sorted({t["subscribers"] for e in engines.values() for t in e["max_subscribers"].get("tried", [])})
    if counts:
        a2.set_xticks(counts, [str(c) for c in counts])
    a2.set_xlabel("subscribers")
    a2.set_ylabel("delivered copies (% of published x subscribers)")
    a2.set_title("Delivery vs subscribers (maximum-subscribers search)")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_delivery.png", dpi=110)
    plt.close(fig)
    names.append("latency_delivery.png")
    return names


# --- command line ----------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where results go (default ./bench-out)")
    parser.add_argument("--quick", action="store_true",
                        help="one subscriber count, one extra bitrate, NIC engine user, no maximum search (~1 minute)")
    parser.add_argument("--subscribers", default="2,8,16", help="comma-separated subscriber counts (default 2,8,16)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of media per run (default 6)")
    parser.add_argument("--nic-engine", choices=["user", "tc", "both"], default=None,
                        help="simulated NIC crypto engine(s) to measure (default both; user with --quick)")
    parser.add_argument("--search-cap", type=int, default=64,
                        help="maximum-subscribers search: largest count tried (default 64)")
    parser.add_argument("--search-budget", type=float, default=120.0,
                        help="maximum-subscribers search: no new count after this many seconds per NIC engine "
                        "(default 120)")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("relay bench: needs root (namespaces, TC programs, bpf_stats); run it as root", file=sys.stderr)
        return 2
    try:
        counts = sorted({int(c) for c in str(args.subscribers).split(",") if c.strip()})
    except ValueError:
        print(f"relay bench: --subscribers {args.subscribers!r}: give counts like 2,8,16", file=sys.stderr)
        return 2
    if not counts or min(counts) < 1 or max(counts) > 64:
        print("relay bench: subscriber counts must be between 1 and 64", file=sys.stderr)
        return 2
    duration, cap, rates = args.duration, args.search_cap, [60, 120, 240]
    chosen = args.nic_engine or ("user" if args.quick else "both")
    engines = ["user", "tc"] if chosen == "both" else [chosen]
    if args.quick:
        counts = counts[:1] if len(counts) == 1 else [8]
        duration, cap, rates = min(duration, 4.0), 0, [60, 120]
    fixed = 8 if 8 in counts else counts[len(counts) // 2]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    modes = recovery_modes()
    b = Bench(out=out, duration=duration, modes=modes, quick=args.quick)
    for v in ("user", "kernel"):
        if v not in modes:
            b.unavailable[v] = f"this relay accepts --recovery {{{','.join(sorted(modes))}}} only"
    from bpf.floor_bench import measure as floor_measure
    from sim.topology import Topology

    print("kernel: fan-out programs vs the floor", flush=True)
    kernel = floor_measure(copies=10, repeat=500 if args.quick else 2000).to_json()
    print("engines: simulated NIC crypto per suite, TC vs user-space engine per size", flush=True)
    engine = engine_costs(1000 if args.quick else 5000)
    tc_engine = tc_engine_costs(200 if args.quick else 1000, 1 if args.quick else 2)
    nodes = max(counts + ([n for n in (2 ** i for i in range(1, 8)) if max(counts) < n <= cap] or [0]))
    results = {}
    with Topology.up(f"bench{os.getpid() % 100000}", publishers=1, subscribers=nodes) as topo, bpf_stats():
        b.topo = topo
        for e in engines:
            results[e] = engine_run(b, e, counts, fixed, rates, cap, args.search_budget)
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}",
        "command": "relay bench " + " ".join(sys.argv[2:]),
        "unavailable": b.unavailable, "kernel": kernel, "nic_engines": results, "engine": engine,
        "tc_engine": tc_engine, "elapsed_s": round(time.monotonic() - began),
    }
    result["plots"] = plots(result, out)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "summary.md").write_text(summary_md(result))
    print(summary_md(result))
    print(f"results: {out / 'bench.json'}, {out / 'summary.md'}, plots: {', '.join(result['plots']) or 'none'}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """`python -m sim.bench capture --iface IF --out FILE`: the latency capture, started in the relay's node."""
    parser = argparse.ArgumentParser(prog="python -m sim.bench")
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("capture", help="kernel timestamps of media packets on one interface, until SIGTERM")
    c.add_argument("--iface", required=True)
    c.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    capture(args.iface, args.out)


if __name__ == "__main__":
    main()
