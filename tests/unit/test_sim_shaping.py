"""The tc commands for shaping and for NIC passthrough, and the classic-BPF loss program, run in a tiny interpreter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim import nic, shaping
from sim.links import LinkShape

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806


def run_cbpf(bytecode: str, protocol: int, rand: int) -> int:
    """Interpret the few classic BPF instructions the loss program may use (linux/filter.h semantics)."""
    count, *rest = bytecode.split(",")
    prog = [tuple(int(x) for x in ins.split()) for ins in rest]
    assert len(prog) == int(count)
    a, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x28 and k == 0xFFFFF000:  # ldh SKF_AD_PROTOCOL
            a = protocol
        elif code == 0x20 and k == 0xFFFFF038:  # ld SKF_AD_RANDOM
            a = rand
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code == 0x35:  # jge #k (unsigned)
            pc += jt if a >= k else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@given(loss=st.floats(0.0, 1.0), rand=st.integers(0, 2**32 - 1))
def test_loss_program_drops_exactly_below_threshold(loss: float, rand: int) -> None:
    verdict = run_cbpf(shaping.loss_bytecode(loss), ETH_P_IP, rand)
    dropped = verdict == 0xFFFFFFFF  # -1: the filter's classid, i.e. the drop class
    assert verdict in (0, 0xFFFFFFFF)
    assert dropped == (rand < shaping.loss_threshold(loss))


def test_loss_fraction_matches_over_the_u32_range() -> None:
    program = shaping.loss_bytecode(0.25)
    samples = range(0, 2**32, 2**22)  # 1024 evenly spread random values
    drops = sum(run_cbpf(program, ETH_P_IP, r) != 0 for r in samples)
    assert drops == 256


@pytest.mark.parametrize("rand", [0, 1, 2**31, 2**32 - 1])
def test_arp_is_never_dropped(rand: int) -> None:
    assert run_cbpf(shaping.loss_bytecode(1.0), ETH_P_ARP, rand) == 0


def test_rate_and_loss_commands() -> None:
    cmds = shaping.shaping_commands("sub0", LinkShape(20_000_000, 0.5))
    assert cmds[0] == ["tc", "qdisc", "add", "dev", "sub0", "root", "handle", "1:", "htb", "default", "1"]
    assert cmds[1][:8] == ["tc", "class", "add", "dev", "sub0", "parent", "1:", "classid"]
    assert cmds[1][cmds[1].index("rate") + 1] == "20000000bit" == cmds[1][cmds[1].index("ceil") + 1]
    # 100 ms of queue at 20 Mbit/s = 250 kB: no seconds of bufferbloat on a slow link.
    assert cmds[2][-4:] == ["10:", "bfifo", "limit", "250000"]
    assert cmds[4][-4:] == ["20:", "pfifo", "limit", "0"]  # the drop class holds nothing
    assert cmds[5][cmds[5].index("bytecode") + 1] == shaping.loss_bytecode(0.5)
    assert cmds[5][-2:] == ["classid", "1:2"]


def test_loss_only_and_nothing() -> None:
    loss_only = shaping.shaping_commands("eth0", LinkShape(None, 0.1))
    assert [c[1] for c in loss_only] == ["qdisc", "class", "class", "qdisc", "filter"]
    assert "100gbit" in loss_only[1]
    assert shaping.shaping_commands("eth0", LinkShape()) == []
    assert shaping.clear_commands("eth0") == [["tc", "qdisc", "del", "dev", "eth0", "root"]]


def test_passthrough_redirects_each_way_and_removes_only_its_filter() -> None:
    on = nic.passthrough_on_commands("host0", "wire0", add_clsact=True)
    assert on[:2] == [["tc", "qdisc", "add", "dev", d, "clsact"] for d in ("host0", "wire0")]
    redirects = [(c[4], c[-1]) for c in on[2:]]
    assert redirects == [("host0", "wire0"), ("wire0", "host0")]
    assert all(nic.PASSTHROUGH_PREF in c for c in on[2:])
    assert not any("clsact" in c for c in nic.passthrough_on_commands("host0", "wire0", add_clsact=False))
    off = nic.passthrough_off_commands("host0", "wire0")
    assert off == [["tc", "filter", "del", "dev", d, "ingress", "pref", nic.PASSTHROUGH_PREF] for d in ("host0", "wire0")]
