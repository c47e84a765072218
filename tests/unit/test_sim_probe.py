"""The probes the simulated nodes use instead of ping/nc, checked on loopback without root."""

from __future__ import annotations

import socket
import threading

from sim import probe


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_internet_checksum_matches_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement 220d).
    assert probe._checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # A buffer carrying its own checksum sums to zero; odd lengths are padded with a zero byte.
    header = bytes.fromhex("0800") + (0).to_bytes(2, "big") + bytes.fromhex("1234000161")
    csum = probe._checksum(header)
    assert probe._checksum(header[:2] + csum.to_bytes(2, "big") + header[4:]) == 0


def test_udp_echo_answers_every_datagram_over_ipv4_and_ipv6() -> None:
    port = free_udp_port()
    echoed: list[int] = []
    bound = threading.Event()
    server = threading.Thread(target=lambda: echoed.append(probe.udp_echo(port, duration=0.8, ready=bound.set)))
    server.start()
    try:
        assert bound.wait(5)
        got4 = probe.udp_send("127.0.0.1", port, 5, 64, socket.AF_INET, expect_echo=True, timeout=1.0)
        got6 = probe.udp_send("::1", port, 3, 64, socket.AF_INET6, expect_echo=True, timeout=1.0)
    finally:
        server.join()
    assert (got4, got6, echoed) == (5, 3, [8])


def test_udp_sink_counts_packets_and_bytes() -> None:
    port = free_udp_port()
    result: list[dict[str, float]] = []
    bound = threading.Event()
    sink = threading.Thread(
        target=lambda: result.append(probe.udp_sink(port, idle=0.3, first_timeout=2.0, ready=bound.set)))
    sink.start()
    try:
        assert bound.wait(5)
        assert probe.udp_send("127.0.0.1", port, 40, 100, socket.AF_INET, expect_echo=False, timeout=0) == 40
    finally:
        sink.join()
    assert result == [{"packets": 40, "bytes": 4000}]
