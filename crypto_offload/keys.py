"""Key schedule for QUIC packet protection (RFC 9001 section 5): derived keys go to the NIC, never the TLS secret.

Both the NIC engine and the tests derive keys here, so the RFC 9001 appendix A vectors check the one code path
that ends up on the NIC.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass

# RFC 9001 section 5.2: the QUIC version 1 initial salt.
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
IV_SIZE = 12  # RFC 9001 section 5.3: AEAD nonce length of every QUIC v1 suite (and so the IV length)


class CipherSuite(enum.IntEnum):
    """TLS 1.3 cipher suites usable with QUIC v1 (RFC 8446 appendix B.4 code points, same as aioquic's)."""

    AES_128_GCM_SHA256 = 0x1301
    AES_256_GCM_SHA384 = 0x1302
    CHACHA20_POLY1305_SHA256 = 0x1303

    @property
    def key_size(self) -> int:
        """Payload key and header-protection key length (RFC 9001 5.1, 5.4.3, 5.4.4)."""
        return 16 if self is CipherSuite.AES_128_GCM_SHA256 else 32

    @property
    def hash_name(self) -> str:
        return "sha384" if self is CipherSuite.AES_256_GCM_SHA384 else "sha256"

    @property
    def hash_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 section 2.2)."""
    return hmac.new(salt, ikm, hash_name).digest()


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1) with the "tls13 " prefix, as RFC 9001 section 5.1 uses it."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + bytes([len(context)]) + context
    out = b""
    block = b""
    counter = 1
    while len(out) < length:  # HKDF-Expand (RFC 5869 section 2.3)
        block = hmac.new(secret, block + info + bytes([counter]), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class TrafficKeys:
    """What one direction of one key phase needs: payload key, IV, header-protection key (RFC 9001 5.1)."""

    suite: CipherSuite
    key: bytes
    iv: bytes
    hp: bytes


def derive_traffic_keys(suite: CipherSuite, secret: bytes) -> TrafficKeys:
    """Derive key, IV and HP key from a traffic secret with the "quic key"/"quic iv"/"quic hp" labels."""
    h = suite.hash_name
    return TrafficKeys(
        suite=suite,
        key=hkdf_expand_label(h, secret, b"quic key", b"", suite.key_size),
        iv=hkdf_expand_label(h, secret, b"quic iv", b"", IV_SIZE),
        hp=hkdf_expand_label(h, secret, b"quic hp", b"", suite.key_size),
    )


def next_traffic_secret(suite: CipherSuite, secret: bytes) -> bytes:
    """The secret of the next key phase (RFC 9001 section 6.1, label "quic ku"); the HP key is not re-derived."""
    return hkdf_expand_label(suite.hash_name, secret, b"quic ku", b"", suite.hash_size)


def initial_secrets(dcid: bytes, salt: bytes = INITIAL_SALT_V1) -> tuple[bytes, bytes]:
    """Client and server Initial secrets from the client's first Destination CID (RFC 9001 section 5.2)."""
    initial = hkdf_extract("sha256", salt, dcid)
    client = hkdf_expand_label("sha256", initial, b"client in", b"", 32)
    server = hkdf_expand_label("sha256", initial, b"server in", b"", 32)
    return client, server
