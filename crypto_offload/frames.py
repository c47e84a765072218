"""Apply a UDP-payload transform to whole IPv4/IPv6 (optionally Ethernet) frames and leave a correct checksum.

The engine works on UDP payloads; the NIC's I/O sees frames. A rewritten payload needs a new UDP checksum, and on
veth a locally generated packet may carry only the pseudo-header sum (CHECKSUM_PARTIAL, DESIGN.md section 7), so
the caller can also ask for a full checksum on frames the engine passed unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ETH_HLEN = 14  # IEEE 802.3: destination, source, EtherType
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_UDP = 17
UDP_HLEN = 8  # RFC 768

Transform = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class UdpLocation:
    """Where the UDP header and payload sit in a frame, and the pseudo-header inputs (RFC 768, RFC 8200 8.1)."""

    udp_offset: int
    end: int  # end of the UDP datagram (frames may carry link-layer padding after it)
    src: bytes
    dst: bytes

    @property
    def payload_offset(self) -> int:
        return self.udp_offset + UDP_HLEN


def locate_udp(frame: bytes, l3_offset: int = 0) -> UdpLocation | None:
    """The UDP datagram in an IPv4 or IPv6 packet at `l3_offset`, or None (not UDP, fragment, malformed)."""
    if len(frame) < l3_offset + 1:
        return None
    version = frame[l3_offset] >> 4
    if version == 4:  # RFC 791 section 3.1
        ihl = (frame[l3_offset] & 0x0F) * 4
        if ihl < 20 or len(frame) < l3_offset + ihl + UDP_HLEN or frame[l3_offset + 9] != IPPROTO_UDP:
            return None
        if int.from_bytes(frame[l3_offset + 6: l3_offset + 8], "big") & 0x3FFF:  # MF flag or fragment offset
            return None
        total = int.from_bytes(frame[l3_offset + 2: l3_offset + 4], "big")
        src, dst = frame[l3_offset + 12: l3_offset + 16], frame[l3_offset + 16: l3_offset + 20]
        udp_offset, ip_end = l3_offset + ihl, l3_offset + total
    elif version == 6:  # RFC 8200 section 3; extension headers are not walked (not UDP for us)
        if len(frame) < l3_offset + 40 + UDP_HLEN or frame[l3_offset + 6] != IPPROTO_UDP:
            return None
        src, dst = frame[l3_offset + 8: l3_offset + 24], frame[l3_offset + 24: l3_offset + 40]
        udp_offset = l3_offset + 40
        ip_end = udp_offset + int.from_bytes(frame[l3_offset + 4: l3_offset + 6], "big")
    else:
        return None
    udp_length = int.from_bytes(frame[udp_offset + 4: udp_offset + 6], "big")
    end = udp_offset + udp_length
    if udp_length < UDP_HLEN or end > ip_end or ip_end > len(frame):
        return None
    return UdpLocation(udp_offset, end, bytes(src), bytes(dst))


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 sum of big-endian 16-bit words, folded to 16 bits.

    2^16 = 1 (mod 0xFFFF), so the end-around-carry sum of the words is the whole buffer read as one big-endian
    integer modulo 0xFFFF (one C-speed operation), except that a non-zero multiple of 0xFFFF sums to 0xFFFF.
    """
    if len(data) % 2:
        data += b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    return 0xFFFF if total == 0 and value else total


def udp_checksum(src: bytes, dst: bytes, udp_datagram: bytes) -> int:
    """Full UDP checksum over the pseudo-header and the datagram, whose checksum field must be zero.

    IPv4 pseudo-header: RFC 768; IPv6: RFC 8200 section 8.1. A result of 0 is sent as 0xFFFF.
    """
    length = len(udp_datagram)
    if len(src) == 4:
        pseudo = src + dst + bytes([0, IPPROTO_UDP]) + length.to_bytes(2, "big")
    else:
        pseudo = src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, IPPROTO_UDP])
    checksum = 0xFFFF ^ ones_complement_sum(pseudo + udp_datagram)
    return checksum or 0xFFFF


def with_udp_checksum(frame: bytes, loc: UdpLocation) -> bytes:
    datagram = frame[loc.udp_offset: loc.udp_offset + 6] + b"\0\0" + frame[loc.payload_offset: loc.end]
    checksum = udp_checksum(loc.src, loc.dst, datagram)
    return frame[: loc.udp_offset + 6] + checksum.to_bytes(2, "big") + frame[loc.udp_offset + 8:]


def transform_ip(frame: bytes, fn: Transform, *, l3_offset: int = 0, fix_checksum: bool = False) -> bytes | None:
    """Run `fn` on the UDP payload: None drops the frame; a same-length result is written back with a new checksum.

    Frames that are not UDP go back unchanged (the same object). `fix_checksum` recomputes the checksum also when
    `fn` returned its input unchanged (needed for CHECKSUM_PARTIAL frames that leave through a raw socket).
    """
    loc = locate_udp(frame, l3_offset)
    if loc is None:
        return frame
    payload = frame[loc.payload_offset: loc.end]
    out = fn(payload)
    if out is None:
        return None
    if out is payload or out == payload:
        return with_udp_checksum(frame, loc) if fix_checksum else frame
    if len(out) != len(payload):
        raise ValueError("a payload transform must keep the UDP payload length")
    return with_udp_checksum(frame[: loc.payload_offset] + out + frame[loc.end:], loc)


def transform_ethernet(frame: bytes, fn: Transform, *, fix_checksum: bool = False) -> bytes | None:
    """`transform_ip` for an Ethernet II frame (IPv4 or IPv6 EtherType; anything else goes back unchanged)."""
    if len(frame) < ETH_HLEN or int.from_bytes(frame[12:14], "big") not in (ETH_P_IP, ETH_P_IPV6):
        return frame
    return transform_ip(frame, fn, l3_offset=ETH_HLEN, fix_checksum=fix_checksum)
