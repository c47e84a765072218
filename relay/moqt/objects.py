"""MoQT draft-14 data plane (draft-ietf-moq-transport-14 section 10): object datagrams, subgroup and fetch streams.

- `encode_datagram` / `decode_datagram` work on one whole datagram (the QUIC DATAGRAM frame payload).
- Subgroup streams: `encode_subgroup_header`, then `encode_subgroup_object` per object (Object ID is sent as a
  DELTA in draft-14, section 10.4.2: first object = delta, then previous + delta + 1; so the encoder needs the
  previous Object ID; `SubgroupStreamWriter` tracks it).
- `DataStreamParser.feed(data)` takes a unidirectional stream's bytes in any split and returns events: first the
  header (SubgroupHeader or FetchHeader), then SubgroupObject / FetchObject with ABSOLUTE object ids.
- `datagram_offsets` / `subgroup_header_offsets` give the byte positions of the Track Alias and Publisher Priority
  fields, which the BPF fast path rewrites / reads (all MoQT types are 1-byte varints, but we compute from the bytes).
- Extension headers are Key-Value-Pairs (section 1.4.2, 10.2.1.2) kept as an ordered tuple of (type, value).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

from relay.moqt.errors import MoqtError, ProtocolViolation
from relay.moqt.messages import pull_key_value_pair, push_key_value_pairs
from relay.moqt.varint import NeedMoreData, Reader, Writer, decode_varint

Extension: TypeAlias = tuple[int, int | bytes]
Extensions: TypeAlias = tuple[Extension, ...]


class ObjectStatus(IntEnum):
    """Object Status, draft-14 section 10.2.1.1 (0x2 is not defined; anything else is a protocol violation)."""

    NORMAL = 0x0
    DOES_NOT_EXIST = 0x1
    END_OF_GROUP = 0x3
    END_OF_TRACK = 0x4


class SubgroupIdMode(IntEnum):
    """How a SUBGROUP_HEADER conveys the Subgroup ID (type bits 1-2, section 10.4.2)."""

    ZERO = 0  # types 0x10/0x11/0x18/0x19: absent, Subgroup ID = 0
    FIRST_OBJECT_ID = 1  # types 0x12/0x13/0x1A/0x1B: absent, Subgroup ID = first Object ID on the stream
    EXPLICIT = 2  # types 0x14/0x15/0x1C/0x1D: Subgroup ID field present


FETCH_HEADER_TYPE = 0x05  # section 10.4.4
SUBGROUP_HEADER_TYPES = frozenset((0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D))
DATAGRAM_TYPES = frozenset((0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x20, 0x21))
DATAGRAM_STATUS_TYPES = frozenset((0x20, 0x21))


@dataclass(frozen=True)
class ObjectDatagram:
    """OBJECT_DATAGRAM 0x00-0x07 (payload) and 0x20/0x21 (status), section 10.3.1.

    A datagram carries a payload (status NORMAL) or a status (status != NORMAL, empty payload).
    The encoder omits the Object ID (types 0x04-0x07) only when it is 0 and `explicit_object_id` is False.
    A status datagram with status NORMAL (0x20, status 0) decodes to an empty-payload object, re-encoded as 0x00."""

    track_alias: int
    group_id: int
    object_id: int
    publisher_priority: int
    payload: bytes = b""
    extensions: Extensions = ()
    status: int = ObjectStatus.NORMAL
    end_of_group: bool = False  # types 0x02/0x03/0x06/0x07 only
    # Encoding choice: False lets an object id of 0 be omitted (types 0x04-0x07); decoding sets it from the type.
    explicit_object_id: bool = True


@dataclass(frozen=True)
class SubgroupHeader:
    """SUBGROUP_HEADER 0x10-0x1D, section 10.4.2. `subgroup_id` is None in FIRST_OBJECT_ID mode until known."""

    track_alias: int
    group_id: int
    publisher_priority: int
    subgroup_id_mode: SubgroupIdMode = SubgroupIdMode.EXPLICIT
    subgroup_id: int | None = 0
    extensions_present: bool = False
    end_of_group: bool = False

    @property
    def stream_type(self) -> int:
        """The header's Type value (0x10 | ext bit0 | mode bits1-2 | end-of-group bit3)."""
        return (
            0x10
            | int(self.extensions_present)
            | (int(self.subgroup_id_mode) << 1)
            | (int(self.end_of_group) << 3)
        )


