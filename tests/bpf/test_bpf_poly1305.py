"""nic_crypto_test.bpf.c, Poly1305 and AEAD side: the BPF Poly1305 (26-bit limbs, 64-bit products), the RFC 8439
2.8 AEAD and full RFC 9001 packet protection agree byte for byte with RFC 8439, RFC 9001 A.5, ``cryptography``
and crypto_offload/protection.py; a flipped bit anywhere fails the tag check."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given
from hypothesis import strategies as st

from crypto_offload.keys import CipherSuite, derive_traffic_keys
from crypto_offload.protection import HeaderProtection, PayloadProtection, protect, unprotect
from tests.bpf.test_bpf_chacha20 import HYPO, TAG, Harness, Op, Status, build_harness, open_harness

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# RFC 8439 2.5.2
POLY_KEY = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
POLY_MSG = b"Cryptographic Forum Research Group"
POLY_TAG = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")

# RFC 8439 2.8.2
AEAD_KEY = bytes(range(0x80, 0xA0))
AEAD_NONCE = bytes.fromhex("070000004041424344454647")
AEAD_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
AEAD_PLAIN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
AEAD_CIPHER = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
AEAD_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")

# RFC 9001 A.5: ChaCha20-Poly1305 short header packet
A5_SECRET = bytes.fromhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b")
A5_PN = 654360564
A5_HEADER = bytes.fromhex("4200bff4")
A5_PAYLOAD = bytes.fromhex("01")
A5_PROTECTED = bytes.fromhex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb")


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    build_harness()
    with open_harness() as h:
        yield h


def bpf_poly1305(h: Harness, key: bytes, msg: bytes) -> bytes:
    r = h.call(Op.POLY1305, msg + bytes(TAG), length=len(msg), key=key)
    assert r.status is Status.OK
    return r.body[len(msg): len(msg) + TAG]


def seal(h: Harness, key: bytes, nonce: bytes, aad: bytes, plain: bytes) -> bytes:
    r = h.call(Op.AEAD_SEAL, aad + plain + bytes(TAG), length=len(plain), aad_len=len(aad), key=key, nonce=nonce)
    assert r.status is Status.OK and r.body[: len(aad)] == aad
    return r.body[len(aad):]


def open_(h: Harness, key: bytes, nonce: bytes, aad: bytes, sealed: bytes) -> tuple[Status, bytes]:
    r = h.call(Op.AEAD_OPEN, aad + sealed, length=len(sealed) - TAG, aad_len=len(aad), key=key, nonce=nonce)
    return r.status, r.body[len(aad): len(sealed) - TAG + len(aad)]


def test_rfc8439_2_5_2_poly1305(harness: Harness) -> None:
    assert bpf_poly1305(harness, POLY_KEY, POLY_MSG) == POLY_TAG


def test_poly1305_edge_values(harness: Harness) -> None:
    """All-ones key and message push every limb to its maximum and h to just under / over p (the final
    conditional subtraction); the empty message gives s."""
    for key, msg in ((b"\xff" * 32, b"\xff" * 64), (b"\xff" * 32, b"\xff" * 17), (POLY_KEY, b"")):
        assert bpf_poly1305(harness, key, msg) == Poly1305.generate_tag(key, msg)


@HYPO
@given(key=st.binary(min_size=32, max_size=32), msg=st.binary(min_size=0, max_size=1400))
def test_poly1305_matches_cryptography(harness: Harness, key: bytes, msg: bytes) -> None:
    assert bpf_poly1305(harness, key, msg) == Poly1305.generate_tag(key, msg)


def test_rfc8439_2_8_2_aead(harness: Harness) -> None:
    sealed = seal(harness, AEAD_KEY, AEAD_NONCE, AEAD_AAD, AEAD_PLAIN)
    assert sealed == AEAD_CIPHER + AEAD_TAG
    assert open_(harness, AEAD_KEY, AEAD_NONCE, AEAD_AAD, sealed) == (Status.OK, AEAD_PLAIN)


@HYPO
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       aad=st.binary(max_size=64), plain=st.binary(max_size=1400))
def test_aead_matches_cryptography(harness: Harness, key: bytes, nonce: bytes, aad: bytes, plain: bytes) -> None:
    sealed = seal(harness, key, nonce, aad, plain)
    assert sealed == ChaCha20Poly1305(key).encrypt(nonce, plain, aad)
    assert open_(harness, key, nonce, aad, sealed) == (Status.OK, plain)


@HYPO
@given(plain=st.binary(min_size=1, max_size=200), data=st.data())
def test_aead_single_bit_flip_fails(harness: Harness, plain: bytes, data: st.DataObject) -> None:
    """Any one flipped bit in AAD, ciphertext or tag: BAD_TAG, and nothing is decrypted in the frame."""
    aad = b"hdr-bytes"
    sealed = seal(harness, AEAD_KEY, AEAD_NONCE, aad, plain)
    wire = bytearray(aad + sealed)
    bit = data.draw(st.integers(0, 8 * len(wire) - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    status, out = open_(harness, AEAD_KEY, AEAD_NONCE, bytes(wire[: len(aad)]), bytes(wire[len(aad):]))
    assert status is Status.BAD_TAG and out == bytes(wire[len(aad): len(wire) - TAG])


def quic_keys() -> tuple[bytes, bytes, bytes]:
    k = derive_traffic_keys(CipherSuite.CHACHA20_POLY1305_SHA256, A5_SECRET)
    return k.key, k.iv, k.hp


def bpf_protect(h: Harness, header: bytes, payload: bytes, pn: int) -> bytes:
    key, iv, hp = quic_keys()
    r = h.call(Op.QUIC_PROTECT, header + payload + bytes(TAG), length=len(payload), aad_len=len(header),
               key=key, nonce=iv, hp_key=hp, pn=pn)
    assert r.status is Status.OK
    return r.body


def bpf_unprotect(h: Harness, packet: bytes, pn_offset: int, largest: int) -> tuple[Status, bytes, int]:
    """Returns (status, the frame's packet after HP removal and decryption, decoded PN)."""
    key, iv, hp = quic_keys()
    r = h.call(Op.QUIC_UNPROTECT, packet, length=len(packet) - pn_offset, aad_len=pn_offset,
               key=key, nonce=iv, hp_key=hp, pn=largest)
    return r.status, r.body, r.pn


def test_rfc9001_a5_protect_and_unprotect(harness: Harness) -> None:
    assert bpf_protect(harness, A5_HEADER, A5_PAYLOAD, A5_PN) == A5_PROTECTED
    status, body, pn = bpf_unprotect(harness, A5_PROTECTED, 1, A5_PN - 1)
    assert (status, pn) == (Status.OK, A5_PN)
    assert body[: len(A5_HEADER) + len(A5_PAYLOAD)] == A5_HEADER + A5_PAYLOAD


@HYPO
@given(dcid=st.binary(min_size=0, max_size=20), pn_len=st.integers(1, 4), key_phase=st.integers(0, 1),
       pn=st.integers(0, 2**40), payload=st.binary(min_size=16, max_size=1200))
def test_quic_short_header_matches_protection_py(harness: Harness, dcid: bytes, pn_len: int, key_phase: int,
                                                 pn: int, payload: bytes) -> None:
    key, iv, hp_key = quic_keys()
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    aead, hp = PayloadProtection(suite, key, iv), HeaderProtection(suite, hp_key)
    truncated = (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    header = bytes([0x40 | key_phase << 2 | (pn_len - 1)]) + dcid + truncated
    ref = protect(header, payload, pn, aead, hp)
    assert bpf_protect(harness, header, payload, pn) == ref
    status, body, got_pn = bpf_unprotect(harness, ref, 1 + len(dcid), max(pn - 1, 0))
    expected = unprotect(ref, 1 + len(dcid), pn, hp, aead)
    assert (status, got_pn) == (Status.OK, expected.packet_number)
    assert body[: len(header) + len(payload)] == expected.header + expected.payload


def test_quic_flipped_bit_fails(harness: Harness) -> None:
    """A.5 packet with one bit flipped in each byte after the first: the tag check fails every time (bits of the
    first byte outside the mask and the PN change the AAD or nonce, bits after it the ciphertext or tag)."""
    for i in range(1, len(A5_PROTECTED)):
        wire = bytearray(A5_PROTECTED)
        wire[i] ^= 0x10
        status, _, _ = bpf_unprotect(harness, bytes(wire), 1, A5_PN - 1)
        assert status is Status.BAD_TAG, i
