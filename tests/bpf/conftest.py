"""Fixtures of the BPF tier: root, the bpf syscall, and the compiled objects (built on demand)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support import REPO, have_root, have_tool, require


@pytest.fixture(scope="session")
def bpf_build() -> Path:
    """``make -C bpf`` once per session (incremental: a no-op when the objects are fresh)."""
    require(have_root(), "root (BPF_PROG_LOAD / BPF_PROG_TEST_RUN)")
    require(have_tool("clang"), "clang (run `make setup`)")
    require(os.path.exists("/usr/include/bpf/bpf_helpers.h"), "libbpf-dev headers (run `make setup`)")
    out = subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], capture_output=True, text=True)
    assert out.returncode == 0, f"BPF build failed:\n{out.stdout}\n{out.stderr}"
    return REPO / "bpf" / "build"


@pytest.fixture
def run_prefix() -> str:
    """A per-test name prefix for pins, namespaces and devices, so two runs never collide."""
    return f"moqt{os.getpid() % 10000}{uuid.uuid4().hex[:6]}"
