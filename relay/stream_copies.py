"""Kernel copies of subgroup-stream data, kept consistent with aioquic's downstream streams (docs/fastpath.md, "Streams").

A relay copies a subgroup stream byte for byte (only the alias in the header differs, at the same length), so a
subscriber's stream has the publisher's offsets. User space opens the subscriber's stream and writes the header and
the bytes it has; from then on `client_egress` sends copies of later data at the same offsets. User space still
writes *every* byte into its aioquic stream (it receives the original packets anyway): the bytes stay in aioquic's
send buffer for retransmission, and the ranges the kernel sent are taken out of aioquic's pending set, so aioquic
sends only what the kernel did not (its copies dropped, or data that arrived before the mapping). Each kernel copy
becomes a sent packet whose delivery handler is the stream's own (RFC 9000 section 13.3: lost stream data is
retransmitted, here by aioquic from its buffer).

Flow control (RFC 9000 section 4): the kernel may send a stream's data only up to a limit in its map entry. Raising
that limit reserves connection credit in aioquic's own accounting (`_remote_max_data_used`), so aioquic and the
kernel can never spend the same credit; a kernel copy's new bytes turn reserved credit into used credit.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.rangeset import RangeSet

from relay.fastpath import FastPathController
from relay.moqt.varint import varint_len

log = logging.getLogger("relay.fastpath")
GRANT_SHARE = 2  # a kernel stream gets at most 1/(GRANT_SHARE * streams) of the free connection credit per refresh


def _deliver_each_byte_once(sender: Any) -> None:
    """Make a stream sender tolerate two packets carrying the same bytes, which a kernel-copied stream can have (a
    copy, and aioquic's own send of data it wrote before it learned of that copy).

    RFC 9000 section 13.3: data is delivered once any packet carrying it is acknowledged. aioquic assumes one
    packet per range: a second ACK of a range it already freed lands below `_buffer_start` in its acknowledged set
    and blocks every later trim, so the stream's whole buffer stays until the connection ends (the fast-path soak
    grew ~250 KiB/s per 4 Mbit/s until the stall policy reset the streams); and a LOST of a range acknowledged by
    the other packet would queue bytes that are no longer in the buffer (aioquic would then send whatever a
    negative slice of it holds). Both are clipped to what is still unacknowledged, and bytes an ACK freed leave the resend
    queue (only those: taking every acknowledged range out of it disturbed the kernel's flow-control grants). Installed on the sender itself: packets aioquic builds from now on capture this handler."""
    original = sender.on_data_delivery

    def on_data_delivery(delivery: QuicDeliveryState, start: int, stop: int, fin: bool) -> None:
        start = max(start, sender._buffer_start)
        stop = max(stop, start)
        if delivery == QuicDeliveryState.ACKED:
            original(delivery, start, stop, fin)
            if len(sender._pending) and sender._pending[0].start < sender._buffer_start:  # queued after the other
                sender._pending.subtract(0, sender._buffer_start)  # packet's loss, freed now: never resend
            return
        left = RangeSet([range(start, stop)]) if stop > start else RangeSet()
        for r in list(sender._acked):
            left.subtract(r.start, r.stop)
        for r in left:
            original(delivery, r.start, r.stop, False)
        if fin and not sender._acked_fin:
            original(delivery, stop, stop, True)

    sender.on_data_delivery = on_data_delivery


@dataclass(eq=False)
class KernelStream:
    """One upstream stream as copied for one subscription."""

    quic: QuicConnection
    stream: Any  # aioquic QuicStream
    slot: int
    conn_id: int
    up_id: int
    down_id: int
    limit: int  # the flow-control limit in the map (absolute offset)
    min_offset: int = 0  # data below it went from user space (the header and what it had at open time)
    reserved: int = 0  # connection credit counted as used in aioquic for [highest, limit)
    kernel_sent: RangeSet = field(default_factory=RangeSet)  # sent by the kernel, not yet taken out of pending
    fin_sent: bool = False
    deferred: list[tuple[QuicDeliveryState, int, int, bool]] = field(default_factory=list)
    mapped: bool = True


@dataclass
class StreamCopyStats:
    mapped: int = 0
    refused_id_length: int = 0  # the subscriber's stream id needs another varint length: user space copies it
    copies: int = 0
    bytes: int = 0  # stream data the kernel copies carried
    deferred_deliveries: int = 0
    limit_updates: int = 0


@dataclass
class KernelStreams:
    controller: FastPathController
    stats: StreamCopyStats = field(default_factory=StreamCopyStats)
    _by_down: dict[tuple[int, int], KernelStream] = field(default_factory=dict)  # (id(quic), down id)
    _by_up: dict[tuple[int, int], list[KernelStream]] = field(default_factory=dict)  # (conn id, up id)
    _dirty: dict[int, KernelStream] = field(default_factory=dict)

    def opened(self, quic: QuicConnection, slot: int, conn_id: int, track_id: int, up_id: int, down_id: int,
               first_len: int) -> bool:
        """User space opened `down_id` for `up_id` and wrote its first `first_len` bytes: hand the rest to the kernel."""
        if varint_len(up_id) != varint_len(down_id):
            self.stats.refused_id_length += 1
            return False
        stream = quic._streams.get(down_id)
        if stream is None:
            return False
        k = KernelStream(quic, stream, slot, conn_id, up_id, down_id, limit=first_len, min_offset=first_len)
        _deliver_each_byte_once(stream.sender)
        self._grant(k, self._free_credit(quic) // (GRANT_SHARE * (1 + self._count(quic))))
        self.controller.map_stream(slot, up_id, down_id, first_len, k.limit, varint_len(down_id))
        first = (conn_id, up_id) not in self._by_up
        self._by_up.setdefault((conn_id, up_id), []).append(k)
        self._by_down[(id(quic), down_id)] = k
        if first:
            self.controller.add_stream(conn_id, up_id, track_id)
        self.stats.mapped += 1
        return True

    def ended(self, conn_id: int, up_id: int) -> None:
        """The upstream stream finished or was reset: no more copies of it (its last ones are registered already:
        the ring is drained before user space reads the packet that ended it)."""
        ks = self._by_up.pop((conn_id, up_id), None)
        if ks is None:
            return
        self.controller.remove_stream(conn_id, up_id)
        for k in ks:
            self._unmap(k)

    def unmap(self, slot: int, up_id: int) -> None:
        """One subscription's copy of one stream stops (the subscriber sent STOP_SENDING)."""
        self._unmap_where(slot, up_id)

    def unmap_slot(self, slot: int) -> None:
        """A subscription left the fast path: none of its streams is copied any more."""
        self._unmap_where(slot, None)

    def _unmap_where(self, slot: int, up_id: int | None) -> None:
        for key, ks in list(self._by_up.items()):
            if up_id is not None and key[1] != up_id:
                continue
            for k in [k for k in ks if k.slot == slot]:
                self._unmap(k)
                ks.remove(k)
            if not ks:  # the last copy of that upstream stream: its packets are no longer candidates
                del self._by_up[key]
                self.controller.remove_stream(*key)

    def forget(self, quic: QuicConnection) -> None:
        for key in [key for key in self._by_down if key[0] == id(quic)]:
            k = self._by_down.pop(key)
            self._dirty.pop(id(k), None)

    def _unmap(self, k: KernelStream) -> None:
        if k.mapped:
            with contextlib.suppress(OSError):
                self.controller.unmap_stream(k.slot, k.up_id)
            k.mapped = False
            self._release(k)
        if len(k.kernel_sent) == 0 and not k.deferred:  # a late record for it only means aioquic sends that data too
            self._by_down.pop((id(k.quic), k.down_id), None)

    # --- registration -------------------------------------------------------------------------------------------

    def record(self, quic: QuicConnection, rec: Any) -> list[tuple[Any, tuple[Any, ...]]]:
        """A kernel copy of stream data was sent: account it and return the sent packet's delivery handlers."""
        k = self._by_down.get((id(quic), int(rec.stream_id)))
        if k is None:
            return []
        start, stop, fin = int(rec.stream_off), int(rec.stream_off) + int(rec.stream_len), bool(rec.stream_fin)
        sender = k.stream.sender
        new = max(0, stop - sender.highest_offset)
        if new:
            sender.highest_offset = stop
            taken = min(new, k.reserved)  # reserved credit becomes used credit; beyond it, count it now
            k.reserved -= taken
            quic._remote_max_data_used += new - taken
        if stop > start:
            k.kernel_sent.add(start, stop)
        k.fin_sent |= fin
        self._dirty[id(k)] = k
        self.stats.copies += 1
        self.stats.bytes += stop - start
        return [(self._delivered, (k, start, stop, fin))]

    def _delivered(self, delivery: QuicDeliveryState, k: KernelStream, start: int, stop: int, fin: bool) -> None:
        sender = k.stream.sender
        written = stop <= sender._buffer_stop and (not fin or sender._buffer_fin == stop)
        if written:
            sender.on_data_delivery(delivery, start, stop, fin)
            return
        if delivery == QuicDeliveryState.LOST:
            # not written yet: leave that data to aioquic (it becomes pending when user space writes it)
            if stop > start:
                k.kernel_sent.subtract(start, stop)
            if fin:
                k.fin_sent = False
            return
        k.deferred.append((delivery, start, stop, fin))
        self._dirty[id(k)] = k
        self.stats.deferred_deliveries += 1

    # --- after user space wrote (end of every received datagram) ------------------------------------------------

    def apply(self) -> None:
        """Take what the kernel sent out of aioquic's pending data once user space has written it."""
        for key, k in list(self._dirty.items()):
            sender = k.stream.sender
            stop_written = sender._buffer_stop
            for r in list(k.kernel_sent):
                cut = min(r.stop, stop_written)
                if r.start < cut:
                    sender._pending.subtract(r.start, cut)
                    k.kernel_sent.subtract(r.start, cut)
            if k.fin_sent and sender._buffer_fin is not None and len(k.kernel_sent) == 0:
                sender._pending_eof = False
            ready = [d for d in k.deferred if d[2] <= stop_written and (not d[3] or sender._buffer_fin == d[2])]
            for d in ready:
                k.deferred.remove(d)
                sender.on_data_delivery(*d)
            if len(k.kernel_sent) == 0 and not k.deferred:
                del self._dirty[key]
                if not k.mapped:
                    self._by_down.pop((id(k.quic), k.down_id), None)

    def refresh(self, quic: QuicConnection) -> None:
        """After the subscriber's packets were processed (MAX_DATA / MAX_STREAM_DATA may have moved): keep each
        mapped stream's reservation exact and grant more of the free credit."""
        ks = [k for k in self._by_down.values() if k.quic is quic and k.mapped]
        if not ks:
            return
        for k in ks:  # what aioquic or registered kernel copies already sent needs no reservation any more
            want = max(0, k.limit - k.stream.sender.highest_offset)
            quic._remote_max_data_used += want - k.reserved
            k.reserved = want
        grant = self._free_credit(quic) // (GRANT_SHARE * len(ks))
        for k in ks:
            old = k.limit
            self._grant(k, grant)
            if k.limit != old:
                self.controller.map_stream(k.slot, k.up_id, k.down_id, k.min_offset, k.limit, varint_len(k.down_id))
                self.stats.limit_updates += 1

    # --- credit --------------------------------------------------------------------------------------------------

    @staticmethod
    def _free_credit(quic: QuicConnection) -> int:
        return max(0, int(quic._remote_max_data) - int(quic._remote_max_data_used))

    def _count(self, quic: QuicConnection) -> int:
        return sum(1 for k in self._by_down.values() if k.quic is quic and k.mapped)

    def _grant(self, k: KernelStream, grant: int) -> None:
        """Raise the limit by at most `grant` within MAX_STREAM_DATA, reserving the credit it covers."""
        base = max(k.limit, k.stream.sender.highest_offset)
        new_limit = min(int(k.stream.max_stream_data_remote), base + grant)
        if new_limit <= k.limit:
            return
        added = new_limit - max(k.limit, k.stream.sender.highest_offset)
        if added > 0:
            k.reserved += added
            k.quic._remote_max_data_used += added
        k.limit = new_limit

    def _release(self, k: KernelStream) -> None:
        if k.reserved:
            k.quic._remote_max_data_used -= k.reserved
            k.reserved = 0
