"""Registration loop: every packet client_egress sent with a program-assigned PN enters aioquic's sent history.

DESIGN invariants 1 and 2, docs/fastpath.md. The program reports two kinds of `reg_events` records:

- kind 1 (a forwarded copy): aioquic never saw the packet, so it is added as a sent 1-RTT packet (in flight,
  ack-eliciting: it carries a DATAGRAM frame) and counted by congestion control, exactly as `on_packet_sent` does;
- kind 2 (a user-space packet renumbered): aioquic already recorded it under the PN it chose; the entry is moved
  to the PN the program gave it (bytes in flight unchanged: they were counted when aioquic sent it).

Why a separate PN range for aioquic: once a connection is enabled, aioquic's own counter and the program's would
collide in `sent_packets` (a copy registered as PN 10 would be overwritten when aioquic sends its own PN 10).
`enable` therefore moves aioquic's counter to `USER_PN_BASE`; entries at or above it are user-space packets whose
record has not arrived yet, matched by the 16 low bits aioquic puts on the wire (`orig_pn`). The wire never sees
those numbers: the program renumbers every 1-RTT packet of an enabled connection, and the NIC protects with the
rewritten PN. Hence: only for offloaded connections, and the connection stays enabled until it closes.

aioquic bisects `sent_packets` by PN on every ACK and stops its loss scan at the first PN above the largest
acknowledged (DESIGN 7): records are sorted per batch and the dict is re-ordered in place when an insertion lands
before an existing key. Call `drain` before feeding any datagram of a subscriber to aioquic (invariant 2).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE, QuicSentPacket
from aioquic.tls import Epoch

USER_PN_BASE = 1 << 40  # aioquic's own PNs live above this once the program owns the connection's numbering
KIND_CLONE = 1
KIND_USER = 2
KIND_STREAM = 3  # a copy of subgroup-stream data: its delivery handlers come from `Registrar.on_stream`
_USER_PN_MASK = (1 << (8 * PACKET_NUMBER_SEND_SIZE)) - 1


class RegRecord(Protocol):
    """The fields of `bpf.structs.RegEvent` this module reads (a ctypes record or a test double)."""

    ts_ns: int
    pn: int
    orig_pn: int
    slot: int
    size: int
    kind: int
    stream_id: int
    stream_off: int
    stream_len: int
    stream_fin: int


class Consumable(Protocol):
    """`bpf.loader.RingBuffer`: consume() runs the callback for every available record."""

    def consume(self) -> int: ...


@dataclass
class RegistrationStats:
    """Counters that make silent mismatches visible (aioquic itself ignores unknown acknowledged PNs)."""

    clones: int = 0
    stream_copies: int = 0
    renumbered: int = 0
    no_connection: int = 0  # record for a slot no longer bound (its subscription was removed)
    unmatched_user: int = 0  # kind 2 without a waiting aioquic entry
    duplicate_pn: int = 0  # a PN already in the history: never overwrite (invariant 1 says it cannot happen)
    reordered: int = 0  # batches that needed the history re-sorted
    stranded_user: int = 0  # aioquic packets that left without a record (ring full, egress drop): declared lost
    largest_pn: int = -1  # largest packet number registered on any connection (tests: crossing 2^16)


def enable(conn: QuicConnection) -> int:
    """Hand the connection's 1-RTT numbering to the program; returns the PN to seed its counter with.

    aioquic has one counter for all epochs; its next value is where the program continues."""
    seed = int(conn._packet_number)
    if seed >= USER_PN_BASE:
        raise ValueError("connection already enabled")
    conn._packet_number = USER_PN_BASE
    return seed


def hand_back(conn: QuicConnection, next_pn: int, skip: int = 64) -> None:
    """The program no longer numbers this connection (its filters are gone): aioquic numbers again, continuing
    ``skip`` past the program's counter (a copy may still be in the device's queue). Its packets that never got a
    program PN left with aioquic's placeholder numbers, which the subscriber cannot decode: declared lost now, so
    their frames are sent again (their bytes would otherwise stay in flight for ever, above every acknowledged PN)."""
    conn._packet_number = next_pn + skip
    if hasattr(conn, "offload_pn_source"):
        conn.offload_pn_source = None
    space = conn._spaces[Epoch.ONE_RTT]
    stranded = [p for pn, p in space.sent_packets.items() if pn >= USER_PN_BASE]
    if stranded:  # not a congestion signal: only out of flight, their frames queued again (aioquic's loop clock)
        conn._loss._on_packets_lost(packets=stranded, space=space, now=time.monotonic(), congestion_event=False)


def _sort_in_place(history: dict[int, QuicSentPacket]) -> None:
    """aioquic holds a reference to the dict: re-order it without replacing it."""
    items = sorted(history.items())
    history.clear()
    history.update(items)


@dataclass
class Registrar:
    """Feeds `reg_events` records into the downstream connections' recovery; one per relay."""

    conns: dict[int, QuicConnection] = field(default_factory=dict)  # slot -> downstream connection
    stats: RegistrationStats = field(default_factory=RegistrationStats)
    _pending: list[RegRecord] = field(default_factory=list)
    _exported: dict[int, int] = field(default_factory=dict)  # slot -> largest_acked last exported
    #: connections the last flush added packets to (their loss timers need re-arming)
    touched: list[QuicConnection] = field(default_factory=list)
    #: stream copies: (connection, record) -> the sent packet's delivery handlers (relay.stream_copies)
    on_stream: Callable[[QuicConnection, Any], list[tuple[Any, tuple[Any, ...]]]] = lambda conn, rec: []

    def bind(self, slot: int, conn: QuicConnection) -> None:
        self.conns[slot] = conn

    def unbind(self, slot: int) -> None:
        """After the subscription's slot left the maps; records still queued for it are dropped (counted)."""
        self.conns.pop(slot, None)
        self._exported.pop(slot, None)

    def on_record(self, record: Any) -> None:
        """RingBuffer callback: queue only, so one drain registers a whole batch in PN order."""
        self._pending.append(record)

    def drain(self, ring: Consumable | None = None) -> int:
        """Consume the ring (if given) and register everything queued; returns records registered."""
        if ring is not None:
            ring.consume()
        return self.flush()

    def flush(self) -> int:
        pending, self._pending = self._pending, []
        by_conn: dict[int, list[RegRecord]] = defaultdict(list)
        conn_of: dict[int, QuicConnection] = {}
        for rec in pending:
            conn = self.conns.get(int(rec.slot))
            if conn is None:
                self.stats.no_connection += 1
                continue
            by_conn[id(conn)].append(rec)
            conn_of[id(conn)] = conn
        done = 0
        for key, recs in by_conn.items():
            done += self._register(conn_of[key], sorted(recs, key=lambda r: int(r.pn)))
        self.touched = list(conn_of.values())
        return done

    def _register(self, conn: QuicConnection, recs: list[RegRecord]) -> int:
        space = conn._spaces[Epoch.ONE_RTT]
        history: dict[int, QuicSentPacket] = space.sent_packets
        last = next(reversed(history), -1) if history else -1
        waiting_keys = self._waiting(history) if any(int(r.kind) == KIND_USER for r in recs) else {}
        unordered = False
        done = 0
        newest_user = -1  # aioquic's own key of the newest user-space packet a record matched
        for rec in recs:
            pn = int(rec.pn)
            if pn in history:
                self.stats.duplicate_pn += 1
                continue
            unordered |= pn < last
            if int(rec.kind) == KIND_USER:
                keys = waiting_keys.get(int(rec.orig_pn) & _USER_PN_MASK)
                if not keys:
                    self.stats.unmatched_user += 1
                    continue
                key = keys.pop(0)
                newest_user = max(newest_user, key)
                waiting = history.pop(key)
                waiting.packet_number = pn
                history[pn] = waiting  # already counted in flight by aioquic when it was sent
                unordered = True  # its old key sat above USER_PN_BASE, after everything
                self.stats.renumbered += 1
            else:
                packet = QuicSentPacket(
                    epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True, is_crypto_packet=False,
                    packet_number=pn, packet_type=QuicPacketType.ONE_RTT, sent_time=int(rec.ts_ns) / 1e9,
                    sent_bytes=int(rec.size),
                )
                if int(rec.kind) == KIND_STREAM:
                    packet.delivery_handlers.extend(self.on_stream(conn, rec))
                    self.stats.stream_copies += 1
                else:
                    self.stats.clones += 1
                conn._loss.on_packet_sent(packet=packet, space=space)
            last = max(last, pn)
            self.stats.largest_pn = max(self.stats.largest_pn, pn)
            done += 1
        if unordered:
            _sort_in_place(history)
            self.stats.reordered += 1
        if newest_user >= 0:
            self._strand(conn, newest_user)
        return done

    def _strand(self, conn: QuicConnection, newest: int) -> None:
        """The program numbers a connection's packets in the order aioquic sent them, so an aioquic entry older than
        one that got its record never will (its packet was dropped: full ring, failed rewrite). Declared lost now,
        as `hand_back` does: above every acknowledged PN, aioquic's loss scan would never reach it, its bytes
        would stay in flight and its frames (stream data) would wait for a PTO, which live media keeps pushing back."""
        space = conn._spaces[Epoch.ONE_RTT]
        stranded = [p for pn, p in space.sent_packets.items() if USER_PN_BASE <= pn < newest]
        if stranded:  # not a congestion signal: only out of flight, their frames queued again
            self.stats.stranded_user += len(stranded)
            conn._loss._on_packets_lost(packets=stranded, space=space, now=time.monotonic(), congestion_event=False)

    @staticmethod
    def _waiting(history: dict[int, QuicSentPacket]) -> dict[int, list[int]]:
        """aioquic's own entries not yet re-keyed, by wire bits, oldest first; they sit at the end of the history
        (kept sorted), so the walk stops at the first program PN."""
        waiting: dict[int, list[int]] = {}
        for key in reversed(history):
            if key < USER_PN_BASE:
                break
            waiting.setdefault(key & _USER_PN_MASK, []).insert(0, key)
        return waiting

    def largest_acked_changes(self) -> dict[int, int]:
        """Slots whose connection's largest acknowledged 1-RTT PN moved since last asked (for
        `FastPathController.set_largest_acked`, RFC 9000 A.2 in the program)."""
        out: dict[int, int] = {}
        for slot, conn in self.conns.items():
            largest = conn._spaces[Epoch.ONE_RTT].largest_acked_packet
            if largest >= 0 and self._exported.get(slot) != largest:
                self._exported[slot] = largest
                out[slot] = int(largest)
        return out
