"""relay.registration against a real aioquic connection pair: synthetic reg_events records are registered in the
server's (the relay's downstream) sent history, then the client acknowledges them with a real ACK frame."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import Epoch
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.registration import KIND_CLONE, KIND_USER, USER_PN_BASE, Registrar, enable

CLIENT = ("198.18.0.1", 4433)
SERVER = ("198.18.0.2", 4433)


@dataclass
class Rec:
    """Stands for a bpf.structs.RegEvent read from the ring."""

    pn: int
    slot: int = 7
    kind: int = KIND_CLONE
    orig_pn: int = 0
    size: int = 1200
    ts_ns: int = 0

    def __post_init__(self) -> None:
        self.ts_ns = self.ts_ns or time.monotonic_ns()


def _pair() -> tuple[QuicConnection, QuicConnection]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["moq-00"], max_datagram_frame_size=65536)
    server_cfg.certificate, server_cfg.private_key = cert, key
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["moq-00"], max_datagram_frame_size=65536)
    client_cfg.verify_mode = 0
    client = QuicConnection(configuration=client_cfg)
    server = QuicConnection(configuration=server_cfg, original_destination_connection_id=client.original_destination_connection_id)
    client.connect(SERVER, now=time.monotonic())
    for _ in range(10):
        _exchange(client, server)
    assert server._handshake_confirmed
    return client, server


def _exchange(client: QuicConnection, server: QuicConnection, to_client: bool = True) -> None:
    now = time.monotonic()
    for data, _ in client.datagrams_to_send(now=now):
        server.receive_datagram(data, CLIENT, now=now)
    for data, _ in server.datagrams_to_send(now=now):
        if to_client:
            client.receive_datagram(data, SERVER, now=now)


def _ack(client: QuicConnection, server: QuicConnection, start: int, stop: int) -> None:
    """The subscriber acknowledges [start, stop): as if it had received the forwarded copies."""
    space = client._spaces[Epoch.ONE_RTT]
    space.ack_queue.add(start, stop)
    space.largest_received_packet = max(space.largest_received_packet, stop - 1)
    space.ack_at = time.monotonic()
    now = time.monotonic()
    for data, _ in client.datagrams_to_send(now=now):
        server.receive_datagram(data, CLIENT, now=now)


def _outstanding(server: QuicConnection) -> int:
    """Bytes in flight as the sent history says (ACK processing kept the two in step)."""
    return sum(p.sent_bytes for sp in server._spaces.values() for p in sp.sent_packets.values() if p.in_flight)


def test_copies_registered_and_acknowledged() -> None:
    client, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    before = server._loss.bytes_in_flight
    # several CPUs: records arrive a few entries out of order
    for pn in (seed + 2, seed, seed + 1, seed + 4, seed + 3):
        reg.on_record(Rec(pn=pn))
    assert reg.flush() == 5
    history = server._spaces[Epoch.ONE_RTT].sent_packets
    assert list(history) == sorted(history)
    assert server._loss.bytes_in_flight == before + 5 * 1200
    _ack(client, server, seed, seed + 5)
    assert not any(seed <= pn < seed + 5 for pn in history)
    assert server._loss.bytes_in_flight == _outstanding(server) <= before  # the copies' bytes left the flight
    assert server._spaces[Epoch.ONE_RTT].largest_acked_packet == seed + 4
    assert reg.largest_acked_changes() == {7: seed + 4}
    assert reg.largest_acked_changes() == {}


def test_user_packet_rekeyed_to_program_pn() -> None:
    client, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    reg.bind(8, server)  # a second subscription of the same connection
    server.send_ping(1)
    _exchange(client, server, to_client=False)  # the program would renumber it: never reaches the client as is
    history = server._spaces[Epoch.ONE_RTT].sent_packets
    user = [pn for pn in history if pn >= USER_PN_BASE]
    assert len(user) == 1
    in_flight = server._loss.bytes_in_flight
    user_bytes = history[user[0]].sent_bytes
    assert history[user[0]].in_flight and user_bytes > 0
    reg.on_record(Rec(pn=seed + 1, kind=KIND_USER, orig_pn=user[0] & 0xFFFF, slot=8))
    reg.on_record(Rec(pn=seed, slot=7))
    reg.on_record(Rec(pn=seed + 2, slot=8))
    assert reg.flush() == 3
    assert seed + 1 in history and user[0] not in history
    assert list(history) == sorted(history)
    assert reg.stats.renumbered == 1 and reg.stats.clones == 2
    _ack(client, server, seed, seed + 3)
    assert not any(seed <= pn < seed + 3 for pn in history)
    assert server._loss.bytes_in_flight == _outstanding(server) <= in_flight - user_bytes


def test_unknown_slot_and_duplicates_counted_not_registered() -> None:
    _, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(1, server)
    reg.on_record(Rec(pn=seed, slot=1))
    reg.on_record(Rec(pn=seed + 1, slot=2))
    reg.flush()
    reg.on_record(Rec(pn=seed, slot=1))
    reg.on_record(Rec(pn=seed + 5, slot=1, kind=KIND_USER, orig_pn=0x1234))
    assert reg.flush() == 0
    assert (reg.stats.no_connection, reg.stats.duplicate_pn, reg.stats.unmatched_user) == (1, 1, 1)
    reg.unbind(1)
    reg.on_record(Rec(pn=seed + 2, slot=1))
    assert reg.flush() == 0


def test_enable_twice_refused() -> None:
    _, server = _pair()
    enable(server)
    with pytest.raises(ValueError):
        enable(server)


def test_unacknowledged_copies_declared_lost_by_packet_threshold() -> None:
    """Invariant 2: loss detection stays on and works on registered copies (RFC 9002 packet threshold 3)."""
    client, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    for pn in range(seed, seed + 6):
        reg.on_record(Rec(pn=pn))
    reg.flush()
    _ack(client, server, seed + 4, seed + 6)  # the first copy is 4 behind the largest acknowledged
    history = server._spaces[Epoch.ONE_RTT].sent_packets
    assert all(pn not in history for pn in (seed, seed + 1, seed + 2))  # <= largest - 3: lost, removed
    assert seed + 3 in history  # within the threshold (and the time threshold): still waiting
    assert server._loss.bytes_in_flight == _outstanding(server)


def test_ring_record_type_is_accepted() -> None:
    """What RingBuffer(reg_events, registrar.on_record, RegEvent) hands over: the ctypes mirror itself."""
    from bpf.structs import RegEvent

    client, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(3, server)
    reg.on_record(RegEvent(ts_ns=time.monotonic_ns(), pn=seed, orig_pn=0, slot=3, size=900, kind=KIND_CLONE, pn_len=2))
    assert reg.flush() == 1
    assert server._spaces[Epoch.ONE_RTT].sent_packets[seed].sent_bytes == 900
    _ack(client, server, seed, seed + 1)
    assert seed not in server._spaces[Epoch.ONE_RTT].sent_packets


def test_several_user_packets_rekeyed_whatever_the_record_order() -> None:
    client, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    history = server._spaces[Epoch.ONE_RTT].sent_packets
    for uid in (1, 2, 3):
        server.send_ping(uid)
        _exchange(client, server, to_client=False)
    user = sorted(pn for pn in history if pn >= USER_PN_BASE)
    assert len(user) == 3
    sizes = [history[pn].sent_bytes for pn in user]  # one may carry an ACK too, depending on timing
    # the program numbered them seed, seed+2, seed+4 around two copies; records arrive shuffled
    for rec in (Rec(pn=seed + 4, kind=KIND_USER, orig_pn=user[2] & 0xFFFF), Rec(pn=seed + 1),
                Rec(pn=seed, kind=KIND_USER, orig_pn=user[0] & 0xFFFF), Rec(pn=seed + 3),
                Rec(pn=seed + 2, kind=KIND_USER, orig_pn=user[1] & 0xFFFF)):  # fmt: skip
        reg.on_record(rec)
    assert reg.flush() == 5
    assert [pn for pn in history if pn >= seed] == list(range(seed, seed + 5))
    assert [history[seed + i].sent_bytes for i in (0, 2, 4)] == sizes  # each keeps its own entry, in order
    _ack(client, server, seed, seed + 5)
    assert not any(pn >= seed for pn in history)
    assert server._loss.bytes_in_flight == _outstanding(server)


def test_a_user_packet_without_a_record_is_declared_lost_and_its_stream_data_resent() -> None:
    """The egress program dropped aioquic's first packet (full ring: EG_RING_FULL), so it never gets a record; the
    next ones do. The program numbers a connection's packets in send order, so the first is declared lost at once:
    its bytes leave the flight and its stream data is pending again (above every acknowledged PN, aioquic's own
    loss scan would never reach it). Not a congestion event: the network did not lose it."""
    _, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    sid = server.get_next_available_stream_id()
    for i in range(3):
        server.send_stream_data(sid, bytes([65 + i]) * 500)
        server.datagrams_to_send(now=time.monotonic())
    space = server._spaces[Epoch.ONE_RTT]
    user = sorted(pn for pn in space.sent_packets if pn >= USER_PN_BASE)
    assert len(user) == 3
    first_bytes, in_flight = space.sent_packets[user[0]].sent_bytes, server._loss.bytes_in_flight
    cwnd = server._loss.congestion_window
    for i, pn in enumerate(user[1:], 1):
        reg.on_record(Rec(pn=seed + i, kind=KIND_USER, orig_pn=pn & 0xFFFF))
    assert reg.flush() == 2
    assert reg.stats.stranded_user == 1 and reg.stats.renumbered == 2
    assert not any(pn >= USER_PN_BASE for pn in space.sent_packets)
    assert server._loss.bytes_in_flight == in_flight - first_bytes
    assert server._streams[sid].sender._pending.bounds() == range(0, 500)  # the first packet's data, to resend
    assert server._loss.congestion_window == cwnd


def test_a_late_record_in_the_same_batch_is_not_stranded() -> None:
    """Records of one batch may come in any order (several CPUs); only entries older than the newest matched one
    that are still unmatched after the whole batch count as dropped."""
    _, server = _pair()
    seed = enable(server)
    reg = Registrar()
    reg.bind(7, server)
    for uid in (1, 2):
        server.send_ping(uid)
        server.datagrams_to_send(now=time.monotonic())
    user = sorted(pn for pn in server._spaces[Epoch.ONE_RTT].sent_packets if pn >= USER_PN_BASE)
    reg.on_record(Rec(pn=seed + 1, kind=KIND_USER, orig_pn=user[1] & 0xFFFF))
    reg.on_record(Rec(pn=seed, kind=KIND_USER, orig_pn=user[0] & 0xFFFF))
    assert reg.flush() == 2 and reg.stats.stranded_user == 0
