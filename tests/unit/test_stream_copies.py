"""relay/stream_copies.py: a kernel-copied stream's sender counts each byte delivered once, whatever packet
carried it (RFC 9000 section 13.3), on aioquic's real QuicStreamSender."""

from __future__ import annotations

from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.stream import QuicStreamSender

from relay.stream_copies import _deliver_each_byte_once

ACKED, LOST = QuicDeliveryState.ACKED, QuicDeliveryState.LOST


def sender_with(data: bytes, guarded: bool) -> QuicStreamSender:
    s = QuicStreamSender(stream_id=3, writable=True)
    if guarded:
        _deliver_each_byte_once(s)
    s.write(data, end_stream=True)
    while s.next_offset < len(data) or s._pending_eof:  # everything sent once (frames of at most 1000 bytes)
        if s.get_frame(1000) is None:
            break
    return s


def test_a_second_ack_of_freed_bytes_does_not_block_the_buffer() -> None:
    """A kernel copy and aioquic's own packet both carried [0, 1000): the second ACK comes after the bytes were
    freed. Unguarded, aioquic keeps the rest of the stream in memory forever; guarded, the stream finishes."""
    for guarded, kept in ((False, 2000), (True, 0)):
        s = sender_with(bytes(3000), guarded)
        s.on_data_delivery(ACKED, 0, 1000, False)
        s.on_data_delivery(ACKED, 0, 1000, False)  # the duplicate
        s.on_data_delivery(ACKED, 1000, 3000, True)
        assert len(s._buffer) == kept
        assert s.is_finished is guarded


def test_a_loss_of_bytes_another_packet_delivered_resends_nothing() -> None:
    s = sender_with(bytes(3000), guarded=True)
    s.on_data_delivery(ACKED, 1000, 2000, False)  # the copy arrived
    s.on_data_delivery(LOST, 500, 2500, False)  # aioquic's packet with the same bytes (and more) was lost
    assert list(s._pending) == [range(500, 1000), range(2000, 2500)]
    s.on_data_delivery(ACKED, 0, 1000, False)  # another packet with [0, 1000) arrives: [0, 2000) freed
    assert list(s._pending) == [range(2000, 2500)]  # never resend freed bytes (a negative slice of the buffer)
    s.on_data_delivery(LOST, 0, 1500, False)  # a late loss of freed bytes: nothing to queue
    assert list(s._pending) == [range(2000, 2500)] and s._buffer_start == 2000
    frame = s.get_frame(1000)
    assert frame is not None and (frame.offset, len(frame.data)) == (2000, 500)


def test_a_lost_fin_is_resent_unless_already_acknowledged() -> None:
    s = sender_with(bytes(100), guarded=True)
    s.on_data_delivery(LOST, 0, 100, True)
    assert s._pending_eof and list(s._pending) == [range(0, 100)]
    t = sender_with(bytes(100), guarded=True)
    t.on_data_delivery(ACKED, 0, 100, True)
    t.on_data_delivery(LOST, 0, 100, True)  # the other packet with the FIN was lost: already delivered
    assert not t._pending_eof and t.is_finished
