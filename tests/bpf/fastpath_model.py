"""An independent model of the client-side egress rewrite, written from the RFCs (not from the C): given an
upstream packet (or a user-space packet) and a subscriber's state, the exact bytes that must leave, or the reason
the copy must not. Tests compare BPF_PROG_TEST_RUN output with it byte for byte.

References: RFC 768 (UDP + checksum), RFC 791 3.1 (IPv4 header checksum), RFC 8200 3 / 8.1 (IPv6, UDP checksum
mandatory), RFC 9000 16 (varints), 17.3.1 (short header), 19.1 (PADDING), 19.3 (ACK), appendix A.2 (PN encoding),
RFC 9221 4 (DATAGRAM), MoQT draft-14 10.3.1 (OBJECT_DATAGRAM).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TAG_LEN = 16


class Drop(Exception):
    """The copy must not be sent; ``reason`` names the egress_stat counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Subscriber:
    """The downstream connection state a copy is written for."""

    eth_dst: bytes
    eth_src: bytes
    src_ip: bytes  # 4 or 16 bytes
    dst_ip: bytes
    sport: int
    dport: int
    dcid: bytes
    alias: int
    alias_len: int
    next_pn: int
    largest_acked: int | None = None
    key_phase: int = 0
    priority_threshold: int | None = None
    enabled: bool = True


