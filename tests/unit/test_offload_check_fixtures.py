"""The offload checker on real objects: one hand-written fixture per forbidden construct (each must give exactly
its expected reason), a clean XDP program that fits the NFP, and the project's own programs. Needs clang only."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bpf import offload_check as oc
from relay import cli
from tests.support import REPO, have_tool, require

FIXTURES = REPO / "tests" / "fixtures" / "offload"
ARCH_INC = "/usr/include/" + subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() + "-linux-gnu"
CFLAGS = ["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I{ARCH_INC}"]  # as bpf/Makefile

# fixture -> the reasons (code, message) it must produce against the NFP profile, and nothing else.
EXPECTED_NFP: dict[str, list[tuple[str, str]]] = {
    "clean_xdp": [],
    "alu64_mul": [("alu64_mul", r"64-bit multiply \(BPF_ALU64\|BPF_MUL\) at insn \d+: the NFP multiplies within 32 bits only")],
    "div_reg": [("div_by_register", r"divide/modulo by a register \(BPF_X\) at insn \d+: the NFP divides only by a constant")],
    "tail_call": [("helper", r"uses bpf_tail_call \(helper 12\): the NFP has no tail calls"),
                  ("map_type", r"map jumps is prog_array: the NFP offloads hash and array maps only")],
    "redirect": [("helper", r"uses bpf_redirect \(helper 23\): the NFP cannot redirect to another device")],
    "clone": [("helper", r"uses bpf_clone_redirect \(helper 13\): the NFP cannot clone")],
    "skb_helper": [("helper", r"uses bpf_skb_load_bytes \(helper 26\): the NFP has no skb_\* helpers")],
    "csum": [("helper", r"uses bpf_csum_diff \(helper 28\): the NFP has no checksum helpers")],
    "kfunc": [("kfunc", r"calls kfunc bpf_rcu_read_lock: the NFP has no kfuncs"),
              ("kfunc", r"calls kfunc bpf_rcu_read_unlock: the NFP has no kfuncs")],
    "atomic_or": [("atomic", r"atomic or at insn \d+: the NFP supports only atomic add of a scalar")],
    "map_type": [("map_type", r"map percpu is percpu_array: the NFP offloads hash and array maps only")],
    "map_store_indexed": [("map_value_store", r"store into a map value at insn \d+: the NFP allows no direct stores")],
    "map_value_size": [("map_value_size", r"map wide_values has 128-byte values > 64: the NFP stores map entries of at most 64 bytes")],
    "map_store": [("map_value_store", r"store into a map value at insn \d+: the NFP allows no direct stores")],
    "egress": [("direction", r"attaches at tc egress \(section 'tc/egress'\): the NFP offloads TC programs on ingress only")],
    "stack": [],
}


def compile_fixture(src: Path, out_dir: Path) -> Path:
    """clang with the Makefile's flags, plus a fixture's own `/* EXTRA_CFLAGS: ... */` line (e.g. -mcpu=v3)."""
    extra = re.search(r"/\* EXTRA_CFLAGS: (.*?) \*/", src.read_text())
    out = out_dir / (src.stem + ".o")
    argv = ["clang", *CFLAGS, *(extra.group(1).split() if extra else []), "-c", str(src), "-o", str(out)]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0, f"{src.name} did not compile:\n{res.stderr}"
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require(have_tool("clang"), "clang (run `make setup`)")
    require(Path("/usr/include/bpf/bpf_helpers.h").exists(), "libbpf-dev headers (run `make setup`)")
    out = tmp_path_factory.mktemp("offload")
    return {src.stem: compile_fixture(src, out) for src in sorted(FIXTURES.glob("*.c"))}


@pytest.fixture(scope="module")
def project_objects() -> Path:
    require(have_tool("clang"), "clang (run `make setup`)")
    res = subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return REPO / "bpf" / "build"


def test_every_fixture_has_an_expectation(objects: dict[str, Path]) -> None:
    assert set(objects) == set(EXPECTED_NFP)


@pytest.mark.parametrize("name", sorted(EXPECTED_NFP))
def test_fixture_gives_exactly_its_reasons(objects: dict[str, Path], name: str) -> None:
    report = oc.check(objects[name], "nfp")
    assert len(report.programs) == 1
    got = report.programs[0].reasons
    want = EXPECTED_NFP[name]
    assert [r.code for r in got] == [code for code, _ in want], [r.message for r in got]
    for r, (_, pattern) in zip(got, want, strict=True):
        assert re.match(pattern, r.message), r.message
    assert report.fits is (not want)


def test_clean_xdp_facts(objects: dict[str, Path]) -> None:
    p = oc.check(objects["clean_xdp"], "nfp").programs[0]
    assert (p.name, p.section, p.type, p.direction) == ("clean", "xdp", "xdp", "ingress")
    assert p.helpers == [(1, "bpf_map_lookup_elem")]
    assert [(m.name, m.type, m.key_size, m.value_size, m.max_entries) for m in p.maps] == [("counts", "hash", 4, 8, 64)]
    assert p.slots == p.insns + 1  # one ld_imm64 (the map address)
    assert p.stack == 4  # the __u32 key


def test_stack_and_subprograms(objects: dict[str, Path], tmp_path: Path) -> None:
    p = oc.check(objects["stack"], "nfp").programs[0]
    assert p.subprograms == ["classify"] and p.stack == 64
    tight = tmp_path / "tight.toml"
    text = (oc.PROFILE_DIR / "nfp.toml").read_text()
    tight.write_text(text.replace("max_insns = 2800", "max_insns = 20").replace("max_stack = 512", "max_stack = 32"))
    reasons = oc.check(objects["stack"], str(tight)).programs[0].reasons
    assert [r.code for r in reasons] == ["insn_limit", "stack_limit"]
    assert reasons[0].message.startswith(f"{p.slots} instruction slots > 20: the NFP firmware limits program size")
    assert reasons[1].message == "64 bytes of stack > 32: the NFP firmware limits stack size"


def test_host_targets(objects: dict[str, Path]) -> None:
    assert oc.check(objects["clean_xdp"], "host-xdp").fits
    assert [r.code for r in oc.check(objects["clean_xdp"], "host-tc").programs[0].reasons] == ["program_type"]
    assert oc.check(objects["egress"], "host-tc").fits
    assert oc.check(objects["clone"], "host-tc").fits
    xdp_skb = oc.check(objects["skb_helper"], "host-xdp").programs[0].reasons
    assert [r.code for r in xdp_skb] == ["program_type", "helper"]


def test_server_ingress_fits_host_tc(project_objects: Path) -> None:
    report = oc.check(project_objects / "server_ingress.o", "host-tc")
    assert report.fits and [p.name for p in report.programs] == ["server_ingress"]
    assert (1, "bpf_map_lookup_elem") in report.programs[0].helpers


def test_floor_does_not_fit_nfp(project_objects: Path) -> None:
    p = oc.check(project_objects / "floor.o", "nfp").programs[0]
    assert not p.fits
    assert "uses bpf_clone_redirect (helper 13): the NFP cannot clone" in [r.message for r in p.reasons]
    assert oc.check(project_objects / "floor.o", "host-tc").fits


def test_classifier_fits_nfp_and_server_ingress_does_not(project_objects: Path) -> None:
    """The placement the HAL makes: the classifier can go to the NIC, the clone/rewrite programs cannot."""
    assert oc.check(project_objects / "classifier.o", "nfp").fits
    assert oc.check(project_objects / "classifier.o", "host-xdp").fits
    assert not oc.check(project_objects / "server_ingress.o", "nfp").fits


JSON_KEYS = {"schema", "object", "target", "fits", "programs"}
PROGRAM_KEYS = {"name", "section", "type", "direction", "insns", "slots", "stack", "helpers", "kfuncs",
                "subprograms", "maps", "fits", "reasons"}


def test_json_schema_is_stable(objects: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """These keys are documented in docs/offload-check.md; changing them is a schema version bump."""
    assert cli.main(["offload-check", str(objects["tail_call"]), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == JSON_KEYS and doc["schema"] == 1 and doc["target"] == "nfp" and doc["fits"] is False
    prog = doc["programs"][0]
    assert set(prog) == PROGRAM_KEYS
    assert prog["helpers"] == [{"id": 12, "name": "bpf_tail_call"}]
    assert prog["maps"] == [{"name": "jumps", "type": "prog_array", "key_size": 4, "value_size": 4, "max_entries": 4}]
    assert [set(r) for r in prog["reasons"]] == [{"code", "message"}] * 2


def test_cli_exit_codes_and_table(objects: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["offload-check", str(objects["clean_xdp"]), "--target", "nfp"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^clean\s+xdp\s+xdp/ingress\s+\d+\s+4\s+1\s+1\s+fits$", out, re.M), out
    assert "verdict: every program fits nfp" in out
    assert cli.main(["offload-check", str(objects["clone"])]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "- uses bpf_clone_redirect (helper 13): the NFP cannot clone" in out