@dataclass(frozen=True)
class SubgroupObject:
    """One object on a subgroup stream; `object_id` is absolute (the wire carries a delta)."""

    object_id: int
    payload: bytes = b""
    extensions: Extensions = ()
    status: int = ObjectStatus.NORMAL  # on the wire only when the payload is empty


@dataclass(frozen=True)
class FetchHeader:
    """FETCH_HEADER 0x05, section 10.4.4."""

    request_id: int


@dataclass(frozen=True)
class FetchObject:
    """One object on a fetch stream, section 10.4.4 (all ids absolute, extensions length always present)."""

    group_id: int
    subgroup_id: int
    object_id: int
    publisher_priority: int
    payload: bytes = b""
    extensions: Extensions = ()
    status: int = ObjectStatus.NORMAL


DataStreamEvent: TypeAlias = SubgroupHeader | SubgroupObject | FetchHeader | FetchObject


@dataclass(frozen=True)
class FieldOffsets:
    """Byte positions inside a datagram or subgroup header, for the BPF fast path."""

    type_value: int
    track_alias_offset: int
    track_alias_length: int
    priority_offset: int


# --- shared pieces -------------------------------------------------------------------------------------------------


def _push_extension_block(w: Writer, extensions: Extensions) -> None:
    """Extension Headers Length (i) + Key-Value-Pairs (section 10.2.1.2)."""
    block = Writer()
    push_key_value_pairs(block, extensions)
    w.push_varint(len(block))
    w.push_bytes(block.data())


def _pull_extension_block(r: Reader) -> Extensions:
    """Extension Headers Length (i) + headers; a header running past the length is a PROTOCOL_VIOLATION."""
    length = r.pull_varint()
    block = r.sub(length)  # NeedMoreData here: the block itself has not fully arrived
    out: list[Extension] = []
    try:
        while not block.eof():
            out.append(pull_key_value_pair(block))
    except NeedMoreData as exc:
        raise ProtocolViolation("extension header runs past Extension Headers Length") from exc
    return tuple(out)


def _check_status_for_encode(status: int, payload: bytes, extensions: Extensions) -> None:
    if status not in _VALID_STATUS:
        raise ValueError(f"unknown object status {status}")
    if status != ObjectStatus.NORMAL and payload:
        raise ValueError("an object with a non-normal status has no payload (section 10.2.1.1)")
    if status == ObjectStatus.DOES_NOT_EXIST and extensions:
        raise ValueError("a 'does not exist' object carries no extensions (section 10.2.1.2)")


def _pull_status(r: Reader, extensions: Extensions) -> ObjectStatus:
    """Object Status (i), section 10.2.1.1: unknown values and extensions on DOES_NOT_EXIST are violations."""
    value = r.pull_varint()
    if value not in _VALID_STATUS:
        raise ProtocolViolation(f"unknown object status {value}")
    status = ObjectStatus(value)
    if status == ObjectStatus.DOES_NOT_EXIST and extensions:
        raise ProtocolViolation("'object does not exist' with extension headers")
    return status


_VALID_STATUS = frozenset(int(s) for s in ObjectStatus)


def _check_u8(value: int, what: str) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} must fit 8 bits: {value}")


# --- datagrams (section 10.3.1) -------------------------------------------------------------------------------------


def encode_datagram(obj: ObjectDatagram) -> bytes:
    """One OBJECT_DATAGRAM (section 10.3.1). ValueError for an object that cannot be encoded.

    A non-NORMAL status selects the status form 0x20/0x21 (Object ID always present, no End of Group bit);
    otherwise 0x00-0x07: bit0 extensions, bit1 end of group, bit2 Object ID absent (only for object id 0 when
    `explicit_object_id` is False)."""
    _check_status_for_encode(obj.status, obj.payload, obj.extensions)
    _check_u8(obj.publisher_priority, "publisher priority")
    ext = 0x01 if obj.extensions else 0x00
    status_form = obj.status != ObjectStatus.NORMAL
    if status_form:
        if obj.end_of_group:
            raise ValueError("status datagrams (0x20/0x21) cannot carry End of Group")
        dtype = 0x20 | ext
        with_id = True
    else:
        with_id = obj.explicit_object_id or obj.object_id != 0
        dtype = ext | (0x02 if obj.end_of_group else 0) | (0 if with_id else 0x04)
    w = Writer()
    w.push_varint(dtype)
    w.push_varint(obj.track_alias)
    w.push_varint(obj.group_id)
    if with_id:
        w.push_varint(obj.object_id)
    w.push_uint8(obj.publisher_priority)
    if ext:
        _push_extension_block(w, obj.extensions)
    if status_form:
        w.push_varint(obj.status)
    else:
        w.push_bytes(bytes(obj.payload))
    return w.data()


