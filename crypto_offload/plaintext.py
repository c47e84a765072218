"""INSECURE lab plaintext mode: QUIC 1-RTT packets travel unencrypted and unauthenticated.

For NICs without QUIC crypto (the Netronome/Corigine NFP) the card can only parse and classify media if it sees
it in clear. This mode keeps the whole QUIC handshake protected (TLS 1.3 still authenticates the relay) but
sends every 1-RTT packet in the shape a crypto-offloading NIC hands the host: header in clear (no header
protection), payload in clear, and 16 zero bytes where the AEAD tag would be, so sizes and the BPF parsers stay
the same. Anyone on the path can read and forge media and control messages: lab use only.

Both ends must agree, or one would read garbage. Agreement is the ALPN: a side in this mode offers only
``moq-00-insecure-lab-plaintext`` (RFC 9001 section 8.1: a handshake without a common ALPN fails), so a
mismatched peer fails the TLS handshake with error 0x178 (no_application_protocol) before any 1-RTT packet,
and ``mismatch_message`` says which side lacks the option. The connection reports the plain MoQT ALPN to the
MoQT session above it. Same seam as ``aioquic_offload.OffloadedQuicConnection``: only the 1-RTT crypto pair
is replaced; Initial and Handshake packets are always protected.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionError
from aioquic.quic.crypto import CryptoContext, CryptoError, CryptoPair
from aioquic.quic.packet import decode_packet_number, is_long_header

MOQT_ALPN = "moq-00"
LAB_ALPN = "moq-00-insecure-lab-plaintext"
OPTION = "--insecure-lab-plaintext"
ALPN_MISMATCH = 0x100 + 120  # CRYPTO_ERROR + TLS alert no_application_protocol (RFC 9001 section 4.8)
TAG_SIZE = 16
ZERO_TAG = bytes(TAG_SIZE)
KEY_PHASE_BIT, PN_LENGTH_MASK = 0x04, 0x03  # short header first byte (RFC 9000 section 17.3.1)

WARNING = ("INSECURE LAB PLAINTEXT MODE: QUIC 1-RTT packets (all media and MoQT control) are sent and accepted "
           "WITHOUT encryption or authentication; anyone on the path can read and forge them. Lab use only.")
HELP = (f"WARNING - INSECURE, LAB ONLY: run QUIC 1-RTT unencrypted and unauthenticated (ALPN {LAB_ALPN}), for NICs "
        f"without QUIC crypto (--hal netronome); every side (relay, relay pub, relay sub) must give it, a peer "
        f"without it is refused at the handshake")

log = logging.getLogger("relay.lab_plaintext")


def warn(who: str) -> None:
    """The loud warning, once per process start (stderr through logging, which every tool configures)."""
    log.warning("%s: %s", who, WARNING)


def configure(config: QuicConfiguration) -> QuicConfiguration:
    """Offer only the lab ALPN: a peer not in this mode shares no ALPN with us and the handshake fails."""
    config.alpn_protocols = [LAB_ALPN]
    return config


def mismatch_message(error_code: int, reason: str, lab: bool) -> str | None:
    """The user's explanation of a handshake closed for want of a common ALPN, or None for other closes."""
    if error_code != ALPN_MISMATCH:
        return None
    if lab:
        return (f"the peer refused insecure lab plaintext mode (no common ALPN: we offered only {LAB_ALPN}); "
                f"it was not started with {OPTION}: give the option on every side, or on none "
                f"(peer said: {reason or 'nothing'})")
    return (f"the peer speaks no ALPN we offered ({MOQT_ALPN}); if it runs in insecure lab plaintext mode, "
            f"give {OPTION} here too (peer said: {reason or 'nothing'})")


