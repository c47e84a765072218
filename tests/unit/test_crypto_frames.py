"""Frame wrapper of the NIC engine: UDP payload rewrite in IPv4/IPv6(+Ethernet) frames with a correct checksum."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crypto_offload.frames import locate_udp, transform_ethernet, transform_ip, udp_checksum

SRC4, DST4 = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")


def naive_sum(data: bytes) -> int:
    """A word-by-word RFC 1071 sum (reference, independent of the array-based one)."""
    data = data + b"\0" * (len(data) % 2)
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp(payload: bytes, checksum: int = 0) -> bytes:
    return (4433).to_bytes(2, "big") + (5000).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + \
        checksum.to_bytes(2, "big") + payload


def ipv4(payload: bytes, *, options: bytes = b"", frag: int = 0, proto: int = 17) -> bytes:
    ihl = (20 + len(options)) // 4
    datagram = udp(payload)
    header = bytes([0x40 | ihl, 0]) + (20 + len(options) + len(datagram)).to_bytes(2, "big") + b"\0\1" + \
        frag.to_bytes(2, "big") + bytes([64, proto]) + b"\0\0" + SRC4 + DST4 + options
    return header + datagram


def ipv6(payload: bytes) -> bytes:
    datagram = udp(payload)
    return b"\x60\0\0\0" + len(datagram).to_bytes(2, "big") + bytes([17, 64]) + SRC6 + DST6 + datagram


def checksum_ok(frame: bytes, l3: int = 0) -> bool:
    loc = locate_udp(frame, l3)
    assert loc is not None
    datagram = frame[loc.udp_offset: loc.end]
    if len(loc.src) == 4:
        pseudo = loc.src + loc.dst + bytes([0, 17]) + len(datagram).to_bytes(2, "big")
    else:
        pseudo = loc.src + loc.dst + len(datagram).to_bytes(4, "big") + bytes([0, 0, 0, 17])
    return naive_sum(pseudo + datagram) == 0xFFFF


@given(st.binary(min_size=0, max_size=1500), st.booleans())
def test_rewrite_leaves_valid_checksum(payload: bytes, v6: bool) -> None:
    frame = ipv6(payload) if v6 else ipv4(payload)
    out = transform_ip(frame, lambda p: bytes(b ^ 0x5A for b in p), fix_checksum=True)
    assert out is not None
    loc = locate_udp(out)
    assert loc is not None and out[loc.payload_offset: loc.end] == bytes(b ^ 0x5A for b in payload)
    assert out[: loc.udp_offset + 6] == frame[: loc.udp_offset + 6]
    assert checksum_ok(out)


def test_known_checksum_value() -> None:
    # computed independently by the word-by-word sum: 0xFFFF minus the folded sum of pseudo-header and datagram
    datagram = udp(b"abc")
    pseudo = SRC4 + DST4 + bytes([0, 17]) + len(datagram).to_bytes(2, "big")
    assert udp_checksum(SRC4, DST4, datagram) == 0xFFFF ^ naive_sum(pseudo + datagram)


def test_partial_checksum_fixed_on_request_only() -> None:
    frame = ipv4(b"hello")  # checksum field 0, as if CHECKSUM_PARTIAL left only part of it
    assert transform_ip(frame, lambda p: p) is frame
    fixed = transform_ip(frame, lambda p: p, fix_checksum=True)
    assert fixed is not None and checksum_ok(fixed) and fixed[28:] == b"hello"


def test_drop_and_passthrough_cases() -> None:
    assert transform_ip(ipv4(b"x" * 30), lambda p: None) is None
    for other in (ipv4(b"x" * 30, proto=6), ipv4(b"x" * 30, frag=0x2000), b"\x45garbage", b""):
        assert transform_ip(other, lambda p: None) is other  # not UDP / fragment / malformed: untouched
    with_options = ipv4(b"quic", options=b"\x01\x01\x01\x00")
    out = transform_ip(with_options, lambda p: b"QUIC")
    assert out is not None and out.endswith(b"QUIC") and checksum_ok(out)


def test_ethernet_wrapper() -> None:
    eth = bytes(6) + bytes(6) + b"\x86\xdd"
    out = transform_ethernet(eth + ipv6(b"payload!"), lambda p: p.upper())
    assert out is not None and out.endswith(b"PAYLOAD!") and checksum_ok(out, 14)
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert transform_ethernet(arp, lambda p: None) is arp


@given(st.binary(max_size=300))
def test_fast_sum_matches_word_by_word(data: bytes) -> None:
    from crypto_offload.frames import ones_complement_sum

    expected = naive_sum(data)
    assert ones_complement_sum(data) == expected or (expected == 0xFFFF and not any(data))
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF and ones_complement_sum(b"\0\0") == 0


@given(st.binary(max_size=200))
def test_garbage_frames_never_raise(data: bytes) -> None:
    for frame in (data, b"\x45" + data, b"\x60" + data, bytes(12) + b"\x08\x00" + data):
        out = transform_ethernet(frame, lambda p: p[::-1], fix_checksum=True)
        assert out is not None and len(out) == len(frame)
        out = transform_ip(frame, lambda p: None)
        assert out is None or out is frame
