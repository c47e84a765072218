"""report.json -> a self-contained report.html (PNG plots embedded as data: URIs) and a verdict table.

Why one module: `relay demo` and any later run (bench, sim scenarios) write the same report.json schema, so one
renderer turns any of them into the page a researcher reads first (docs/observability.md explains it).

Two shapes: the loopback demo's (below) and the sim demo's (`runs[]`, sim/simdemo.py; rendered by
`render_sim_html`, explained in docs/demo.md).

report.json schema of the loopback demo (every field beyond `published`/`subscribers` optional; what is missing is left out of the page):
    config: {name: value}                       run parameters as given
    fast_path: "on" | "off" | "both"
    published: {objects, bytes, by_priority: {prio: n}}
    subscribers: [ {
        name, objects (delivered), by_priority: {prio: n delivered},
        dropped_by_policy: {prio: n}              objects the relay's drop policy withheld, by priority
        missing (lost: neither delivered nor dropped by policy),
        latency_ms: {p50, p99, max}, latency_samples_ms: {"fast": [...], "user": [...]},
        bitrate_series: [[t_seconds, bits_per_second], ...],
        kernel_share: fraction of copies sent by the kernel (0..1) } ]
    summary: {relay_cpu_us_per_copy, ...}
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def accounting(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per subscriber: published, delivered, dropped_by_policy (total), lost, and whether they add up."""
    published = int(report.get("published", {}).get("objects", 0))
    rows = []
    for i, sub in enumerate(report.get("subscribers", [])):
        dropped = sum(int(v) for v in (sub.get("dropped_by_policy") or {}).values())
        delivered = int(sub.get("objects", 0))
        lost = int(sub.get("missing", published - delivered - dropped))
        rows.append(
            {
                "name": sub.get("name", f"sub{i}"),
                "published": published,
                "delivered": delivered,
                "dropped_by_policy": dropped,
                "lost": lost,
                "consistent": published == delivered + dropped + lost,
                "p50_ms": (sub.get("latency_ms") or {}).get("p50"),
                "p99_ms": (sub.get("latency_ms") or {}).get("p99"),
            }
        )
    return rows


