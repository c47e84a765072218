"""Packet protection round trips for every suite and key phase, tamper detection, and interop with aioquic."""

from __future__ import annotations

import pytest
from aioquic import tls
from aioquic.quic.crypto import CryptoPair
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_offload.keys import CipherSuite, derive_traffic_keys, next_traffic_secret
from crypto_offload.pn import truncate_packet_number
from crypto_offload.protection import (
    DecryptError,
    HeaderProtection,
    PayloadProtection,
    ProtectionError,
    protect,
    unprotect,
)

SUITES = list(CipherSuite)


def short_header(cid: bytes, pn: int, pn_length: int, key_phase: int) -> bytes:
    """RFC 9000 17.3.1: 0b01 fixed, spin 0, reserved 00, key phase, PN length - 1; DCID; truncated PN."""
    return bytes([0x40 | key_phase << 2 | (pn_length - 1)]) + cid + truncate_packet_number(pn, pn_length)


def phase_keys(suite: CipherSuite, secret: bytes) -> tuple[tuple[PayloadProtection, PayloadProtection],
                                                          HeaderProtection]:
    """Both phases' AEADs (phase 1 from "quic ku") and the one HP key (from the phase 0 secret)."""
    k0 = derive_traffic_keys(suite, secret)
    k1 = derive_traffic_keys(suite, next_traffic_secret(suite, secret))
    return ((PayloadProtection(suite, k0.key, k0.iv), PayloadProtection(suite, k1.key, k1.iv)),
            HeaderProtection(suite, k0.hp))


packets = st.fixed_dictionaries({
    "suite": st.sampled_from(SUITES),
    "secret": st.binary(min_size=48, max_size=48),
    "cid": st.binary(min_size=0, max_size=20),
    "pn_length": st.integers(1, 4),
    "pn": st.integers(0, (1 << 62) - 1),
    "phase": st.integers(0, 1),
    "payload": st.binary(min_size=3, max_size=1400),
})


def _secret(suite: CipherSuite, raw: bytes) -> bytes:
    return raw[: suite.hash_size]


@settings(max_examples=150, deadline=None)
@given(packets)
def test_round_trip_short_header(p: dict) -> None:
    suite = p["suite"]
    aeads, hp = phase_keys(suite, _secret(suite, p["secret"]))
    header = short_header(p["cid"], p["pn"], p["pn_length"], p["phase"])
    payload = p["payload"] + bytes(max(0, 4 - p["pn_length"] - len(p["payload"])))
    wire = protect(header, payload, p["pn"], aeads[p["phase"]], hp)
    assert len(wire) == len(header) + len(payload) + 16
    assert wire[1: 1 + len(p["cid"])] == p["cid"]  # the DCID is never masked
    plain = unprotect(wire, 1 + len(p["cid"]), p["pn"], hp, aeads)
    assert (plain.header, plain.payload, plain.packet_number, plain.key_phase) == (
        header, payload, p["pn"], p["phase"])


@settings(max_examples=100, deadline=None)
@given(packets, st.data())
def test_any_flipped_bit_fails(p: dict, data: st.DataObject) -> None:
    suite = p["suite"]
    aeads, hp = phase_keys(suite, _secret(suite, p["secret"]))
    header = short_header(p["cid"], p["pn"], p["pn_length"], p["phase"])
    wire = bytearray(protect(header, p["payload"] + b"\0", p["pn"], aeads[p["phase"]], hp))
    bit = data.draw(st.integers(0, 8 * len(wire) - 1))
    wire[bit // 8] ^= 1 << (bit % 8)  # header bits are AAD (even unmasked ones), the rest ciphertext or tag
    with pytest.raises(ProtectionError):
        unprotect(bytes(wire), 1 + len(p["cid"]), p["pn"], hp, aeads)


def test_wrong_phase_key_fails_and_missing_phase_is_an_error() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    aeads, hp = phase_keys(suite, bytes(32))
    wire = protect(short_header(b"abcd", 7, 2, 1), b"hello", 7, aeads[1], hp)
    assert unprotect(wire, 5, 7, hp, aeads).payload == b"hello"
    with pytest.raises(DecryptError):
        unprotect(wire, 5, 7, hp, (aeads[0], None))
    with pytest.raises(DecryptError):
        unprotect(wire, 5, 7, hp, (aeads[1], aeads[0]))


def test_too_short_to_sample() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    aeads, hp = phase_keys(suite, bytes(32))
    with pytest.raises(ProtectionError):
        protect(short_header(b"", 1, 1, 0), b"ab", 1, aeads[0], hp)


# ---- interop with aioquic's own crypto ----------------------------------------------------------------------

def aioquic_pair(suite: CipherSuite, secret: bytes) -> CryptoPair:
    pair = CryptoPair()
    for ctx in (pair.send, pair.recv):
        ctx.setup(cipher_suite=tls.CipherSuite(int(suite)), secret=secret, version=1)
    return pair


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_interop_with_aioquic_both_phases(suite: CipherSuite) -> None:
    secret = bytes(range(suite.hash_size))
    cid = bytes.fromhex("0102030405060708")
    aeads, hp = phase_keys(suite, secret)
    theirs = aioquic_pair(suite, secret)
    for pn in range(6):
        if pn == 3:
            theirs.update_key()  # aioquic moves to phase 1 ("quic ku"), HP key unchanged
        phase = theirs.key_phase
        header = short_header(cid, pn, 2, phase)
        payload = bytes([pn]) * (40 + pn)
        # aioquic -> us
        plain = unprotect(theirs.encrypt_packet(header, payload, pn), 9, pn, hp, aeads)
        assert (plain.header, plain.payload, plain.packet_number, plain.key_phase) == (header, payload, pn, phase)
        # us -> aioquic
        ours = protect(header, payload, pn, aeads[phase], hp)
        their_header, their_payload, their_pn = theirs.decrypt_packet(ours, 9, pn)
        assert (their_header, their_payload, their_pn) == (header, payload, pn)