class PlaintextCryptoContext(CryptoContext):
    """1-RTT without protection: the software keys are still derived (key phases keep working exactly as in
    aioquic) but never used; a packet that is not plaintext with a zero tag is refused."""

    def decrypt_packet(self, packet: bytes, encrypted_offset: int,
                       expected_packet_number: int) -> tuple[bytes, bytes, int, bool]:
        if self.aead is None:
            return super().decrypt_packet(packet, encrypted_offset, expected_packet_number)  # KeyUnavailableError
        if is_long_header(packet[0]) or len(packet) < encrypted_offset + 4 + TAG_SIZE or packet[-TAG_SIZE:] != ZERO_TAG:
            raise CryptoError("lab plaintext: 1-RTT packet is not plaintext with a zero tag (peer not in lab mode?)")
        first_byte = packet[0]
        pn_length = (first_byte & PN_LENGTH_MASK) + 1
        plain_header = packet[: encrypted_offset + pn_length]
        truncated = int.from_bytes(packet[encrypted_offset: encrypted_offset + pn_length], "big")
        packet_number = decode_packet_number(truncated, pn_length * 8, expected_packet_number)
        key_phase_changed = ((first_byte & KEY_PHASE_BIT) >> 2) != self.key_phase
        return plain_header, packet[len(plain_header): -TAG_SIZE], packet_number, key_phase_changed

    def encrypt_packet(self, plain_header: bytes, plain_payload: bytes, packet_number: int) -> bytes:
        assert self.is_valid(), "Encryption key is not available"
        return plain_header + plain_payload + ZERO_TAG


class PlaintextCryptoPair(CryptoPair):
    def __init__(self, old: CryptoPair) -> None:
        super().__init__()
        self.recv = PlaintextCryptoContext(setup_cb=old.recv._setup_cb, teardown_cb=old.recv._teardown_cb)
        self.send = PlaintextCryptoContext(setup_cb=old.send._setup_cb, teardown_cb=old.send._teardown_cb)


class LabPlaintextQuicConnection(QuicConnection):
    """A QuicConnection whose 1-RTT packets are plaintext; build it with a `configure`d configuration."""

    @classmethod
    def adopt(cls, quic: QuicConnection) -> LabPlaintextQuicConnection:
        """Switch a connection aioquic's server built, before its first datagram (as OffloadedQuicConnection)."""
        if getattr(quic, "_cryptos", None):
            raise RuntimeError("adopt() must run before the connection has processed a datagram")
        if quic.configuration.alpn_protocols != [LAB_ALPN]:
            raise RuntimeError(f"lab plaintext needs a configuration offering only {LAB_ALPN} (use configure())")
        quic.__class__ = cls
        assert isinstance(quic, cls)
        # aioquic bound its frame handlers at construction: point CRYPTO frames at our override
        handlers = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
        handlers[0x06] = (quic._handle_crypto_frame, handlers[0x06][1])
        return quic

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self._cryptos[tls.Epoch.ONE_RTT] = PlaintextCryptoPair(self._cryptos[tls.Epoch.ONE_RTT])

    def _handle_crypto_frame(self, context: Any, frame_type: int, buf: Any) -> None:
        # Our side refused a peer's ALPN: say why in the CONNECTION_CLOSE the peer will read.
        try:
            super()._handle_crypto_frame(context, frame_type, buf)
        except QuicConnectionError as exc:
            if exc.error_code == ALPN_MISMATCH:
                exc.reason_phrase = f"this endpoint runs insecure lab plaintext mode (ALPN {LAB_ALPN}): give {OPTION}"
                log.warning("refused a peer not in insecure lab plaintext mode (it offered no %s)", LAB_ALPN)
            raise

    def next_event(self) -> events.QuicEvent | None:
        event = super().next_event()
        if isinstance(event, events.HandshakeCompleted):
            if event.alpn_protocol != LAB_ALPN:  # cannot happen with a configure()d config; never guess
                self.close(error_code=ALPN_MISMATCH, reason_phrase="lab plaintext mode needs ALPN " + LAB_ALPN)
                return event
            # The MoQT session above speaks plain moq-00 inside the lab variant.
            return dataclasses.replace(event, alpn_protocol=MOQT_ALPN)
        return event
