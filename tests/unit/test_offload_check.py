"""The offload checker's parts that need no compiler: instruction decoding, name tables, profiles, bad input."""

from __future__ import annotations

import contextlib
import re
import struct
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpf import offload_check as oc
from relay import cli
from tests.support import require

HELPER_DEFS = Path("/usr/include/bpf/bpf_helper_defs.h")


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def test_decode_counts_ld_imm64_once() -> None:
    data = _insn(0x18, dst=1, imm=5) + _insn(0, imm=0) + _insn(0x85, imm=1) + _insn(0x95)
    insns = oc.decode(data)
    assert [(i.index, i.code, i.slots) for i in insns] == [(0, 0x18, 2), (2, 0x85, 1), (3, 0x95, 1)]
    assert (insns[0].dst, insns[0].imm) == (1, 5)


@given(st.binary(max_size=256))
@settings(max_examples=200, deadline=None)
def test_decode_covers_every_slot(data: bytes) -> None:
    insns = oc.decode(data)
    slots = sum(i.slots for i in insns)
    assert len(data) // 8 <= slots <= len(data) // 8 + 1  # a trailing ld_imm64 may lack its second half
    assert all(0 <= i.dst < 16 and 0 <= i.src < 16 for i in insns)


def test_helper_table_matches_libbpf_header() -> None:
    require(HELPER_DEFS.exists(), "libbpf-dev headers (run `make setup`)")
    found = dict((int(i), n) for n, i in re.findall(r"\(\*(bpf_\w+)\)\(.*?= \(void \*\) (\d+);", HELPER_DEFS.read_text()))
    for hid, name in found.items():
        assert oc.HELPERS.get(hid) == name


def test_helper_table_known_ids() -> None:
    assert oc.HELPERS[1] == "bpf_map_lookup_elem"
    assert oc.HELPERS[12] == "bpf_tail_call"
    assert oc.HELPERS[13] == "bpf_clone_redirect"
    assert oc.HELPERS[23] == "bpf_redirect"
    assert oc.HELPERS[44] == "bpf_xdp_adjust_head"
    assert oc.MAP_TYPES[1:3] == ["hash", "array"] and oc.MAP_TYPES[27] == "ringbuf"


@pytest.mark.parametrize(
    ("section", "expected"),
    [("tc", ("tc", None)), ("classifier", ("tc", None)), ("tc/ingress", ("tc", "ingress")),
     ("tc/egress", ("tc", "egress")), ("tcx/egress", ("tc", "egress")), ("xdp", ("xdp", "ingress")),
     ("xdp.frags", ("xdp", "ingress")), ("kprobe/foo", ("kprobe", None)), ("weird", ("unknown", None))],
)
def test_section_types(section: str, expected: tuple[str, str | None]) -> None:
    assert oc.section_type(section) == expected


def test_every_profile_loads() -> None:
    names = oc.profile_names()
    assert {"nfp", "host-tc", "host-xdp"} <= set(names)
    for name in names:
        p = oc.Profile.load(name)
        assert p.name == name and p.max_insns > 0 and p.max_stack > 0 and p.program_types


def test_nfp_profile_says_what_the_card_forbids() -> None:
    p = oc.Profile.load("nfp")
    assert p.map_types == ["hash", "array"] and p.directions == ["ingress"] and p.atomics == ["add"]
    assert {"alu64_mul", "div_by_register", "kfuncs", "map_value_stores"} <= set(p.forbid)
    assert p.forbid_helpers["bpf_clone_redirect"] == "the NFP cannot clone"


def test_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(oc.OffloadCheckError, match="no target profile 'nope'"):
        oc.Profile.load("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[limits]\nmax_insns = 1\n')
    with pytest.raises(oc.OffloadCheckError, match="missing key"):
        oc.Profile.load(str(bad))


def test_garbage_and_foreign_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an object at all")
    with pytest.raises(oc.OffloadCheckError, match="not an ELF object"):
        oc.ObjectFile.read(junk)
    with pytest.raises(oc.OffloadCheckError, match="not BPF"):
        oc.ObjectFile.read(Path(sys.executable).resolve())  # the interpreter: an x86/arm ELF
    with pytest.raises(oc.OffloadCheckError, match="No such file"):
        oc.ObjectFile.read(tmp_path / "missing.o")


@given(st.binary(min_size=0, max_size=200))
@settings(max_examples=150, deadline=None)
def test_corrupt_elf_is_a_clean_error(tail: bytes) -> None:
    """Whatever follows an ELF magic, the reader answers with OffloadCheckError (exit 2), never a traceback."""
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(b"\x7fELF\x02\x01\x01" + tail)
        f.flush()
        with contextlib.suppress(oc.OffloadCheckError):  # any other exception fails the test
            oc.ObjectFile.read(f.name)


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"\0" * 100)
    assert cli.main(["offload-check", str(junk)]) == 2
    assert "not an ELF object" in capsys.readouterr().err
    assert cli.main(["offload-check", str(tmp_path / "missing.o")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert cli.main(["offload-check", str(junk), "--target", "nope"]) == 2
    assert "no target profile 'nope'" in capsys.readouterr().err
