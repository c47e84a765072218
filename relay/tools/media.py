"""Synthetic video: frame sizes, priorities, a self-describing payload, and the rules a checker applies.

A MoQT relay must not look inside payloads, so the payload carries everything a subscriber needs to judge the
delivery on its own: who sent it when (for one-way latency; every namespace on this machine shares one clock), a
track-wide sequence number (for loss), the group/object ids the publisher *meant* (to catch a relay that rewrote
them) and a CRC of the whole payload (integrity). Publisher and subscriber share nothing else.
"""

from __future__ import annotations

import random
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

# Publisher Priority (draft-14 section 7.2.2 / 10.4.2): lower number = more important. An I-frame starts a group
# and every P-frame of the group depends on it, so it must win over P-frames under congestion.
PRIORITY_I = 0
PRIORITY_P = 128

# Payload header, network byte order:
#   magic "MQSV" | version (8) | flags (8: bit0 = key frame) | send time ns (64, time.time_ns)
#   | sequence (64) | group (64) | object (64) | payload length (32) | CRC-32 of the payload with this field zeroed (32)
MAGIC = b"MQSV"
VERSION = 1
_HEADER = struct.Struct("!4sBBQQQQII")
HEADER_SIZE = _HEADER.size
_CRC_OFFSET = HEADER_SIZE - 4
FLAG_KEY = 0x01

_RATE_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class PayloadError(ValueError):
    """A payload that is not one of ours, or was damaged on the way."""


def parse_bitrate(text: str) -> int:
    """'2M', '500k', '64000', '1.5M' -> bits per second (SI prefixes, as encoders use them)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:bps|b/s|bit/s)?\s*", text)
    if m is None:
        raise ValueError(f"bad bitrate {text!r}: expected a number with an optional k/M/G suffix, e.g. 2M")
    value = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"bad bitrate {text!r}: must be positive")
    return value


@dataclass(frozen=True)
class Frame:
    """One video frame = one MoQT object. Group = GOP; object 0 of a group is the I-frame."""

    seq: int
    group: int
    obj: int
    size: int
    priority: int

    @property
    def key(self) -> bool:
        return self.obj == 0


@dataclass(frozen=True)
class MediaModel:
    """Constant-bitrate GOP model: each GOP spends bitrate*gop/fps bits, the I-frame `i_ratio` times a P-frame."""

    bitrate: int  # bits per second
    fps: float = 30.0
    gop: int = 30  # frames per group
    i_ratio: float = 6.0

    def __post_init__(self) -> None:
        if self.bitrate <= 0 or self.fps <= 0 or self.gop < 1 or self.i_ratio < 1:
            raise ValueError(f"bad media model {self}: bitrate, fps > 0, gop >= 1, i_ratio >= 1")

    @property
    def frame_interval(self) -> float:
        return 1.0 / self.fps

    def sizes(self) -> tuple[int, int]:
        """(I-frame bytes, P-frame bytes); never below the header, so every frame stays checkable."""
        gop_bytes = self.bitrate * self.gop / self.fps / 8
        p = gop_bytes / (self.i_ratio + self.gop - 1)
        i = p * self.i_ratio if self.gop > 1 else gop_bytes
        return max(HEADER_SIZE, round(i)), max(HEADER_SIZE, round(p))

    def frames(self, start_seq: int = 0, start_group: int = 0) -> Iterator[Frame]:
        """The endless frame sequence; the caller paces it at `frame_interval`."""
        i_size, p_size = self.sizes()
        seq, group = start_seq, start_group
        while True:
            for obj in range(self.gop):
                key = obj == 0
                yield Frame(seq, group, obj, i_size if key else p_size, PRIORITY_I if key else PRIORITY_P)
                seq += 1
            group += 1


@dataclass(frozen=True)
class PayloadHeader:
    send_ns: int
    seq: int
    group: int
    obj: int
    length: int
    key: bool


def build_payload(frame: Frame, send_ns: int, fill: bytes | None = None, rng: random.Random | None = None) -> bytes:
    """Header + body of exactly `frame.size` bytes: `fill` repeated, or random bytes when fill is None."""
    body_len = max(0, frame.size - HEADER_SIZE)
    if fill:
        body = (fill * (body_len // len(fill) + 1))[:body_len]
    else:
        body = (rng or random.Random()).randbytes(body_len)
    flags = FLAG_KEY if frame.key else 0
    total = HEADER_SIZE + body_len
    head = _HEADER.pack(MAGIC, VERSION, flags, send_ns, frame.seq, frame.group, frame.obj, total, 0)
    crc = zlib.crc32(body, zlib.crc32(head))
    return head[:_CRC_OFFSET] + struct.pack("!I", crc) + body


def parse_payload(data: bytes) -> PayloadHeader:
    """Check magic, version, length and CRC; raise PayloadError naming what is wrong."""
    if len(data) < HEADER_SIZE:
        raise PayloadError(f"payload of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, flags, send_ns, seq, group, obj, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError(f"not a synthetic-media payload (magic {magic!r})")
    if version != VERSION:
        raise PayloadError(f"payload version {version}, expected {VERSION}")
    if length != len(data):
        raise PayloadError(f"payload length {len(data)}, header says {length}")
    head = bytes(data[:_CRC_OFFSET]) + b"\0\0\0\0"
    if zlib.crc32(data[HEADER_SIZE:], zlib.crc32(head)) != crc:
        raise PayloadError(f"payload of object {group}/{obj} (seq {seq}) fails its CRC")
    return PayloadHeader(send_ns, seq, group, obj, length, bool(flags & FLAG_KEY))


def decodable_in_group(received: Iterable[int]) -> int:
    """Frames of one group a decoder can show: object k needs objects 0..k (the I-frame and every earlier P)."""
    have = set(received)
    n = 0
    while n in have:
        n += 1
    return n


def decodable_frames(received: Mapping[int, Iterable[int]]) -> int:
    """Sum of `decodable_in_group` over groups (group id -> object ids received)."""
    return sum(decodable_in_group(objs) for objs in received.values())
