"""BPF_PROG_TEST_RUN for TC programs: run a program on a packet in the kernel, get the verdict and the
packet as the program left it (katran's and cilium/ebpf's ``Program.Test`` move)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from bpf import libbpf

# TC verdicts (include/uapi/linux/pkt_cls.h)
TC_ACT_UNSPEC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_STOLEN, TC_ACT_REDIRECT = -1, 0, 2, 4, 7

# The kernel needs room for what a program may add (headroom changes); 2x the input plus slack.
_OUT_SLACK = 256


def _min_len(data: bytes) -> int:
    """bpf_prog_test_run_skb pulls the Ethernet header, and the IPv4/IPv6 header when the EtherType says so
    (EINVAL otherwise); packets truncated inside those headers cannot be test-run."""
    proto = int.from_bytes(data[12:14], "big") if len(data) >= 14 else 0
    return 14 + {0x0800: 20, 0x86DD: 40}.get(proto, 0)


@dataclass(frozen=True)
class RunResult:
    retval: int  # the program's return value (a TC verdict for sched_cls)
    data: bytes  # the packet after the program ran
    duration_ns: int  # average per repetition


def test_run(prog_fd: int, data: bytes, repeat: int = 1) -> RunResult:
    """Run ``prog_fd`` once (or ``repeat`` times) on ``data`` (an Ethernet frame for TC programs)."""
    if len(data) < _min_len(data):
        raise ValueError(f"the kernel refuses a TC test run shorter than {_min_len(data)} bytes for this EtherType")
    inbuf = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = 2 * len(data) + _OUT_SLACK
    outbuf = ctypes.create_string_buffer(out_size)
    opts = libbpf.BpfTestRunOpts(
        sz=ctypes.sizeof(libbpf.BpfTestRunOpts),
        data_in=ctypes.cast(inbuf, ctypes.c_void_p),
        data_out=ctypes.cast(outbuf, ctypes.c_void_p),
        data_size_in=len(data),
        data_size_out=out_size,
        repeat=repeat,
    )
    libbpf.check(libbpf.lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "bpf_prog_test_run_opts")
    retval = ctypes.c_int32(opts.retval).value
    return RunResult(retval=retval, data=outbuf.raw[: opts.data_size_out], duration_ns=opts.duration)
