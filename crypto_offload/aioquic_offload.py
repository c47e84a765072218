"""Hand an aioquic connection's 1-RTT packet protection to the NIC.

Once the NIC holds a connection's 1-RTT keys, the host sends short-header packets in plaintext with 16 zero bytes
of tag room (the NIC encrypts and applies header protection on the way out) and accepts short-header packets whose
tag room is all zero as NIC-verified plaintext (the NIC decrypted them; it drops zero-tagged packets it could not
verify, DESIGN.md section 5). Anything else - a packet that arrived before the NIC had keys, or that the NIC could
not decrypt - still goes through aioquic's own software crypto, so nothing breaks while keys are in flight.

This module knows aioquic's internals (the ``_cryptos`` table, ``_initialize``, host and peer CIDs); it is the only
place in the project that does, and the version range in pyproject.toml pins what it was written against.
Long-header packets (Initial, Handshake) are never offloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioquic import tls
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.crypto import CryptoContext, CryptoPair
from aioquic.quic.packet import decode_packet_number, is_long_header

from crypto_offload.api import Direction  # one Direction type for the controller and the key-install API

TAG_SIZE = 16
ZERO_TAG = bytes(TAG_SIZE)
# The header-protected bits of a short header's first byte (RFC 9001 section 5.4.1): reserved, key phase, PN length.
KEY_PHASE_BIT = 0x04
PN_LENGTH_MASK = 0x03


@dataclass(frozen=True)
class OneRttKeys:
    """A 1-RTT traffic secret as TLS produced it; the NIC side derives key, IV and HP key from it (RFC 9001 5.1)."""

    direction: Direction
    cipher_suite: tls.CipherSuite
    secret: bytes
    key_phase: int
    trigger: str  # "tls" for the handshake's keys, "local_update" / "remote_update" for key updates,
    # "peer_confirmed" (RX, same keys) once the peer sent its first packet in the phase of our own update


class OffloadController(Protocol):
    """What the HAL side provides: key install/rekey/remove towards the NIC for one connection."""

    def install_keys(self, conn: OffloadedQuicConnection, keys: OneRttKeys) -> bool:
        """Install (or rekey to) these keys; True once the NIC can use them, so the host may switch to plaintext."""

    def update_cids(self, conn: OffloadedQuicConnection, host_cids: frozenset[bytes], peer_cid: bytes) -> None:
        """The set of host CIDs (RX keys) or the peer CID in use (TX key) changed."""

    def release(self, conn: OffloadedQuicConnection) -> None:
        """The connection is gone: remove every key the NIC holds for it."""


class OffloadedCryptoContext(CryptoContext):
    """A 1-RTT crypto context that sends plaintext and accepts NIC-verified plaintext once `offloaded` is set.

    The software AEAD and header protection stay set up: they handle packets that the NIC passed up still protected,
    and key updates derive the next phase from them exactly as aioquic does.
    """

    def __init__(self, key_phase: int = 0, setup_cb: Callable[[str], None] = lambda t: None,
                 teardown_cb: Callable[[str], None] = lambda t: None,
                 confirm_cb: Callable[[], None] = lambda: None) -> None:
        super().__init__(key_phase=key_phase, setup_cb=self._phase_entered, teardown_cb=teardown_cb)
        self._outer_setup_cb = setup_cb
        self._confirm_cb = confirm_cb
        self.offloaded = False
        self.plaintext_packets = 0
        self.software_packets = 0
        self.old_phase_packets = 0  # NIC-verified packets of the previous phase (RFC 9001 6.5), not key updates
        #: how the current phase began ("tls", "local_update", "remote_update") and the lowest PN received in it
        self.phase_trigger = "tls"
        self.phase_first_pn: int | None = None
        self._update_pn: int | None = None  # the packet that is about to start a remote update

    def _phase_entered(self, trigger: str) -> None:
        """Every new key phase (aioquic's setup callback): reset the per-phase PN record, then the outer hook."""
        self.phase_trigger = trigger
        self.phase_first_pn = self._update_pn if trigger == "remote_update" else None
        self._update_pn = None
        self._outer_setup_cb(trigger)

    @property
    def peer_confirmed(self) -> bool:
        """False between a local key update and the first packet the peer protected with the new keys."""
        return self.phase_trigger != "local_update" or self.phase_first_pn is not None

    def _seen_in_phase(self, packet_number: int) -> None:
        first = self.phase_first_pn is None
        if self.phase_first_pn is None or packet_number < self.phase_first_pn:
            self.phase_first_pn = packet_number
        if first and self.phase_trigger == "local_update":
            self._confirm_cb()  # the peer switched: the NIC may now drop the previous phase's keys

    def decrypt_packet(self, packet: bytes, encrypted_offset: int,
                       expected_packet_number: int) -> tuple[bytes, bytes, int, bool]:
        if not (self.offloaded and not is_long_header(packet[0]) and len(packet) >= encrypted_offset + 4 + TAG_SIZE
                and packet[-TAG_SIZE:] == ZERO_TAG):
            self.software_packets += 1
            result = super().decrypt_packet(packet, encrypted_offset, expected_packet_number)
            if not is_long_header(packet[0]) and self.secret is not None:
                if result[3]:
                    self._update_pn = result[2]
                else:
                    self._seen_in_phase(result[2])
            return result
        # NIC-verified plaintext: first byte and packet number are already unmasked (RFC 9001 5.4 done by the NIC).
        first_byte = packet[0]
        pn_length = (first_byte & PN_LENGTH_MASK) + 1
        plain_header = packet[: encrypted_offset + pn_length]
        truncated = int.from_bytes(packet[encrypted_offset: encrypted_offset + pn_length], "big")
        packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
        key_phase_changed = ((first_byte & KEY_PHASE_BIT) >> 2) != self.key_phase
        if key_phase_changed and (not self.peer_confirmed or packet_number < (self.phase_first_pn or 0)):
            # RFC 9001 6.5: the other phase with a PN below the current phase's first one (or before the peer has
            # answered our own update at all) is the PREVIOUS phase, which the NIC still decrypts - never a new
            # update. Treating it as one moved aioquic two phases ahead of the peer (NIC auth failures, lost copies).
            key_phase_changed = False
            self.old_phase_packets += 1
        elif key_phase_changed:
            self._update_pn = packet_number
        else:
            self._seen_in_phase(packet_number)
        self.plaintext_packets += 1
        return plain_header, packet[len(plain_header): -TAG_SIZE], packet_number, key_phase_changed

    def encrypt_packet(self, plain_header: bytes, plain_payload: bytes, packet_number: int) -> bytes:
        if not self.offloaded:
            self.software_packets += 1
            return super().encrypt_packet(plain_header, plain_payload, packet_number)
        self.plaintext_packets += 1
        return plain_header + plain_payload + ZERO_TAG


class OffloadedCryptoPair(CryptoPair):
    """aioquic's CryptoPair with offload-capable contexts; aioquic's key-update logic is reused unchanged."""

    def __init__(self, recv_setup_cb: Callable[[str], None], recv_teardown_cb: Callable[[str], None],
                 send_setup_cb: Callable[[str], None], send_teardown_cb: Callable[[str], None],
                 recv_confirm_cb: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.recv = OffloadedCryptoContext(setup_cb=recv_setup_cb, teardown_cb=recv_teardown_cb,
                                           confirm_cb=recv_confirm_cb)
        self.send = OffloadedCryptoContext(setup_cb=send_setup_cb, teardown_cb=send_teardown_cb)
        self.deferred_key_updates = 0

    def update_key(self) -> None:
        """RFC 9001 6.1 (aioquic does not check it): no new update while the peer has not answered the last one.
        The NIC holds two phases; a second update would leave the peer on keys neither slot has."""
        recv = self.recv
        assert isinstance(recv, OffloadedCryptoContext)
        if not recv.peer_confirmed:
            self.deferred_key_updates += 1
            return
        super().update_key()


@dataclass
class OffloadStatus:
    """What a connection reports about its 1-RTT protection (the relay's stats and the tests read this)."""

    rx_offloaded: bool = False
    tx_offloaded: bool = False
    rx_plaintext_packets: int = 0
    tx_plaintext_packets: int = 0
    rx_software_packets: int = 0
    tx_software_packets: int = 0
    key_updates: int = 0
    host_cids: frozenset[bytes] = field(default_factory=frozenset)
    peer_cid: bytes = b""


class OffloadedQuicConnection(QuicConnection):
    """A QuicConnection whose 1-RTT protection moves to the NIC as soon as the controller has installed the keys."""

    def __init__(self, *, offload: OffloadController, **kwargs: Any) -> None:
        self._offload_setup(offload)
        super().__init__(**kwargs)

    def _offload_setup(self, offload: OffloadController) -> None:
        self._offload = offload
        self._offload_key_updates = 0
        self._offload_cids: tuple[frozenset[bytes], bytes] | None = None
        self._offload_released = False
        #: set once a kernel program numbers this connection's packets (relay.fastpath_runtime): the NIC must then
        #: expand PNs from the program's counter, not from aioquic's (which has moved out of the way)
        self.offload_pn_source: Callable[[], int] | None = None

    @classmethod
    def adopt(cls, quic: QuicConnection, offload: OffloadController) -> OffloadedQuicConnection:
        """Turn a QuicConnection that aioquic's server built into an offloaded one, before its first datagram.

        aioquic's `serve()` constructs the connection itself and hands it to the protocol factory; the relay's
        connection hook calls this there. The crypto pairs do not exist yet (`_initialize` runs on the first
        datagram), so the offload-capable 1-RTT pair is in place before any key is derived.
        """
        if hasattr(quic, "_cryptos") and quic._cryptos:
            raise RuntimeError("adopt() must run before the connection has processed a datagram")
        quic.__class__ = cls
        assert isinstance(quic, cls)
        quic._offload_setup(offload)
        return quic

    def offload_next_tx_pn(self) -> int:
        """The packet number the connection sends next: aioquic's (one counter for all packet spaces), or the
        kernel program's once it owns the numbering."""
        if self.offload_pn_source is not None:
            return int(self.offload_pn_source())
        return int(self._packet_number)

    def offload_largest_rx_pn(self) -> int:
        """Largest 1-RTT packet number received so far, -1 for none (the NIC expands truncated PNs from it)."""
        space = self._spaces.get(tls.Epoch.ONE_RTT) if hasattr(self, "_spaces") else None
        largest = getattr(space, "largest_received_packet", -1) if space is not None else -1
        return int(largest)

    # aioquic builds its crypto pairs here; swap in the offload-capable 1-RTT pair before any key exists.
    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        old = self._cryptos[tls.Epoch.ONE_RTT]
        self._cryptos[tls.Epoch.ONE_RTT] = OffloadedCryptoPair(
            recv_setup_cb=self._offload_hook(Direction.RX, old.recv._setup_cb),
            recv_teardown_cb=old.recv._teardown_cb,
            send_setup_cb=self._offload_hook(Direction.TX, old.send._setup_cb),
            send_teardown_cb=old.send._teardown_cb,
            recv_confirm_cb=self._offload_peer_confirmed,
        )

    def _offload_hook(self, direction: Direction, original: Callable[[str], None]) -> Callable[[str], None]:
        def on_setup(trigger: str) -> None:
            original(trigger)
            self._offload_keys_changed(direction, trigger)

        return on_setup

    def _offload_context(self, direction: Direction) -> OffloadedCryptoContext:
        pair = self._cryptos[tls.Epoch.ONE_RTT]
        assert isinstance(pair, OffloadedCryptoPair)
        ctx = pair.recv if direction is Direction.RX else pair.send
        assert isinstance(ctx, OffloadedCryptoContext)
        return ctx

    def _offload_keys_changed(self, direction: Direction, trigger: str) -> None:
        ctx = self._offload_context(direction)
        if ctx.secret is None or ctx.cipher_suite is None or self._offload_released:
            return
        if trigger != "tls" and direction is Direction.RX:
            self._offload_key_updates += 1
        # CIDs first: the controller needs them to key the NIC tables.
        self.offload_sync_cids()
        keys = OneRttKeys(direction, ctx.cipher_suite, ctx.secret, ctx.key_phase, trigger)
        installed = self._offload.install_keys(self, keys)
        # A key update keeps the offload state: the NIC follows the phase (its rekey), the host keeps plaintext.
        ctx.offloaded = installed if trigger == "tls" else (ctx.offloaded and installed)

    def _offload_peer_confirmed(self) -> None:
        """The peer's first packet in the phase of our own key update: the NIC may now replace the previous
        phase's RX keys with the next phase's ("peer_confirmed", see NicOffloadController)."""
        ctx = self._offload_context(Direction.RX)
        if ctx.secret is None or ctx.cipher_suite is None or self._offload_released or not ctx.offloaded:
            return
        self._offload.install_keys(self, OneRttKeys(Direction.RX, ctx.cipher_suite, ctx.secret, ctx.key_phase,
                                                    "peer_confirmed"))

    def offload_sync_cids(self) -> None:
        """Tell the controller when the host's CIDs or the peer CID in use changed (cheap when nothing did)."""
        if self._offload_released:
            return
        current = (frozenset(c.cid for c in self._host_cids), self._peer_cid.cid)
        if current != self._offload_cids:
            self._offload_cids = current
            self._offload.update_cids(self, current[0], current[1])

    def offload_release(self) -> None:
        """Remove the NIC's keys for this connection (idempotent); the relay calls it when the connection ends."""
        if not self._offload_released:
            self._offload_released = True
            self._offload.release(self)

    def offload_status(self) -> OffloadStatus:
        rx, tx = self._offload_context(Direction.RX), self._offload_context(Direction.TX)
        cids = self._offload_cids or (frozenset(), b"")
        return OffloadStatus(rx.offloaded, tx.offloaded, rx.plaintext_packets, tx.plaintext_packets,
                             rx.software_packets, tx.software_packets, self._offload_key_updates, cids[0], cids[1])

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        # CIDs can change while receiving (NEW_CONNECTION_ID, retirement) and while building packets (we issue new
        # CIDs): sync before, so TX has the peer CID's key, and after, so RX knows new host CIDs before the peer can
        # use them (it needs at least one round trip).
        self.offload_sync_cids()
        datagrams = super().datagrams_to_send(now)
        self.offload_sync_cids()
        if self._state in (QuicConnectionState.TERMINATED,):
            self.offload_release()
        return datagrams
