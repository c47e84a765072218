"""The NIC crypto engine, sans I/O: host plaintext <-> wire ciphertext by DCID, key phases, the zero-tag signal."""

from __future__ import annotations

import random

import pytest
from aioquic import tls
from aioquic.quic.crypto import CryptoPair
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_offload.api import (
    CipherSuite,
    DecryptFailurePolicy,
    Direction,
    FlowKey,
    KeyInstaller,
    KeyInstallError,
    key_install_from_secret,
    next_rekey,
)
from crypto_offload.engine import ZERO_TAG, NicCryptoEngine
from crypto_offload.keys import initial_secrets
from crypto_offload.pn import packet_number_length, truncate_packet_number

CID = bytes.fromhex("c1d2c3d4c5c6c7c8")  # the connection ID the receiving host issued
SECRET = bytes(range(32))
SUITE = CipherSuite.AES_128_GCM_SHA256


def host_packet(cid: bytes, pn: int, payload: bytes, *, phase: int = 0, pn_length: int = 2) -> bytes:
    """What an offloaded host hands its NIC: short header in the clear, frames, 16 zero bytes of tag room."""
    first = 0x40 | phase << 2 | (pn_length - 1)  # RFC 9000 17.3.1
    return bytes([first]) + cid + truncate_packet_number(pn, pn_length) + payload + ZERO_TAG


def engines(suite: CipherSuite = SUITE, secret: bytes = SECRET, cid: bytes = CID,
            policy: DecryptFailurePolicy = DecryptFailurePolicy.PASS_UP) -> tuple[NicCryptoEngine, NicCryptoEngine]:
    """Sender's NIC (TX flow to `cid`) and receiver's NIC (RX flow for `cid`), same traffic secret."""
    sender, receiver = NicCryptoEngine(), NicCryptoEngine()
    sender.install(FlowKey(Direction.TX, cid), key_install_from_secret(suite, secret))
    receiver.install(FlowKey(Direction.RX, cid), key_install_from_secret(suite, secret, policy=policy))
    return sender, receiver


def aioquic_pair(suite: CipherSuite, secret: bytes) -> CryptoPair:
    pair = CryptoPair()
    for ctx in (pair.send, pair.recv):
        ctx.setup(cipher_suite=tls.CipherSuite(int(suite)), secret=secret, version=1)
    return pair


def test_engine_is_a_key_installer() -> None:
    assert isinstance(NicCryptoEngine(), KeyInstaller)
    caps = NicCryptoEngine(max_flows=3).capabilities()
    assert caps.suites == frozenset(CipherSuite) and caps.max_flows == 3 and caps.key_phases == 2


@pytest.mark.parametrize("suite", list(CipherSuite), ids=[s.name for s in CipherSuite])
def test_round_trip_restores_host_bytes_with_zero_tag(suite: CipherSuite) -> None:
    sender, receiver = engines(suite, bytes(range(suite.hash_size)))
    for pn in range(5):
        sent = host_packet(CID, pn, b"frames-%d" % pn + bytes(30))
        wire = sender.tx(sent)
        assert wire is not None and len(wire) == len(sent)
        assert wire[-16:] != ZERO_TAG and b"frames" not in wire  # protected on the wire
        assert receiver.rx(wire) == sent  # same length, header unmasked, tag zeroed
    assert sender.stats().port.encrypted == 5
    assert receiver.stats().flows[FlowKey(Direction.RX, CID)].decrypted == 5


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(CipherSuite)), st.binary(min_size=1, max_size=20), st.integers(1, 4),
       st.integers(0, 1 << 30), st.binary(min_size=3, max_size=300))
def test_round_trip_property(suite: CipherSuite, cid: bytes, pn_length: int, pn: int, payload: bytes) -> None:
    secret = bytes(suite.hash_size)
    sender, receiver = NicCryptoEngine(), NicCryptoEngine()
    sender.install(FlowKey(Direction.TX, cid), key_install_from_secret(suite, secret, next_pn=pn))
    receiver.install(FlowKey(Direction.RX, cid), key_install_from_secret(suite, secret, largest_pn=pn - 1))
    sent = host_packet(cid, pn, payload, pn_length=pn_length)
    wire = sender.tx(sent)
    assert wire is not None and receiver.rx(wire) == sent


