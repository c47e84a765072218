"""The key-install API records and the helpers that turn aioquic's 1-RTT secrets into NIC keys."""

from __future__ import annotations

import pytest
from aioquic import tls
from aioquic.quic.crypto import CryptoContext, derive_key_iv_hp, next_key_phase

from crypto_offload.api import (
    CipherSuite,
    Counters,
    DecryptFailurePolicy,
    Direction,
    FlowKey,
    KeyInstall,
    KeyInstallError,
    Rekey,
    key_install_from_secret,
    next_rekey,
    rekey_from_secret,
)


@pytest.mark.parametrize("suite", [
    tls.CipherSuite.AES_128_GCM_SHA256, tls.CipherSuite.AES_256_GCM_SHA384, tls.CipherSuite.CHACHA20_POLY1305_SHA256])
def test_install_from_aioquic_secret_matches_aioquic_derivation(suite: tls.CipherSuite) -> None:
    secret = bytes(range(7, 7 + CipherSuite(int(suite)).hash_size))
    keys = key_install_from_secret(suite, secret, key_phase=1, largest_pn=41,
                                   policy=DecryptFailurePolicy.DROP)
    key, iv, hp = derive_key_iv_hp(cipher_suite=suite, secret=secret, version=1)
    assert (keys.payload_key, keys.iv, keys.hp_key) == (key, iv, hp)
    assert (keys.suite, keys.key_phase, keys.largest_pn, keys.decrypt_failure_policy) == (
        CipherSuite(int(suite)), 1, 41, DecryptFailurePolicy.DROP)
    assert key.hex() not in repr(keys)  # keys stay out of logs


def test_next_rekey_matches_aioquic_key_update() -> None:
    suite = tls.CipherSuite.AES_256_GCM_SHA384
    secret = bytes(48)
    ctx = CryptoContext()
    ctx.setup(cipher_suite=suite, secret=secret, version=1)
    nxt_ctx = next_key_phase(ctx)
    nxt, rekey = next_rekey(suite, secret, 0)
    assert nxt == nxt_ctx.secret
    assert rekey == rekey_from_secret(suite, nxt_ctx.secret, 1)
    key, iv, _ = derive_key_iv_hp(cipher_suite=suite, secret=nxt_ctx.secret, version=1)
    assert (rekey.key_phase, rekey.payload_key, rekey.iv) == (1, key, iv)


def test_validation() -> None:
    good = key_install_from_secret(CipherSuite.AES_128_GCM_SHA256, bytes(32))
    with pytest.raises(KeyInstallError):
        KeyInstall(CipherSuite.AES_256_GCM_SHA384, good.payload_key, good.iv, good.hp_key)  # 16-byte key for AES-256
    with pytest.raises(KeyInstallError):
        KeyInstall(good.suite, good.payload_key, good.iv, good.hp_key, key_phase=2)
    with pytest.raises(KeyInstallError):
        KeyInstall(good.suite, good.payload_key, good.iv, good.hp_key, largest_pn=-2)
    with pytest.raises(KeyInstallError):
        Rekey(0, good.payload_key, good.iv[:8])
    with pytest.raises(KeyInstallError):
        FlowKey(Direction.RX, bytes(21))
    chacha = KeyInstall(0x1303, bytes(32), bytes(12), bytes(32))  # type: ignore[arg-type]  # aioquic passes its own enum
    assert chacha.suite is CipherSuite.CHACHA20_POLY1305_SHA256


def test_counters_add() -> None:
    total = Counters(decrypted=2)
    total.add(Counters(decrypted=1, zero_tag_forgery_drops=3))
    assert (total.decrypted, total.zero_tag_forgery_drops, total.encrypted) == (3, 3, 0)