def decode_datagram(data: bytes | bytearray | memoryview) -> ObjectDatagram:
    """Decode one whole datagram; a truncated or malformed one raises ProtocolViolation (a datagram never grows)."""
    r = Reader(data)
    try:
        dtype = r.pull_varint()
        if dtype not in DATAGRAM_TYPES:
            raise ProtocolViolation(f"unknown object datagram type 0x{dtype:x}")
        status_form = dtype in DATAGRAM_STATUS_TYPES
        with_id = status_form or not dtype & 0x04
        alias = r.pull_varint()
        group = r.pull_varint()
        object_id = r.pull_varint() if with_id else 0
        priority = r.pull_uint8()
        extensions: Extensions = ()
        if dtype & 0x01:
            extensions = _pull_extension_block(r)
            if not extensions:
                raise ProtocolViolation("datagram with Extensions Present and an empty extension block")
        if status_form:
            status = _pull_status(r, extensions)
            if not r.eof():
                raise ProtocolViolation("bytes after the status of a status datagram")
            return ObjectDatagram(alias, group, object_id, priority, b"", extensions, status, False, True)
        payload = r.pull_rest()
    except NeedMoreData as exc:
        raise ProtocolViolation("truncated object datagram") from exc
    return ObjectDatagram(alias, group, object_id, priority, payload, extensions, ObjectStatus.NORMAL,
                          bool(dtype & 0x02), with_id)  # fmt: skip


# --- subgroup streams (section 10.4.2) -----------------------------------------------------------------------------


def encode_subgroup_header(header: SubgroupHeader) -> bytes:
    """SUBGROUP_HEADER bytes (section 10.4.2). The Subgroup ID is written only in EXPLICIT mode."""
    _check_u8(header.publisher_priority, "publisher priority")
    if header.subgroup_id_mode == SubgroupIdMode.ZERO and header.subgroup_id not in (0, None):
        raise ValueError("subgroup id mode ZERO needs subgroup_id 0")
    w = Writer()
    w.push_varint(header.stream_type)
    w.push_varint(header.track_alias)
    w.push_varint(header.group_id)
    if header.subgroup_id_mode == SubgroupIdMode.EXPLICIT:
        if header.subgroup_id is None:
            raise ValueError("subgroup id mode EXPLICIT needs a subgroup_id")
        w.push_varint(header.subgroup_id)
    w.push_uint8(header.publisher_priority)
    return w.data()


def encode_subgroup_object(
    obj: SubgroupObject, previous_object_id: int | None, extensions_present: bool
) -> bytes:
    """One subgroup object (section 10.4.2); `previous_object_id` None for the first object on the stream.

    Object ID Delta: the first object sends its id, later ones `id - previous - 1` (ids strictly increase)."""
    _check_status_for_encode(obj.status, obj.payload, obj.extensions)
    delta = obj.object_id if previous_object_id is None else obj.object_id - previous_object_id - 1
    if delta < 0:
        raise ValueError(f"object id {obj.object_id} does not follow {previous_object_id}")
    if obj.extensions and not extensions_present:
        raise ValueError("extensions on a stream whose header type has no extensions bit")
    w = Writer()
    w.push_varint(delta)
    if extensions_present:
        _push_extension_block(w, obj.extensions)
    w.push_varint(len(obj.payload))
    if obj.payload:
        w.push_bytes(bytes(obj.payload))
    else:
        w.push_varint(obj.status)
    return w.data()


