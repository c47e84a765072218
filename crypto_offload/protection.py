"""QUIC packet protection (RFC 9001 section 5): AEAD payload protection and header protection.

This is the one implementation the NIC engine, the key-install helpers and the tests share. A packet is handled in
two layers, as the RFC orders them: header protection masks the low bits of the first byte and the packet number
with a mask computed from a 16-byte sample of ciphertext (5.4); the payload is sealed with the AEAD using
nonce = IV xor packet number and the unprotected header as associated data (5.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from crypto_offload.keys import CipherSuite
from crypto_offload.pn import decode_packet_number

TAG_SIZE = 16  # RFC 9001 section 5.3: every QUIC v1 AEAD has a 16-byte tag
SAMPLE_SIZE = 16  # RFC 9001 section 5.4.2
SAMPLE_OFFSET = 4  # RFC 9001 section 5.4.2: the sample starts 4 bytes after the start of the packet number
LONG_HEADER_BIT = 0x80  # RFC 9000 section 17.2
FIXED_BIT = 0x40  # RFC 9000 section 17.2 / 17.3
KEY_PHASE_BIT = 0x04  # RFC 9000 section 17.3.1 (short header)
PN_LENGTH_MASK = 0x03  # RFC 9000 section 17.2 / 17.3.1
LONG_HP_MASK = 0x0F  # RFC 9001 section 5.4.1: protected bits of a long header's first byte
SHORT_HP_MASK = 0x1F  # RFC 9001 section 5.4.1: protected bits of a short header's first byte
MIN_PROTECTED_AFTER_PN = SAMPLE_OFFSET + SAMPLE_SIZE  # bytes a protected packet needs from the PN offset on


class ProtectionError(ValueError):
    """The packet cannot be protected or unprotected as given (too short, unknown type, no key)."""


class DecryptError(ProtectionError):
    """The AEAD tag did not verify: the packet is forged, corrupted, or was sealed with another key."""


def is_long_header(first_byte: int) -> bool:
    return bool(first_byte & LONG_HEADER_BIT)


def header_protection_mask_bits(first_byte: int) -> int:
    return LONG_HP_MASK if is_long_header(first_byte) else SHORT_HP_MASK


class HeaderProtection:
    """The header-protection mask function of a suite (RFC 9001 5.4.3 AES-ECB, 5.4.4 ChaCha20)."""

    __slots__ = ("_chacha_key", "_ecb")

    def __init__(self, suite: CipherSuite, hp_key: bytes) -> None:
        if len(hp_key) != suite.key_size:
            raise ProtectionError(f"{suite.name} needs a {suite.key_size}-byte HP key, got {len(hp_key)}")
        if suite is CipherSuite.CHACHA20_POLY1305_SHA256:
            self._chacha_key: bytes | None = hp_key
            self._ecb = None
        else:
            # ECB has no state between blocks, so one long-lived encryptor serves every packet.
            self._chacha_key = None
            self._ecb = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()

    def mask(self, sample: bytes) -> bytes:
        """Five mask bytes: one for the first byte, up to four for the packet number."""
        if self._ecb is not None:
            return self._ecb.update(sample)[:5]
        # RFC 9001 5.4.4: counter = sample[0..3] little endian, nonce = sample[4..15]; this is exactly the
        # 16-byte "nonce" cryptography's ChaCha20 takes (counter first, little endian).
        assert self._chacha_key is not None
        return Cipher(algorithms.ChaCha20(self._chacha_key, bytes(sample)), mode=None).encryptor().update(bytes(5))


class PayloadProtection:
    """AEAD of one key phase: seal/open with nonce = IV xor packet number (RFC 9001 section 5.3)."""

    __slots__ = ("_aead", "_iv")

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes) -> None:
        if len(key) != suite.key_size or len(iv) != 12:
            raise ProtectionError(f"{suite.name} needs a {suite.key_size}-byte key and a 12-byte IV")
        self._aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(key) if suite is CipherSuite.CHACHA20_POLY1305_SHA256 else AESGCM(key)
        )
        self._iv = int.from_bytes(iv, "big")

    def nonce(self, packet_number: int) -> bytes:
        """The 62-bit packet number, left-padded to the IV length, XORed with the IV (RFC 9001 5.3)."""
        return (self._iv ^ packet_number).to_bytes(12, "big")

    def seal(self, packet_number: int, header: bytes, plaintext: bytes) -> bytes:
        """Ciphertext followed by the 16-byte tag; `header` (unprotected) is the associated data."""
        return self._aead.encrypt(self.nonce(packet_number), plaintext, header)

    def open(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(packet_number), ciphertext, header)
        except InvalidTag as exc:
            raise DecryptError("AEAD tag check failed") from exc


def _sample(packet: bytes | bytearray, pn_offset: int) -> bytes:
    start = pn_offset + SAMPLE_OFFSET
    if len(packet) < start + SAMPLE_SIZE:
        raise ProtectionError("packet too short to sample for header protection (RFC 9001 5.4.2)")
    return bytes(packet[start: start + SAMPLE_SIZE])


def apply_header_protection(packet: bytearray, pn_offset: int, hp: HeaderProtection) -> None:
    """Mask the first byte and the packet number in place; the first byte must still be unmasked (5.4.1)."""
    mask = hp.mask(_sample(packet, pn_offset))
    pn_length = (packet[0] & PN_LENGTH_MASK) + 1
    packet[0] ^= mask[0] & header_protection_mask_bits(packet[0])
    for i in range(pn_length):
        packet[pn_offset + i] ^= mask[1 + i]


def remove_header_protection(packet: bytearray, pn_offset: int, hp: HeaderProtection) -> tuple[int, int]:
    """Unmask in place; return (packet number length, truncated packet number) (RFC 9001 5.4.1)."""
    mask = hp.mask(_sample(packet, pn_offset))
    packet[0] ^= mask[0] & header_protection_mask_bits(packet[0])
    pn_length = (packet[0] & PN_LENGTH_MASK) + 1
    truncated = 0
    for i in range(pn_length):
        packet[pn_offset + i] ^= mask[1 + i]
        truncated = (truncated << 8) | packet[pn_offset + i]
    return pn_length, truncated


def protect(plain_header: bytes, plain_payload: bytes, packet_number: int, aead: PayloadProtection,
            hp: HeaderProtection) -> bytes:
    """Protect one packet. `plain_header` ends with the encoded packet number; its first byte gives the PN length.

    For a long header the Length field must already count packet number, payload and tag (RFC 9000 17.2).
    """
    pn_offset = len(plain_header) - ((plain_header[0] & PN_LENGTH_MASK) + 1)
    packet = bytearray(plain_header)
    packet += aead.seal(packet_number, plain_header, plain_payload)
    apply_header_protection(packet, pn_offset, hp)
    return bytes(packet)


@dataclass(frozen=True)
class Unprotected:
    """A packet after header protection removal and AEAD open."""

    header: bytes  # unprotected header, ending with the truncated packet number
    payload: bytes  # the frames
    packet_number: int  # the full (expanded) packet number
    key_phase: int  # the short header's key-phase bit (0 for long headers)


def unprotect(packet: bytes, pn_offset: int, expected_pn: int, hp: HeaderProtection,
              aead: PayloadProtection | Sequence[PayloadProtection | None]) -> Unprotected:
    """Remove HP, expand the PN around `expected_pn` (largest received + 1), open with the key of the packet's phase.

    `aead` is one key, or a pair indexed by key phase (RFC 9001 section 6: the HP key does not change on key
    update, so the phase bit is read after HP removal and then picks the payload key). `packet` must hold exactly
    one QUIC packet (split coalesced packets first).
    """
    buf = bytearray(packet)
    pn_length, truncated = remove_header_protection(buf, pn_offset, hp)
    header_end = pn_offset + pn_length
    if len(buf) < header_end + TAG_SIZE:
        raise ProtectionError("packet shorter than header plus tag")
    key_phase = 0 if is_long_header(buf[0]) else (buf[0] & KEY_PHASE_BIT) >> 2
    key = aead if isinstance(aead, PayloadProtection) else aead[key_phase]
    if key is None:
        raise DecryptError(f"no key for key phase {key_phase}")
    pn = decode_packet_number(truncated, 8 * pn_length, expected_pn)
    header = bytes(buf[:header_end])
    payload = key.open(pn, header, bytes(buf[header_end:]))
    return Unprotected(header, payload, pn, key_phase)


def read_varint(data: bytes | bytearray, offset: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 section 16): (value, offset after it)."""
    if offset >= len(data):
        raise ProtectionError("truncated variable-length integer")
    length = 1 << (data[offset] >> 6)
    if offset + length > len(data):
        raise ProtectionError("truncated variable-length integer")
    value = data[offset] & 0x3F
    for i in range(1, length):
        value = (value << 8) | data[offset + i]
    return value, offset + length


