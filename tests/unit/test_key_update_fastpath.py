"""Relay-initiated key updates with NIC offload (tests/sim/test_hal_sim.py, fast path on): the race that broke them.

With the kernel fast path the relay itself sends few packets, so aioquic applies a requested key update lazily,
inside some later `encrypt_packet`, while the subscriber keeps sending ACKs in the old phase. Two things went wrong
there, both pinned down here with the real engine and controller and an unmodified aioquic peer:

1. A peer packet of the previous phase that the NIC had already decrypted (NIC-verified plaintext, zero tag) was
   reported to aioquic as a peer key update (its K bit differs from the new phase). aioquic then moved to the
   phase after next, two ahead of the peer: NIC RX auth failures on every later peer packet and lost copies.
   RFC 9001 6.5 says such a packet belongs to the previous phase.
2. On the local update the controller replaced the previous phase's RX key with the next one ("ahead") at once,
   so peer packets still in the old phase failed authentication in the NIC (about one per relay key update).
"""

from __future__ import annotations

import pytest
from aioquic import tls

from crypto_offload.aioquic_offload import OffloadedCryptoContext, OffloadedCryptoPair
from crypto_offload.controller import NicOffloadController
from crypto_offload.engine import NicCryptoEngine
from tests.unit.test_aioquic_offload import CLIENT_ADDR, MARKER, SERVER_ADDR, Pair, make_pair
from tests.unit.test_offload_controller import EngineNic, send_both_ways


@pytest.fixture
def chain() -> tuple[Pair, EngineNic]:
    engine = NicCryptoEngine()
    nic = EngineNic(engine)
    pair = make_pair(nic, NicOffloadController(engine))
    send_both_ways(pair, b"warm-up")
    return pair, nic


def recv_ctx(pair: Pair) -> OffloadedCryptoContext:
    ctx = pair.server._cryptos[tls.Epoch.ONE_RTT].recv
    assert isinstance(ctx, OffloadedCryptoContext)
    return ctx


def client_sends(pair: Pair, tag: bytes) -> list[bytes]:
    """Old-phase peer packets: built now, delivered later by the test (in flight during the relay's update)."""
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, MARKER + tag, end_stream=True)
    return [d for d, _ in pair.client.datagrams_to_send(pair.now)]


def relay_updates_keys(pair: Pair) -> list[bytes]:
    """The relay requests an update and sends one packet (a PING): aioquic applies the update inside it."""
    before = recv_ctx(pair).key_phase
    pair.server.request_key_update()
    pair.server.send_ping(1)
    out = [d for d, _ in pair.server.datagrams_to_send(pair.now)]
    assert out and recv_ctx(pair).key_phase == 1 - before
    return out


def deliver_to_client(pair: Pair, nic: EngineNic, datagrams: list[bytes]) -> None:
    for d in datagrams:
        wire = nic.host_to_wire(d)
        assert wire is not None
        pair.client.receive_datagram(wire, SERVER_ADDR, pair.now)


def test_previous_phase_plaintext_from_the_nic_is_not_a_key_update(chain: tuple[Pair, EngineNic]) -> None:
    pair, nic = chain
    phase = recv_ctx(pair).key_phase
    # The NIC decrypts the peer's packets (old phase) before the relay's update; the host reads them after it.
    plain = [nic.wire_to_host(d) for d in client_sends(pair, b"old")]
    update = relay_updates_keys(pair)
    for p in plain:
        assert p is not None
        pair.server.receive_datagram(p, CLIENT_ADDR, pair.now)
    ctx = recv_ctx(pair)
    assert ctx.key_phase == 1 - phase, "the old-phase packet moved aioquic to yet another phase"
    assert ctx.old_phase_packets >= 1 and pair.server.offload_status().key_updates == 1
    assert MARKER + b"old" in pair.received(pair.server)  # authenticated by the NIC with the peer's keys: kept
    deliver_to_client(pair, nic, update)
    pair.pump()
    send_both_ways(pair, b"after")
    assert nic.engine.stats().port.auth_failures == 0


def test_nic_keeps_the_previous_phase_until_the_peer_switches(chain: tuple[Pair, EngineNic]) -> None:
    pair, nic = chain
    held = client_sends(pair, b"late")
    update = relay_updates_keys(pair)
    # The peer's old-phase packets reach the NIC after the relay's update: the NIC must still decrypt them.
    for d in held:
        plain = nic.wire_to_host(d)
        assert plain is not None
        pair.server.receive_datagram(plain, CLIENT_ADDR, pair.now)
    assert nic.engine.stats().port.auth_failures == 0
    assert MARKER + b"late" in pair.received(pair.server)
    deliver_to_client(pair, nic, update)
    pair.pump()
    # The next phase is ahead now: a peer-initiated update right after is decrypted by the NIC.
    pair.client.request_key_update()
    send_both_ways(pair, b"peer-update")
    port = nic.engine.stats().port
    assert port.auth_failures == 0 and pair.server.offload_status().key_updates == 2


def test_no_second_relay_update_before_the_peer_answers(chain: tuple[Pair, EngineNic]) -> None:
    """RFC 9001 6.1 (aioquic does not check it): with two NIC slots a second update would strand the peer."""
    pair, nic = chain
    phase = recv_ctx(pair).key_phase
    relay_updates_keys(pair)  # not delivered: the peer never answers
    pair.server.request_key_update()
    pair.server.send_ping(2)
    pair.server.datagrams_to_send(pair.now)
    assert recv_ctx(pair).key_phase == 1 - phase, "a second update before the peer answered the first"
    pair_crypto = pair.server._cryptos[tls.Epoch.ONE_RTT]
    assert isinstance(pair_crypto, OffloadedCryptoPair) and pair_crypto.deferred_key_updates == 1
    pair.pump()  # retransmissions in the new phase reach the peer, which answers
    send_both_ways(pair, b"then")
    assert recv_ctx(pair).peer_confirmed and nic.engine.stats().port.auth_failures == 0
    pair.server.request_key_update()  # answered now: the next update is allowed again
    send_both_ways(pair, b"again")
    assert recv_ctx(pair).key_phase == phase and nic.engine.stats().port.auth_failures == 0
