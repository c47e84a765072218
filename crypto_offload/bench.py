"""Cost of the user-space NIC crypto engine per packet, per suite and direction (it stands for hardware, so the
relay's benchmarks report it separately, DESIGN.md section 6).

    .venv/bin/python -m crypto_offload.bench [--packets N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from crypto_offload.api import CipherSuite, Direction, FlowKey, key_install_from_secret
from crypto_offload.engine import ZERO_TAG, NicCryptoEngine
from crypto_offload.frames import transform_ip

CID = bytes(range(8))


@dataclass(frozen=True)
class Result:
    suite: CipherSuite
    tx_us: float  # engine.tx per packet
    rx_us: float  # engine.rx per packet
    rx_frame_us: float  # engine.rx plus the IPv4/UDP frame wrapper and checksum


def best(a: Result, b: Result) -> Result:
    """The faster of two runs per figure: on a shared machine the minimum is the least disturbed estimate."""
    return Result(a.suite, min(a.tx_us, b.tx_us), min(a.rx_us, b.rx_us), min(a.rx_frame_us, b.rx_frame_us))


def _ipv4_udp(payload: bytes) -> bytes:
    udp = (4443).to_bytes(2, "big") * 2 + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    return (bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
            + bytes([198, 18, 0, 1, 198, 18, 0, 2]) + udp)


def measure(suite: CipherSuite, packets: int, size: int) -> Result:
    secret = bytes(suite.hash_size)
    sender, receiver = NicCryptoEngine(), NicCryptoEngine()
    sender.install(FlowKey(Direction.TX, CID), key_install_from_secret(suite, secret))
    receiver.install(FlowKey(Direction.RX, CID), key_install_from_secret(suite, secret))
    body = bytes(size - 1 - len(CID) - 2 - len(ZERO_TAG))
    plain = [bytes([0x41]) + CID + (pn & 0xFFFF).to_bytes(2, "big") + body + ZERO_TAG for pn in range(packets)]
    start = time.perf_counter()
    wire = [sender.tx(p) or b"" for p in plain]
    tx = time.perf_counter() - start
    start = time.perf_counter()
    for w in wire:
        receiver.rx(w)
    rx = time.perf_counter() - start
    again = NicCryptoEngine()
    again.install(FlowKey(Direction.RX, CID), key_install_from_secret(suite, secret))
    frames = [_ipv4_udp(w) for w in wire]
    start = time.perf_counter()
    for f in frames:
        transform_ip(f, again.rx)
    rx_frame = time.perf_counter() - start
    assert receiver.stats().port.decrypted == packets == again.stats().port.decrypted
    scale = 1e6 / packets
    return Result(suite, tx * scale, rx * scale, rx_frame * scale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--packets", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1200, help="UDP payload bytes per packet")
    parser.add_argument("--rounds", type=int, default=5, help="report the best of this many rounds")
    args = parser.parse_args(argv)
    print(f"{'suite':26} {'tx us/pkt':>10} {'rx us/pkt':>10} {'rx+frame':>10}   "
          f"(best of {args.rounds} x {args.packets} packets of {args.size} B)")
    for suite in CipherSuite:
        r = measure(suite, args.packets, args.size)
        for _ in range(args.rounds - 1):
            r = best(r, measure(suite, args.packets, args.size))
        print(f"{suite.name:26} {r.tx_us:10.2f} {r.rx_us:10.2f} {r.rx_frame_us:10.2f}")


if __name__ == "__main__":
    main()