def verdict_rows(report: dict[str, Any]) -> list[list[str]]:
    head = ["subscriber", "published", "delivered", "dropped (policy)", "lost", "p50 ms", "p99 ms", "adds up"]
    out = [head]
    for r in accounting(report):
        out.append(
            [
                r["name"], str(r["published"]), str(r["delivered"]), str(r["dropped_by_policy"]), str(r["lost"]),
                "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}", "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}",
                "yes" if r["consistent"] else "NO",
            ]
        )  # fmt: skip
    return out


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Titled base64 PNGs; a plot whose data the report lacks is skipped."""
    subs = report.get("subscribers", [])
    names = [s.get("name", f"sub{i}") for i, s in enumerate(subs)]
    out: dict[str, str] = {}
    if any(s.get("bitrate_series") for s in subs):
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, s in zip(names, subs, strict=True):
            series = s.get("bitrate_series") or []
            if series:
                ax.plot([p[0] for p in series], [p[1] / 1e3 for p in series], label=name)
        ax.set(
            xlabel="time since first object (s)",
            ylabel="delivered bitrate (kbit/s)",
            title="Delivered bitrate",
        )
        ax.legend(fontsize="small", ncol=2)
        ax.grid(alpha=0.3)
        out["Delivered bitrate per subscriber"] = _png(fig)
    prios = sorted({int(p) for s in subs for p in (s.get("dropped_by_policy") or {})} | {0})
    if subs:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(prios)
        for j, prio in enumerate(prios):
            vals = [int((s.get("dropped_by_policy") or {}).get(str(prio), 0)) for s in subs]
            ax.bar([i + j * width for i in range(len(subs))], vals, width, label=f"priority {prio}")
        ax.set_xticks([i + width * (len(prios) - 1) / 2 for i in range(len(subs))], names)
        ax.set(
            ylabel="objects dropped by policy", title="Drops by publisher priority (lower = more important)"
        )
        ax.legend(fontsize="small")
        out["Drops by priority"] = _png(fig)
    fast = [x for s in subs for x in (s.get("latency_samples_ms") or {}).get("fast", [])]
    user = [x for s in subs for x in (s.get("latency_samples_ms") or {}).get("user", [])]
    if fast or user:
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, xs in (("fast path (kernel)", fast), ("user-space path", user)):
            if xs:
                xs = sorted(xs)
                ax.plot(xs, [(k + 1) / len(xs) for k in range(len(xs))], label=f"{label}, n={len(xs)}")
        ax.set(xlabel="one-way latency publisher -> subscriber (ms)", ylabel="fraction of objects (CDF)",
               title="Latency distribution")  # fmt: skip
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        out["Latency distribution, fast vs user-space path"] = _png(fig)
    if subs:
        share = [float(s.get("kernel_share") or 0.0) * 100 for s in subs]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar(names, share, label="kernel (fast path)", color="tab:green")
        ax.bar(names, [100 - x for x in share], bottom=share, label="user space", color="tab:gray")
        ax.set(ylabel="share of copies (%)", ylim=(0, 100), title="Who sent each subscriber's copies")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        out["Kernel / user share"] = _png(fig)
    return out


# ---- `relay demo --hal sim`: report.json with runs[] (sim/simdemo.py), one column of plots per run ----------------

ON_COLORS = ("tab:green", "tab:blue", "tab:olive", "tab:cyan")  # fast path on variants; off is always gray


def _run_colors(runs: list[dict[str, Any]]) -> list[str]:
    on = iter(ON_COLORS * 4)
    return ["tab:gray" if r.get("fast_path") == "off" else next(on) for r in runs]


def _runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report.get("runs") or [])


def _label(run: dict[str, Any]) -> str:
    return str(run.get("label") or run.get("fast_path", "?"))


def _nodes(report: dict[str, Any]) -> list[str]:
    return list(report.get("links") or {})


def sim_rows(report: dict[str, Any]) -> list[list[str]]:
    """The verdict table: per run and subscriber, the relay's own accounting next to what the subscriber got."""
    head = ["run", "subscriber", "link", "published", "sent (user)", "sent (kernel)", "delivered",
            "dropped: priority", "rest of group", "backlog", "lost", "I-frames", "decodable", "p50 ms", "p99 ms",
            "adds up"]
    out = [head]
    links = report.get("links") or {}
    for run in _runs(report):
        acc = {a["subscriber"]: a for a in run.get("accounting") or []}
        i_pub = (run.get("published") or {}).get("by_priority", {}).get("0", 0)
        for node, sub in zip(_nodes(report), run.get("subscribers", []), strict=False):
            a = acc.get(node, {})
            drops = a.get("drops") or {}
            lat = sub.get("latency_ms") or {}
            out.append([
                _label(run), node, str(links.get(node, "")), str(a.get("published", "-")),
                str(a.get("sent_user", "-")), str(a.get("sent_kernel", "-")), str(sub.get("objects", 0)),
                str(drops.get("priority", "-")), str(drops.get("rest_of_group", "-")), str(drops.get("backlog", "-")),
                str(a.get("lost", "-")), f"{sub.get('by_priority', {}).get('0', 0)}/{i_pub}",
                str(sub.get("decodable", "-")), _fmt(lat.get("p50")), _fmt(lat.get("p99")),
                "-" if not a else "yes" if a.get("consistent") else "NO",
            ])  # fmt: skip
    return out


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _short(link: str) -> str:
    """A link description short enough for a tick label: "unlimited loss=3% down" -> "loss=3%"."""
    return link.removeprefix("unlimited ").removesuffix(" down").removesuffix(" up") or "unshaped"


def _first_sent(run: dict[str, Any], nodes: list[str]) -> float:
    """The sample time before the first one in which the relay sent objects (0 when none did): plots of
    different runs then share their origin."""
    best = None
    for n in nodes:
        se = (run.get("series") or {}).get(n) or {}
        for i, (t, per_s) in enumerate(zip(se.get("t", []), se.get("sent_per_s", []), strict=False)):
            if per_s > 0:
                t_prev = se["t"][i - 1] if i else t - 1.0
                best = t_prev if best is None else min(best, t_prev)
                break
    return float(best or 0.0)


def _columns(n: int, height: float = 3.6) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, height), sharey=True, squeeze=False)
    return fig, list(axes[0])


