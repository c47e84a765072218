"""`relay conformance` against the real sim backend, and against deliberately broken ones.

Each broken backend is a `HalFactory` (the interface a vendor implements) around a subclass of the sim backend with
one flaw, and must fail exactly the cases that judge that property - no more (the cases are independent), no fewer
(the flaw is caught). One of them is installed the way a vendor ships one: a distribution on sys.path with an entry
point in `moq_relay.hal`, run through the `relay` command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crypto_offload.api import DecryptFailurePolicy, Direction, FlowKey, KeyInstall, KeyInstallError, Rekey
from hal.base import Hal
from hal.sim import SimFactory, SimHal
from relay import cli
from relay.conformance import CASE_NAMES, Outcome, Report, run_suite
from sim.state import SimStateError
from sim.topology import down_prefix
from sim.topology import list_prefixes as sim_prefixes
from tests.sim.simrelay import leftovers
from tests.support import REPO, have_root, have_tool, require

pytestmark = [pytest.mark.sim, pytest.mark.root]


@pytest.fixture(scope="module")
def selftest_object() -> Path:
    """The TC cases load bpf/build/selftest.o: build only that one (another program's build error must not hide
    these results; if the build fails, an object built earlier is still fine)."""
    require(have_root(), "root (namespaces, veths, tc, BPF)")
    obj = REPO / "bpf" / "build" / "selftest.o"
    if have_tool("clang"):
        subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), "build/selftest.o"], capture_output=True, text=True)
    require(obj.exists(), "bpf/build/selftest.o (clang and libbpf-dev: run `make setup`, then `make -C bpf`)")
    return obj


@pytest.fixture
def prefix(selftest_object: Path) -> Iterator[str]:
    require(have_tool("tc") and have_tool("ip"), "iproute2 (ip, tc)")
    name = f"cf{uuid.uuid4().hex[:6]}"
    yield name
    if any(s.prefix == name for s in sim_prefixes()):  # a leaky backend under test: clean up after it
        with contextlib.suppress(SimStateError):
            down_prefix(name)
    assert leftovers(name) == []


def sim_args(prefix: str, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(prefix=prefix, sim_publishers=1, sim_subscribers=0, **extra)


def failed(report: Report) -> set[str]:
    assert report.error is None, report.error
    return {r.case for r in report.results if r.result is not Outcome.PASS}


def details(report: Report) -> str:
    return "\n".join(f"{r.case}: {r.result.value}: {r.detail}" for r in report.results)


# ---- broken backends: the sim with one flaw each ------------------------------------------------------------


class WrappedInstaller:
    """The sim's key installer with a flaw applied to what goes in (the NIC then behaves accordingly)."""

    def __init__(self, inner: Any, flaw: str) -> None:
        self.inner = inner
        self.flaw = flaw
        self.path = inner.path

    def capabilities(self) -> Any:
        return self.inner.capabilities()

    def install(self, flow: FlowKey, keys: KeyInstall) -> None:
        if self.flaw == "hp" and flow.direction is Direction.TX:
            # a NIC that masks outgoing headers wrongly: the AEAD is right, the header-protection mask is not
            keys = replace(keys, hp_key=bytes(b ^ 0x5A for b in keys.hp_key))
        if self.flaw == "pn-state":  # a NIC that ignores the host's packet-number state: expands from 0
            keys = replace(keys, largest_pn=-1, next_pn=0)
        if self.flaw == "bad-tag-up":
            keys = replace(keys, decrypt_failure_policy=DecryptFailurePolicy.PASS_UP)
        self.inner.install(flow, keys)

    def rekey(self, flow: FlowKey, rekey: Rekey) -> None:
        if self.flaw == "ignore-rekey":  # checks the flow exists, then keeps the old keys
            if flow not in self.inner.stats().flows:
                raise KeyInstallError(f"no flow {flow}")
            return
        self.inner.rekey(flow, rekey)

    def remove(self, flow: FlowKey) -> bool:
        return bool(self.inner.remove(flow))

    def stats(self) -> Any:
        return self.inner.stats()


class FlawedSimHal(SimHal):
    flaw = ""

    def key_installer(self) -> Any | None:
        inner = super().key_installer()
        return None if inner is None else WrappedInstaller(inner, self.flaw)

    def teardown(self) -> None:
        if self.flaw == "leak":  # stops the engine but leaves the network it brought up
            self.created = False
        super().teardown()


