"""The NIC engine between a real aioquic client and an offloaded aioquic server, in memory.

Everything the relay will do with a NIC: TLS handshake in software, 1-RTT keys handed to the engine through
NicOffloadController, plaintext with a zero tag on the host side, protection on the wire, key updates started by
either side, a CID change, and removal of every key at the end.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.tls import CipherSuite as TlsSuite
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto_offload.aioquic_offload import OffloadedQuicConnection
from crypto_offload.api import CipherSuite
from crypto_offload.controller import NicOffloadController
from crypto_offload.engine import ZERO_TAG, NicCryptoEngine

CLIENT_ADDR = ("198.18.0.10", 40000)
SERVER_ADDR = ("198.18.0.1", 4443)
MARKER = b"MEDIA-OBJECT-PLAINTEXT-" * 6


def certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(SERVER_ADDR[0]))]),
                           False)
            .sign(key, hashes.SHA256()))
    return cert, key


@dataclass
class Link:
    client: QuicConnection
    server: OffloadedQuicConnection
    nic: NicCryptoEngine
    controller: NicOffloadController
    now: float = 0.0
    host_side: list[bytes] = field(default_factory=list)  # short-header datagrams the host handed the NIC
    wire_side: list[bytes] = field(default_factory=list)  # everything the NIC put on the wire

    def pump(self, rounds: int = 60) -> None:
        idle = 0
        for _ in range(rounds):
            self.now += 0.005
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                moved = True
                self.wire_side.append(data)
                up = self.nic.rx(data)
                if up is not None:
                    self.server.receive_datagram(up, CLIENT_ADDR, self.now)
            for data, _ in self.server.datagrams_to_send(self.now):
                moved = True
                if not data[0] & 0x80:
                    self.host_side.append(data)
                out = self.nic.tx(data)
                if out is not None:
                    self.wire_side.append(out)
                    self.client.receive_datagram(out, SERVER_ADDR, self.now)
            if moved:
                idle = 0
                continue
            idle += 1
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            if idle > 3 or not timers or min(timers) - self.now > 1.0:
                return
            self.now = max(self.now, min(timers))

    def send_both_ways(self, tag: bytes) -> None:
        sid = self.server.get_next_available_stream_id(is_unidirectional=True)
        self.server.send_stream_data(sid, MARKER + tag, end_stream=True)
        cid = self.client.get_next_available_stream_id()
        self.client.send_stream_data(cid, MARKER + tag, end_stream=True)
        self.pump()
        assert MARKER + tag in received(self.client)
        assert MARKER + tag in received(self.server)


def received(conn: QuicConnection) -> bytes:
    data = b""
    while (event := conn.next_event()) is not None:
        if isinstance(event, StreamDataReceived):
            data += event.data
    return data


def make_link(suite: CipherSuite) -> Link:
    cert, key = certificate()
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["moq-00"])
    server_cfg.certificate, server_cfg.private_key = cert, key
    server_cfg.cipher_suites = [TlsSuite(int(suite))]
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["moq-00"], verify_mode=0)
    client = QuicConnection(configuration=client_cfg)
    nic = NicCryptoEngine()
    controller = NicOffloadController(nic)
    server = OffloadedQuicConnection(configuration=server_cfg, offload=controller,
                                     original_destination_connection_id=client.original_destination_connection_id)
    client.connect(SERVER_ADDR, now=0.0)
    link = Link(client, server, nic, controller)
    link.pump()
    return link


@pytest.mark.parametrize("suite", list(CipherSuite), ids=[s.name for s in CipherSuite])
def test_media_through_engine_plaintext_on_host_protected_on_wire(suite: CipherSuite) -> None:
    link = make_link(suite)
    status = link.server.offload_status()
    assert status.rx_offloaded and status.tx_offloaded and link.controller.stats.refusals == 0
    link.send_both_ways(b"1")
    assert any(MARKER[:20] in d for d in link.host_side), "the host hands the NIC plaintext"
    assert all(MARKER[:20] not in d for d in link.wire_side), "the wire never carries plaintext"
    assert all(d[-16:] == ZERO_TAG for d in link.host_side)
    port = link.nic.stats().port
    assert port.encrypted > 0 and port.decrypted > 0
    assert port.no_key_drops == 0 and port.zero_tag_forgery_drops == 0
    status = link.server.offload_status()
    assert status.rx_plaintext_packets > 0 and status.tx_plaintext_packets > 0


@pytest.mark.parametrize("who", ["client", "server"])
def test_key_update_by_either_side(who: str) -> None:
    link = make_link(CipherSuite.AES_128_GCM_SHA256)
    link.send_both_ways(b"before")
    (link.client if who == "client" else link.server).request_key_update()
    for i in range(3):
        link.send_both_ways(bytes([i]))
    port = link.nic.stats().port
    assert port.key_phase_switches >= 2  # the NIC followed the phase both ways (RX and TX)
    assert port.no_key_drops == 0 and port.auth_failures == 0  # the next phase was ready on the NIC in time
    assert link.server.offload_status().key_updates == 1
    assert link.controller.stats.refusals == 0


def test_cid_change_and_release() -> None:
    link = make_link(CipherSuite.CHACHA20_POLY1305_SHA256)
    # 1-RTT packets coalesced with the client's Finished can beat the server's RX keys: those go up protected
    during_handshake = link.nic.stats().port.no_key_passes
    link.client.change_connection_id()
    link.send_both_ways(b"after cid change")
    assert link.nic.stats().port.no_key_passes == during_handshake  # every host CID the client used was keyed
    assert link.nic.flow_count() > 1
    link.server.close()
    link.pump()
    link.server.offload_release()
    assert link.nic.flow_count() == 0