def sim_plots(report: dict[str, Any]) -> dict[str, str]:
    """Titled base64 PNGs of a sim demo report; a plot whose data the report lacks is skipped."""
    runs, nodes = _runs(report), _nodes(report)
    links = report.get("links") or {}
    out: dict[str, str] = {}
    if not runs:
        return out
    if any((run.get("series") or {}).get(n, {}).get("t") for run in runs for n in nodes):
        fig, axes = _columns(len(runs))
        for ax, run in zip(axes, runs, strict=True):
            t0 = _first_sent(run, nodes)
            for n in nodes:
                se = (run.get("series") or {}).get(n) or {}
                if se.get("t"):
                    ax.plot([t - t0 for t in se["t"]], [b / 1e3 for b in se["delivered_bps"]],
                            label=f"{n} ({links.get(n, '')})")
            ax.set(title=f"fast path {_label(run)}", xlabel="time since the relay sent its first object (s)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("delivered to subscriber (kbit/s, on the wire)")
        axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle("Delivered bitrate per subscriber (1 s samples of the switch port towards it)")
        out["Delivered bitrate per subscriber over time"] = _png(fig)
    if any(run.get("accounting") for run in runs):
        reasons = (("priority", "policy: priority", "tab:red"), ("rest_of_group", "policy: rest of group",
                   "tab:orange"), ("backlog", "user-space backlog", "tab:purple"), ("lost", "lost on the link",
                   "tab:gray"))  # fmt: skip
        fig, axes = _columns(len(runs))
        top = 0
        for ax, run in zip(axes, runs, strict=True):
            acc = {a["subscriber"]: a for a in run.get("accounting") or []}
            bottom = [0] * len(nodes)
            for key, label, color in reasons:
                vals = [int((acc.get(n, {}).get("drops") or {}).get(key, 0)) if key != "lost"
                        else max(0, int(acc.get(n, {}).get("lost", 0))) for n in nodes]
                ax.bar(nodes, vals, bottom=bottom, label=label, color=color)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
            top = max([top, *bottom])
            ax.set(title=f"fast path {_label(run)}", xlabel="subscriber")
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylim(0, max(1.0, top * 1.08))  # shared: room above the tallest stack
        axes[0].set_ylabel("objects not delivered")
        axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle("Objects not delivered, by reason (relay's counts; lost = sent - delivered)")
        out["Drops by reason"] = _png(fig)
    pub_prios = sorted({int(p) for run in runs for p in (run.get("published") or {}).get("by_priority", {})})
    if pub_prios:
        fig, axes = _columns(len(runs))
        width = 0.8 / len(pub_prios)
        for ax, run in zip(axes, runs, strict=True):
            pub = (run.get("published") or {}).get("by_priority", {})
            for j, prio in enumerate(pub_prios):
                vals = [max(0, int(pub.get(str(prio), 0)) - int(s.get("by_priority", {}).get(str(prio), 0)))
                        for s in run.get("subscribers", [])]
                kind = "I-frames" if prio == 0 else "P-frames" if j == len(pub_prios) - 1 else "other"
                ax.bar([i + j * width for i in range(len(vals))], vals, width, label=f"priority {prio} ({kind})")
            ax.set_xticks([i + width * (len(pub_prios) - 1) / 2 for i in range(len(nodes))], nodes)
            ax.set(title=f"fast path {_label(run)}", xlabel="subscriber")
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("objects published but not delivered")
        axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle("Missing objects by publisher priority (0 = most important)")
        out["Drops by priority"] = _png(fig)
    if any((s.get("latency_ms") or {}).get("p50") is not None for run in runs for s in run.get("subscribers", [])):
        fig, ax = plt.subplots(figsize=(max(9.0, 1.3 * len(nodes)), 4))
        width = 0.8 / len(runs)
        lows = []
        for j, (run, color) in enumerate(zip(runs, _run_colors(runs), strict=True)):
            lat = [s.get("latency_ms") or {} for s in run.get("subscribers", [])]
            lows += [x["p50"] for x in lat if x.get("p50")]
            xs = [i + j * width for i in range(len(lat))]
            ax.bar(xs, [x.get("p50") or 0 for x in lat], width, color=color, label=f"{_label(run)}: p50")
            ax.scatter(xs, [x.get("p99") or float("nan") for x in lat], marker="_", s=400, color="black",
                       zorder=3, label="p99" if j == 0 else None)
        ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(nodes))],
                      [f"{n}\n{_short(str(links.get(n, '')))}" for n in nodes], fontsize="small")
        ax.set_yscale("log")
        if lows:  # start at a labelled decade below the smallest bar
            ax.set_ylim(bottom=10 ** math.floor(math.log10(min(lows))))
        ax.set(ylabel="one-way latency publisher -> subscriber (ms, log)",
               title="Latency per subscriber: fast path vs user-space path (bars p50, black ticks p99)")
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3, which="both")
        out["Latency distribution, fast vs user-space path"] = _png(fig)
    if any(run.get("accounting") for run in runs):
        fig, axes = _columns(len(runs), height=3.2)
        for ax, run in zip(axes, runs, strict=True):
            acc = {a["subscriber"]: a for a in run.get("accounting") or []}
            kern = [int(acc.get(n, {}).get("sent_kernel", 0)) for n in nodes]
            user = [int(acc.get(n, {}).get("sent_user", 0)) for n in nodes]
            share = [100 * k / (k + u) if k + u else 0.0 for k, u in zip(kern, user, strict=True)]
            ax.bar(nodes, share, label="kernel (fast path)", color="tab:green")
            ax.bar(nodes, [100 - x if k + u else 0 for x, k, u in zip(share, kern, user, strict=True)],
                   bottom=share, label="user space", color="tab:gray")
            ax.set(title=f"fast path {_label(run)}", xlabel="subscriber", ylim=(0, 100))
        axes[0].set_ylabel("share of copies sent (%)")
        axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle("Who sent each subscriber's copies: kernel vs user space")
        out["Kernel / user share"] = _png(fig)
    return out


