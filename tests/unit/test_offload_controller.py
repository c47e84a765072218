"""The NIC offload chain with every real part: an unmodified aioquic client, our NicCryptoEngine as the NIC, and an
OffloadedQuicConnection whose keys the NicOffloadController installs through the key-install API."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from aioquic import tls

from crypto_offload.api import Direction, FlowKey
from crypto_offload.controller import NicOffloadController
from crypto_offload.engine import NicCryptoEngine
from tests.unit.test_aioquic_offload import MARKER, Pair, make_pair


@dataclass
class EngineNic:
    """The engine between the wire and the host, recording what each side saw."""

    engine: NicCryptoEngine
    host_side: list[bytes] = field(default_factory=list)
    wire_side: list[bytes] = field(default_factory=list)

    def wire_to_host(self, datagram: bytes) -> bytes | None:
        self.wire_side.append(datagram)
        out = self.engine.rx(datagram)
        if out is not None:
            self.host_side.append(out)
        return out

    def host_to_wire(self, datagram: bytes) -> bytes | None:
        self.host_side.append(datagram)
        out = self.engine.tx(datagram)
        if out is not None:
            self.wire_side.append(out)
        return out


@pytest.fixture
def chain() -> tuple[Pair, EngineNic, NicOffloadController]:
    engine = NicCryptoEngine()
    nic = EngineNic(engine)
    controller = NicOffloadController(engine)
    return make_pair(nic, controller), nic, controller


def send_both_ways(pair: Pair, tag: bytes) -> None:
    sid = pair.server.get_next_available_stream_id(is_unidirectional=True)
    pair.server.send_stream_data(sid, MARKER + tag, end_stream=True)
    cid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(cid, MARKER + tag, end_stream=True)
    pair.pump()
    assert MARKER + tag in pair.received(pair.client)
    assert MARKER + tag in pair.received(pair.server)


def test_keys_installed_for_every_host_cid_and_the_peer_cid(chain: tuple[Pair, EngineNic, NicOffloadController]) -> None:
    pair, nic, _ = chain
    status = pair.server.offload_status()
    assert status.rx_offloaded and status.tx_offloaded
    flows = set(nic.engine.stats().flows)
    assert {FlowKey(Direction.RX, cid) for cid in status.host_cids} <= flows
    assert FlowKey(Direction.TX, status.peer_cid) in flows


@pytest.mark.parametrize("suite", [tls.CipherSuite.AES_128_GCM_SHA256, tls.CipherSuite.AES_256_GCM_SHA384,
                                   tls.CipherSuite.CHACHA20_POLY1305_SHA256], ids=lambda s: s.name)
def test_media_plaintext_on_host_side_protected_on_wire(suite: tls.CipherSuite) -> None:
    engine = NicCryptoEngine()
    nic = EngineNic(engine)
    pair = make_pair(nic, NicOffloadController(engine), suite)
    assert pair.server.tls.key_schedule is not None and pair.server.tls.key_schedule.cipher_suite == suite
    send_both_ways(pair, b"1")
    assert any(MARKER[:17] in d for d in nic.host_side)
    assert not any(MARKER[:17] in d for d in nic.wire_side)
    port = nic.engine.stats().port
    assert port.decrypted > 0 and port.encrypted > 0 and port.auth_failures == 0 and port.no_key_drops == 0


@pytest.mark.parametrize("who", ["client", "server"])
def test_key_updates_by_either_side_lose_nothing(chain: tuple[Pair, EngineNic, NicOffloadController], who: str) -> None:
    pair, nic, controller = chain
    for i in range(3):
        (pair.client if who == "client" else pair.server).request_key_update()
        send_both_ways(pair, bytes([i]))
    assert pair.server.offload_status().key_updates == 3
    port = nic.engine.stats().port
    assert port.key_phase_switches >= 3 and port.auth_failures == 0
    assert controller.stats.refusals == 0


def test_cid_change_moves_tx_key_and_keeps_flowing(chain: tuple[Pair, EngineNic, NicOffloadController]) -> None:
    pair, nic, _ = chain
    old_peer = pair.server.offload_status().peer_cid
    pair.server.change_connection_id()
    send_both_ways(pair, b"c")
    new_peer = pair.server.offload_status().peer_cid
    assert new_peer != old_peer
    flows = set(nic.engine.stats().flows)
    assert FlowKey(Direction.TX, new_peer) in flows and FlowKey(Direction.TX, old_peer) not in flows


def test_release_leaves_the_nic_empty(chain: tuple[Pair, EngineNic, NicOffloadController]) -> None:
    pair, nic, controller = chain
    pair.server.close()
    pair.pump()
    pair.server.offload_release()
    assert nic.engine.flow_count() == 0 and controller.connections() == 0


def test_refused_install_keeps_software_crypto(chain: tuple[Pair, EngineNic, NicOffloadController]) -> None:
    engine = NicCryptoEngine(max_flows=0, pass_unkeyed_protected_tx=True)
    nic = EngineNic(engine)
    controller = NicOffloadController(engine)
    pair = make_pair(nic, controller)
    status = pair.server.offload_status()
    assert not status.rx_offloaded and not status.tx_offloaded and controller.stats.refusals >= 1
    send_both_ways(pair, b"s")
    assert not any(MARKER[:17] in d for d in nic.host_side + nic.wire_side)
