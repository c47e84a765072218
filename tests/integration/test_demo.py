"""`relay demo` (what `make demo` runs): real processes end to end, and a report whose numbers add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.relay_process import RELAY_MISSING, have_relay, relay_env
from tests.support import require


def test_demo_writes_a_consistent_report(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "relay.cli", "demo", "--subscribers", "2", "--duration", "2",
                          "--out", str(out)], capture_output=True, text=True, timeout=120, env=relay_env())
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    published = report["published"]["objects"]
    assert published == 60  # 2 s at 30 fps
    assert len(report["subscribers"]) == 2
    for sub in report["subscribers"]:
        assert sub["objects"] == published and sub["errors"] == [] and sub["decodable"] == published
    summary = report["summary"]
    assert summary["copies_delivered"] == 2 * published
    assert summary["relay_cpu_us_per_copy"] is not None and summary["relay_cpu_us_per_copy"] > 0
    assert "us per delivered copy" in run.stdout and str(out / "report.json") in run.stdout
    # published = delivered + dropped by policy + lost, per subscriber (sim/report.py), and the page exists
    from sim.report import accounting

    assert all(row["consistent"] for row in accounting(report)), accounting(report)
    assert "data:image/png;base64," in (out / "report.html").read_text() and str(out / "report.html") in run.stdout


def test_demo_rejects_zero_subscribers_with_a_usage_error() -> None:
    run = subprocess.run([sys.executable, "-m", "relay.cli", "demo", "--subscribers", "0"], capture_output=True,
                         text=True, timeout=60, env=relay_env())
    assert run.returncode == 2 and "--subscribers must be at least 1" in run.stderr
