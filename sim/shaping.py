"""tc commands that shape one veth's egress: rate with htb, random loss with a classic-BPF classifier.

This kernel has no netem and no act_gact (`tc ... action drop random` is unavailable), so loss is done with what
it has: a cls_bpf filter running a five-instruction *classic* BPF program (`ld rand`, the kernel's per-packet
random number) that puts the chosen fraction of packets into an htb class whose leaf queue holds zero packets,
so they are dropped and counted there. It needs no clang, no bpf/ object and no pinned state; ARP is exempt so
address resolution on a lossy link cannot stall for seconds. Functions here only build argv lists; running them
is the caller's job (tests check the exact commands without root).
"""

from __future__ import annotations

from sim.links import LinkShape

# Classic BPF opcodes (linux/filter.h) and ancillary offsets (SKF_AD_*).
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_SKF_AD_OFF = 0xFFFFF000  # -0x1000 as u32
_SKF_AD_PROTOCOL = 0
_SKF_AD_RANDOM = 56
_ETH_P_ARP = 0x0806
_MATCH_DEFAULT_CLASSID = 0xFFFFFFFF  # cls_bpf: -1 = use the filter's classid
_NO_MATCH = 0

ROOT_HANDLE = "1:"
PASS_CLASS = "1:1"
DROP_CLASS = "1:2"
UNLIMITED_RATE = "100gbit"
QUEUE_SECONDS = 0.1  # leaf queue of a shaped class: 100 ms of data at the link rate (no multi-second bufferbloat)
MIN_QUEUE_BYTES = 16 * 1514


def loss_threshold(loss: float) -> int:
    """u32 threshold: a packet is dropped when its random u32 is below it."""
    return min(0xFFFFFFFF, round(loss * 2**32))


def loss_bytecode(loss: float) -> str:
    """The classic BPF program in tc's `bytecode` syntax ("N,code jt jf k,...")."""
    program = [
        (_LD_H_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_PROTOCOL),  # A = ethertype (host order)
        (_JEQ_K, 3, 0, _ETH_P_ARP),  # ARP -> no match (default class)
        (_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_RANDOM),  # A = prandom_u32()
        (_JGE_K, 1, 0, loss_threshold(loss)),  # A >= threshold -> no match
        (_RET_K, 0, 0, _MATCH_DEFAULT_CLASSID),  # drop class
        (_RET_K, 0, 0, _NO_MATCH),
    ]
    return ",".join([str(len(program)), *(f"{c} {jt} {jf} {k}" for c, jt, jf, k in program)])


def _burst_bytes(rate_bps: int) -> int:
    # 2 ms of data, at least two full frames: small enough to keep the rate exact over short intervals.
    return max(2 * 1514, rate_bps // 8 // 500)


def shaping_commands(ifname: str, shape: LinkShape) -> list[list[str]]:
    """tc argv lists that install `shape` on the egress of `ifname` (empty when there is nothing to shape)."""
    if not shape.shaped:
        return []
    dev = ["dev", ifname]
    cmds = [["tc", "qdisc", "add", *dev, "root", "handle", ROOT_HANDLE, "htb", "default", "1"]]
    if shape.rate_bps is None:
        cmds.append(["tc", "class", "add", *dev, "parent", ROOT_HANDLE, "classid", PASS_CLASS,
                     "htb", "rate", UNLIMITED_RATE, "quantum", "200000"])
    else:
        rate = f"{shape.rate_bps}bit"
        quantum = str(min(200000, max(1514, shape.rate_bps // 8 // 10)))
        cmds.append(["tc", "class", "add", *dev, "parent", ROOT_HANDLE, "classid", PASS_CLASS, "htb",
                     "rate", rate, "ceil", rate, "burst", str(_burst_bytes(shape.rate_bps)), "quantum", quantum])
        limit = max(MIN_QUEUE_BYTES, int(shape.rate_bps / 8 * QUEUE_SECONDS))
        cmds.append(["tc", "qdisc", "add", *dev, "parent", PASS_CLASS, "handle", "10:", "bfifo", "limit", str(limit)])
    if shape.loss > 0:
        cmds.append(["tc", "class", "add", *dev, "parent", ROOT_HANDLE, "classid", DROP_CLASS,
                     "htb", "rate", "8kbit", "quantum", "1514"])
        cmds.append(["tc", "qdisc", "add", *dev, "parent", DROP_CLASS, "handle", "20:", "pfifo", "limit", "0"])
        cmds.append(["tc", "filter", "add", *dev, "parent", ROOT_HANDLE, "protocol", "all", "prio", "1",
                     "bpf", "bytecode", loss_bytecode(shape.loss), "classid", DROP_CLASS])
    return cmds


def clear_commands(ifname: str) -> list[list[str]]:
    """Remove the shaping root qdisc (veth falls back to noqueue)."""
    return [["tc", "qdisc", "del", "dev", ifname, "root"]]
