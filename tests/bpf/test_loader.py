"""bpf/loader.py against the kernel: .rodata set by name, typed maps, pins removed on close, ring buffer
through its epoll fd (also from asyncio), and a short load error whose .log holds the verifier log."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf.loader import BpfObject, LoadError, PinDir, build_path, summarize_log
from bpf.structs import FastTrack, IngressConfig, SelftestConfig, SelftestEvent, TrackKey
from bpf.testrun import TC_ACT_OK, TC_ACT_SHOT
from tests.bpf.packets import Moq

pytestmark = [pytest.mark.root, pytest.mark.bpf]
MAGIC = 0x5EED1234
PKT = Moq().build()


@pytest.fixture
def selftest(bpf_build: Path, run_prefix: str) -> Iterator[BpfObject]:
    with BpfObject.load(
        build_path("selftest"), rodata={"selftest_cfg": SelftestConfig(magic=MAGIC)}, pin_dir=PinDir(run_prefix)
    ) as obj:
        yield obj


def test_typed_map_api(selftest: BpfObject) -> None:
    m = selftest.maps["selftest_hash"]
    assert (m.key_type, m.value_type, m.max_entries) == (TrackKey, FastTrack, 64)
    assert m.lookup(TrackKey(conn_id=1, alias=2)) is None
    m.update(TrackKey(conn_id=1, alias=2), FastTrack(track_id=3))
    m.update(TrackKey(conn_id=4, alias=5), FastTrack(track_id=6))
    assert m.lookup(TrackKey(conn_id=1, alias=2)) == FastTrack(track_id=3)
    assert dict((k.conn_id, v.track_id) for k, v in m.items()) == {1: 3, 4: 6}
    assert m.delete(TrackKey(conn_id=4, alias=5)) is True
    assert m.delete(TrackKey(conn_id=4, alias=5)) is False
    with pytest.raises(ValueError):
        m.update(b"short", FastTrack())


def test_map_update_reaches_the_program(selftest: BpfObject) -> None:
    prog = selftest.programs["selftest"]
    assert prog.section == "tc"
    assert prog.test_run(PKT).retval == TC_ACT_SHOT
    selftest.maps["selftest_hash"].update(TrackKey(conn_id=1, alias=2), FastTrack(track_id=1))
    assert prog.test_run(PKT).retval == TC_ACT_OK


def test_ring_buffer_consume_and_rodata(selftest: BpfObject) -> None:
    got: list[SelftestEvent] = []
    rb = selftest.ring_buffer("selftest_events", got.append, SelftestEvent)
    for _ in range(3):
        selftest.programs["selftest"].test_run(PKT)
    assert rb.poll(100) == 3
    assert [(e.seq, e.len, e.magic) for e in got] == [(0, len(PKT), MAGIC), (1, len(PKT), MAGIC), (2, len(PKT), MAGIC)]
    assert rb.consume() == 0


def test_ring_buffer_from_asyncio(selftest: BpfObject) -> None:
    async def main() -> SelftestEvent:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SelftestEvent] = loop.create_future()
        def first(ev: SelftestEvent) -> None:
            if not fut.done():
                fut.set_result(ev)

        rb = selftest.ring_buffer("selftest_events", first, SelftestEvent)
        rb.add_reader(loop)
        loop.call_soon(selftest.programs["selftest"].test_run, PKT)
        try:
            return await asyncio.wait_for(fut, 2)
        finally:
            rb.close()

    ev = asyncio.run(main())
    assert (ev.len, ev.magic) == (len(PKT), MAGIC)


def test_callback_error_propagates(selftest: BpfObject) -> None:
    def boom(_: object) -> None:
        raise RuntimeError("bad record")

    rb = selftest.ring_buffer("selftest_events", boom, SelftestEvent)
    selftest.programs["selftest"].test_run(PKT)
    with pytest.raises(RuntimeError, match="bad record"):
        rb.consume()


def test_pins_live_under_the_run_folder_and_go_away(bpf_build: Path, run_prefix: str) -> None:
    pins = PinDir(run_prefix)
    with BpfObject.load(build_path("selftest"), pin_dir=pins) as obj:
        assert sorted(os.listdir(pins.path)) == ["selftest", "selftest_events", "selftest_hash"]
        assert obj.maps["selftest_hash"].pinned == pins.path / "selftest_hash"
        if shutil.which("bpftool"):
            out = subprocess.run(["bpftool", "map", "show", "pinned", str(pins.path / "selftest_hash")],
                                 capture_output=True, text=True)
            assert "selftest_hash" in out.stdout
    assert not pins.path.exists()


def test_pins_removed_when_body_raises(bpf_build: Path, run_prefix: str) -> None:
    pins = PinDir(run_prefix)
    with pytest.raises(KeyError), BpfObject.load(build_path("selftest"), pin_dir=pins) as obj:
        obj.maps["no_such_map"]
    assert not pins.path.exists()


def test_unknown_rodata_name_is_a_load_error(bpf_build: Path) -> None:
    with pytest.raises(LoadError, match="no .rodata global named 'nope'"):
        BpfObject.load(build_path("selftest"), rodata={"nope": b"\0\0\0\0"})
    with pytest.raises(LoadError, match="bytes given"):
        BpfObject.load(build_path("server_ingress"), rodata={"cfg": b"\0"})


def test_max_entries_resizes_a_map_before_load(bpf_build: Path) -> None:
    """`[fastpath] registration_ring` goes through this: the ring's size in bytes, set before the kernel sees it."""
    with BpfObject.load(build_path("client_egress"), max_entries={"reg_events": 4096}) as obj:
        assert obj.maps["reg_events"].max_entries == 4096
    with pytest.raises(LoadError, match="no map named nope to resize"):
        BpfObject.load(build_path("client_egress"), max_entries={"nope": 4096})
    with BpfObject.load(build_path("client_egress"), max_entries={"reg_events": 5000}) as obj:
        assert obj.maps["reg_events"].max_entries == 8192  # libbpf rounds a ring up to a power-of-two of pages


