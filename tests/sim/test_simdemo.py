"""`relay demo --hal sim --fast-path both`: the user-facing demo on the simulated network, both paths, one report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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
    on, off = report["runs"]
    assert (on["fast_path"], off["fast_path"]) == ("on", "off")
    assert set(report["links"]) == {"sub0", "sub1", "sub2"} and report["links"]["sub2"] == "unshaped"
    for run in (on, off):
        published = run["published"]["objects"]
        assert published == 90
        assert run["subscribers"][2]["objects"] == published  # the unshaped one gets everything
        for sub in run["subscribers"]:
            assert sub["objects"] <= published and not sub.get("duplicates")
    assert on["summary"]["kernel_copies"] >= 2 * 90 and off["summary"]["kernel_copies"] == 0
    assert "relay_cost_ratio_off_to_on" in report["comparison"]
    assert "fast path on:" in out.stdout and "fast path off:" in out.stdout
