"""QUIC variable-length integers (RFC 9000 section 16) and a byte cursor for MoQT parsers.

A small pure-Python cursor instead of aioquic.buffer.Buffer: aioquic's Buffer raises one BufferReadError for every
short read, but the MoQT stream parsers must tell "the bytes have not arrived yet" (wait for more) apart from "these
bytes are wrong" (close the session). Here a short read raises `NeedMoreData`, which is *not* a MoqtError, and every
protocol error is a MoqtError. The cursor works on a memoryview, so pulling a payload costs one copy.
"""

from __future__ import annotations

from relay.moqt.errors import ProtocolViolation

MAX_VARINT = (1 << 62) - 1


class NeedMoreData(Exception):
    """The buffer ends before the structure does: not an error, the caller waits for more bytes."""


def varint_len(value: int) -> int:
    """Bytes of the minimal encoding of `value` (RFC 9000 section 16, table 4)."""
    if value < 0:
        raise ValueError(f"varint must not be negative: {value}")
    if value <= 0x3F:
        return 1
    if value <= 0x3FFF:
        return 2
    if value <= 0x3FFF_FFFF:
        return 4
    if value <= MAX_VARINT:
        return 8
    raise ValueError(f"varint too large: {value}")


def encode_varint(value: int) -> bytes:
    """Minimal encoding of `value`; ValueError outside 0..2^62-1 (a local bug, not a peer's fault)."""
    n = varint_len(value)
    prefix = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[n]
    return (value | (prefix << (8 * n - 8))).to_bytes(n, "big")


def decode_varint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at `pos`; returns (value, position after it). Non-minimal encodings are accepted."""
    if pos >= len(data):
        raise NeedMoreData("varint")
    first = data[pos]
    n = 1 << (first >> 6)
    if pos + n > len(data):
        raise NeedMoreData("varint")
    value = first & 0x3F
    for i in range(1, n):
        value = (value << 8) | data[pos + i]
    return value, pos + n


class Reader:
    """A cursor over received bytes: pull_* read and advance, or raise NeedMoreData without advancing."""

    __slots__ = ("_data", "pos", "end")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        self._data = memoryview(data)
        self.pos = pos
        self.end = len(self._data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def eof(self) -> bool:
        return self.pos >= self.end

    def _take(self, n: int) -> memoryview:
        if n < 0:
            raise ProtocolViolation("negative length")
        if self.pos + n > self.end:
            raise NeedMoreData(f"{n} bytes")
        view = self._data[self.pos : self.pos + n]
        self.pos += n
        return view

    def pull_varint(self) -> int:
        if self.pos >= self.end:
            raise NeedMoreData("varint")
        n = 1 << (self._data[self.pos] >> 6)
        raw = self._take(n)
        value = raw[0] & 0x3F
        for i in range(1, n):
            value = (value << 8) | raw[i]
        return value

    def pull_uint8(self) -> int:
        return self._take(1)[0]

    def pull_uint16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def pull_bytes(self, n: int) -> bytes:
        return bytes(self._take(n))

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.end - self.pos)

    def sub(self, n: int) -> Reader:
        """A reader over the next `n` bytes (raises NeedMoreData if they are not all here); advances past them."""
        start = self.pos
        self._take(n)
        return Reader(self._data, start, start + n)


class Writer:
    """Append-only encoder: the push_* mirror of Reader's pull_*."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def push_varint(self, value: int) -> None:
        self._buf += encode_varint(value)

    def push_uint8(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"uint8 out of range: {value}")
        self._buf.append(value)

    def push_uint16(self, value: int) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"uint16 out of range: {value}")
        self._buf += value.to_bytes(2, "big")

    def push_bytes(self, data: bytes) -> None:
        self._buf += data

    def data(self) -> bytes:
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)


__all__ = ["MAX_VARINT", "NeedMoreData", "Reader", "Writer", "decode_varint", "encode_varint", "varint_len"]
