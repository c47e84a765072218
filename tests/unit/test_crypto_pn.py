"""Packet number encoding (RFC 9000 appendix A.2) and decoding (A.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto_offload.pn import (
    decode_packet_number,
    encode_packet_number,
    packet_number_length,
    truncate_packet_number,
)


def test_rfc9000_a2_examples() -> None:
    # RFC 9000 section 17.1: 29519 unacknowledged packets need 16 bits, 65611 need 24.
    assert packet_number_length(0xAC5C02, 0xABE8B3) == 2
    assert packet_number_length(0xACE8FE, 0xABE8B3) == 3
    assert encode_packet_number(0xAC5C02, 0xABE8B3) == bytes.fromhex("5c02")
    assert encode_packet_number(0xACE8FE, 0xABE8B3) == bytes.fromhex("ace8fe")


def test_rfc9000_a3_example() -> None:
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA + 1) == 0xA82F9B32


@pytest.mark.parametrize(("pn", "acked", "length"), [
    (0, None, 1), (127, None, 1), (128, None, 2), (128, 0, 1), (129, 0, 2),
    (0x7FFF, None, 2), (0x8000, None, 3), (0x7FFFFFFF, None, 4),
])
def test_length_boundaries(pn: int, acked: int | None, length: int) -> None:
    assert packet_number_length(pn, acked) == length


def test_unencodable_raises() -> None:
    with pytest.raises(ValueError):
        packet_number_length(0x80000000, None)
    with pytest.raises(ValueError):
        packet_number_length(5, 5)


@given(st.integers(0, (1 << 62) - 1), st.integers(0, (1 << 31) - 1))
def test_encode_then_decode_round_trips(largest_acked: int, gap: int) -> None:
    """Whatever the receiver has seen between largest_acked and pn-1, it recovers pn from the short encoding."""
    pn = largest_acked + 1 + gap
    if pn > (1 << 62) - 1:
        return
    length = packet_number_length(pn, largest_acked)
    truncated = int.from_bytes(truncate_packet_number(pn, length), "big")
    for largest_received in {largest_acked, pn - 1}:
        assert decode_packet_number(truncated, 8 * length, largest_received + 1) == pn
