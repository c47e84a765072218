"""`python -m crypto_offload.tc_bench`: engine cost per packet, TC engine (bpf_stats) vs the user-space engine.

For each UDP payload size the TC programs (bpf/src/nic_crypto.bpf.c) run on freshly built frames through
BPF_PROG_TEST_RUN with `kernel.bpf_stats_enabled=1`; the figure is the kernel's own run_time_ns / run_cnt of each
program (the syscall and copying are not in it). The user-space figure is `crypto_offload.bench.measure`
(NicCryptoEngine.tx / .rx, same sizes, same run). Root; the sysctl is put back as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from bpf.loader import PinDir
from crypto_offload.api import Direction, FlowKey, key_install_from_secret
from crypto_offload.bench import _ipv4_udp, best, measure
from crypto_offload.keys import CipherSuite
from crypto_offload.protection import HeaderProtection, PayloadProtection, protect
from crypto_offload.tc_engine import TcCryptoEngine

SUITE = CipherSuite.CHACHA20_POLY1305_SHA256
CID = bytes(range(1, 9))
TAG = 16
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def _eth(ip: bytes) -> bytes:
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip


def _prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind `fd`, as bpf_stats counts them."""
    prog_id = next(int(line.split()[1]) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                   if line.startswith("prog_id:"))
    info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], check=True,
                                     capture_output=True, text=True).stdout)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def tc_cost(engine: TcCryptoEngine, prog: str, frames: list[bytes]) -> float:
    """Mean ns per run of `prog` over `frames` (each run on its own fresh copy)."""
    p = engine.obj.programs[prog]
    t0, n0 = _prog_stats(p.fd)
    for f in frames:
        r = p.test_run(f)
        assert r.retval == 0, f"{prog} refused a frame ({r.retval})"
    t1, n1 = _prog_stats(p.fd)
    return (t1 - t0) / max(1, n1 - n0)


def run(sizes: list[int], packets: int, rounds: int) -> list[dict[str, float]]:
    keys = key_install_from_secret(SUITE, bytes(SUITE.hash_size))
    aead, hp = PayloadProtection(SUITE, keys.payload_key, keys.iv), HeaderProtection(SUITE, keys.hp_key)
    pins = PinDir(f"tcbench{os.getpid()}")
    engine = TcCryptoEngine.load(pins)
    old = STATS.read_text().strip()
    STATS.write_text("1")
    rows = []
    try:
        engine.install(FlowKey(Direction.TX, CID), keys)
        engine.install(FlowKey(Direction.RX, CID), keys)
        for size in sizes:
            body = b"\x01" + bytes(size - 1 - len(CID) - 2 - TAG - 1)
            plain = [bytes([0x41]) + CID + (pn & 0xFFFF).to_bytes(2, "big") + body + bytes(TAG)
                     for pn in range(packets)]
            wire = [protect(p[:11], p[11:-TAG], pn, aead, hp) for pn, p in enumerate(plain)]
            tx = min(tc_cost(engine, "ncr_host_tx", [_eth(_ipv4_udp(p)) for p in plain]) for _ in range(rounds))
            rx = min(tc_cost(engine, "ncr_wire_rx", [_eth(_ipv4_udp(w)) for w in wire]) for _ in range(rounds))
            user = measure(SUITE, packets, size)
            for _ in range(rounds - 1):
                user = best(user, measure(SUITE, packets, size))
            rows.append({"size": size, "tc_tx_us": tx / 1000, "tc_rx_us": rx / 1000, "user_tx_us": user.tx_us,
                         "user_rx_us": user.rx_us})
    finally:
        STATS.write_text(old)
        engine.close()
        pins.remove()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TC crypto engine (bpf_stats) vs user-space engine, per packet")
    parser.add_argument("--sizes", default="100,500,1200", help="UDP payload bytes, comma separated")
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="report the best of this many rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run([int(s) for s in args.sizes.split(",")], args.packets, args.rounds)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'UDP payload':>11} {'tc tx us':>9} {'tc rx us':>9} {'user tx us':>11} {'user rx us':>11} "
          f"{'tx user/tc':>10} {'rx user/tc':>10}")
    for r in rows:
        print(f"{r['size']:>9} B {r['tc_tx_us']:9.2f} {r['tc_rx_us']:9.2f} {r['user_tx_us']:11.2f} "
              f"{r['user_rx_us']:11.2f} {r['user_tx_us'] / r['tc_tx_us']:9.1f}x {r['user_rx_us'] / r['tc_rx_us']:9.1f}x")


if __name__ == "__main__":
    main()
