"""nic_crypto.bpf.c (the TC crypto engine) through BPF_PROG_TEST_RUN, keys installed by crypto_offload/tc_engine.py:
packets protected by crypto_offload/protection.py decrypt byte-exact in ncr_wire_rx, packets sealed by
ncr_host_tx open with protection.py and equal its own output; the UDP checksum stays valid; a flipped bit fails
the tag; the no-key / long-header / forgery policies and the counters match engine.py's."""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.loader import PinDir
from crypto_offload.api import Counters, DecryptFailurePolicy, Direction, FlowKey, KeyInstall, Rekey
from crypto_offload.engine import NicCryptoEngine
from crypto_offload.keys import CipherSuite
from crypto_offload.protection import HeaderProtection, PayloadProtection, protect, unprotect
from crypto_offload.tc_engine import TcCryptoEngine
from tests.bpf.packets import ETH_P_IPV6, eth, ipv4, ipv6
from tests.support import REPO, have_root, have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.bpf]

CHACHA = CipherSuite.CHACHA20_POLY1305_SHA256
TAG = 16
OK, SHOT = 0, 2  # TC_ACT_OK (peer_ifindex 0 in a test run), TC_ACT_SHOT
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SRC4, DST4 = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("fd00" + "00" * 13 + "01")
DST6 = bytes.fromhex("fd00" + "00" * 13 + "02")


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum(data: bytes) -> int:
    data += bytes(len(data) % 2)
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def udp_csum(pseudo: bytes, seg: bytes) -> int:
    c = ~_sum(pseudo + seg) & 0xFFFF
    return c or 0xFFFF


def frame(payload: bytes, ip: int = 4) -> bytes:
    """Ethernet / IP / UDP with a valid UDP checksum (RFC 768; RFC 8200 8.1 for IPv6)."""
    seg = struct.pack("!HHHH", 4433, 50000, 8 + len(payload), 0) + payload
    if ip == 4:
        pseudo = SRC4 + DST4 + struct.pack("!BBH", 0, 17, len(seg))
    else:
        pseudo = SRC6 + DST6 + struct.pack("!IxxxB", len(seg), 17)
    seg = seg[:6] + struct.pack("!H", udp_csum(pseudo, seg)) + seg[8:]
    return eth(ipv4(seg)) if ip == 4 else eth(ipv6(seg), ETH_P_IPV6)


def split(out: bytes) -> tuple[bytes, bool]:
    """The UDP payload of a frame and whether its UDP checksum verifies."""
    ip4 = out[12:14] == b"\x08\x00"
    l4 = 14 + (20 if ip4 else 40)
    seg = out[l4:]
    pseudo = (out[26:34] + struct.pack("!BBH", 0, 17, len(seg)) if ip4
              else out[22:54] + struct.pack("!IxxxB", len(seg), 17))
    return seg[8:], _sum(pseudo + seg) == 0xFFFF


@pytest.fixture(scope="module")
def built() -> None:
    require(have_root(), "root (BPF_PROG_LOAD / BPF_PROG_TEST_RUN)")
    require(have_tool("clang"), "clang (run `make setup`)")
    out = subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), "build/nic_crypto.o"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def tc(built: None) -> Iterator[TcCryptoEngine]:
    pins = PinDir(f"ncrt{os.getpid() % 10000}{uuid.uuid4().hex[:6]}")
    engine = TcCryptoEngine.load(pins)
    try:
        yield engine
    finally:
        engine.close()
        pins.remove()


def keys(seed: bytes, phase: int = 0, largest: int = -1, next_pn: int = 0,
         policy: DecryptFailurePolicy = DecryptFailurePolicy.PASS_UP) -> KeyInstall:
    return KeyInstall(CHACHA, (seed * 32)[:32], (seed[::-1] * 12)[:12], (seed * 2 + b"hp" * 16)[:32], phase,
                      largest, next_pn, policy)


def run(tc: TcCryptoEngine, prog: str, data: bytes) -> tuple[int, bytes]:
    r = tc.obj.programs[prog].test_run(data)
    return r.retval, r.data


def sealed(k: KeyInstall, dcid: bytes, pn: int, pn_len: int, payload: bytes, phase: int = 0) -> bytes:
    first = 0x40 | (phase << 2) | (pn_len - 1)
    header = bytes([first]) + dcid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
    return protect(header, payload, pn, PayloadProtection(CHACHA, k.payload_key, k.iv), HeaderProtection(CHACHA,
                                                                                                          k.hp_key))