def test_pn_expansion_across_truncation_wrap() -> None:
    sender, receiver = engines()
    for pn in range(250, 262):  # 1-byte PNs wrap at 256; both sides expand from their largest
        sent = host_packet(CID, pn, bytes(20), pn_length=1)
        wire = sender.tx(sent)
        assert wire is not None and receiver.rx(wire) == sent
    assert receiver.stats().port.decrypted == 12


def test_key_update_started_by_host() -> None:
    """The host rekeys its TX flow and flips the phase bit; the peer's NIC had the next phase pre-installed."""
    sender, receiver = engines()
    nxt, rekey = next_rekey(SUITE, SECRET, 0)
    assert rekey.key_phase == 1
    receiver.rekey(FlowKey(Direction.RX, CID), rekey)
    assert receiver.rx(sender.tx(host_packet(CID, 0, bytes(20))) or b"") == host_packet(CID, 0, bytes(20))
    # sending phase 1 before the TX rekey: no key for that phase -> dropped, never plaintext on the wire
    assert sender.tx(host_packet(CID, 1, bytes(20), phase=1)) is None
    sender.rekey(FlowKey(Direction.TX, CID), rekey)
    sent = host_packet(CID, 2, bytes(20), phase=1)
    assert receiver.rx(sender.tx(sent) or b"") == sent
    tx_flow = sender.stats().flows[FlowKey(Direction.TX, CID)]
    rx_flow = receiver.stats().flows[FlowKey(Direction.RX, CID)]
    assert (tx_flow.no_key_drops, tx_flow.key_phase_switches, rx_flow.key_phase_switches) == (1, 1, 1)
    # a late phase-0 packet (reordered) still decrypts with the kept old key and does not switch back
    late = host_packet(CID, 1, bytes(20))
    wire = NicCryptoEngine()
    wire.install(FlowKey(Direction.TX, CID), key_install_from_secret(SUITE, SECRET, next_pn=1))
    assert receiver.rx(wire.tx(late) or b"") == late
    assert receiver.stats().flows[FlowKey(Direction.RX, CID)].key_phase_switches == 1
    # and the next update (phase 0 again) works from the phase-1 secret
    _, rekey2 = next_rekey(SUITE, nxt, 1)
    assert rekey2.key_phase == 0
    sender.rekey(FlowKey(Direction.TX, CID), rekey2)
    receiver.rekey(FlowKey(Direction.RX, CID), rekey2)
    sent = host_packet(CID, 3, bytes(20), phase=0)
    assert receiver.rx(sender.tx(sent) or b"") == sent


def test_key_update_started_by_peer_without_preinstall_passes_up_then_follows_rekey() -> None:
    """An aioquic peer updates keys; until the host rekeys the NIC, those packets go up still protected."""
    peer = aioquic_pair(SUITE, SECRET)
    _, receiver = engines()
    peer.update_key()
    header = host_packet(CID, 0, b"")[:-16]
    header = bytes([header[0] | 0x04]) + header[1:]
    wire = peer.encrypt_packet(header, b"new phase" + bytes(10), 0)
    assert receiver.rx(wire) is wire  # unchanged: the host's software stack will decrypt it
    assert receiver.stats().port.auth_failures == 1
    receiver.rekey(FlowKey(Direction.RX, CID), next_rekey(SUITE, SECRET, 0)[1])
    wire = peer.encrypt_packet(header[:-2] + b"\x00\x01", b"new phase" + bytes(10), 1)
    out = receiver.rx(wire)
    assert out == header[:-2] + b"\x00\x01" + b"new phase" + bytes(10) + ZERO_TAG


def test_rx_without_key_passes_unchanged() -> None:
    _, receiver = engines()
    sender, _ = engines(cid=b"\x99" * 8)
    wire = sender.tx(host_packet(b"\x99" * 8, 0, bytes(20)))
    assert wire is not None
    assert receiver.rx(wire) is wire
    assert receiver.stats().port.no_key_passes == 1


def test_tx_without_key_drops() -> None:
    sender, _ = engines()
    assert sender.tx(host_packet(b"\x99" * 8, 0, bytes(20))) is None
    assert sender.stats().port.no_key_drops == 1
    # pass_unkeyed_protected_tx forwards only packets that are already protected (tag room not zero)
    lenient = NicCryptoEngine(pass_unkeyed_protected_tx=True)
    protected = host_packet(b"\x99" * 8, 0, bytes(20))[:-16] + b"\x01" * 16
    assert lenient.tx(protected) is protected
    assert lenient.tx(host_packet(b"\x99" * 8, 0, bytes(20))) is None


