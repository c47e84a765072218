"""Shared test helpers. Test tiers by privilege: tests/unit (no root), tests/bpf (root + bpf), tests/sim and
tests/integration (namespaces / loopback end to end).

A prerequisite that is missing makes a test *skip* with the reason on a developer's machine, but *fail* in
CI (CI=true), so a green CI run can never hide tests that did not run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a prerequisite is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


def have_root() -> bool:
    return os.geteuid() == 0


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
