"""The engine benchmark runs every suite and checks its own work (every sealed packet decrypts)."""

from __future__ import annotations

from crypto_offload.api import CipherSuite
from crypto_offload.bench import measure


def test_bench_measures_every_suite() -> None:
    for suite in CipherSuite:
        r = measure(suite, packets=30, size=300)
        assert r.suite is suite and 0 < r.tx_us < 10_000 and 0 < r.rx_us < 10_000 and r.rx_frame_us > 0