def test_tx_with_key_refuses_nonzero_tag_room_and_short_packets() -> None:
    sender, _ = engines()
    assert sender.tx(host_packet(CID, 0, bytes(20))[:-1] + b"\x01") is None
    assert sender.tx(host_packet(CID, 0, b"")[:-16] + bytes(3)) is None
    assert sender.stats().flows[FlowKey(Direction.TX, CID)].malformed_drops == 2


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed-flow", "unknown-cid"])
def test_zero_tag_forgery_is_dropped(keyed: bool) -> None:
    """A packet claiming to be NIC-verified (zero tag) that the NIC did not verify must never reach the host."""
    _, receiver = engines()
    cid = CID if keyed else b"\x77" * 8
    forged = host_packet(cid, 5, b"evil frames" + bytes(20))
    assert receiver.rx(forged) is None
    port = receiver.stats().port
    assert port.zero_tag_forgery_drops == 1 and port.decrypted == 0
    assert port.auth_failures == (1 if keyed else 0)


@pytest.mark.parametrize(("policy", "passes"), [(DecryptFailurePolicy.PASS_UP, True),
                                                (DecryptFailurePolicy.DROP, False)])
def test_decrypt_failure_policy(policy: DecryptFailurePolicy, passes: bool) -> None:
    sender, receiver = engines(policy=policy)
    wire = bytearray(sender.tx(host_packet(CID, 0, bytes(20))) or b"")
    wire[15] ^= 0x01
    out = receiver.rx(bytes(wire))
    assert (out == bytes(wire)) if passes else out is None
    assert receiver.stats().port.auth_failures == 1


def test_aioquic_protected_packet_decrypts_to_aioquic_plaintext_and_back() -> None:
    for suite in CipherSuite:
        secret = bytes(range(100, 100 + suite.hash_size))
        theirs = aioquic_pair(suite, secret)
        sender, receiver = engines(suite, secret)
        for pn in range(3):
            header = host_packet(CID, pn, b"")[:-16]
            payload = b"\x01" + bytes(pn) + b"stream data %d" % pn
            assert receiver.rx(theirs.encrypt_packet(header, payload, pn)) == header + payload + ZERO_TAG
            wire = sender.tx(header + payload + ZERO_TAG)
            assert wire is not None
            assert theirs.decrypt_packet(wire, len(header) - 2, pn) == (header, payload, pn)


def test_long_headers_pass_and_coalesced_short_packet_is_protected() -> None:
    client_secret, _ = initial_secrets(CID)
    initial = aioquic_pair(CipherSuite.AES_128_GCM_SHA256, client_secret)
    # Initial: type 0, v1, DCID, empty SCID, token length 0, Length 0x4020 (2-byte varint) covering pn+payload+tag
    payload = b"\x01" + bytes(13)
    header = bytes.fromhex("c300000001") + bytes([len(CID)]) + CID + b"\x00\x00" + \
        (0x4000 | (4 + len(payload) + 16)).to_bytes(2, "big") + bytes(4)
    long_packet = initial.encrypt_packet(header, payload, 0)
    sender, receiver = engines()
    assert sender.tx(long_packet) is long_packet and receiver.rx(long_packet) is long_packet
    short = host_packet(CID, 0, bytes(20))
    wire = sender.tx(long_packet + short)
    assert wire is not None and wire[: len(long_packet)] == long_packet and wire[len(long_packet):] != short
    assert receiver.rx(wire) == long_packet + short
    assert sender.stats().port.long_header_passes == 1
    # zero padding after coalesced packets and datagrams without the fixed bit are not QUIC v1 packets: untouched
    padded = long_packet + bytes(40)
    assert sender.tx(padded) is padded and receiver.rx(padded) is padded
    no_fixed_bit = bytes([0x01]) + CID + bytes(40)
    assert sender.tx(no_fixed_bit) is no_fixed_bit and receiver.rx(no_fixed_bit) is no_fixed_bit