def long_header_bounds(packet: bytes | bytearray) -> tuple[int, int]:
    """(packet-number offset, end of this packet) of a QUIC v1 Initial, 0-RTT or Handshake packet (RFC 9000 17.2).

    The end matters because long-header packets may be coalesced in one datagram (RFC 9000 section 12.2).
    """
    if len(packet) < 7 or not is_long_header(packet[0]):
        raise ProtectionError("not a long-header packet")
    if int.from_bytes(packet[1:5], "big") != 1:
        raise ProtectionError("not a QUIC version 1 packet")
    packet_type = (packet[0] & 0x30) >> 4  # RFC 9000 17.2 table 5: 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry
    if packet_type == 3:
        raise ProtectionError("a Retry packet has no packet number")
    offset = 5
    for _ in range(2):  # Destination then Source Connection ID, each with a one-byte length (RFC 9000 17.2)
        if offset >= len(packet):
            raise ProtectionError("truncated long header")
        offset += 1 + packet[offset]
    if packet_type == 0:  # Initial: Token Length and Token (RFC 9000 17.2.2)
        token_length, offset = read_varint(packet, offset)
        offset += token_length
    length, pn_offset = read_varint(packet, offset)
    end = pn_offset + length
    if end > len(packet):
        raise ProtectionError("long header Length runs past the datagram")
    return pn_offset, end
