"""The key-install API over the engine's control socket: same results and errors as calling the engine directly."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from crypto_offload.control import (
    NicUnavailable,
    RemoteKeyInstaller,
    decode_install,
    encode_install,
    serve_control,
)
from crypto_offload.engine import ZERO_TAG, NicCryptoEngine

CID = bytes.fromhex("0badc0de0badc0de")


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[NicCryptoEngine, RemoteKeyInstaller]]:
    engine = NicCryptoEngine(max_flows=2)
    path = str(tmp_path / "ctl.sock")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        server = await serve_control(engine, path)
        started.set()
        await stop.wait()
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(5)
    client = RemoteKeyInstaller(path)
    try:
        yield engine, client
    finally:
        client.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
        loop.close()


def test_install_codec_round_trip() -> None:
    keys = key_install_from_secret(CipherSuite.AES_256_GCM_SHA384, bytes(48), key_phase=1, largest_pn=9,
                                   next_pn=4, policy=DecryptFailurePolicy.DROP)
    assert decode_install(encode_install(keys)) == keys


def test_remote_install_rekey_stats_remove(remote: tuple[NicCryptoEngine, RemoteKeyInstaller]) -> None:
    engine, client = remote
    assert isinstance(client, KeyInstaller)
    assert client.capabilities() == engine.capabilities()
    secret = bytes(range(32))
    flow = FlowKey(Direction.TX, CID)
    client.install(flow, key_install_from_secret(CipherSuite.AES_128_GCM_SHA256, secret))
    client.rekey(flow, next_rekey(CipherSuite.AES_128_GCM_SHA256, secret, 0)[1])
    # the engine now encrypts both phases for that CID
    for phase in (0, 1):
        assert engine.tx(bytes([0x41 | phase << 2]) + CID + b"\0\1" + bytes(20) + ZERO_TAG) is not None
    stats = client.stats()
    assert stats.flows[flow].encrypted == 2 and stats.flows[flow].key_phase_switches == 1
    assert stats.port == engine.stats().port
    assert client.remove(flow) is True and client.remove(flow) is False
    assert engine.flow_count() == 0


def test_remote_errors_are_key_install_errors(remote: tuple[NicCryptoEngine, RemoteKeyInstaller]) -> None:
    _, client = remote
    keys = key_install_from_secret(CipherSuite.CHACHA20_POLY1305_SHA256, bytes(32))
    client.install(FlowKey(Direction.RX, b"a"), keys)
    client.install(FlowKey(Direction.RX, b"b"), keys)
    with pytest.raises(KeyInstallError, match="full"):
        client.install(FlowKey(Direction.RX, b"c"), keys)
    with pytest.raises(KeyInstallError, match="no tx flow"):
        client.rekey(FlowKey(Direction.TX, b"a"), next_rekey(keys.suite, bytes(32), 0)[1])
    client.install(FlowKey(Direction.RX, b"a"), keys)  # the connection survives errors


def test_unknown_operation_and_garbage_are_errors_not_crashes(remote: tuple[NicCryptoEngine, RemoteKeyInstaller]) -> None:
    _, client = remote
    with pytest.raises(KeyInstallError, match="unknown control operation"):
        client._call({"op": "format-disk"})
    with pytest.raises(KeyInstallError):
        client._call({"op": "install", "dir": "rx", "cid": "zz", "keys": {}})
    assert client.capabilities().max_flows == 2


def test_engine_gone_is_reported_as_nic_unavailable(tmp_path: Path) -> None:
    with pytest.raises(NicUnavailable, match="cannot reach the NIC engine"):
        RemoteKeyInstaller(str(tmp_path / "nothing.sock"))