def ones_sum(data: bytes) -> int:
    """RFC 1071: 16-bit one's complement sum (odd length padded with a zero byte)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_header_checksum(hdr: bytes) -> int:
    """RFC 791 3.1: complement of the sum of the header with the checksum field as zero."""
    return ~ones_sum(hdr[:10] + b"\0\0" + hdr[12:]) & 0xFFFF


def udp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """RFC 768 (IPv4 pseudo-header) / RFC 8200 8.1 (IPv6): checksum of ``segment`` with its field zeroed;
    a computed zero is sent as 0xFFFF."""
    seg = segment[:6] + b"\0\0" + segment[8:]
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 17, len(seg))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(seg), 17)
    c = ~ones_sum(pseudo + seg) & 0xFFFF
    return c or 0xFFFF


def varint_decode(buf: bytes, off: int) -> tuple[int, int]:
    """RFC 9000 16: (value, encoded length)."""
    n = 1 << (buf[off] >> 6)
    if off + n > len(buf):
        raise ValueError("truncated varint")
    return int.from_bytes(buf[off : off + n], "big") & ((1 << (8 * n - 2)) - 1), n


def varint_encode(v: int, n: int) -> bytes:
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[n]
    if v >= 1 << (8 * n - 2):
        raise ValueError("does not fit")
    return (v | prefix << (8 * n - 2)).to_bytes(n, "big")


def pn_length(full_pn: int, largest_acked: int | None, current_len: int) -> int | None:
    """RFC 9000 A.2: enough bits for twice the unacknowledged range; never shorter than ``current_len``.
    None when 4 bytes are not enough."""
    unacked = full_pn + 1 if largest_acked is None else full_pn - largest_acked
    if unacked <= 0:
        return None
    # min_bits = log2(unacked) + 1 and ceil(min_bits / 8) bytes  <=>  unacked <= 2^(8 * bytes - 1)
    need = next((n for n in (1, 2, 3, 4) if unacked <= 1 << (8 * n - 1)), None)
    return None if need is None else max(need, current_len)


@dataclass
class Layout:
    """Where things are in an Ethernet frame carrying a QUIC short-header packet."""

    l3: int
    l4: int
    ip_version: int
    udp_end: int
    quic: int
    dcid_len: int
    pn_len: int
    pn: int
    payload: int  # first frame
    datagram: int = 0  # the DATAGRAM frame's type byte
    alias_off: int = 0
    alias_len: int = 0
    priority: int = 0


def parse(frame: bytes, dcid_len: int, moqt: bool = True) -> Layout:
    """Ethernet / IPv4 (with options) or IPv6 / UDP / short header; with ``moqt``, the frames up to the
    DATAGRAM frame (PADDING, PING, ACK only) and the OBJECT_DATAGRAM header. ValueError when not that."""
    etype = int.from_bytes(frame[12:14], "big")
    l3 = 14
    if etype == 0x0800:
        ihl = (frame[l3] & 0x0F) * 4
        total = int.from_bytes(frame[l3 + 2 : l3 + 4], "big")
        l4, ip_end, v = l3 + ihl, l3 + total, 4
    elif etype == 0x86DD:
        l4, v = l3 + 40, 6
        ip_end = l4 + int.from_bytes(frame[l3 + 4 : l3 + 6], "big")
    else:
        raise ValueError("not IP")
    udp_end = l4 + int.from_bytes(frame[l4 + 4 : l4 + 6], "big")
    if udp_end > ip_end or ip_end > len(frame):
        raise ValueError("lengths")
    q = l4 + 8
    first = frame[q]
    pn_len = (first & 3) + 1
    pn_off = q + 1 + dcid_len
    lay = Layout(l3, l4, v, udp_end, q, dcid_len, pn_len, int.from_bytes(frame[pn_off : pn_off + pn_len], "big"),
                 pn_off + pn_len)
    if not moqt:
        return lay
    end = udp_end - TAG_LEN
    off = lay.payload
    while True:
        if off >= end:
            raise ValueError("no DATAGRAM frame")
        t = frame[off]
        if t in (0x00, 0x01):  # RFC 9000 19.1 PADDING, 19.2 PING
            off += 1
        elif t in (0x02, 0x03):  # 19.3 ACK: Largest, Delay, Range Count, First Range, ranges, [ECN]
            p = off + 1
            vals = []
            for _ in range(4):
                val, n = varint_decode(frame, p)
                vals.append(val)
                p += n
            for _ in range(2 * vals[2] + (3 if t == 0x03 else 0)):
                p += varint_decode(frame, p)[1]
            off = p
        elif t in (0x30, 0x31):  # RFC 9221 4
            lay.datagram = off
            p = off + 1
            if t == 0x31:
                p += varint_decode(frame, p)[1]
            p += varint_decode(frame, p)[1]  # OBJECT_DATAGRAM type (draft-14 10.3.1)
            dtype = frame[p - 1] & 0x3F
            lay.alias_off = p
            lay.alias_len = varint_decode(frame, p)[1]
            p += lay.alias_len
            p += varint_decode(frame, p)[1]  # group
            if not dtype & 0x04:
                p += varint_decode(frame, p)[1]  # object id
            lay.priority = frame[p]
            return lay
        else:
            raise ValueError("unexpected frame")


def _finish(out: bytearray, lay: Layout, delta: int, rewrite_l3: bool, sub: Subscriber) -> None:
    """Lengths, addresses and checksums of the rewritten frame ``out``."""
    l3, l4 = lay.l3, lay.l4
    udp_len = lay.udp_end - l4 + delta
    if lay.ip_version == 4:
        struct.pack_into("!H", out, l3 + 2, int.from_bytes(out[l3 + 2 : l3 + 4], "big") + delta)
        if rewrite_l3:
            out[l3 + 12 : l3 + 16], out[l3 + 16 : l3 + 20] = sub.src_ip, sub.dst_ip
        struct.pack_into("!H", out, l3 + 10, ipv4_header_checksum(bytes(out[l3:l4])))
        src, dst = bytes(out[l3 + 12 : l3 + 16]), bytes(out[l3 + 16 : l3 + 20])
    else:
        struct.pack_into("!H", out, l3 + 4, int.from_bytes(out[l3 + 4 : l3 + 6], "big") + delta)
        if rewrite_l3:
            out[l3 + 8 : l3 + 24], out[l3 + 24 : l3 + 40] = sub.src_ip, sub.dst_ip
        src, dst = bytes(out[l3 + 8 : l3 + 24]), bytes(out[l3 + 24 : l3 + 40])
    struct.pack_into("!H", out, l4 + 4, udp_len)
    struct.pack_into("!H", out, l4 + 6, udp_checksum(src, dst, bytes(out[l4 : l4 + udp_len])))


def expected_copy(frame: bytes, upstream_dcid_len: int, sub: Subscriber) -> tuple[bytes, int]:
    """The copy of ``frame`` for ``sub`` and the PN it gets; Drop when it must not be sent."""
    try:
        lay = parse(frame, upstream_dcid_len)
    except (ValueError, IndexError):
        raise Drop("EG_MALFORMED") from None
    if not sub.enabled:
        raise Drop("EG_DISABLED")
    if sub.priority_threshold is not None and lay.priority > sub.priority_threshold:
        raise Drop("EG_PRIORITY_DROP")  # draft-14: a greater Publisher Priority is less important
    if lay.alias_len != sub.alias_len:
        raise Drop("EG_ALIAS_LEN")
    if (lay.ip_version == 4) != (len(sub.src_ip) == 4):
        raise Drop("EG_UNSUPPORTED")
    pn = sub.next_pn
    pn_len = pn_length(pn, sub.largest_acked, lay.pn_len)
    if pn_len is None:
        raise Drop("EG_PN_UNENCODABLE")
    delta = len(sub.dcid) + pn_len - lay.dcid_len - lay.pn_len
    if delta and lay.ip_version == 4 and lay.l4 - lay.l3 != 20:
        raise Drop("EG_UNSUPPORTED")
    first = 0x40 | (sub.key_phase << 2) | (pn_len - 1)  # 17.3.1; spin bit belongs to the upstream
    header = bytes([first]) + sub.dcid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
    body = bytearray(frame[lay.payload :])
    rel = lambda off: off - lay.payload  # noqa: E731 - offsets into body
    body[: rel(lay.datagram)] = bytes(rel(lay.datagram))  # PADDING instead of PING/ACK (19.1)
    body[rel(lay.alias_off) : rel(lay.alias_off) + lay.alias_len] = varint_encode(sub.alias, lay.alias_len)
    out = bytearray(sub.eth_dst + sub.eth_src + frame[12 : lay.l4])
    out += struct.pack("!HHHH", sub.sport, sub.dport, 0, 0) + header + body
    _finish(out, lay, delta, True, sub)
    return bytes(out), pn


def expected_user(frame: bytes, sub: Subscriber) -> tuple[bytes, int]:
    """A user-space packet on an enabled connection: same packet, the connection's next PN (A.2 length),
    its own key phase bit (its sender knows the current phase). The UDP checksum stays valid if it was (or stays 0
    over IPv4)."""
    lay = parse(frame, len(sub.dcid), moqt=False)
    pn = sub.next_pn
    pn_len = pn_length(pn, sub.largest_acked, lay.pn_len)
    if pn_len is None:
        raise Drop("EG_PN_UNENCODABLE")
    delta = pn_len - lay.pn_len
    first = 0x40 | (frame[lay.quic] & 0x24) | (pn_len - 1)
    out = bytearray(frame[: lay.quic]) + bytes([first]) + sub.dcid
    out += (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big") + frame[lay.payload :]
    no_csum = lay.ip_version == 4 and frame[lay.l4 + 6 : lay.l4 + 8] == b"\0\0"
    if delta or not no_csum:
        _finish(out, lay, delta, False, sub)
    return bytes(out), pn


def udp_checksum_ok(frame: bytes) -> bool:
    """Whether the UDP checksum of an Ethernet/IP/UDP frame verifies (RFC 768: 0 = none, IPv4 only)."""
    etype = int.from_bytes(frame[12:14], "big")
    if etype == 0x0800:
        l4 = 14 + (frame[14] & 0x0F) * 4
        src, dst = frame[26:30], frame[30:34]
    else:
        l4, src, dst = 54, frame[22:38], frame[38:54]
    seg = frame[l4 : l4 + int.from_bytes(frame[l4 + 4 : l4 + 6], "big")]
    field = int.from_bytes(seg[6:8], "big")
    if field == 0:
        return len(src) == 4
    return udp_checksum(src, dst, seg) == field


def with_udp_checksum(frame: bytes) -> bytes:
    """The frame with a correct UDP checksum (the packet builder leaves it 0)."""
    etype = int.from_bytes(frame[12:14], "big")
    if etype == 0x0800:
        l4 = 14 + (frame[14] & 0x0F) * 4
        src, dst = frame[26:30], frame[30:34]
    else:
        l4, src, dst = 54, frame[22:38], frame[38:54]
    seg = frame[l4 : l4 + int.from_bytes(frame[l4 + 4 : l4 + 6], "big")]
    return frame[: l4 + 6] + struct.pack("!H", udp_checksum(src, dst, seg)) + frame[l4 + 8 :]


def expected_stream_copy(frame: bytes, upstream_dcid_len: int, sub: Subscriber, down_stream_id: int) -> tuple[bytes, int]:
    """The copy of a packet whose last frame is a STREAM frame (RFC 9000 19.8) for ``sub``: like a datagram copy,
    but the Stream ID (same encoded length) is the subscriber's stream instead of the alias being replaced."""
    lay = parse(frame, upstream_dcid_len, moqt=False)
    off = lay.payload
    while frame[off] in (0x00, 0x01):  # PADDING / PING before it (the tests put no ACK here)
        off += 1
    if frame[off] & 0xF8 != 0x08:
        raise ValueError("no STREAM frame")
    sid_off = off + 1
    sid_len = varint_decode(frame, sid_off)[1]
    pn = sub.next_pn
    pn_len = pn_length(pn, sub.largest_acked, lay.pn_len)
    if pn_len is None:
        raise Drop("EG_PN_UNENCODABLE")
    delta = len(sub.dcid) + pn_len - lay.dcid_len - lay.pn_len
    first = 0x40 | (sub.key_phase << 2) | (pn_len - 1)
    header = bytes([first]) + sub.dcid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
    body = bytearray(frame[lay.payload :])
    body[: off - lay.payload] = bytes(off - lay.payload)
    body[sid_off - lay.payload : sid_off - lay.payload + sid_len] = varint_encode(down_stream_id, sid_len)
    out = bytearray(sub.eth_dst + sub.eth_src + frame[12 : lay.l4])
    out += struct.pack("!HHHH", sub.sport, sub.dport, 0, 0) + header + body
    _finish(out, lay, delta, True, sub)
    return bytes(out), pn