def test_rx_decrypts_byte_exact_and_fixes_checksum(tc: TcCryptoEngine) -> None:
    dcid, k = bytes(range(1, 9)), keys(b"\x11")
    tc.install(FlowKey(Direction.RX, dcid), k)
    payload = b"\x01" + bytes(range(200))
    for ip in (4, 6):
        pkt = sealed(k, dcid, 7, 2, payload)
        ret, out = run(tc, "ncr_wire_rx", frame(pkt, ip))
        got, csum_ok = split(out)
        assert ret == OK and csum_ok
        assert got == bytes([0x41]) + dcid + (7).to_bytes(2, "big") + payload + bytes(TAG)
    assert tc.stats().port.decrypted == 2
    assert tc.stats().flows[FlowKey(Direction.RX, dcid)].decrypted == 2


def test_tx_matches_user_space_protection(tc: TcCryptoEngine) -> None:
    dcid, k = bytes(range(8)), keys(b"\x22", next_pn=300)
    tc.install(FlowKey(Direction.TX, dcid), k)
    payload = b"\x01" * 64
    plain = bytes([0x41]) + dcid + (300).to_bytes(2, "big") + payload + bytes(TAG)
    ret, out = run(tc, "ncr_host_tx", frame(plain))
    got, csum_ok = split(out)
    assert ret == OK and csum_ok
    assert got == sealed(k, dcid, 300, 2, payload)


@HYPO
@given(key=st.binary(min_size=1, max_size=1), cid_len=st.integers(0, 20), pn_len=st.integers(1, 4),
       pn=st.integers(0, 2**40), size=st.integers(4, 1472 - 25 - TAG), ip=st.sampled_from([4, 6]),
       phase=st.integers(0, 1))
def test_property_both_ways_agree_with_user_space(tc: TcCryptoEngine, key: bytes, cid_len: int, pn_len: int,
                                                  pn: int, size: int, ip: int, phase: int) -> None:
    dcid = bytes((i * 7 + key[0]) & 0xFF for i in range(cid_len))
    k = keys(key + b"k", phase=phase, largest=pn - 1, next_pn=pn)
    for d in Direction:  # one flow at a time: with several DCID lengths a lookup may (like engine.py) match
        tc.install(FlowKey(d, dcid), k)  # a longer DCID first
    try:
        _both_ways(tc, k, dcid, pn_len, pn, size, ip, phase)
    finally:
        for d in Direction:
            tc.remove(FlowKey(d, dcid))


def _both_ways(tc: TcCryptoEngine, k: KeyInstall, dcid: bytes, pn_len: int, pn: int, size: int, ip: int,
               phase: int) -> None:
    cid_len = len(dcid)
    payload = bytes((i * 13 + pn) & 0xFF for i in range(size))
    header = bytes([0x40 | (phase << 2) | (pn_len - 1)]) + dcid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
    ref = sealed(k, dcid, pn, pn_len, payload, phase)
    ret, out = run(tc, "ncr_host_tx", frame(header + payload + bytes(TAG), ip))
    got, csum_ok = split(out)
    assert (ret, got, csum_ok) == (OK, ref, True)
    ret, out = run(tc, "ncr_wire_rx", frame(ref, ip))
    got, csum_ok = split(out)
    assert (ret, got, csum_ok) == (OK, header + payload + bytes(TAG), True)
    plain = unprotect(ref, 1 + cid_len, pn, HeaderProtection(CHACHA, k.hp_key),
                      [PayloadProtection(CHACHA, k.payload_key, k.iv)] * 2)
    assert plain.payload == payload and plain.packet_number == pn


