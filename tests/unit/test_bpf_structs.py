"""The ctypes mirror (bpf/structs.py) against the compiled objects' BTF: sizes, field names, offsets and
sizes of every mirrored struct, and the stat enum. No root needed; only clang to build the objects."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from bpf.btf import Btf, BtfError
from bpf.loader import map_types_from_btf
from bpf.structs import MIRRORS, CidKey, FastTrack, IngressStat, Mirror, ParseResult, TrackKey
from tests.support import REPO, have_tool, require

OBJECTS = ("server_ingress", "floor", "selftest", "client_egress", "client_ingress", "nic_crypto")


@pytest.fixture(scope="module")
def btfs() -> dict[str, Btf]:
    require(have_tool("clang"), "clang (run `make setup`)")
    out = subprocess.run(["make", "-s", "-C", str(REPO / "bpf")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return {name: Btf.from_object(REPO / "bpf" / "build" / f"{name}.o") for name in OBJECTS}


def _layout(m: type[Mirror]) -> list[tuple[str, int, int]]:
    return [(name, getattr(m, name).offset, getattr(m, name).size) for name, *_ in m._fields_]


@pytest.mark.parametrize("mirror", MIRRORS, ids=[m.c_name for m in MIRRORS])
def test_mirror_matches_btf(btfs: dict[str, Btf], mirror: type[Mirror]) -> None:
    found = 0
    for name, b in btfs.items():
        try:
            layout = b.struct_layout(mirror.c_name)
        except KeyError:
            continue
        found += 1
        assert ctypes.sizeof(mirror) == layout.size, f"{mirror.c_name} size in {name}.o"
        assert _layout(mirror) == [(f.name, f.offset, f.size) for f in layout.fields], f"{mirror.c_name} in {name}.o"
    assert found, f"struct {mirror.c_name} is in no object's BTF: mirror of a struct nobody uses?"


def test_every_struct_of_structs_h_is_mirrored(btfs: dict[str, Btf]) -> None:
    header = (REPO / "bpf" / "src" / "structs.h").read_text()
    import re

    declared = set(re.findall(r"^struct (\w+) \{", header, re.M))
    assert declared == {m.c_name for m in MIRRORS}


def test_stat_enum_matches_btf(btfs: dict[str, Btf]) -> None:
    assert btfs["server_ingress"].enum("ingress_stat") == {s.name: s.value for s in IngressStat}


def test_map_types_come_from_btf(btfs: dict[str, Btf]) -> None:
    types = map_types_from_btf(btfs["server_ingress"])
    assert types["fast_tracks"] == (TrackKey, FastTrack)
    assert types["upstream_conns"][0] is CidKey
    assert types["last_parse"] == (ctypes.c_uint32, ParseResult)
    assert types["ingress_stats"] == (ctypes.c_uint32, ctypes.c_uint64)


def test_rodata_variables_have_offsets(btfs: dict[str, Btf]) -> None:
    v = btfs["server_ingress"].variables(".rodata")
    assert v["cfg"].offset == 0 and v["cfg"].size == 12
    assert v["ingress_stat_btf_anchor"].offset == 12


def test_cid_key_of() -> None:
    k = CidKey.of(b"\x01\x02")
    assert bytes(k) == b"\x02\x01\x02" + bytes(21)
    with pytest.raises(ValueError):
        CidKey.of(bytes(21))


def test_rejects_non_btf(tmp_path: Path) -> None:
    with pytest.raises(BtfError):
        Btf(b"\x00" * 32)


# ---- Kernel-resident loss recovery (issue 5) ----
def test_recovery_stat_enum_matches_btf(btfs: dict[str, Btf]) -> None:
    from bpf.structs import RecoveryStat

    assert btfs["client_ingress"].enum("recovery_stat") == {s.name: s.value for s in RecoveryStat}


def test_recovery_map_types_come_from_btf(btfs: dict[str, Btf]) -> None:
    from bpf.structs import RecoveryConn, RecoveryState

    types = map_types_from_btf(btfs["client_ingress"])
    assert types["recovery_state"] == (ctypes.c_uint32, RecoveryState)
    assert types["recovery_conns"] == (CidKey, RecoveryConn)


def test_recovery_state_seeded() -> None:
    from bpf.structs import RECOVERY_NONE, RecoveryState

    s = RecoveryState.seeded(1200)
    assert (s.cwnd, s.ssthresh, s.largest_acked, s.min_rtt) == (12000, RECOVERY_NONE, RECOVERY_NONE, RECOVERY_NONE)
    assert RecoveryState.seeded(1500).cwnd == 14720
