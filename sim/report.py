"""report.json -> a self-contained report.html (PNG plots embedded as data: URIs) and a verdict table.

Why one module: `relay demo` and any later run (bench, sim scenarios) write the same report.json schema, so one
renderer turns any of them into the page a researcher reads first (docs/observability.md explains it).

report.json schema (every field beyond `published`/`subscribers` optional; what is missing is left out of the page):
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


def render_html(report: dict[str, Any]) -> str:
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
