"""sim/report.py: a report.json becomes a self-contained HTML page with every plot, and the accounting adds up."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

from sim import report as R


def sample() -> dict[str, Any]:
    subs = []
    for i, (drops, missing, share) in enumerate(
        [({}, 0, 1.0), ({"2": 20, "1": 5}, 3, 0.5), ({"2": 40}, 0, 0.0)]
    ):
        delivered = 300 - sum(drops.values()) - missing
        subs.append({
            "name": f"sub{i}", "objects": delivered, "dropped_by_policy": drops, "missing": missing,
            "latency_ms": {"p50": 0.2 + i, "p99": 1.5 + i},
            "latency_samples_ms": {"fast": [0.05, 0.07, 0.1], "user": [0.4, 0.6, 0.9]},
            "bitrate_series": [[t, 800_000 - 100_000 * i] for t in range(10)], "kernel_share": share,
        })  # fmt: skip
    return {"config": {"duration": 10}, "fast_path": "on", "published": {"objects": 300}, "subscribers": subs}


def test_accounting_adds_up_and_flags_a_subscriber_that_does_not() -> None:
    rep = sample()
    rows = R.accounting(rep)
    assert [(r["delivered"], r["dropped_by_policy"], r["lost"]) for r in rows] == [
        (300, 0, 0),
        (272, 25, 3),
        (260, 40, 0),
    ]
    assert all(r["consistent"] for r in rows)
    rep["subscribers"][0]["missing"] = 1  # one object counted twice
    assert not R.accounting(rep)[0]["consistent"]
    assert "NO" in R.text_table(rep)


def test_html_is_self_contained_with_four_png_plots(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(sample()))
    page = R.write(path).read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "src='http" not in page and "sub2" in page and ">272<" in page


def test_missing_series_leave_plots_out_not_errors(tmp_path: Path) -> None:
    rep = {"published": {"objects": 10}, "subscribers": [{"objects": 10, "missing": 0}]}
    assert set(R.plots(rep)) == {"Drops by priority", "Kernel / user share"}


def test_stale_stats_sockets_of_dead_relays_are_swept(tmp_path: Path) -> None:
    from relay.stats import sweep_stale_sockets

    dead, alive, named = tmp_path / "999999999.sock", tmp_path / f"{os.getpid()}.sock", tmp_path / "lab.sock"
    for p in (dead, alive, named):
        p.write_text("")
    assert sweep_stale_sockets(tmp_path) == [dead]
    assert alive.exists() and named.exists()
