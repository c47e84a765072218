"""`relay conformance` without root: the command, the JSON schema, exit statuses, backends found through the
`moq_relay.hal` entry-point group, and the suite's own packet-number plan (it must hit the window edges it claims)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crypto_offload.pn import decode_packet_number
from hal.base import Hal, HalCapabilities, HalError
from hal.none import NoneHal
from relay import cli
from relay.conformance import (
    CASE_NAMES,
    CASES,
    EXIT_NOT_APPLICABLE,
    EXIT_START,
    SCHEMA,
    Outcome,
    _pn_plan,
    format_table,
    run_suite,
)

JSON_KEYS = {"schema", "backend", "backend_args", "capabilities", "error", "cases", "summary", "exit_status"}


class LyingHal(NoneHal):
    """Claims crypto offload but offers no key installer: the capabilities case must catch it."""

    name = "lying"

    def capabilities(self) -> HalCapabilities:
        return HalCapabilities(crypto_offload=True, cipher_suites=("AES_128_GCM_SHA256",), max_flows=8)


class LyingFactory:
    name = "vendor-lying"
    summary = "a test vendor backend that claims crypto offload it does not have"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vendor-lying-port", default="nfp0", help="the vendor's own option")

    def create(self, args: argparse.Namespace) -> Hal:
        assert args.vendor_lying_port == "nfp7"  # the option after -- reached the backend
        return LyingHal()


class FailingHal(NoneHal):
    def start(self) -> None:
        raise HalError("no NFP found (driver nfp not loaded): load it with `modprobe nfp`")


class FailingFactory:
    name = "vendor-failing"
    summary = "a test vendor backend whose start() fails"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        return None

    def create(self, args: argparse.Namespace) -> Hal:
        return FailingHal()


@pytest.fixture
def vendor_dist(tmp_path: Path) -> Iterator[None]:
    """Two backends installed the way a vendor ships them: a distribution whose entry points name them."""
    dist = tmp_path / "vendor_nic-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-nic\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[moq_relay.hal]\n"
        "vendor-lying = tests.unit.test_conformance_cli:LyingFactory\n"
        "vendor-failing = tests.unit.test_conformance_cli:FailingFactory\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.path.remove(str(tmp_path))
    importlib.invalidate_caches()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    status = cli.main(["conformance", *argv])
    out = capsys.readouterr().out
    return status, json.loads(out) if "--json" in argv else out


def test_list_names_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_cli(capsys, "--list")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == list(CASE_NAMES)
    assert CASE_NAMES[-1] == "teardown" and len(set(CASE_NAMES)) == len(CASES)
    assert {"aead-aes-128-gcm-sha256", "aead-aes-256-gcm-sha384", "aead-chacha20-poly1305-sha256"} <= set(CASE_NAMES)


def test_none_backend_is_not_applicable_not_passed(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_cli(capsys, "--hal", "none", "--json")
    assert status == EXIT_NOT_APPLICABLE == out["exit_status"]
    assert set(out) == JSON_KEYS and out["schema"] == SCHEMA and out["error"] is None
    results = {c["case"]: c["result"] for c in out["cases"]}
    assert list(results) == list(CASE_NAMES)
    assert results.pop("teardown") == "pass"
    assert set(results.values()) == {"not_applicable"}
    assert all(c["detail"] for c in out["cases"])  # every n/a says why
    assert out["summary"] == {"pass": 1, "fail": 0, "not_applicable": len(CASE_NAMES) - 1, "error": 0}
    assert set(out["cases"][0]) == {"case", "result", "detail", "seconds"}


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_cli(capsys, "--hal", "none", "--case", "capabilities", "--case", "teardown")
    assert status == EXIT_NOT_APPLICABLE
    lines = out.splitlines()
    assert lines[0].split() == ["case", "result", "detail"]
    assert lines[1].startswith("capabilities") and "not applicable" in lines[1]
    assert lines[2].startswith("teardown") and " pass " in lines[2]
    assert lines[-1].startswith("1 passed, 0 failed, 0 errors, 1 not applicable (backend none")


def test_unknown_backend_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["conformance", "--hal", "no-such-nic"]) == EXIT_START
    assert "unknown HAL backend 'no-such-nic'" in capsys.readouterr().err
    assert cli.main(["conformance"]) == EXIT_START


def test_vendor_backends_from_entry_points(vendor_dist: None, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_cli(capsys, "--hal", "vendor-lying", "--json", "--case", "capabilities",
                          "--", "--vendor-lying-port", "nfp7")
    assert status == 1 and out["backend"] == "vendor-lying" and out["backend_args"] == ["--vendor-lying-port", "nfp7"]
    (case,) = out["cases"]
    assert case["result"] == "fail" and "crypto_offload is True but key_installer() is None" in case["detail"]
    assert out["capabilities"]["cipher_suites"] == ["AES_128_GCM_SHA256"]

    status, out = run_cli(capsys, "--hal", "vendor-failing", "--json")
    assert status == EXIT_START == out["exit_status"]
    assert out["cases"] == [] and "modprobe nfp" in out["error"]


def test_run_suite_reports_a_crashing_case_as_error() -> None:
    class Crashing(NoneHal):
        def capabilities(self) -> HalCapabilities:
            raise RuntimeError("firmware went away")

    class Factory:
        name = "crashing"
        summary = ""

        def configure(self, parser: argparse.ArgumentParser) -> None:
            return None

        def create(self, args: argparse.Namespace) -> Hal:
            return Crashing()

    report = run_suite(Factory(), argparse.Namespace(), cases=("capabilities", "teardown"))
    assert [(r.case, r.result) for r in report.results] == [("capabilities", Outcome.ERROR),
                                                            ("teardown", Outcome.PASS)]
    assert "RuntimeError: firmware went away" in report.results[0].detail
    assert report.exit_status == 1 and "1 errors" in format_table(report)


def test_pn_plan_hits_the_edges_of_every_encoding() -> None:
    """Every planned PN decodes back (RFC 9000 A.3) from the PN the NIC expects, each list crosses the truncation
    wrap, and the extremes are the edges: one step further would decode to another PN."""
    for _, n, start, tx, rx in _pn_plan():
        bits = 8 * n
        for pns in (tx, rx):
            largest = start - 1
            for pn in pns:
                assert decode_packet_number(pn & ((1 << bits) - 1), bits, largest + 1) == pn
                largest = max(largest, pn)
            assert any((pn >> bits) != (start >> bits) for pn in pns)
        tx_edge, expected = tx[-1] + 1, tx[-2] + 1
        assert decode_packet_number(tx_edge & ((1 << bits) - 1), bits, expected) != tx_edge
        rx_edge, expected = rx[-2] - 1, max(rx[:-2]) + 1
        assert decode_packet_number(rx_edge & ((1 << bits) - 1), bits, expected) != rx_edge


def test_control_plane_cases_run_without_a_wire(capsys: pytest.CaptureFixture[str]) -> None:
    """A backend with a key installer (here the reference engine, in process) but no peer beyond the NIC: the
    key-table cases run for real, the packet cases are not applicable and say why."""
    from crypto_offload.engine import NicCryptoEngine

    class InProcessHal(NoneHal):
        name = "in-process"

        def __init__(self) -> None:
            self.engine = NicCryptoEngine(max_flows=64)

        def capabilities(self) -> HalCapabilities:
            caps = self.engine.capabilities()
            return HalCapabilities(crypto_offload=True, cipher_suites=tuple(s.name for s in sorted(caps.suites)),
                                   max_flows=caps.max_flows)

        def key_installer(self) -> Any:
            return self.engine

    class Factory:
        name = "in-process"
        summary = ""

        def configure(self, parser: argparse.ArgumentParser) -> None:
            return None

        def create(self, args: argparse.Namespace) -> Hal:
            return InProcessHal()

    report = run_suite(Factory(), argparse.Namespace())
    results = {r.case: r for r in report.results}
    assert results["capabilities"].result is Outcome.PASS
    assert results["key-install"].result is Outcome.PASS, results["key-install"].detail
    assert "table full at 64 flows refused" in results["key-install"].detail
    assert results["teardown"].result is Outcome.PASS
    for name in ("key-remove", "rekey", "key-phases", "pn-expansion", "header-protection", "decrypt-failure",
                 "no-plaintext-on-wire", "aead-chacha20-poly1305-sha256"):
        assert results[name].result is Outcome.NOT_APPLICABLE, name
        assert "no peer beyond the NIC" in results[name].detail
    assert report.exit_status == EXIT_NOT_APPLICABLE
