"""An aioquic connection whose 1-RTT protection is done by a NIC: real TLS, an unmodified aioquic peer, and a NIC
model built from aioquic's own CryptoContext (independent of our engine) between them, all in memory.

What must hold: media flows both ways; every short-header packet the host hands the NIC is plaintext with a zero
tag (so the kernel can read it) and every one on the wire is protected; key updates started by either side and a
CID change keep the connection alive; keys are removed at the end.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext, apply_key_phase, next_key_phase
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import decode_packet_number, is_long_header, pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto_offload.aioquic_offload import (
    ZERO_TAG,
    Direction,
    OffloadedQuicConnection,
    OneRttKeys,
)

CLIENT_ADDR = ("198.18.0.10", 40000)
SERVER_ADDR = ("198.18.0.1", 4443)
MARKER = b"PLAINTEXT-MARKER-" * 8


def self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(SERVER_ADDR[0]))]), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


@dataclass
class ModelNic:
    """The NIC's job, written with aioquic's crypto: RX decrypt by host CID, TX encrypt by peer CID."""

    host_cid_length: int = 8
    rx: dict[bytes, CryptoContext] = field(default_factory=dict)
    tx: dict[bytes, CryptoContext] = field(default_factory=dict)
    rx_largest: int = 0
    tx_largest: int = 0
    installs: list[tuple[Direction, str]] = field(default_factory=list)
    host_cids: frozenset[bytes] = frozenset()
    peer_cid: bytes = b""
    rx_key: CryptoContext | None = None
    tx_key: CryptoContext | None = None
    released: bool = False
    host_side_short: list[bytes] = field(default_factory=list)
    wire_side_short: list[bytes] = field(default_factory=list)

    # OffloadController
    def install_keys(self, conn: OffloadedQuicConnection, keys: OneRttKeys) -> bool:
        self.installs.append((keys.direction, keys.trigger))
        ctx = CryptoContext(key_phase=keys.key_phase)
        ctx.setup(cipher_suite=keys.cipher_suite, secret=keys.secret, version=1)
        previous = self.rx_key if keys.direction is Direction.RX else self.tx_key
        if keys.trigger != "tls" and previous is not None:
            ctx.hp = previous.hp  # RFC 9001 section 6: a key update never changes the header protection key
        if keys.direction is Direction.RX:
            self.rx_key = ctx
        else:
            self.tx_key = ctx
        return True

    def update_cids(self, conn: OffloadedQuicConnection, host_cids: frozenset[bytes], peer_cid: bytes) -> None:
        self.host_cids, self.peer_cid = host_cids, peer_cid

    def release(self, conn: OffloadedQuicConnection) -> None:
        self.released = True
        self.rx_key = self.tx_key = None

    def _split(self, datagram: bytes) -> list[bytes]:
        buf, packets = Buffer(data=datagram), []
        while not buf.eof():
            start = buf.tell()
            if not datagram[start] & 0x40:  # trailing zero padding after the last packet: not a packet
                packets.append(datagram[start:])
                break
            header = pull_quic_header(buf, host_cid_length=self.host_cid_length)
            end = start + header.packet_length if is_long_header(datagram[start]) else len(datagram)
            packets.append(datagram[start:end])
            buf.seek(end)
        return packets

    def wire_to_host(self, datagram: bytes) -> bytes | None:
        out = []
        for packet in self._split(datagram):
            if is_long_header(packet[0]) or not packet[0] & 0x40 or self.rx_key is None:
                out.append(packet)
                continue
            dcid = packet[1: 1 + self.host_cid_length]
            assert dcid in self.host_cids, "the host did not tell the NIC about a CID the peer uses"
            self.wire_side_short.append(packet)
            header, payload, pn, changed = self.rx_key.decrypt_packet(packet, 1 + self.host_cid_length,
                                                                      self.rx_largest + 1)
            if changed:
                apply_key_phase(self.rx_key, next_key_phase(self.rx_key), "nic")
            self.rx_largest = max(self.rx_largest, pn)
            out.append(header + payload + ZERO_TAG)
        return b"".join(out)

    def host_to_wire(self, datagram: bytes) -> bytes | None:
        out = []
        for packet in self._split(datagram):
            if is_long_header(packet[0]) or not packet[0] & 0x40:
                out.append(packet)
                continue
            self.host_side_short.append(packet)
            if self.tx_key is None:
                return None  # no key: the NIC drops, never forwards plaintext
            assert packet[-16:] == ZERO_TAG
            cid_len = len(self.peer_cid)
            assert packet[1: 1 + cid_len] == self.peer_cid
            pn_len = (packet[0] & 3) + 1
            hdr_len = 1 + cid_len + pn_len
            pn = decode_packet_number(int.from_bytes(packet[1 + cid_len: hdr_len], "big"), pn_len * 8,
                                      self.tx_largest + 1)
            if (packet[0] & 4) >> 2 != self.tx_key.key_phase:
                apply_key_phase(self.tx_key, next_key_phase(self.tx_key), "nic")
            self.tx_largest = max(self.tx_largest, pn)
            out.append(self.tx_key.encrypt_packet(packet[:hdr_len], packet[hdr_len:-16], pn))
        return b"".join(out)


class Nic(Protocol):
    def wire_to_host(self, datagram: bytes) -> bytes | None: ...

    def host_to_wire(self, datagram: bytes) -> bytes | None: ...


@dataclass
class Pair:
    client: QuicConnection
    server: OffloadedQuicConnection
    nic: Any
    now: float = 0.0

    def pump(self, rounds: int = 40) -> None:
        """Move datagrams both ways; when nothing moves, jump to the next timer (loss recovery), a few times."""
        idle = 0
        for _ in range(rounds):
            moved = False
            self.now += 0.005
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)
            for data, _ in self.client.datagrams_to_send(self.now):
                moved = True
                plain = self.nic.wire_to_host(data)
                if plain is not None:
                    self.server.receive_datagram(plain, CLIENT_ADDR, self.now)
            for data, _ in self.server.datagrams_to_send(self.now):
                moved = True
                wire = self.nic.host_to_wire(data)
                if wire is not None:
                    self.client.receive_datagram(wire, SERVER_ADDR, self.now)
            if moved:
                idle = 0
                continue
            idle += 1
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            if idle > 3 or not timers or min(timers) - self.now > 1.0:
                return
            self.now = max(self.now, min(timers))

    def received(self, conn: QuicConnection) -> bytes:
        data = b""
        while (event := conn.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                data += event.data
        return data


def make_pair(nic: Any, controller: Any, suite: tls.CipherSuite | None = None) -> Pair:
    """Real TLS handshake between an unmodified aioquic client and an offloaded server, through `nic`."""
    cert, key = self_signed()
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["moq-00"], max_datagram_frame_size=65536)
    if suite is not None:
        server_cfg.cipher_suites = [suite]
    server_cfg.certificate, server_cfg.private_key = cert, key
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["moq-00"], max_datagram_frame_size=65536)
    client_cfg.verify_mode = 0
    client = QuicConnection(configuration=client_cfg)
    server = OffloadedQuicConnection(configuration=server_cfg,
                                     original_destination_connection_id=client.original_destination_connection_id,
                                     offload=controller)
    client.connect(SERVER_ADDR, now=0.0)
    p = Pair(client, server, nic)
    p.pump()
    return p


@pytest.fixture
def pair() -> Pair:
    nic = ModelNic()
    return make_pair(nic, nic)


def test_handshake_switches_both_directions_to_offload(pair: Pair) -> None:
    status = pair.server.offload_status()
    assert status.rx_offloaded and status.tx_offloaded
    assert (Direction.RX, "tls") in pair.nic.installs and (Direction.TX, "tls") in pair.nic.installs
    assert status.host_cids and status.peer_cid == pair.nic.peer_cid


def test_media_flows_plaintext_to_nic_and_protected_on_wire(pair: Pair) -> None:
    sid = pair.server.get_next_available_stream_id(is_unidirectional=True)
    pair.server.send_stream_data(sid, MARKER, end_stream=True)
    cid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(cid, MARKER, end_stream=True)
    pair.pump()
    assert MARKER in pair.received(pair.client)
    assert MARKER in pair.received(pair.server)
    assert any(MARKER[:17] in p for p in pair.nic.host_side_short), "host side must see plaintext"
    assert all(MARKER[:17] not in p for p in pair.nic.wire_side_short), "wire side must never see plaintext"
    status = pair.server.offload_status()
    assert status.tx_plaintext_packets > 0 and status.rx_plaintext_packets > 0
    assert all(p[-16:] == ZERO_TAG for p in pair.nic.host_side_short)


@pytest.mark.parametrize("who", ["client", "server"])
def test_key_update_by_either_side_keeps_media_flowing(pair: Pair, who: str) -> None:
    (pair.client if who == "client" else pair.server).request_key_update()
    for round_ in range(3):
        sid = pair.server.get_next_available_stream_id(is_unidirectional=True)
        pair.server.send_stream_data(sid, MARKER + bytes([round_]), end_stream=True)
        pair.pump()
        assert MARKER + bytes([round_]) in pair.received(pair.client)
    status = pair.server.offload_status()
    assert status.key_updates == 1
    assert status.rx_offloaded and status.tx_offloaded
    assert any(trigger.endswith("_update") for _, trigger in pair.nic.installs)


def test_cid_change_by_client_keeps_media_flowing(pair: Pair) -> None:
    before = pair.nic.host_cids
    pair.client.change_connection_id()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, MARKER, end_stream=True)
    pair.pump()
    assert MARKER in pair.received(pair.server)
    assert len(before) > 1 and pair.nic.host_cids


def test_release_removes_keys_once(pair: Pair) -> None:
    pair.server.close()
    pair.pump()
    pair.server.offload_release()
    assert pair.nic.released and pair.nic.rx_key is None and pair.nic.tx_key is None
