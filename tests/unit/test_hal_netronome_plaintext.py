"""The insecure lab plaintext mode the netronome backend needs (crypto_offload/plaintext.py), in memory: real TLS
handshakes between aioquic connections, 1-RTT packets in clear with a zero tag, key updates, and both directions of
a mode mismatch refused at the handshake with a message that names the option."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoError
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived
from aioquic.quic.packet import is_long_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto_offload import plaintext
from crypto_offload.plaintext import (
    ALPN_MISMATCH,
    LAB_ALPN,
    MOQT_ALPN,
    ZERO_TAG,
    LabPlaintextQuicConnection,
    PlaintextCryptoContext,
    mismatch_message,
)

CLIENT, SERVER = ("198.18.0.2", 5000), ("198.18.0.1", 4443)
MARKER = b"LAB-PLAINTEXT-MARKER-" * 6


def cert() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    now = datetime.datetime.now(datetime.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
         .sign(key, hashes.SHA256()))
    return c, key


@dataclass
class Pair:
    client: QuicConnection
    server: QuicConnection
    now: float = 0.0
    short_packets: list[bytes] = field(default_factory=list)  # 1-RTT datagrams as they travelled
    events: dict[str, list[QuicEvent]] = field(default_factory=lambda: {"client": [], "server": []})

    def pump(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            self.now += 0.01
            moved = False
            for conn in (self.client, self.server):
                t = conn.get_timer()
                if t is not None and t <= self.now:
                    conn.handle_timer(self.now)
            for src, dst, addr in ((self.client, self.server, CLIENT), (self.server, self.client, SERVER)):
                for data, _ in src.datagrams_to_send(self.now):
                    moved = True
                    if not is_long_header(data[0]):
                        self.short_packets.append(data)
                    dst.receive_datagram(data, addr, self.now)
            for name, conn in (("client", self.client), ("server", self.server)):
                while (ev := conn.next_event()) is not None:
                    self.events[name].append(ev)
            if not moved:  # jump to the next timer (draining, loss recovery) unless it is far away
                timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
                if not timers or min(timers) - self.now > 5:
                    return
                self.now = max(self.now, min(timers))

    def stream_data(self, who: str) -> bytes:
        return b"".join(e.data for e in self.events[who] if isinstance(e, StreamDataReceived))


def make_pair(client_lab: bool, server_lab: bool) -> Pair:
    c, k = cert()
    scfg = QuicConfiguration(is_client=False, alpn_protocols=[MOQT_ALPN], max_datagram_frame_size=65536)
    scfg.certificate, scfg.private_key = c, k
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=[MOQT_ALPN], max_datagram_frame_size=65536)
    ccfg.verify_mode = 0
    if client_lab:
        plaintext.configure(ccfg)
    if server_lab:
        plaintext.configure(scfg)
    client = (LabPlaintextQuicConnection if client_lab else QuicConnection)(configuration=ccfg)
    server = QuicConnection(configuration=scfg, original_destination_connection_id=client.original_destination_connection_id)
    if server_lab:
        LabPlaintextQuicConnection.adopt(server)  # as relay/serve.py does in its connection hook
    client.connect(SERVER, now=0.0)
    p = Pair(client, server)
    p.pump()
    return p


def test_lab_mode_on_both_sides_sends_media_in_clear_with_zero_tags() -> None:
    p = make_pair(True, True)
    done = [e for e in p.events["client"] + p.events["server"] if isinstance(e, HandshakeCompleted)]
    assert len(done) == 2 and all(e.alpn_protocol == MOQT_ALPN for e in done)  # the MoQT session sees moq-00
    sid = p.server.get_next_available_stream_id(is_unidirectional=True)
    p.server.send_stream_data(sid, MARKER, end_stream=True)
    cid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(cid, MARKER, end_stream=True)
    p.pump()
    assert MARKER in p.stream_data("client") and MARKER in p.stream_data("server")
    carrying = [d for d in p.short_packets if MARKER[:21] in d]
    assert len(carrying) >= 2, "the media must be readable on the wire"
    assert all(d.endswith(ZERO_TAG) for d in p.short_packets)


@pytest.mark.parametrize("who", ["client", "server"])
def test_key_updates_keep_working_in_lab_mode(who: str) -> None:
    p = make_pair(True, True)
    (p.client if who == "client" else p.server).request_key_update()
    for i in range(3):
        sid = p.server.get_next_available_stream_id(is_unidirectional=True)
        p.server.send_stream_data(sid, MARKER + bytes([i]), end_stream=True)
        p.pump()
        assert MARKER + bytes([i]) in p.stream_data("client")
    phases = {(d[0] & 0x04) >> 2 for d in p.short_packets}
    assert phases == {0, 1}  # the key phase bit flipped and both sides followed


def closed(p: Pair, who: str) -> ConnectionTerminated:
    ends = [e for e in p.events[who] if isinstance(e, ConnectionTerminated)]
    assert ends, p.events[who]
    return ends[0]


def test_plain_client_refused_by_lab_server_with_the_option_named() -> None:
    p = make_pair(client_lab=False, server_lab=True)
    end = closed(p, "client")
    assert end.error_code == ALPN_MISMATCH
    assert f"runs insecure lab plaintext mode (ALPN {LAB_ALPN}): give --insecure-lab-plaintext" in end.reason_phrase
    msg = mismatch_message(end.error_code, end.reason_phrase, lab=False)
    assert msg is not None and "give --insecure-lab-plaintext here too" in msg
    assert not p.short_packets  # refused before any 1-RTT packet


def test_lab_client_refused_by_plain_server() -> None:
    p = make_pair(client_lab=True, server_lab=False)
    end = closed(p, "client")
    assert end.error_code == ALPN_MISMATCH
    msg = mismatch_message(end.error_code, end.reason_phrase, lab=True)
    assert msg is not None and "was not started with --insecure-lab-plaintext" in msg
    assert not p.short_packets


def test_other_closes_are_not_explained_as_mismatch() -> None:
    assert mismatch_message(0x0, "bye", lab=True) is None


def test_a_protected_packet_is_refused_not_read_as_plaintext() -> None:
    ctx = PlaintextCryptoContext()
    ctx.setup(cipher_suite=0x1301, secret=bytes(32), version=1)  # type: ignore[arg-type]
    packet = bytes([0x40]) + bytes(8) + b"\x01" + b"protected payload" + b"\x55" * 16
    with pytest.raises(CryptoError, match="not plaintext with a zero tag"):
        ctx.decrypt_packet(packet, 9, 0)
    header, payload, pn, phase_changed = ctx.decrypt_packet(packet[:-16] + ZERO_TAG, 9, 0)
    assert (header, payload, pn, phase_changed) == (packet[:10], b"protected payload", 1, False)


def test_adopt_requires_the_lab_configuration() -> None:
    cfg = QuicConfiguration(is_client=False, alpn_protocols=[MOQT_ALPN])
    cfg.certificate, cfg.private_key = cert()
    with pytest.raises(RuntimeError, match="offering only"):
        LabPlaintextQuicConnection.adopt(QuicConnection(configuration=cfg, original_destination_connection_id=bytes(8)))
