"""`relay bench`: every part lands in bench.json and summary.md - the floor, the relay variants (off, user, kernel)
per sweep, the relay's added latency from the capture, the NIC engines (structure and consistency, never timings:
performance is reported, not asserted)."""

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
    assert set(result["nic_engines"]) == {"user"}  # --quick: the user-space NIC engine only
    e = result["nic_engines"]["user"]
    (row,) = e["subscribers"]
    v = row["variants"]
    assert row["subscribers"] == 2
    assert v["user"]["kernel_copies"] >= v["user"]["copies"] * 0.95 and v["off"]["kernel_copies"] == 0
    assert v["off"]["delivery"] == v["user"]["delivery"] == 1.0
    assert row["ratios"]["off/user"] > 0
    if v["kernel"]["available"]:  # the relay accepts --recovery kernel
        assert v["kernel"]["delivery"] == 1.0 and row["ratios"]["off/kernel"] > 0
    else:
        assert "kernel" in result["unavailable"] and row["ratios"]["off/kernel"] is None
    assert [r["fps"] for r in e["bitrate"]] == [60, 120]
    assert [r["mode"] for r in e["mode"]] == ["datagram", "stream-per-group"]
    assert all(r["variants"]["off"]["delivery"] == 1.0 for r in e["bitrate"] + e["mode"])
    # The capture on the relay's interface saw every copy the relay sent, after the object arrived.
    for variant in ("off", "user"):
        lat = e["added_latency"][variant]
        assert lat["copies"] >= v[variant]["copies"] * 0.95 and 0 < lat["p50_us"] <= lat["p99_us"]
    assert e["max_subscribers"]["largest_ok"] == 2 and e["per_core"]["off"] > 0
    assert [r["size"] for r in result["tc_engine"]] == [100, 500, 1200]
    assert {x["suite"] for x in result["engine"]} == {"AES_128_GCM_SHA256", "AES_256_GCM_SHA384",
                                                       "CHACHA20_POLY1305_SHA256"}
    assert result["kernel"]["copies_sent"] == result["kernel"]["copies"] * result["kernel"]["repeat"]
    summary = (tmp_path / "summary.md").read_text()
    assert "the floor" in summary and "| 2 |" in summary and "Added one-way latency" in summary
    assert all((tmp_path / name).stat().st_size > 10_000 for name in result["plots"])