@HYPO
@given(bit=st.integers(0, 8 * (1 + 8 + 2 + 40 + TAG) - 1))
def test_single_flipped_bit_fails_the_tag(tc: TcCryptoEngine, bit: int) -> None:
    dcid, k = bytes(range(8)), keys(b"\x33")
    tc.remove(FlowKey(Direction.RX, dcid))
    tc.install(FlowKey(Direction.RX, dcid), k)
    pkt = bytearray(sealed(k, dcid, 5, 2, b"\x01" * 40))
    pkt[bit // 8] ^= 1 << (bit % 8)
    before = tc.stats().port
    ret, out = run(tc, "ncr_wire_rx", frame(bytes(pkt)))
    got, _ = split(out)
    after = tc.stats().port
    if bit in (6, 7):
        # the fixed bit or the header form bit: not a 1-RTT packet, passes untouched like engine.py
        assert (ret, got, after.long_header_passes) == (OK, bytes(pkt), before.long_header_passes + 1)
    elif bit // 8 in range(1, 9):
        # a flipped DCID bit: another connection's packet, no key -> up unchanged like engine.py
        assert (ret, got, after.no_key_passes) == (OK, bytes(pkt), before.no_key_passes + 1)
    else:
        assert (ret, got, after.auth_failures) == (OK, bytes(pkt), before.auth_failures + 1)
        assert after.decrypted == before.decrypted


def test_policies_match_user_engine(tc: TcCryptoEngine) -> None:
    """No key, long headers, forged zero tags, DROP policy, TX without key: same verdicts and counters."""
    user = NicCryptoEngine()
    dcid, k = bytes(range(8)), keys(b"\x44")
    drop = bytes(range(10, 18))
    for eng in (tc, user):
        eng.install(FlowKey(Direction.RX, dcid), k)
        eng.install(FlowKey(Direction.RX, drop), keys(b"\x45", policy=DecryptFailurePolicy.DROP))
    good = sealed(k, dcid, 1, 1, b"\x01" * 30)
    cases = [
        bytes([0x41]) + bytes(8) + b"\x01" + b"\x01" * 30 + b"\x05" * TAG,  # unknown DCID: up unchanged
        bytes([0x41]) + bytes(8) + b"\x01" + b"\x01" * 30 + bytes(TAG),  # unknown DCID, zero tag: forgery
        bytes([0x41]) + dcid + b"\x01" + b"\x01" * 30 + bytes(TAG),  # keyed, zero tag: auth failure + forgery
        good[:-1] + bytes([good[-1] ^ 1]),  # keyed, bad tag: up unchanged (PASS_UP)
        bytes([0x41]) + drop + b"\x01" + b"\x01" * 30 + b"\x07" * TAG,  # DROP policy
        b"\xe1\x00\x00\x00\x01\x08" + dcid + b"\x00" + b"\x00" * 40,  # long header
        good,
    ]
    for pkt in cases:
        ret, out = run(tc, "ncr_wire_rx", frame(pkt))
        want = user.rx(pkt)
        assert (ret == SHOT) == (want is None), pkt.hex()
        if want is not None:
            assert split(out)[0] == want
    ret, _ = run(tc, "ncr_host_tx", frame(bytes([0x41]) + dcid + b"\x01" + b"\x01" * 30 + bytes(TAG)))
    assert ret == SHOT and user.tx(bytes([0x41]) + dcid + b"\x01" + b"\x01" * 30 + bytes(TAG)) is None
    assert tc.stats().port == Counters(**{**vars(user.stats().port)})


def test_key_update_both_phases(tc: TcCryptoEngine) -> None:
    """RFC 9001 6: after a rekey both phases open; a newer packet in the new phase switches (counted once)."""
    dcid, k = bytes(range(8)), keys(b"\x55")
    flow = FlowKey(Direction.RX, dcid)
    tc.install(flow, k)
    new = Rekey(1, b"\x66" * 32, b"\x77" * 12)
    tc.rekey(flow, new)
    k1 = KeyInstall(CHACHA, new.payload_key, new.iv, k.hp_key, 1)
    for pn, kk, phase in ((1, k, 0), (2, k1, 1), (3, k, 0)):
        ret, out = run(tc, "ncr_wire_rx", frame(sealed(kk, dcid, pn, 2, b"\x01" * 30, phase)))
        got, ok = split(out)
        assert ret == OK and ok and got.endswith(bytes(TAG)) and got[11:41] == b"\x01" * 30
    counters = tc.stats().flows[flow]
    assert counters.decrypted == 3 and counters.key_phase_switches == 2
    assert tc.remove(flow) and not tc.remove(flow)


@pytest.mark.parametrize("filler", [20, 21])  # even and odd offset of the 1-RTT packet (checksum orientation)
def test_coalesced_after_long_headers_like_user_engine(tc: TcCryptoEngine, filler: int) -> None:
    """RFC 9000 12.2: a 1-RTT packet after a Handshake packet in one datagram is decrypted, the rest untouched."""
    user = NicCryptoEngine()
    dcid, k = bytes(range(8)), keys(b"\x66")
    for eng in (tc, user):
        eng.install(FlowKey(Direction.RX, dcid), k)
    body = bytes(range(filler))
    handshake = b"\xe0\x00\x00\x00\x01\x08" + dcid + b"\x00" + bytes([0x40 | (len(body) >> 8), len(body) & 0xFF]) + body
    datagram = handshake + sealed(k, dcid, 3, 2, b"\x01" * 50)
    ret, out = run(tc, "ncr_wire_rx", frame(datagram))
    got, ok = split(out)
    assert (ret, ok) == (OK, True)
    assert got == user.rx(datagram) and got.startswith(handshake) and got.endswith(bytes(TAG))
    assert tc.stats().port.decrypted == 1
