"""`relay demo --hal sim --fast-path both`: the user-facing demo on the simulated network, both paths (the fast path
with both recovery designs), one report
(report.json checked against the relay's own per-subscriber counts, report.html with its plots)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.relay_process import relay_env
from tests.sim.simrelay import leftovers
from tests.support import REPO, have_root, require

pytestmark = [pytest.mark.sim, pytest.mark.root]


def test_sim_demo_compares_both_paths_and_cleans_up(tmp_path: Path) -> None:
    require(have_root(), "root (namespaces, veths, TC programs)")
    out = subprocess.run([sys.executable, "-m", "relay.cli", "demo", "--hal", "sim", "--fast-path", "both",
                          "--subscribers", "3", "--duration", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=240, cwd=REPO, env=relay_env())
    assert out.returncode == 0, out.stdout + out.stderr
    prefix = re.search(r"^sim (demo\d+):", out.stdout, re.M)
    assert prefix is not None, out.stdout
    assert leftovers(prefix.group(1)) == []
    report = json.loads((tmp_path / "report.json").read_text())
    check_relay_accounting(report)
    check_html(tmp_path)
    assert f"report: {tmp_path / 'report.html'}" in out.stdout
    kernel, user, off = report["runs"]
    assert [r["label"] for r in report["runs"]] == ["on/kernel", "on/user", "off"]
    assert kernel["relay_args"] == ["--recovery", "kernel"] and user["relay_args"] == ["--recovery", "user"]
    assert set(report["links"]) == {"sub0", "sub1", "sub2"} and report["links"]["sub2"] == "unshaped"
    for run in (kernel, user, off):
        published = run["published"]["objects"]
        assert published == 90
        assert run["subscribers"][2]["objects"] == published  # the unshaped one gets everything
        for sub in run["subscribers"]:
            assert sub["objects"] <= published and not sub.get("duplicates")
    for on in (kernel, user):
        assert on["summary"]["kernel_copies"] >= 2 * 90
    assert off["summary"]["kernel_copies"] == 0
    assert set(report["comparison"]["relay_cost_ratio_off_to"]) == {"on/kernel", "on/user"}
    for label in ("on/kernel", "on/user", "off"):
        assert f"fast path {label}:" in out.stdout
    # the live view's log form (stdout is not a terminal here): delivered kbit/s per subscriber, the kernel's share
    assert re.search(r"kbit/s sub0=\d+ sub1=\d+ sub2=\d+; kernel share", out.stdout), out.stdout


def check_relay_accounting(report: dict[str, Any]) -> None:
    """published = delivered + dropped by policy + lost per subscriber, from the relay's own counts (its stats
    socket's archive of ended subscriptions), not the subscriber's."""
    for run in report["runs"]:
        published = run["published"]["objects"]
        assert set(run["relay_subscribers"]) == set(report["links"]), run["relay_subscribers"]
        for row in run["accounting"]:
            assert row["relay_counts"], row
            sent = row["sent_user"] + row["sent_kernel"]
            assert published == sent + row["dropped_by_policy"], row  # the relay accounts for every object
            assert 0 <= row["delivered"] <= sent and row["lost"] == sent - row["delivered"], row
            assert row["consistent"], row
        by_node = {row["subscriber"]: row for row in run["accounting"]}
        unshaped = by_node["sub2"]
        assert (unshaped["delivered"], unshaped["dropped_by_policy"], unshaped["lost"]) == (published, 0, 0)
        if run["fast_path"] == "on":  # every copy from the kernel once the subscription is enabled
            assert unshaped["sent_kernel"] >= 0.9 * published, unshaped
        else:
            assert all(r["sent_kernel"] == 0 and r["drops"]["priority"] == 0 for r in run["accounting"])
            assert unshaped["sent_user"] == published
        for node in report["links"]:
            series = run["series"][node]
            assert len(series["t"]) == len(series["delivered_bps"]) >= 3
        assert max(run["series"]["sub2"]["delivered_bps"]) > 100_000  # ~260 kbit/s stream, 1 s samples


def check_html(out_dir: Path) -> None:
    page = (out_dir / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 5 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "src='http" not in page and ">sub2<" in page and ">NO<" not in page