class SubgroupStreamWriter:
    """Encodes a subgroup stream: header once, then objects with the Object ID delta bookkeeping."""

    def __init__(self, header: SubgroupHeader) -> None:
        self.header = header
        self.previous_object_id: int | None = None

    def header_bytes(self) -> bytes:
        return encode_subgroup_header(self.header)

    def object_bytes(self, obj: SubgroupObject) -> bytes:
        data = encode_subgroup_object(obj, self.previous_object_id, self.header.extensions_present)
        self.previous_object_id = obj.object_id
        return data


# --- fetch streams (section 10.4.4) --------------------------------------------------------------------------------


def encode_fetch_header(header: FetchHeader) -> bytes:
    """FETCH_HEADER bytes (section 10.4.4)."""
    w = Writer()
    w.push_varint(FETCH_HEADER_TYPE)
    w.push_varint(header.request_id)
    return w.data()


def encode_fetch_object(obj: FetchObject) -> bytes:
    """One fetch-stream object (section 10.4.4): Extension Headers Length is always present."""
    _check_status_for_encode(obj.status, obj.payload, obj.extensions)
    _check_u8(obj.publisher_priority, "publisher priority")
    w = Writer()
    w.push_varint(obj.group_id)
    w.push_varint(obj.subgroup_id)
    w.push_varint(obj.object_id)
    w.push_uint8(obj.publisher_priority)
    _push_extension_block(w, obj.extensions)
    w.push_varint(len(obj.payload))
    if obj.payload:
        w.push_bytes(bytes(obj.payload))
    else:
        w.push_varint(obj.status)
    return w.data()


# --- incremental stream parser --------------------------------------------------------------------------------------


def _pull_subgroup_header(r: Reader, stype: int) -> SubgroupHeader:
    mode = SubgroupIdMode((stype >> 1) & 0x03)
    alias = r.pull_varint()
    group = r.pull_varint()
    subgroup_id: int | None = 0
    if mode == SubgroupIdMode.EXPLICIT:
        subgroup_id = r.pull_varint()
    elif mode == SubgroupIdMode.FIRST_OBJECT_ID:
        subgroup_id = None
    priority = r.pull_uint8()
    return SubgroupHeader(alias, group, priority, mode, subgroup_id, bool(stype & 0x01), bool(stype & 0x08))


def _pull_payload_or_status(r: Reader, extensions: Extensions) -> tuple[bytes, int]:
    length = r.pull_varint()
    if length == 0:
        return b"", _pull_status(r, extensions)
    return r.pull_bytes(length), ObjectStatus.NORMAL


