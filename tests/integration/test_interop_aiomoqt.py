"""An independent draft-14 peer against our relay: aiomoqt 0.5.3's interop client (the moq-interop-runner cases).

aiomoqt runs from its own venv (.venv-interop, qh3<2) as a subprocess; its TAP output is parsed so a failure names
the case and carries aiomoqt's own diagnostic.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.relay_process import (
    AIOMOQT_MISSING,
    INTEROP_PYTHON,
    RELAY_MISSING,
    have_aiomoqt,
    have_relay,
    running_relay,
)
from tests.support import require

CASES = [
    "setup-only",
    "announce-only",
    "publish-namespace-done",
    "subscribe-error",
    "announce-subscribe",
    "subscribe-before-announce",
]


def parse_tap(text: str) -> dict[str, tuple[bool, str]]:
    """TAP 14 lines 'ok N - name' / 'not ok N - name' with a YAML block -> name -> (passed, diagnostic)."""
    results: dict[str, tuple[bool, str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = re.match(r"^(not ok|ok) \d+ - (\S+)", line)
        if m:
            current = m.group(2)
            results[current] = (m.group(1) == "ok", "")
        elif current is not None and line.startswith("  ") and line.strip() not in ("---", "..."):
            passed, diag = results[current]
            results[current] = (passed, diag + line.strip() + "\n")
    return results


def test_parse_tap() -> None:
    tap = "TAP version 14\n1..2\nok 1 - setup-only\n  ---\n  duration_ms: 3.0\n  ...\nnot ok 2 - x\n  ---\n  message: no\n  ...\n"
    assert parse_tap(tap) == {"setup-only": (True, "duration_ms: 3.0\n"), "x": (False, "message: no\n")}


@pytest.mark.interop
def test_aiomoqt_interop_client_cases(tmp_path: Path) -> None:
    require(have_relay(), RELAY_MISSING)
    require(have_aiomoqt(), AIOMOQT_MISSING)
    with running_relay(tmp_path / "relay") as relay:
        run = subprocess.run(
            [
                str(INTEROP_PYTHON),
                "-m",
                "aiomoqt.examples.moq_interop_client",
                "-r",
                relay.url,
                "--tls-disable-verify",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        relay_log = relay.log()
    results = parse_tap(run.stdout)
    assert sorted(results) == sorted(CASES), f"TAP output:\n{run.stdout}\nstderr:\n{run.stderr}"
    failed = {name: diag for name, (ok, diag) in results.items() if not ok}
    assert not failed, f"failed cases: {failed}\nstderr:\n{run.stderr[-3000:]}\nrelay:\n{relay_log[-3000:]}"
    assert run.returncode == 0