def test_flow_table_limits_and_remove() -> None:
    engine = NicCryptoEngine(max_flows=2, suites=frozenset({CipherSuite.AES_128_GCM_SHA256}))
    keys = key_install_from_secret(SUITE, SECRET)
    engine.install(FlowKey(Direction.RX, b"a" * 8), keys)
    engine.install(FlowKey(Direction.TX, b"b" * 4), keys)
    engine.install(FlowKey(Direction.TX, b"b" * 4), keys)  # replacing is not a new flow
    with pytest.raises(KeyInstallError, match="full"):
        engine.install(FlowKey(Direction.RX, b"c" * 8), keys)
    with pytest.raises(KeyInstallError, match="not supported"):
        engine.install(FlowKey(Direction.RX, b"a" * 8),
                       key_install_from_secret(CipherSuite.CHACHA20_POLY1305_SHA256, SECRET))
    assert engine.remove(FlowKey(Direction.RX, b"a" * 8)) is True
    assert engine.remove(FlowKey(Direction.RX, b"a" * 8)) is False
    with pytest.raises(KeyInstallError, match="no rx flow"):
        engine.rekey(FlowKey(Direction.RX, b"a" * 8), next_rekey(SUITE, SECRET, 0)[1])
    assert engine.flow_count() == 1 and set(engine.stats().flows) == {FlowKey(Direction.TX, b"b" * 4)}


def test_mixed_cid_lengths_on_one_port() -> None:
    sender, receiver = NicCryptoEngine(), NicCryptoEngine()
    for cid in (b"\x01" * 4, b"\x02" * 8, b"\x03" * 20):
        sender.install(FlowKey(Direction.TX, cid), key_install_from_secret(SUITE, SECRET))
        receiver.install(FlowKey(Direction.RX, cid), key_install_from_secret(SUITE, SECRET))
    for cid in (b"\x01" * 4, b"\x02" * 8, b"\x03" * 20):
        sent = host_packet(cid, 0, bytes(24))
        assert receiver.rx(sender.tx(sent) or b"") == sent


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([b"", CID, CID[:4]]))
def test_garbage_never_raises_and_never_leaks(data: bytes, prefix_cid: bytes) -> None:
    """Whatever arrives, the engine answers with a verdict, keeps lengths, and TX never forwards a keyed plaintext."""
    sender, receiver = engines()
    for datagram in (data, bytes([0x40 | (data[0] if data else 0) & 0x07]) + prefix_cid + data):
        up = receiver.rx(datagram)
        assert up is None or len(up) == len(datagram)
        if up is not None and up is not datagram:
            assert up[-16:] == ZERO_TAG  # only verified packets change, and they carry the signal
        out = sender.tx(datagram)
        assert out is None or len(out) == len(datagram)
        if out is datagram and datagram[:1] and not datagram[0] & 0x80 and datagram[0] & 0x40:
            assert datagram[1:9] != CID  # a keyed short header is never forwarded as is


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1 << 20), st.lists(st.integers(1, 300), min_size=1, max_size=30), st.randoms())
def test_reordered_and_lost_packets_expand_right(start: int, gaps: list[int], rnd: random.Random) -> None:
    """PN lengths by the RFC 9000 A.2 rule (nothing acknowledged yet), loss and local reordering: the receiver
    expands every PN from its largest seen (A.3)."""
    assert isinstance(rnd, random.Random)
    pns, pn = [], start
    for gap in gaps:
        pn += gap if gap < 100 else 1  # lost packets in between, never a jump the 1-byte window cannot span
        pns.append(pn)
    sender = NicCryptoEngine()
    sender.install(FlowKey(Direction.TX, CID), key_install_from_secret(SUITE, SECRET, next_pn=start))
    receiver = NicCryptoEngine()
    receiver.install(FlowKey(Direction.RX, CID), key_install_from_secret(SUITE, SECRET, largest_pn=start - 1))
    acked = start - 1 if start else None
    sent = [host_packet(CID, p, b"%d" % p + bytes(20), pn_length=packet_number_length(p, acked)) for p in pns]
    wire = [sender.tx(s) for s in sent]
    order, i = list(range(len(wire))), 0
    while i < len(order) - 1:  # swap disjoint neighbours now and then: reordering depth stays < 128 PNs
        if rnd.random() < 0.3:
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 1
        i += 1
    for i in order:
        assert receiver.rx(wire[i] or b"") == sent[i]
