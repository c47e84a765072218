"""Packet number truncation and expansion (RFC 9000 section 17.1 and appendices A.2 and A.3)."""

from __future__ import annotations

MAX_PN_LENGTH = 4  # RFC 9000 section 17.1: packet numbers are encoded on 1 to 4 bytes
MAX_PACKET_NUMBER = (1 << 62) - 1  # RFC 9000 section 12.3


def packet_number_length(full_pn: int, largest_acked: int | None) -> int:
    """Bytes needed to encode `full_pn` so the peer decodes it right (RFC 9000 appendix A.2).

    The window must cover twice the number of unacknowledged packets, i.e. num_unacked <= 2^(8*len - 1).
    Raises ValueError when even 4 bytes cannot (the sender must not send such a packet).
    """
    if not 0 <= full_pn <= MAX_PACKET_NUMBER:
        raise ValueError(f"packet number {full_pn} out of range")
    num_unacked = full_pn + 1 if largest_acked is None else full_pn - largest_acked
    if num_unacked <= 0:
        raise ValueError(f"packet number {full_pn} is not above the largest acknowledged {largest_acked}")
    for length in range(1, MAX_PN_LENGTH + 1):
        if num_unacked <= 1 << (8 * length - 1):
            return length
    raise ValueError(f"packet number {full_pn} too far above the largest acknowledged {largest_acked}")


def truncate_packet_number(full_pn: int, length: int) -> bytes:
    """The `length` low-order bytes of the packet number, network byte order (RFC 9000 section 17.1)."""
    return (full_pn & ((1 << (8 * length)) - 1)).to_bytes(length, "big")


def encode_packet_number(full_pn: int, largest_acked: int | None) -> bytes:
    """Truncate with the shortest length the A.2 rule allows."""
    return truncate_packet_number(full_pn, packet_number_length(full_pn, largest_acked))


def decode_packet_number(truncated_pn: int, pn_nbits: int, expected_pn: int) -> int:
    """Expand a truncated packet number around `expected_pn` = largest received + 1 (RFC 9000 appendix A.3)."""
    pn_win = 1 << pn_nbits
    pn_hwin = pn_win // 2
    pn_mask = pn_win - 1
    candidate = (expected_pn & ~pn_mask) | truncated_pn
    if candidate <= expected_pn - pn_hwin and candidate < (1 << 62) - pn_win:
        return candidate + pn_win
    if candidate > expected_pn + pn_hwin and candidate >= pn_win:
        return candidate - pn_win
    return candidate