class DataStreamParser:
    """Incremental parser of one unidirectional data stream: header event first, then objects.

    Each feed re-reads at most one object *header* (a few bytes) while a large payload is arriving; payload
    bytes are copied once, when the object is complete. After a MoqtError the parser stays failed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.header: SubgroupHeader | FetchHeader | None = None
        self.previous_object_id: int | None = None
        self._first_object_id: int | None = None
        self._error: MoqtError | None = None

    @property
    def subgroup_id(self) -> int | None:
        """The stream's Subgroup ID (resolved after the first object in FIRST_OBJECT_ID mode)."""
        if not isinstance(self.header, SubgroupHeader):
            return None
        if self.header.subgroup_id_mode == SubgroupIdMode.FIRST_OBJECT_ID:
            return self._first_object_id
        return self.header.subgroup_id

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete header or object."""
        return len(self._buf)

    def _pull_event(self, r: Reader) -> DataStreamEvent:
        header = self.header
        if header is None:
            stype = r.pull_varint()
            if stype == FETCH_HEADER_TYPE:
                return FetchHeader(r.pull_varint())
            if stype in SUBGROUP_HEADER_TYPES:
                return _pull_subgroup_header(r, stype)
            raise ProtocolViolation(f"unknown data stream type 0x{stype:x}")
        if isinstance(header, SubgroupHeader):
            delta = r.pull_varint()
            extensions = _pull_extension_block(r) if header.extensions_present else ()
            payload, status = _pull_payload_or_status(r, extensions)
            prev = self.previous_object_id
            object_id = delta if prev is None else prev + delta + 1
            return SubgroupObject(object_id, payload, extensions, status)
        group, subgroup, object_id = r.pull_varint(), r.pull_varint(), r.pull_varint()
        priority = r.pull_uint8()
        extensions = _pull_extension_block(r)
        payload, status = _pull_payload_or_status(r, extensions)
        return FetchObject(group, subgroup, object_id, priority, payload, extensions, status)

    def feed(self, data: bytes) -> list[DataStreamEvent]:
        """Append `data`; return the header/objects now complete. Raises MoqtError for malformed data."""
        if self._error is not None:
            raise self._error
        self._buf += data
        events: list[DataStreamEvent] = []
        view = memoryview(self._buf)
        r = Reader(view)
        consumed = 0
        try:
            while not r.eof():
                try:
                    event = self._pull_event(r)
                except NeedMoreData:
                    break
                consumed = r.pos
                if isinstance(event, SubgroupHeader | FetchHeader):
                    self.header = event
                elif isinstance(event, SubgroupObject):
                    if self.previous_object_id is None:
                        self._first_object_id = event.object_id
                    self.previous_object_id = event.object_id
                events.append(event)
        except MoqtError as exc:
            self._error = exc
            raise
        finally:
            del r
            view.release()
        del self._buf[:consumed]
        return events

    def end(self) -> None:
        """The stream ended with FIN: raise ProtocolViolation unless it ended on an object boundary after a header."""
        if self._error is not None:
            raise self._error
        if self.header is None:
            raise ProtocolViolation("data stream ended before its header")
        if self._buf:
            raise ProtocolViolation(f"data stream ended inside an object ({len(self._buf)} bytes left)")


# --- offsets for the BPF fast path -----------------------------------------------------------------------------------


def datagram_offsets(data: bytes | bytearray | memoryview) -> FieldOffsets:
    """Track Alias and Publisher Priority positions in an object datagram (raises ProtocolViolation if short).

    Priority offset = len(type) + len(alias) + len(group) + len(object id, unless type bit2 says absent).
    Uses decode_varint directly (no Reader): this runs once per datagram on the user-space forwarding path."""
    try:
        dtype, pos = decode_varint(data, 0)
        if dtype not in DATAGRAM_TYPES:
            raise ProtocolViolation(f"unknown object datagram type 0x{dtype:x}")
        alias_offset = pos
        _, pos = decode_varint(data, pos)
        alias_length = pos - alias_offset
        _, pos = decode_varint(data, pos)
        if dtype in DATAGRAM_STATUS_TYPES or not dtype & 0x04:
            _, pos = decode_varint(data, pos)
    except NeedMoreData as exc:
        raise ProtocolViolation("truncated object datagram") from exc
    if pos >= len(data):
        raise ProtocolViolation("truncated object datagram")
    return FieldOffsets(dtype, alias_offset, alias_length, pos)


def subgroup_header_offsets(data: bytes | bytearray | memoryview) -> FieldOffsets:
    """Track Alias and Publisher Priority positions in a subgroup stream's first bytes.

    Raises NeedMoreData if the header is not complete yet, ProtocolViolation if the type is not a subgroup."""
    stype, pos = decode_varint(data, 0)
    if stype not in SUBGROUP_HEADER_TYPES:
        raise ProtocolViolation(f"not a subgroup header type: 0x{stype:x}")
    alias_offset = pos
    _, pos = decode_varint(data, pos)
    alias_length = pos - alias_offset
    _, pos = decode_varint(data, pos)
    if (stype >> 1) & 0x03 == SubgroupIdMode.EXPLICIT:
        _, pos = decode_varint(data, pos)
    if pos >= len(data):
        raise NeedMoreData("publisher priority")
    return FieldOffsets(stype, alias_offset, alias_length, pos)


__all__ = [
    "Extension", "Extensions", "ObjectStatus", "SubgroupIdMode", "FETCH_HEADER_TYPE", "SUBGROUP_HEADER_TYPES",
    "DATAGRAM_TYPES", "DATAGRAM_STATUS_TYPES", "ObjectDatagram", "SubgroupHeader", "SubgroupObject", "FetchHeader",
    "FetchObject", "DataStreamEvent", "FieldOffsets", "encode_datagram", "decode_datagram",
    "encode_subgroup_header", "encode_subgroup_object", "SubgroupStreamWriter", "encode_fetch_header",
    "encode_fetch_object", "DataStreamParser", "datagram_offsets", "subgroup_header_offsets",
    "NeedMoreData", "ProtocolViolation", "Reader", "Writer",
]  # fmt: skip
