"""MoQT draft-14 data plane: every datagram and subgroup header type from a table of wire bytes, streams fed
whole / byte by byte / with trailing bytes, the fast-path offsets, rejections, and hypothesis round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.moqt import (
    DataStreamEvent,
    DataStreamParser,
    FetchHeader,
    FetchObject,
    MoqtError,
    NeedMoreData,
    ObjectDatagram,
    ObjectStatus,
    ProtocolViolation,
    SessionErrorCode,
    SubgroupHeader,
    SubgroupIdMode,
    SubgroupObject,
    SubgroupStreamWriter,
    datagram_offsets,
    decode_datagram,
    encode_datagram,
    encode_fetch_header,
    encode_fetch_object,
    encode_subgroup_header,
    encode_subgroup_object,
    subgroup_header_offsets,
)


def h(text: str) -> bytes:
    """Hex with '#' comments and whitespace."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


# --- datagrams (section 10.3.1) ------------------------------------------------------------------------------------

EOG = ObjectStatus.END_OF_GROUP
DATAGRAMS: list[tuple[ObjectDatagram, str]] = [
    (ObjectDatagram(2, 5, 1, 0x80, b"hi"), "00 02 05 01 80 6869  # type, alias, group, object, priority, payload"),
    (ObjectDatagram(2, 5, 9, 3, b"z", ((4, 0),)), "01 02 05 09 03  02 0400  7a  # ext block: len 2, type 4 = 0"),
    (ObjectDatagram(2, 5, 9, 3, b"z", end_of_group=True), "02 02 05 09 03 7a  # end of group"),
    (ObjectDatagram(2, 5, 1, 3, b"x", ((0x02, 7), (0x0B, b"ab")), end_of_group=True), """
        03 02 05 01 03            # type 3: extensions + end of group
        06 02 07 0b 02 6162       # extensions length 6: (2 = 7), (0xb = "ab")
        78                        # payload: the rest of the datagram
    """),
    (ObjectDatagram(2, 5, 0, 3, b"y", explicit_object_id=False), "04 02 05 03 79  # no object id field: id 0"),
    (ObjectDatagram(2, 5, 0, 3, b"q", ((2, 1),), explicit_object_id=False), "05 02 05 03  02 0201  71"),
    (ObjectDatagram(2, 5, 0, 3, b"q", end_of_group=True, explicit_object_id=False), "06 02 05 03 71"),
    (ObjectDatagram(2, 5, 0, 3, b"", ((2, 1),), end_of_group=True, explicit_object_id=False),
     "07 02 05 03  02 0201  # empty payload"),
    (ObjectDatagram(2, 5, 9, 3, status=EOG), "20 02 05 09 03  03  # status datagram: END_OF_GROUP"),
    (ObjectDatagram(2, 5, 9, 3, extensions=((2, 1),), status=ObjectStatus.END_OF_TRACK),
     "21 02 05 09 03  02 0201  04  # status datagram with extensions: END_OF_TRACK"),
    (ObjectDatagram(300, 70000, 1, 7, b"p"), "00 412c 80011170 01 07 70  # 2-byte alias, 4-byte group"),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "wire"), DATAGRAMS, ids=[w.split()[0] for _, w in DATAGRAMS])
def test_datagram_table(obj: ObjectDatagram, wire: str) -> None:
    assert encode_datagram(obj).hex() == h(wire).hex()
    assert decode_datagram(h(wire)) == obj


@pytest.mark.parametrize(
    ("wire", "alias_offset", "alias_length", "priority_offset"),
    [
        ("00 02 05 01 80 6869", 1, 1, 4),
        ("04 02 05 03 79", 1, 1, 3),
        ("21 02 05 09 03 02 0201 04", 1, 1, 4),
        ("00 412c 80011170 01 07 70", 1, 2, 8),
        ("4004 c000000000000002 05 55", 2, 8, 11),  # non-minimal type and alias: offsets follow the bytes
    ],
)
def test_datagram_offsets(wire: str, alias_offset: int, alias_length: int, priority_offset: int) -> None:
    data = h(wire)
    off = datagram_offsets(data)
    assert (off.track_alias_offset, off.track_alias_length, off.priority_offset) == (
        alias_offset,
        alias_length,
        priority_offset,
    )
    assert data[off.priority_offset] == decode_datagram(data).publisher_priority


