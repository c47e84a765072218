"""Retry packet integrity (RFC 9001 section 5.8): a fixed-key AES-128-GCM tag over the Retry pseudo-packet."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# RFC 9001 section 5.8: fixed key and nonce for QUIC version 1.
RETRY_INTEGRITY_KEY_V1 = bytes.fromhex("be0c690b9f66575a1d766b54e368c84e")
RETRY_INTEGRITY_NONCE_V1 = bytes.fromhex("461599d35d632bf2239825bb")
RETRY_TAG_SIZE = 16


def retry_integrity_tag(original_dcid: bytes, retry_without_tag: bytes) -> bytes:
    """The tag: AEAD over an empty plaintext with the pseudo-packet (ODCID length, ODCID, Retry) as AAD."""
    pseudo_packet = bytes([len(original_dcid)]) + original_dcid + retry_without_tag
    return AESGCM(RETRY_INTEGRITY_KEY_V1).encrypt(RETRY_INTEGRITY_NONCE_V1, b"", pseudo_packet)


def verify_retry(original_dcid: bytes, retry_packet: bytes) -> bool:
    """True when the last 16 bytes of `retry_packet` are its valid integrity tag."""
    if len(retry_packet) < RETRY_TAG_SIZE:
        return False
    body, tag = retry_packet[:-RETRY_TAG_SIZE], retry_packet[-RETRY_TAG_SIZE:]
    return hmac.compare_digest(retry_integrity_tag(original_dcid, body), tag)