BAD_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tc")
int bad(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	return *(volatile unsigned char *)(data + 100); /* no bound check: the verifier must refuse */
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_verifier_rejection_is_short_with_full_log(bpf_build: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.bpf.c"
    src.write_text(BAD_PROG)
    obj = tmp_path / "bad.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{os.uname().machine}-linux-gnu",
                    "-c", str(src), "-o", str(obj)], check=True)
    with pytest.raises(LoadError) as exc:
        BpfObject.load(obj)
    msg = str(exc.value)
    assert "invalid access to packet" in msg
    assert len(msg.splitlines()) == 1 and len(msg) < 400
    assert "BEGIN PROG LOAD LOG" in exc.value.log and "processed" in exc.value.log


def test_missing_object_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="No such file"):
        BpfObject.load(tmp_path / "missing.o")


def test_summarize_log_keeps_last_verifier_lines() -> None:
    log = "libbpf: x\n-- BEGIN PROG LOAD LOG --\n0: a\n1: b\n2: c\nR1 bad\nprocessed 3 insns\n-- END PROG LOAD LOG --\n"
    assert summarize_log(log) == "1: b | 2: c | R1 bad"


def test_ingress_config_rodata_is_frozen_in(bpf_build: Path) -> None:
    cfg = IngressConfig()
    cfg.port[0], cfg.dcid_len[0] = 9999, 4
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}) as obj:
        rodata = next(m for n, m in obj.maps.items() if n.endswith(".rodata"))
        assert rodata.lookup(0)[:12] == bytes(cfg)


def test_failed_load_leaves_no_pin_folder(bpf_build: Path, run_prefix: str, tmp_path: Path) -> None:
    pins = PinDir(run_prefix)
    with pytest.raises(LoadError):
        BpfObject.load(tmp_path / "missing.o", pin_dir=pins)
    with pytest.raises(LoadError):
        BpfObject.load(build_path("selftest"), rodata={"nope": b""}, pin_dir=pins)
    assert not pins.path.exists()


def test_objects_sharing_a_pin_folder_remove_only_their_own(bpf_build: Path, run_prefix: str) -> None:
    pins = PinDir(run_prefix)
    a = BpfObject.load(build_path("selftest"), pin_dir=pins)
    try:
        with BpfObject.load(build_path("floor"), pin_dir=pins):
            assert {"floor_clone", "floor_stats", "selftest_hash"} <= set(os.listdir(pins.path))
        assert sorted(os.listdir(pins.path)) == ["selftest", "selftest_events", "selftest_hash"]
    finally:
        a.close()
    assert not pins.path.exists()


@pytest.mark.parametrize("ports", [(), ((4433, 0),), ((4433, 20),), ((1, 0), (2, 8), (3, 16), (4, 20))])
def test_server_ingress_verifies_under_every_config_shape(bpf_build: Path, ports: tuple[tuple[int, int], ...]) -> None:
    """.rodata is constant to the verifier, so each config shape is a different program to verify."""
    cfg = IngressConfig()
    for i, (port, dcid_len) in enumerate(ports):
        cfg.port[i], cfg.dcid_len[i] = port, dcid_len
    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}, log_level=4) as obj:
        assert obj.programs["server_ingress"].fd > 0
        m = re.search(r"processed (\d+) insns", obj.log)
        assert m, "log_level 4 keeps the verifier statistics"
        # ~60k per relay port today (docs/bpf.md); the kernel's limit is 1M. Catch complexity regressions early.
        assert int(m.group(1)) < 80_000 * max(1, len(ports)), m.group(0)
