"""nic_crypto_test.bpf.c, ChaCha20 side: the BPF block function, keystream XOR and the RFC 9001 5.4.4
header-protection mask agree byte for byte with RFC 8439 and with the user-space reference.

The module also holds the harness client (``Harness``) that the Poly1305/AEAD tests import.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpf.loader import BpfObject, build_path
from crypto_offload.keys import CipherSuite
from crypto_offload.protection import HeaderProtection
from tests.support import REPO, have_root, have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.bpf]

# Ethernet header with the local-experimental EtherType 0x88B5: the test run then pulls no IP header.
ETH = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x88\xb5"
# struct nct_cmd (little endian): op, pad, len, counter, aad_len, key, nonce, hp_key, pad, pn
CMD = struct.Struct("<B3xIII32s12s32s4xQ")
BODY_OFF = len(ETH) + CMD.size  # where aad || data || tag start in the frame
PN_OFF = len(ETH) + CMD.size - 8  # struct nct_cmd.pn in the frame
TAG = 16
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Op(IntEnum):
    """enum nct_op."""

    CHACHA20 = 1
    HP_MASK = 2
    POLY1305 = 3
    AEAD_SEAL = 4
    AEAD_OPEN = 5
    QUIC_PROTECT = 6
    QUIC_UNPROTECT = 7


class Status(IntEnum):
    """enum nct_status (the program's verdict)."""

    OK = 0
    BAD_TAG = 1
    BAD_REQUEST = 2


@dataclass(frozen=True)
class Reply:
    status: Status
    body: bytes  # aad || data || tag as the program left them
    pn: int  # struct nct_cmd.pn as the program left it (QUIC_UNPROTECT writes the decoded PN)
    duration_ns: int


@dataclass
class Harness:
    """Client of nic_crypto_test: one request frame per call, answered in place by BPF_PROG_TEST_RUN."""

    obj: BpfObject
    processed_insns: int

    def call(self, op: Op, body: bytes, *, length: int, aad_len: int = 0, key: bytes = bytes(32),
             nonce: bytes = bytes(12), counter: int = 0, hp_key: bytes = bytes(32), pn: int = 0,
             repeat: int = 1) -> Reply:
        cmd = CMD.pack(op, length, counter, aad_len, key, nonce, hp_key, pn)
        res = self.obj.programs["nic_crypto_test"].test_run(ETH + cmd + body, repeat=repeat)
        (out_pn,) = struct.unpack_from("<Q", res.data, PN_OFF)
        return Reply(Status(res.retval), res.data[BODY_OFF:], out_pn, res.duration_ns)

    def chacha20(self, key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
        r = self.call(Op.CHACHA20, data, length=len(data), key=key, nonce=nonce, counter=counter)
        assert r.status is Status.OK
        return r.body

    def hp_mask(self, hp_key: bytes, sample: bytes) -> bytes:
        r = self.call(Op.HP_MASK, sample, length=16, key=hp_key)
        assert r.status is Status.OK
        return r.body[:5]


@contextmanager
def open_harness() -> Iterator[Harness]:
    """Load nic_crypto_test; log_level=4 keeps the verifier's statistics line (processed instructions)."""
    with BpfObject.load(build_path("nic_crypto_test"), log_level=4) as obj:
        m = re.search(r"processed (\d+) insns", obj.log)
        assert m, "verifier statistics missing from the load log"
        yield Harness(obj, int(m.group(1)))


def build_harness() -> None:
    """Build only nic_crypto_test.o: another program's build error must not hide these results."""
    require(have_root(), "root (BPF_PROG_LOAD / BPF_PROG_TEST_RUN)")
    require(have_tool("clang"), "clang (run `make setup`)")
    require(os.path.exists("/usr/include/bpf/bpf_helpers.h"), "libbpf-dev headers (run `make setup`)")
    out = subprocess.run(["make", "-s", "-C", str(REPO / "bpf"), "build/nic_crypto_test.o"],
                         capture_output=True, text=True)
    assert out.returncode == 0, f"BPF build failed:\n{out.stdout}\n{out.stderr}"


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    build_harness()
    with open_harness() as h:
        yield h


def ref_chacha20(key: bytes, nonce: bytes, counter: int, data: bytes) -> bytes:
    """cryptography's ChaCha20 takes a 16-byte nonce: 4-byte little-endian counter || 12-byte nonce."""
    full = counter.to_bytes(4, "little") + nonce
    return Cipher(algorithms.ChaCha20(key, full), mode=None).encryptor().update(data)


# RFC 8439 2.3.2: block function test vector
KEY_2_3_2 = bytes(range(32))
NONCE_2_3_2 = bytes.fromhex("000000090000004a00000000")
BLOCK_2_3_2 = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)
# RFC 8439 2.4.2: encryption test vector
NONCE_2_4_2 = bytes.fromhex("000000000000004a00000000")
PLAIN_2_4_2 = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
CIPHER_2_4_2 = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)