class FlawedFactory(SimFactory):
    flaw = ""

    def __init__(self) -> None:
        self.name = f"broken-{self.flaw}"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Options named after the backend (they share one parser with every other backend's)."""
        g = parser.add_argument_group(f"--hal {self.name}")
        g.add_argument(f"--{self.name}-prefix", dest="flawed_prefix", help="sim prefix to bring up")

    def create(self, args: argparse.Namespace) -> Hal:
        prefix = getattr(args, "flawed_prefix", None) or args.prefix
        hal = FlawedSimHal(prefix, getattr(args, "sim_publishers", 1), getattr(args, "sim_subscribers", 0))
        hal.flaw = self.flaw
        return hal


class FlippedHeaderProtection(FlawedFactory):
    flaw = "hp"


class IgnoresRekeys(FlawedFactory):
    flaw = "ignore-rekey"


class IgnoresPacketNumberState(FlawedFactory):
    flaw = "pn-state"


class PassesBadTagsUp(FlawedFactory):
    flaw = "bad-tag-up"


class LeakyTeardown(FlawedFactory):
    flaw = "leak"


# ---- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["user", "tc"])
def test_sim_passes_every_case(prefix: str, engine: str) -> None:
    """Both NIC engines of the sim: the user-space one and the kernel-only TC programs (ChaCha20-Poly1305 only: the
    AES cases pass because their installs are refused, as an unadvertised suite's must be)."""
    report = run_suite(SimFactory(), sim_args(prefix, nic_engine=engine))
    assert [r.case for r in report.results] == list(CASE_NAMES)
    assert failed(report) == set(), details(report)
    assert report.exit_status == 0
    assert report.capabilities is not None and report.capabilities.crypto_offload


@pytest.mark.parametrize(("factory", "should_fail"), [
    (FlippedHeaderProtection, {"header-protection", "no-plaintext-on-wire"}),
    (IgnoresRekeys, {"rekey", "key-phases"}),
    (IgnoresPacketNumberState, {"pn-expansion"}),
    (PassesBadTagsUp, {"decrypt-failure"}),
    (LeakyTeardown, {"teardown"}),
], ids=["flipped-header-protection", "ignores-rekeys", "ignores-pn-state", "passes-bad-tags-up", "leaky-teardown"])
def test_broken_backend_fails_exactly_its_cases(prefix: str, factory: type[FlawedFactory],
                                                should_fail: set[str]) -> None:
    report = run_suite(factory(), sim_args(prefix))
    assert failed(report) == should_fail, details(report)
    assert all(r.result is Outcome.FAIL for r in report.results if r.case in should_fail), details(report)
    assert report.exit_status == 1


def test_vendor_package_through_the_entry_point_and_the_cli(prefix: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A backend installed as its own distribution, found by `relay conformance --hal NAME`, options after --
    parsed by that backend alone."""
    dist = tmp_path / "vendor_nic-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-nic\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[moq_relay.hal]\nbroken-bad-tag-up = tests.sim.test_conformance:PassesBadTagsUp\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        status = cli.main(["conformance", "--hal", "broken-bad-tag-up", "--json", "--case", "decrypt-failure",
                           "--case", "aead-chacha20-poly1305-sha256", "--case", "teardown",
                           "--", "--broken-bad-tag-up-prefix", prefix])
    finally:
        sys.path.remove(str(tmp_path))
        importlib.invalidate_caches()
    out = json.loads(capsys.readouterr().out)  # stdout is the JSON alone (the sim's progress went to stderr)
    assert status == 1 and out["exit_status"] == 1
    assert out["backend"] == "broken-bad-tag-up"
    assert out["backend_args"] == ["--broken-bad-tag-up-prefix", prefix]
    assert {c["case"]: c["result"] for c in out["cases"]} == {
        "aead-chacha20-poly1305-sha256": "pass", "decrypt-failure": "fail", "teardown": "pass"}
    assert "passed up" in next(c["detail"] for c in out["cases"] if c["case"] == "decrypt-failure")
    assert out["summary"] == {"pass": 2, "fail": 1, "not_applicable": 0, "error": 0}
