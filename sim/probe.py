"""Tiny network probes for simulated nodes, which may have no ping, nc or iperf: `python -m sim.probe ...`.

    ping HOST [-4|-6] [--count N]          ICMP echo (raw socket, root); exit 0 when every echo came back
    udp-echo --port P [--duration S]       answer every UDP datagram with the same bytes
    udp-send HOST --port P [--count N]     send N datagrams; with --expect-echo exit 0 only when all come back
    udp-sink --port P [--idle S]           count datagrams until S seconds pass without one; prints JSON
    tcp-sink --port P                      accept one connection, count bytes until EOF; prints JSON
    tcp-source HOST --port P --seconds S   send as fast as the path allows for S seconds; prints JSON

Output is one JSON line so tests and scripts read the numbers, not prose.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable

ICMP_ECHO_REQUEST = 8  # RFC 792
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128  # RFC 4443 section 4.1
ICMP6_ECHO_REPLY = 129


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def resolve(host: str, family: int, socktype: int = socket.SOCK_DGRAM) -> tuple[int, tuple[str, int]]:
    info = socket.getaddrinfo(host, 0, family, socktype)[0]
    return info[0], (str(info[4][0]), 0)


def ping(host: str, family: int = socket.AF_UNSPEC, count: int = 3, timeout: float = 1.0) -> int:
    """Echo requests, one at a time; returns how many replies came back."""
    fam, (addr, _) = resolve(host, family)
    v6 = fam == socket.AF_INET6
    sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    replies = 0
    with sock:
        for seq in range(count):
            body = struct.pack("!d", time.monotonic())
            header = struct.pack("!BBHHH", ICMP6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST, 0, 0, ident, seq)
            # The kernel fills the ICMPv6 checksum (it covers the pseudo-header); ICMPv4's is ours.
            csum = 0 if v6 else _checksum(header + body)
            sock.sendto(struct.pack("!BBHHH", header[0], 0, csum, ident, seq) + body, (addr, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                if not v6:
                    data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets include the IP header
                if len(data) < 8:
                    continue
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if kind == (ICMP6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY) and rid == ident and rseq == seq:
                    replies += 1
                    print(f"reply from {addr} seq={seq} time={(time.monotonic() - struct.unpack('!d', data[8:16])[0]) * 1000:.2f} ms")
                    break
    return replies


def _bind_any(family: int, kind: int, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    else:
        sock.bind(("0.0.0.0", port))
    return sock


def _say_ready() -> None:
    print("ready", flush=True)  # the line callers wait for before they send


def udp_echo(port: int, duration: float, ready: Callable[[], None] = _say_ready) -> int:
    """Echo datagrams back (dual-stack) until `duration` passes; returns how many were echoed."""
    echoed = 0
    with _bind_any(socket.AF_INET6, socket.SOCK_DGRAM, port) as sock:
        ready()
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                break
            sock.sendto(data, peer)
            echoed += 1
    return echoed


def udp_send(host: str, port: int, count: int, size: int, family: int, expect_echo: bool, timeout: float) -> int:
    """Send `count` numbered datagrams; returns how many echoes came back (or `count` when not waiting)."""
    fam, (addr, _) = resolve(host, family)
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        sock.connect((addr, port))
        for seq in range(count):
            sock.send(struct.pack("!I", seq).ljust(size, b"\0"))
        if not expect_echo:
            return count
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < count and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                seen.add(struct.unpack("!I", sock.recv(65535)[:4])[0])
            except (TimeoutError, ConnectionRefusedError):
                break
        return len(seen)


def udp_sink(port: int, idle: float, first_timeout: float,
             ready: Callable[[], None] = _say_ready) -> dict[str, float]:
    """Count datagrams until `idle` seconds pass without one (the first may take `first_timeout`)."""
    count = 0
    nbytes = 0
    with _bind_any(socket.AF_INET6, socket.SOCK_DGRAM, port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        ready()
        sock.settimeout(first_timeout)
        try:
            while True:
                nbytes += len(sock.recv(65535))
                count += 1
                sock.settimeout(idle)
        except TimeoutError:
            pass
    return {"packets": count, "bytes": nbytes}


def tcp_sink(port: int, timeout: float) -> dict[str, float]:
    with _bind_any(socket.AF_INET6, socket.SOCK_STREAM, port) as srv:
        srv.listen(1)
        _say_ready()
        srv.settimeout(timeout)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(timeout)
            total = 0
            start = time.monotonic()
            while data := conn.recv(1 << 20):
                total += len(data)
            elapsed = time.monotonic() - start
    return {"bytes": total, "seconds": elapsed, "bps": total * 8 / elapsed if elapsed > 0 else 0.0}


def tcp_source(host: str, port: int, seconds: float, family: int) -> dict[str, float]:
    fam, (addr, _) = resolve(host, family, socket.SOCK_STREAM)
    chunk = b"\0" * (256 << 10)
    sent = 0
    with socket.socket(fam, socket.SOCK_STREAM) as sock:
        # A small send buffer: on a slow link the sink's count then ends soon after `seconds`, not buffers later.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 << 10)
        sock.settimeout(10)
        sock.connect((addr, port))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sent += sock.send(chunk)
    return {"bytes": sent, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    fam = argparse.ArgumentParser(add_help=False)
    fam.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET, default=socket.AF_UNSPEC)
    fam.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6)
    p = sub.add_parser("ping", parents=[fam])
    p.add_argument("host")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1.0)
    p = sub.add_parser("udp-echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p = sub.add_parser("udp-send", parents=[fam])
    p.add_argument("host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--expect-echo", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("udp-sink")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--idle", type=float, default=0.5)
    p.add_argument("--first-timeout", type=float, default=5.0)
    p = sub.add_parser("tcp-sink")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("tcp-source", parents=[fam])
    p.add_argument("host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.cmd == "ping":
        got = ping(args.host, args.family, args.count, args.timeout)
        print(json.dumps({"sent": args.count, "received": got}))
        return 0 if got == args.count else 1
    if args.cmd == "udp-echo":
        print(json.dumps({"echoed": udp_echo(args.port, args.duration)}))
        return 0
    if args.cmd == "udp-send":
        got = udp_send(args.host, args.port, args.count, args.size, args.family, args.expect_echo, args.timeout)
        print(json.dumps({"sent": args.count, "echoed" if args.expect_echo else "queued": got}))
        return 0 if got == args.count else 1
    if args.cmd == "udp-sink":
        print(json.dumps(udp_sink(args.port, args.idle, args.first_timeout)))
        return 0
    if args.cmd == "tcp-sink":
        print(json.dumps(tcp_sink(args.port, args.timeout)))
        return 0
    print(json.dumps(tcp_source(args.host, args.port, args.seconds, args.family)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
