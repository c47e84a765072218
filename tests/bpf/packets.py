"""A small, readable packet builder for the BPF tests: Ethernet / IPv4 / IPv6 / UDP / QUIC short header /
QUIC frames / MoQT OBJECT_DATAGRAM. Plain struct packing; every function cites the field layout it builds."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TAG_LEN = 16  # RFC 9001 section 5.3: AEAD tag room


def varint(v: int, length: int | None = None) -> bytes:
    """RFC 9000 section 16: 2-bit length prefix; the shortest form unless ``length`` forces one."""
    if length is None:
        length = 1 if v < 0x40 else 2 if v < 0x4000 else 4 if v < 0x4000_0000 else 8
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[length]
    if v >= 1 << (8 * length - 2):
        raise ValueError(f"{v} does not fit a {length}-byte varint")
    return (v | (prefix << (8 * length - 2))).to_bytes(length, "big")


def moq_object_datagram(
    alias: int, group: int, obj: int = 0, priority: int = 0x80, payload: bytes = b"media",
    dtype: int = 0x00, alias_len: int | None = None,
) -> bytes:
    """MoQT draft-14 OBJECT_DATAGRAM: Type | Track Alias | Group ID | [Object ID unless type & 0x04] |
    Publisher Priority (8) | payload (extensions when type & 0x01 are the caller's business)."""
    out = varint(dtype) + varint(alias, alias_len) + varint(group)
    if not dtype & 0x04:
        out += varint(obj)
    return out + bytes([priority]) + payload


def datagram_frame(data: bytes, with_length: bool = True) -> bytes:
    """RFC 9221 section 4: 0x31 Length Data, or 0x30 Data to the end of the packet."""
    return (b"\x31" + varint(len(data)) if with_length else b"\x30") + data


def ack_frame(largest: int, delay: int = 0, first: int = 0, ranges: tuple[tuple[int, int], ...] = (),
              ecn: tuple[int, int, int] | None = None) -> bytes:
    """RFC 9000 section 19.3: type, Largest Acknowledged, ACK Delay, Range Count, First Range, ranges, [ECN]."""
    out = bytes([0x03 if ecn else 0x02]) + varint(largest) + varint(delay) + varint(len(ranges)) + varint(first)
    for gap, length in ranges:
        out += varint(gap) + varint(length)
    if ecn:
        out += b"".join(varint(c) for c in ecn)
    return out


def stream_frame(stream_id: int, data: bytes) -> bytes:
    """RFC 9000 section 19.8: 0x0a = STREAM with LEN, offset 0."""
    return b"\x0a" + varint(stream_id) + varint(len(data)) + data


def crypto_frame(data: bytes) -> bytes:
    """RFC 9000 section 19.6: 0x06 Offset Length Data."""
    return b"\x06" + varint(0) + varint(len(data)) + data


def short_header_packet(dcid: bytes, pn: int, frames: bytes, pn_len: int = 2, tag: bytes = bytes(TAG_LEN),
                        fixed_bit: bool = True) -> bytes:
    """RFC 9000 section 17.3.1: 0b0 1 S RR K PP | DCID | Packet Number | payload; then the tag room."""
    first = (0x40 if fixed_bit else 0) | (pn_len - 1)
    return bytes([first]) + dcid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big") + frames + tag


def long_header_packet(dcid: bytes, scid: bytes, payload: bytes) -> bytes:
    """RFC 9000 section 17.2: 1 1 TT ... | Version | DCID len | DCID | SCID len | SCID | ... (Handshake)."""
    return b"\xe1" + struct.pack("!I", 1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """RFC 768: ports, length, checksum (0 = none for IPv4; the programs do not check it)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(payload: bytes, proto: int = IPPROTO_UDP, src: str = "198.18.0.1", dst: str = "198.18.0.2",
         options: bytes = b"", frag_off: int = 0, total_len: int | None = None) -> bytes:
    """RFC 791 section 3.1 with options (IHL > 5 when given; padded to 4 bytes)."""
    options += bytes(-len(options) % 4)
    ihl = 5 + len(options) // 4
    tot = total_len if total_len is not None else 4 * ihl + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 0x1234, frag_off, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + options
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(payload: bytes, nexthdr: int = IPPROTO_UDP) -> bytes:
    """RFC 8200 section 3: version/class/flow, payload length, next header, hop limit, fd00:: addresses."""
    src = bytes.fromhex("fd00" + "00" * 13 + "01")
    dst = bytes.fromhex("fd00" + "00" * 13 + "02")
    return struct.pack("!IHBB", 6 << 28, len(payload), nexthdr, 64) + src + dst + payload


def eth(payload: bytes, ethertype: int = ETH_P_IP) -> bytes:
    """IEEE 802.3: dst MAC, src MAC, EtherType."""
    return bytes.fromhex("020000000002") + bytes.fromhex("020000000001") + struct.pack("!H", ethertype) + payload


@dataclass
class Moq:
    """One MoQT-over-QUIC packet with readable defaults; ``build()`` gives the Ethernet frame."""

    dcid: bytes = bytes(range(1, 9))
    alias: int = 5
    group: int = 10
    obj: int = 3
    priority: int = 0x80
    dtype: int = 0x00
    payload: bytes = b"frame-bytes"
    pn: int = 0x1234
    pn_len: int = 2
    before: bytes = b""  # frames before the DATAGRAM frame
    after: bytes = b""  # bytes after it
    with_length: bool = True
    tag: bytes = bytes(TAG_LEN)
    ip: int = 4
    ip_options: bytes = b""
    dport: int = 4433
    alias_len: int | None = None

    def object_datagram(self) -> bytes:
        return moq_object_datagram(self.alias, self.group, self.obj, self.priority, self.payload, self.dtype,
                                   self.alias_len)

    def quic(self) -> bytes:
        frames = self.before + datagram_frame(self.object_datagram(), self.with_length) + self.after
        return short_header_packet(self.dcid, self.pn, frames, self.pn_len, self.tag)

    def build(self) -> bytes:
        seg = udp(50000, self.dport, self.quic())
        if self.ip == 4:
            return eth(ipv4(seg, options=self.ip_options))
        return eth(ipv6(seg), ETH_P_IPV6)
