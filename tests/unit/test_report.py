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


def sim_sample() -> dict[str, Any]:
    """A `relay demo --hal sim` report (runs[]) as sim/simdemo.py writes it, two subscribers, both paths."""
    links = {"sub0": "150kbit down", "sub1": "unshaped"}
    runs = []
    for fast, kernel in (("on", True), ("off", False)):
        relay_subs = {
            "sub0": {"peer": "198.19.0.1", "datagrams_sent": 0 if kernel else 300, "backlog_drops": 0 if kernel else 10,
                     "kernel_sent": 200 if kernel else 0, "kernel_priority_drops": 30 if kernel else 0,
                     "kernel_group_drops": 70 if kernel else 0},
            "sub1": {"peer": "198.19.0.2", "datagrams_sent": 0 if kernel else 300, "backlog_drops": 0,
                     "kernel_sent": 300 if kernel else 0},
        }
        subs = [{"objects": 195 if kernel else 250, "by_priority": {"0": 10, "128": 185 if kernel else 240},
                 "latency_ms": {"p50": 80.0, "p99": 300.0}},
                {"objects": 300, "by_priority": {"0": 10, "128": 290}, "latency_ms": {"p50": 0.8, "p99": 2.0}}]
        series = {n: {"t": [0.0, 1.0, 2.0], "delivered_bps": [0, 150_000, 150_000], "sent_per_s": [0, 30, 30]}
                  for n in links}
        runs.append({"fast_path": fast, "label": fast, "published": {"objects": 300, "by_priority": {"0": 10,
                     "128": 290}}, "subscribers": subs, "relay_subscribers": relay_subs, "series": series,
                     "summary": {"relay_us_per_copy": 10.0}})  # fmt: skip
    return {"config": {}, "links": links, "runs": runs}


def test_sim_accounting_uses_the_relays_counts_and_flags_what_does_not_add_up() -> None:
    from sim.simdemo import accounting

    rep = sim_sample()
    on, off = (accounting(run, list(rep["links"])) for run in rep["runs"])
    assert [(r["sent_kernel"], r["dropped_by_policy"], r["lost"], r["consistent"]) for r in on] == [
        (200, 100, 5, True), (300, 0, 0, True)]  # fmt: skip
    # user space: a backlog drop discards a datagram already counted as sent
    assert [(r["sent_user"], r["drops"]["backlog"], r["lost"], r["consistent"]) for r in off] == [
        (290, 10, 40, True), (300, 0, 0, True)]  # fmt: skip
    rep["runs"][0]["relay_subscribers"]["sub1"]["kernel_sent"] = 299  # the relay lost track of one object
    assert not accounting(rep["runs"][0], list(rep["links"]))[1]["consistent"]
    del rep["runs"][0]["relay_subscribers"]["sub0"]  # no relay counts: never "consistent"
    assert accounting(rep["runs"][0], list(rep["links"]))[0] == {
        "subscriber": "sub0", "published": 300, "delivered": 195, "relay_counts": False, "consistent": False}


def test_sim_report_page_has_five_plots_and_the_verdict_per_run(tmp_path: Path) -> None:
    from sim.simdemo import accounting

    rep = sim_sample()
    for run in rep["runs"]:
        run["accounting"] = accounting(run, list(rep["links"]))
    path = tmp_path / "report.json"
    path.write_text(json.dumps(rep))
    page = R.write(path).read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 5 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    rows = R.sim_rows(rep)
    assert len(rows) == 1 + 2 * 2 and rows[1][:7] == ["on", "sub0", "150kbit down", "300", "0", "200", "195"]
    assert [r[-1] for r in rows[1:]] == ["yes"] * 4 and ">NO<" not in page
    assert set(R.sim_plots({"links": {"sub0": "x"}, "runs": [{"subscribers": [{"objects": 1}]}]})) == set()


def test_stale_stats_sockets_of_dead_relays_are_swept(tmp_path: Path) -> None:
    from relay.stats import sweep_stale_sockets

    dead, alive, named = tmp_path / "999999999.sock", tmp_path / f"{os.getpid()}.sock", tmp_path / "lab.sock"
    for p in (dead, alive, named):
        p.write_text("")
    assert sweep_stale_sockets(tmp_path) == [dead]
    assert alive.exists() and named.exists()