DATAGRAM_REJECT = [
    ("type 0x08", "08 02 05 01 80"),
    ("type 0x22", "22 02 05 01 80 00"),
    ("a stream type as datagram", "10 02 05 80"),
    ("extensions present, length 0", "01 02 05 01 80 00 6869"),
    ("truncated header", "00 02 05"),
    ("no priority byte", "00 02 05 01"),
    ("status 2 (undefined)", "20 02 05 09 03 02"),
    ("bytes after the status", "20 02 05 09 03 03 00"),
    ("missing status", "20 02 05 09 03"),
    ("does-not-exist with extensions", "21 02 05 09 03 02 0201 01"),
    ("extension runs past its block", "01 02 05 01 80 02 01 05 61 62 63 64 65"),
]


@pytest.mark.parametrize(("what", "wire"), DATAGRAM_REJECT, ids=[w for w, _ in DATAGRAM_REJECT])
def test_datagram_rejects(what: str, wire: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_datagram(h(wire))
    assert info.value.code == SessionErrorCode.PROTOCOL_VIOLATION


def test_datagram_encoder_refuses_invalid_objects() -> None:
    with pytest.raises(ValueError):
        encode_datagram(ObjectDatagram(1, 1, 1, 1, b"x", status=EOG))  # status and payload
    with pytest.raises(ValueError):
        encode_datagram(ObjectDatagram(1, 1, 1, 1, status=EOG, end_of_group=True))  # no such type
    with pytest.raises(ValueError):
        encode_datagram(ObjectDatagram(1, 1, 1, 256, b"x"))  # priority is 8 bits
    with pytest.raises(ValueError):
        encode_datagram(ObjectDatagram(1, 1, 1, 1, status=2))  # undefined status
    with pytest.raises(ValueError):
        encode_datagram(ObjectDatagram(1, 1, 1, 1, extensions=((2, 1),), status=ObjectStatus.DOES_NOT_EXIST))


def test_datagram_object_id_omission_only_for_zero() -> None:
    assert encode_datagram(ObjectDatagram(1, 2, 0, 3, b"a", explicit_object_id=False))[0] == 0x04
    assert encode_datagram(ObjectDatagram(1, 2, 0, 3, b"a"))[0] == 0x00
    assert encode_datagram(ObjectDatagram(1, 2, 5, 3, b"a", explicit_object_id=False))[0] == 0x00


# --- subgroup and fetch streams (sections 10.4.2, 10.4.4) -----------------------------------------------------------


def sg(alias: int, mode: SubgroupIdMode, sub: int | None, ext: bool, eog: bool) -> SubgroupHeader:
    return SubgroupHeader(alias, 5, 0x80, mode, sub, ext, eog)


Z, F, X = SubgroupIdMode.ZERO, SubgroupIdMode.FIRST_OBJECT_ID, SubgroupIdMode.EXPLICIT
O = SubgroupObject  # noqa: E741 - short name keeps the table readable
STREAMS: list[tuple[str, list[DataStreamEvent], int | None, str]] = [
    ("0x10", [sg(2, Z, 0, False, False), O(0, b"a"), O(1, b"bc"), O(3, status=ObjectStatus.DOES_NOT_EXIST),
              O(4, status=EOG)], 0, """
        10 02 05 80               # SUBGROUP_HEADER 0x10: alias 2, group 5, (subgroup 0), priority 0x80
        00 01 61                  # object 0: delta 0, length 1, "a"
        00 02 6263                # object 1: delta 0 (= previous + 1)
        01 00 01                  # object 3: delta 1, length 0, status DOES_NOT_EXIST
        00 00 03                  # object 4: END_OF_GROUP
    """),
    ("0x11", [sg(2, Z, 0, True, False), O(0, b"a", ((2, 9),)), O(1, b"b")], 0, """
        11 02 05 80               # 0x11: every object carries an extensions length
        00 02 0209 01 61          # object 0, extensions (2 = 9), "a"
        00 00 01 62               # object 1, extensions length 0, "b"
    """),
    ("0x12", [sg(2, F, None, False, False), O(4, b"a"), O(5, b"b")], 4,
     "12 02 05 80  04 01 61  00 01 62  # subgroup id = first object id (4)"),
    ("0x13", [sg(2, F, None, True, False), O(4, b"a")], 4, "13 02 05 80  04 00 01 61"),
    ("0x14", [sg(2, X, 7, False, False), O(0, b"a")], 7, "14 02 05 07 80  00 01 61  # explicit subgroup id 7"),
    ("0x15", [sg(2, X, 7, True, False), O(0)], 7, "15 02 05 07 80  00 00 00 00  # empty NORMAL object"),
    ("0x18", [sg(2, Z, 0, False, True), O(0, b"a")], 0, "18 02 05 80  00 01 61  # stream ends the group"),
    ("0x19", [sg(2, Z, 0, True, True), O(0, b"a")], 0, "19 02 05 80  00 00 01 61"),
    ("0x1A", [sg(2, F, None, False, True), O(2, b"a")], 2, "1a 02 05 80  02 01 61"),
    ("0x1B", [sg(2, F, None, True, True), O(2, b"a")], 2, "1b 02 05 80  02 00 01 61"),
    ("0x1C", [sg(2, X, 7, False, True), O(0, b"a"), O(1, status=ObjectStatus.END_OF_TRACK)], 7,
     "1c 02 05 07 80  00 01 61  00 00 04"),
    ("0x1D", [sg(2, X, 7, True, True), O(5, extensions=((2, 1),), status=EOG)], 7,
     "1d 02 05 07 80  05 02 0201 00 03"),
    ("fetch", [FetchHeader(8), FetchObject(1, 0, 2, 3, b"ab"), FetchObject(1, 0, 3, 3, b"", ((2, 5),), EOG)], None, """
        05 08                     # FETCH_HEADER, request id 8
        01 00 02 03 00 02 6162    # group 1, subgroup 0, object 2, priority 3, no extensions, "ab"
        01 00 03 03 02 0205 00 03 # object 3 with extensions, END_OF_GROUP
    """),
]  # fmt: skip


def encode_stream(events: list[DataStreamEvent]) -> bytes:
    out = b""
    writer: SubgroupStreamWriter | None = None
    for ev in events:
        if isinstance(ev, SubgroupHeader):
            writer = SubgroupStreamWriter(ev)
            out += writer.header_bytes()
        elif isinstance(ev, SubgroupObject):
            assert writer is not None
            out += writer.object_bytes(ev)
        elif isinstance(ev, FetchHeader):
            out += encode_fetch_header(ev)
        else:
            out += encode_fetch_object(ev)
    return out


@pytest.mark.parametrize(("name", "events", "subgroup_id", "wire"), STREAMS, ids=[s[0] for s in STREAMS])
def test_stream_table(name: str, events: list[DataStreamEvent], subgroup_id: int | None, wire: str) -> None:
    data = h(wire)
    assert encode_stream(events).hex() == data.hex()

    whole = DataStreamParser()
    assert whole.feed(data) == events
    whole.end()
    assert whole.subgroup_id == subgroup_id

    bytewise = DataStreamParser()
    got: list[DataStreamEvent] = []
    for i in range(len(data)):
        got += bytewise.feed(data[i : i + 1])
    assert got == events
    bytewise.end()

    trailing = DataStreamParser()
    assert trailing.feed(data + b"\x00") == events  # the first byte of a next object stays buffered
    assert trailing.buffered == 1
    with pytest.raises(ProtocolViolation):
        trailing.end()


@pytest.mark.parametrize("wire", ["10 02 05 80", "14 0205 07 80", "1b 02 05 80"])
def test_subgroup_header_offsets(wire: str) -> None:
    data = h(wire)
    off = subgroup_header_offsets(data)
    assert off.type_value == data[0] and off.track_alias_offset == 1 and off.track_alias_length == 1
    assert data[off.priority_offset] == 0x80 and off.priority_offset == len(data) - 1
    with pytest.raises(NeedMoreData):
        subgroup_header_offsets(data[:-1])
    with pytest.raises(ProtocolViolation):
        subgroup_header_offsets(h("05 08"))


def test_subgroup_header_type_bits() -> None:
    types = {
        sg(1, m, None if m == F else 0, e, g).stream_type
        for m in SubgroupIdMode
        for e in (False, True)
        for g in (False, True)
    }
    assert types == {0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D}


STREAM_REJECT = [
    ("stream type 0x16", "16 02 05 80"),
    ("stream type 0x04", "04 02"),
    ("stream type 0x00 (datagram type)", "00 02 05 01 80"),
    ("subgroup object status 2", "10 02 05 80  00 00 02"),
    ("does-not-exist with extensions", "11 02 05 80  00 02 0201 00 01"),
    ("extension runs past its block", "11 02 05 80  00 02 01 05 01 61"),
    ("fetch object status 5", "05 08  01 00 02 03 00 00 05"),
]


@pytest.mark.parametrize(("what", "wire"), STREAM_REJECT, ids=[w for w, _ in STREAM_REJECT])
def test_stream_rejects(what: str, wire: str) -> None:
    data = h(wire)
    with pytest.raises(ProtocolViolation):
        DataStreamParser().feed(data)
    parser = DataStreamParser()
    with pytest.raises(ProtocolViolation):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    with pytest.raises(ProtocolViolation):
        parser.feed(b"")  # stays failed


def test_stream_end_checks() -> None:
    with pytest.raises(ProtocolViolation, match="before its header"):
        DataStreamParser().end()
    partial_header = DataStreamParser()
    assert partial_header.feed(h("14 02 05")) == []
    with pytest.raises(ProtocolViolation):
        partial_header.end()
    mid_object = DataStreamParser()
    mid_object.feed(h("10 02 05 80  00 05 6162"))  # 2 of 5 payload bytes
    assert mid_object.buffered == 4  # delta, length, 2 payload bytes
    with pytest.raises(ProtocolViolation, match="inside an object"):
        mid_object.end()
    header_only = DataStreamParser()
    assert header_only.feed(h("10 02 05 80")) == [sg(2, Z, 0, False, False)]
    header_only.end()  # a header and no object is a complete stream


def test_subgroup_encoder_refusals() -> None:
    with pytest.raises(ValueError):
        encode_subgroup_object(O(3, b"a"), 3, False)  # ids must increase
    with pytest.raises(ValueError):
        encode_subgroup_object(O(0, b"a", ((2, 1),)), None, False)  # no extensions on this stream type
    with pytest.raises(ValueError):
        encode_subgroup_object(O(0, b"a", status=EOG), None, False)
    with pytest.raises(ValueError):
        encode_subgroup_header(SubgroupHeader(1, 1, 1, SubgroupIdMode.ZERO, 3))
    with pytest.raises(ValueError):
        encode_subgroup_header(SubgroupHeader(1, 1, 1, SubgroupIdMode.EXPLICIT, None))


def test_large_payload_arrives_in_chunks() -> None:
    payload = bytes(range(256)) * 400
    data = encode_stream([sg(2, X, 1, False, False), O(0, payload), O(1, b"end")])
    parser = DataStreamParser()
    events: list[DataStreamEvent] = []
    for i in range(0, len(data), 1400):
        events += parser.feed(data[i : i + 1400])
    assert events[1] == O(0, payload) and events[2] == O(1, b"end")
    parser.end()


# --- hypothesis round trips -------------------------------------------------------------------------------------------

V = st.integers(0, (1 << 62) - 1)
U8 = st.integers(0, 255)
EXT = st.one_of(
    st.tuples(st.integers(0, 1 << 20).map(lambda t: t * 2), V),
    st.tuples(st.integers(0, 1 << 20).map(lambda t: t * 2 + 1), st.binary(max_size=16)),
)
EXTS = st.lists(EXT, max_size=4).map(tuple)
NON_NORMAL = st.sampled_from(
    [ObjectStatus.DOES_NOT_EXIST, ObjectStatus.END_OF_GROUP, ObjectStatus.END_OF_TRACK]
)


@st.composite
def datagrams(draw: st.DrawFn) -> ObjectDatagram:
    alias, group, prio = draw(V), draw(V), draw(U8)
    if draw(st.booleans()):  # status form
        status = draw(NON_NORMAL)
        exts = () if status == ObjectStatus.DOES_NOT_EXIST else draw(EXTS)
        return ObjectDatagram(alias, group, draw(V), prio, b"", exts, status)
    explicit = draw(st.booleans())
    object_id = draw(V) if explicit else 0
    return ObjectDatagram(alias, group, object_id, prio, draw(st.binary(max_size=64)), draw(EXTS),
                          ObjectStatus.NORMAL, draw(st.booleans()), explicit)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(datagrams())
def test_datagram_round_trip_and_offsets(obj: ObjectDatagram) -> None:
    data = encode_datagram(obj)
    assert decode_datagram(data) == obj
    off = datagram_offsets(data)
    assert data[off.priority_offset] == obj.publisher_priority
    alias = data[off.track_alias_offset : off.track_alias_offset + off.track_alias_length]
    assert int.from_bytes(alias, "big") & ~(0xC0 << (8 * len(alias) - 8)) == obj.track_alias


@st.composite
def objects_with(draw: st.DrawFn, ext: bool) -> SubgroupObject:
    oid = 0  # replaced by the caller
    if draw(st.booleans()):
        status = draw(NON_NORMAL)
        exts = () if status == ObjectStatus.DOES_NOT_EXIST or not ext else draw(EXTS)
        return SubgroupObject(oid, b"", exts, status)
    return SubgroupObject(oid, draw(st.binary(max_size=40)), draw(EXTS) if ext else ())


@st.composite
def subgroup_streams(draw: st.DrawFn) -> list[DataStreamEvent]:
    mode = draw(st.sampled_from(list(SubgroupIdMode)))
    ext = draw(st.booleans())
    sub = {SubgroupIdMode.ZERO: 0, SubgroupIdMode.FIRST_OBJECT_ID: None}.get(mode, draw(V))
    header = SubgroupHeader(draw(V), draw(V), draw(U8), mode, sub, ext, draw(st.booleans()))
    gaps = draw(st.lists(st.integers(0, 1000), max_size=6))
    events: list[DataStreamEvent] = [header]
    oid = -1
    for gap in gaps:
        oid += gap + 1
        obj = draw(objects_with(ext))
        events.append(SubgroupObject(oid, obj.payload, obj.extensions, obj.status))
    return events


FETCH_OBJ = st.builds(
    lambda g, s, o, p, payload, exts, status: FetchObject(
        g, s, o, p, b"" if status else payload, () if status == ObjectStatus.DOES_NOT_EXIST else exts,
        status if status or payload else ObjectStatus.NORMAL,
    ),
    V, V, V, U8, st.binary(max_size=40), EXTS, st.sampled_from(list(ObjectStatus)),
)  # fmt: skip
FETCH_STREAMS = st.builds(lambda rid, objs: [FetchHeader(rid), *objs], V, st.lists(FETCH_OBJ, max_size=5))


@settings(max_examples=200, deadline=None)
@given(st.one_of(subgroup_streams(), FETCH_STREAMS), st.data())
def test_stream_round_trip_any_split(events: list[DataStreamEvent], data: st.DataObject) -> None:
    wire = encode_stream(events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = DataStreamParser()
    got: list[DataStreamEvent] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += parser.feed(wire[prev:cut])
        prev = cut
    assert got == events
    parser.end()
    header = events[0]
    if isinstance(header, SubgroupHeader):
        off = subgroup_header_offsets(wire)
        assert wire[off.priority_offset] == header.publisher_priority
        if header.subgroup_id_mode == SubgroupIdMode.FIRST_OBJECT_ID:
            expected = events[1].object_id if len(events) > 1 else None  # type: ignore[union-attr]
            assert parser.subgroup_id == expected
        else:
            assert parser.subgroup_id == header.subgroup_id


def test_errors_are_moqt_errors() -> None:
    """The session catches MoqtError: make sure data-plane errors are inside that hierarchy."""
    with pytest.raises(MoqtError):
        decode_datagram(b"\x08")
