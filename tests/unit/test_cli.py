"""The `relay` command line: help that teaches, wrong arguments that say what to do, doctor output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay import cli, doctor


def run_relay(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *argv], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_with_examples() -> None:
    result = run_relay("--help")
    assert result.returncode == 0
    for name in ("pub", "sub", "doctor", "sim"):
        assert name in result.stdout
    assert "examples:" in result.stdout


def test_unknown_command_exits_2_with_usage() -> None:
    result = run_relay("frobnicate")
    assert result.returncode == 2
    assert "usage: relay" in result.stderr
    assert "invalid choice" in result.stderr


def test_every_wired_command_module_is_importable() -> None:
    _, modules = cli.build_parser()
    for name in ("pub", "sub", "doctor", "sim"):
        assert name in modules, f"`relay {name}` is not wired: its module failed to load"


def test_doctor_render_shows_fix_for_missing_required_and_summary() -> None:
    checks = [
        doctor.Check("root", True, "euid 0"),
        doctor.Check("clang", False, "not installed", "apt-get install -y clang"),
        doctor.Check("bpftool", False, "not installed", "apt-get install -y bpftool", required=False),
    ]
    text = doctor.render(checks)
    assert "FAIL  clang" in text
    assert "fix: apt-get install -y clang" in text
    assert "warn  bpftool" in text
    assert text.endswith("1 required prerequisite(s) missing")


@pytest.mark.root
def test_doctor_on_this_machine_finds_every_required_prerequisite(need_root: None) -> None:
    """`make setup` installs everything: after it, the doctor must find nothing required missing."""
    checks = doctor.all_checks()
    missing = [f"{c.name}: {c.detail}" for c in checks if c.required and not c.ok]
    assert missing == []
    names = {c.name for c in checks}
    assert {"root", "bpf syscall", "BTF", "netns", "veth", "clsact", "clang", "libbpf"} <= names
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("doctor-") == 0