def _html_table(rows: list[list[str]]) -> str:
    return "<table>" + "".join(
        "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
        for i, r in enumerate(rows)
    ) + "</table>"  # fmt: skip


def render_sim_html(report: dict[str, Any]) -> str:
    """The page of a `relay demo --hal sim` report (docs/demo.md explains how to read it)."""
    summaries = {_label(r): r.get("summary", {}) for r in _runs(report)}
    if "comparison" in report:
        summaries["comparison"] = report["comparison"]
    figs = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
        for t, b in sim_plots(report).items()
    )
    runs = ", ".join(f"{_label(r)}" + (f" ({' '.join(r.get('relay_args') or [])})" if r.get("relay_args") else "")
                     for r in _runs(report))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>moq relay demo report</title><style>"
        "body{font-family:sans-serif;max-width:1150px;margin:auto}table{border-collapse:collapse;font-size:small}"
        "td,th{border:1px solid #aaa;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>relay demo --hal sim</h1><p>runs (fast path): {html.escape(runs)}</p>"
        f"<h2>Verdict</h2>{_html_table(sim_rows(report))}"
        "<p>Per subscriber, from the relay's own counts: published = delivered + dropped by policy + lost, where "
        "sent = sent by user space + sent by the kernel and lost = sent - delivered. <b>adds up</b> must say yes. "
        "How to read this page: docs/demo.md.</p>"
        f"{figs}<h2>Summary per run</h2><pre>{html.escape(json.dumps(summaries, indent=1))}</pre>"
        f"<h2>Run parameters</h2><pre>{html.escape(json.dumps(report.get('config', {}), indent=1))}</pre>"
        "</body></html>"
    )


def render_html(report: dict[str, Any]) -> str:
    if "runs" in report:
        return render_sim_html(report)
    rows = verdict_rows(report)
    table = "<table>" + "".join(
        "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
        for i, r in enumerate(rows)
    ) + "</table>"  # fmt: skip
    config = html.escape(json.dumps(report.get("config", {}), indent=1))
    summary = html.escape(json.dumps(report.get("summary", {}), indent=1))
    figs = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
        for t, b in plots(report).items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>moq relay report</title><style>"
        "body{font-family:sans-serif;max-width:900px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #aaa;padding:2px 8px;text-align:right}</style></head><body>"
        f"<h1>Relay run report</h1><p>fast path: {html.escape(str(report.get('fast_path', 'n/a')))}</p>"
        f"<h2>Verdict</h2>{table}<p>published = delivered + dropped by policy + lost must hold per subscriber.</p>"
        f"{figs}<h2>Summary</h2><pre>{summary}</pre><h2>Run parameters</h2><pre>{config}</pre></body></html>"
    )


def text_table(report: dict[str, Any]) -> str:
    rows = verdict_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write(report_json: Path) -> Path:
    """report.json -> report.html next to it; returns the html path."""
    out = report_json.with_suffix(".html")
    out.write_text(render_html(json.loads(report_json.read_text())))
    return out