def test_verifier_accepts_the_harness(harness: Harness) -> None:
    """The whole harness (ChaCha20, Poly1305, AEAD, QUIC ops) passes the verifier well below its 1M budget."""
    assert 0 < harness.processed_insns < 300_000


def test_rfc8439_2_3_2_block(harness: Harness) -> None:
    """Keystream XOR over 64 zero bytes is the serialized block."""
    assert harness.chacha20(KEY_2_3_2, NONCE_2_3_2, 1, bytes(64)) == BLOCK_2_3_2


def test_rfc8439_2_4_2_encryption(harness: Harness) -> None:
    assert harness.chacha20(KEY_2_3_2, NONCE_2_4_2, 1, PLAIN_2_4_2) == CIPHER_2_4_2
    assert harness.chacha20(KEY_2_3_2, NONCE_2_4_2, 1, CIPHER_2_4_2) == PLAIN_2_4_2


def test_largest_payload_and_counter_wrap(harness: Harness) -> None:
    """1984 bytes (31 blocks, the harness maximum) with a counter that wraps past 2^32 - 1 mid-buffer:
    cryptography's counter is 32 bits too (RFC 8439 2.3 leaves wrap to the caller)."""
    key, nonce, data = bytes(range(1, 33)), bytes(range(12)), bytes(range(256)) * 7 + bytes(192)
    got = harness.chacha20(key, nonce, 0xFFFFFFF0, data[:1984])
    blocks = [ref_chacha20(key, nonce, (0xFFFFFFF0 + i) & 0xFFFFFFFF, data[64 * i: 64 * i + 64]) for i in range(31)]
    assert got == b"".join(blocks)


def test_too_long_is_refused(harness: Harness) -> None:
    r = harness.call(Op.CHACHA20, bytes(2000), length=2000)
    assert r.status is Status.BAD_REQUEST and r.body == bytes(2000)


@HYPO
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       counter=st.integers(0, 2**32 - 32), data=st.binary(min_size=1, max_size=1400))
def test_keystream_matches_cryptography(harness: Harness, key: bytes, nonce: bytes, counter: int,
                                        data: bytes) -> None:
    assert harness.chacha20(key, nonce, counter, data) == ref_chacha20(key, nonce, counter, data)


@HYPO
@given(hp_key=st.binary(min_size=32, max_size=32), sample=st.binary(min_size=16, max_size=16))
def test_hp_mask_matches_protection_py(harness: Harness, hp_key: bytes, sample: bytes) -> None:
    ref = HeaderProtection(CipherSuite.CHACHA20_POLY1305_SHA256, hp_key).mask(sample)
    assert harness.hp_mask(hp_key, sample) == ref


def test_rfc9001_a5_mask(harness: Harness) -> None:
    """RFC 9001 A.5: the HP key and sample of the ChaCha20-Poly1305 short-header example give mask aefefe7d03."""
    hp = bytes.fromhex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4")
    sample = bytes.fromhex("5e5cd55c41f69080575d7999c25a5bfb")
    assert harness.hp_mask(hp, sample) == bytes.fromhex("aefefe7d03")


@pytest.mark.parametrize(("op", "length", "aad_len"), [
    (Op.AEAD_SEAL, 16, 65),  # AAD beyond NCT_AAD_MAX
    (Op.AEAD_OPEN, 1985, 0),  # beyond NCT_LEN_MAX
    (Op.QUIC_PROTECT, 2, 2),  # no room for the RFC 9001 5.4.2 sample
    (Op.QUIC_UNPROTECT, 19, 1),  # shorter than PN + sample
    (Op.QUIC_UNPROTECT, 0, 0),  # no header at all
])
def test_bad_requests_leave_the_frame_alone(harness: Harness, op: Op, length: int, aad_len: int) -> None:
    body = bytes(range(40))
    r = harness.call(op, body, length=length, aad_len=aad_len)
    assert r.status is Status.BAD_REQUEST and r.body == body


def test_unknown_op_and_short_frame_are_refused(harness: Harness) -> None:
    prog = harness.obj.programs["nic_crypto_test"]
    unknown = ETH + CMD.pack(99, 1, 0, 0, bytes(32), bytes(12), bytes(32), 0) + b"x"
    assert (prog.test_run(unknown).retval, prog.test_run(unknown).data) == (Status.BAD_REQUEST, unknown)
    short = ETH + bytes(CMD.size - 1)  # the command header itself is cut
    assert prog.test_run(short).retval == Status.BAD_REQUEST
