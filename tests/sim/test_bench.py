"""`relay bench`: the three comparisons land in bench.json and summary.md (structure and consistency, never
timings: performance is reported, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpf.floor_bench import measure
from tests.integration.relay_process import relay_env
from tests.support import REPO, have_root, require

pytestmark = [pytest.mark.sim, pytest.mark.root, pytest.mark.bpf]


def test_floor_bench_runs_both_programs_on_every_copy() -> None:
    require(have_root(), "root (a namespace, TC programs)")
    r = measure(copies=3, repeat=40, payload=500)
    assert r.copies_sent == 3 * 40  # every copy was rewritten and sent by client_egress
    assert r.fast_ns_per_copy > 0 and r.floor_ns_per_copy > 0 and r.to_json()["ratio_fast_to_floor"] > 0


def test_quick_bench_writes_every_part(tmp_path: Path) -> None:
    require(have_root(), "root (namespaces, TC programs, bpf_stats)")
    out = subprocess.run([sys.executable, "-m", "relay.cli", "bench", "--quick", "--subscribers", "2",
                          "--duration", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=relay_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    (row,) = result["relay"]
    assert row["subscribers"] == 2
    assert row["on"]["kernel_copies"] >= row["on"]["copies"] * 0.95 and row["off"]["kernel_copies"] == 0
    assert row["on"]["delivery"] == row["off"]["delivery"] == 1.0
    assert row["ratio_off_to_on"] > 0
    assert {e["suite"] for e in result["engine"]} == {"AES_128_GCM_SHA256", "AES_256_GCM_SHA384",
                                                       "CHACHA20_POLY1305_SHA256"}
    assert result["kernel"]["copies_sent"] == result["kernel"]["copies"] * result["kernel"]["repeat"]
    summary = (tmp_path / "summary.md").read_text()
    assert "the floor" in summary and "| 2 |" in summary
