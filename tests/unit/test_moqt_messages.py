"""MoQT draft-14 control messages: one table of (message, wire bytes), fed three ways (h11 test_io style),
hypothesis round trips, and one rejection test per malformation with the session error it must raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.moqt import (
    DRAFT_14,
    AuthToken,
    AuthTokenAliasType,
    ClientSetup,
    ControlMessage,
    ControlStreamParser,
    Fetch,
    FetchCancel,
    FetchError,
    FetchErrorCode,
    FetchOk,
    FetchType,
    FilterType,
    GoAway,
    GroupOrder,
    JoiningFetch,
    KeyValueFormattingError,
    Location,
    MaxRequestId,
    MoqtError,
    NeedMoreData,
    ProtocolViolation,
    Publish,
    PublishDone,
    PublishDoneCode,
    PublishError,
    PublishErrorCode,
    PublishNamespace,
    PublishNamespaceCancel,
    PublishNamespaceDone,
    PublishNamespaceError,
    PublishNamespaceErrorCode,
    PublishNamespaceOk,
    PublishOk,
    RequestsBlocked,
    ServerSetup,
    SessionErrorCode,
    StandaloneFetch,
    Subscribe,
    SubscribeError,
    SubscribeErrorCode,
    SubscribeNamespace,
    SubscribeNamespaceError,
    SubscribeNamespaceErrorCode,
    SubscribeNamespaceOk,
    SubscribeOk,
    SubscribeUpdate,
    TrackStatus,
    TrackStatusError,
    TrackStatusOk,
    Unsubscribe,
    UnsubscribeNamespace,
    VersionNegotiationFailed,
    decode_auth_token,
    decode_control,
    encode_auth_token,
    encode_control,
    get_parameter,
    negotiate_version,
)


def h(text: str) -> bytes:
    """Hex with '#' comments and whitespace, one field per line (pyroute2 fixture style)."""
    return bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines()))


# (message, wire bytes): every draft-14 control message at least once; lengths are the 16-bit frame length.
TABLE: list[tuple[ControlMessage, str]] = [
    (
        ClientSetup((DRAFT_14,), ((0x02, 100), (0x01, b"/moq"))),
        """
        20 0013                   # CLIENT_SETUP, length 19
        01                        # number of supported versions
        c0 00 00 00 ff 00 00 0e   # draft-14, an 8-byte varint
        02                        # number of parameters
        02 4064                   # MAX_REQUEST_ID (even: varint) = 100
        01 04 2f6d6f71            # PATH (odd: length + bytes) = "/moq"
    """,
    ),
    (
        ServerSetup(DRAFT_14, ((0x02, 16),)),
        """
        21 000b                   # SERVER_SETUP, length 11
        c0 00 00 00 ff 00 00 0e   # selected version
        01 02 10                  # 1 parameter: MAX_REQUEST_ID = 16
    """,
    ),
    (
        GoAway("moqt://r/x"),
        """
        10 000b                   # GOAWAY, length 11
        0a 6d6f71743a2f2f722f78   # new session URI (b)
    """,
    ),
    (GoAway(""), "10 0001  00     # GOAWAY to the current URI"),
    (MaxRequestId(64), "15 0002  4040  # MAX_REQUEST_ID, request id 64 (2-byte varint)"),
    (RequestsBlocked(7), "1a 0001  07  # REQUESTS_BLOCKED, maximum request id 7"),
    (
        Subscribe(
            2,
            (b"live", b"cam"),
            b"video",
            0x80,
            GroupOrder.ASCENDING,
            True,
            FilterType.LARGEST_OBJECT,
            parameters=((0x02, 5000),),
        ),
        """
        03 0019                   # SUBSCRIBE, length 25
        02                        # request id
        02 04 6c697665 03 63616d  # namespace tuple (live, cam)
        05 766964656f             # track name "video"
        80                        # subscriber priority (8)
        01                        # group order ascending (8)
        01                        # forward (8)
        02                        # filter type LARGEST_OBJECT: no location, no end group
        01 02 5388                # 1 parameter: DELIVERY_TIMEOUT = 5000 ms
    """,
    ),
    (
        Subscribe(
            4, (b"a",), b"", 0, GroupOrder.DESCENDING, False, FilterType.ABSOLUTE_RANGE, Location(10, 3), 20
        ),
        """
        03 000d                   # SUBSCRIBE, length 13
        04                        # request id
        01 01 61                  # namespace (a)
        00                        # empty track name
        00 02 00                  # priority 0, descending, forward 0
        04                        # filter ABSOLUTE_RANGE
        0a 03                     # start location {10, 3}
        14                        # end group 20
        00                        # no parameters
    """,
    ),
    (
        Subscribe(6, (b"a",), b"t", 1, GroupOrder.PUBLISHER, True, FilterType.ABSOLUTE_START, Location(0, 0)),
        """
        03 000d  06  01 01 61  01 74  01 00 01  03  00 00  00   # ABSOLUTE_START {0,0}, no end group
    """,
    ),
    (
        SubscribeOk(2, 9, 0, GroupOrder.ASCENDING, Location(5, 7)),
        """
        04 0008                   # SUBSCRIBE_OK, length 8
        02 09 00                  # request id, track alias, expires 0
        01 01                     # group order ascending, content exists
        05 07                     # largest location {5, 7}
        00                        # no parameters
    """,
    ),
    (
        SubscribeOk(3, 1, 1000, GroupOrder.DESCENDING, None),
        """
        04 0007  03 01 43e8  02 00  00   # no content: no largest location
    """,
    ),
    (
        SubscribeError(2, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, "no track"),
        """
        05 000b  02  04  08 6e6f20747261636b   # request id, code 4, reason phrase
    """,
    ),
    (
        SubscribeUpdate(6, 2, Location(3, 0), 0, 1, True),
        """
        02 0008                   # SUBSCRIBE_UPDATE, length 8
        06 02                     # request id, subscription request id
        03 00 00                  # start location {3, 0}, end group 0 (open)
        01 01 00                  # priority 1, forward 1, no parameters
    """,
    ),
    (Unsubscribe(2), "0a 0001  02"),
    (
        PublishDone(2, PublishDoneCode.TRACK_ENDED, 3, "bye"),
        """
        0b 0007  02  02  03  03 627965   # request id, TRACK_ENDED, stream count 3, reason
    """,
    ),
    (
        Publish(1, (b"live",), b"v", 5, GroupOrder.ASCENDING, Location(1, 2), True),
        """
        1d 0010                   # PUBLISH, 16-bit length as deployed peers send it
        01                        # request id
        01 04 6c697665  01 76     # namespace (live), track name "v"
        05                        # track alias
        01 01  01 02              # group order, content exists, largest {1, 2}
        01 00                     # forward, no parameters
    """,
    ),
    (
        PublishOk(1, True, 0x10, GroupOrder.DESCENDING, FilterType.NEXT_GROUP_START),
        """
        1e 0006  01  01 10 02  01  00    # request id, forward, priority, order, NEXT_GROUP_START
    """,
    ),
    (PublishError(1, PublishErrorCode.UNINTERESTED, ""), "1f 0003  01 04 00"),
    (
        Fetch(
            8,
            2,
            GroupOrder.ASCENDING,
            FetchType.STANDALONE,
            StandaloneFetch((b"a",), b"t", Location(0, 0), Location(4, 1)),
        ),
        """
        16 000e                   # FETCH, length 14
        08 02 01                  # request id, priority, group order
        01                        # fetch type STANDALONE
        01 01 61  01 74           # namespace (a), track name "t"
        00 00  04 01              # start {0, 0}, end {4, 1}
        00                        # no parameters
    """,
    ),
    (
        Fetch(10, 0, GroupOrder.PUBLISHER, FetchType.RELATIVE_JOINING, joining=JoiningFetch(2, 1)),
        """
        16 0007  0a 00 00  02  02 01  00   # joining request id 2, joining start 1
    """,
    ),
    (FetchOk(8, GroupOrder.ASCENDING, True, Location(4, 1)), "18 0006  08 01 01  04 01  00"),
    (FetchError(8, FetchErrorCode.NO_OBJECTS, "x"), "19 0004  08 06 01 78"),
    (FetchCancel(8), "17 0001  08"),
    (
        TrackStatus(12, (b"a",), b"t", 0x80, GroupOrder.PUBLISHER, True, FilterType.LARGEST_OBJECT),
        """
        0d 000b  0c  01 01 61  01 74  80 00 01  02  00   # same layout as SUBSCRIBE
    """,
    ),
    (TrackStatusOk(12, 0, 0, GroupOrder.ASCENDING, None), "0e 0006  0c 00 00  01 00  00"),
    (TrackStatusError(12, SubscribeErrorCode.TRACK_DOES_NOT_EXIST, ""), "0f 0003  0c 04 00"),
    (
        PublishNamespace(1, (b"live", b"cam"), ((0x03, b"tok"),)),
        """
        06 0011                   # PUBLISH_NAMESPACE, length 17
        01                        # request id
        02 04 6c697665 03 63616d  # namespace (live, cam)
        01 03 03 746f6b           # 1 parameter: AUTHORIZATION_TOKEN (odd: bytes)
    """,
    ),
    (PublishNamespaceOk(1), "07 0001  01"),
    (PublishNamespaceError(1, PublishNamespaceErrorCode.UNAUTHORIZED, "no"), "08 0005  01 01 02 6e6f"),
    (PublishNamespaceDone((b"live",)), "09 0006  01 04 6c697665   # namespace only, no request id"),
    (PublishNamespaceCancel((b"live",), 0, "gone"), "0c 000c  01 04 6c697665  00  04 676f6e65"),
    (SubscribeNamespace(3, (b"live",)), "11 0008  03  01 04 6c697665  00"),
    (SubscribeNamespaceOk(3), "12 0001  03"),
    (
        SubscribeNamespaceError(3, SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP, ""),
        "13 0003  03 05 00",
    ),
    (UnsubscribeNamespace((b"live",)), "14 0006  01 04 6c697665"),
]
IDS = [f"{i}-{type(m).__name__}" for i, (m, _) in enumerate(TABLE)]


@pytest.mark.parametrize(("msg", "wire"), TABLE, ids=IDS)
def test_encode_matches_table(msg: ControlMessage, wire: str) -> None:
    assert encode_control(msg).hex() == h(wire).hex()


@pytest.mark.parametrize(("msg", "wire"), TABLE, ids=IDS)
def test_parser_whole_bytewise_and_with_trailing_bytes(msg: ControlMessage, wire: str) -> None:
    data = h(wire)
    assert ControlStreamParser().feed(data) == [msg]

    parser = ControlStreamParser()
    out: list[ControlMessage] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert out == [] and parser.buffered == i + 1
    assert out == [msg] and parser.buffered == 0

    trailing = h("15 00")  # the first bytes of a MAX_REQUEST_ID frame
    parser = ControlStreamParser()
    assert parser.feed(data + trailing) == [msg]
    assert parser.buffered == len(trailing)
    assert parser.feed(h("01 05")) == [MaxRequestId(5)]


@pytest.mark.parametrize(("msg", "wire"), TABLE, ids=IDS)
def test_decode_control_reports_consumed_and_needs_more(msg: ControlMessage, wire: str) -> None:
    data = h(wire)
    assert decode_control(data + b"\xff\xff") == (msg, len(data))
    with pytest.raises(NeedMoreData):
        decode_control(data[:-1])


def test_whole_table_as_one_stream() -> None:
    stream = b"".join(h(w) for _, w in TABLE)
    assert ControlStreamParser().feed(stream) == [m for m, _ in TABLE]


def test_content_exists_and_parameter_lookup() -> None:
    ok = SubscribeOk(1, 2, largest_location=Location(1, 0))
    assert ok.content_exists and not SubscribeOk(1, 2).content_exists
    assert Location(1, 5) < Location(2, 0) < Location(2, 1)
    params = ((0x02, 7), (0x03, b"a"), (0x03, b"b"))
    assert get_parameter(params, 0x03) == b"a" and get_parameter(params, 0x04) is None


def test_track_status_is_not_a_subscribe() -> None:
    """A session dispatching on isinstance(msg, Subscribe) must not create state for TRACK_STATUS."""
    ts = TrackStatus(1, (b"a",), b"t")
    assert not isinstance(ts, Subscribe)
    assert isinstance(decode_control(encode_control(ts))[0], TrackStatus)


# --- rejections: each malformation -> the right session error -------------------------------------------------------

SUB = (
    "03 000d  06  01 01 61  01 74  01 00 01  03  00 00  00"  # a valid ABSOLUTE_START subscribe, for mutation
)


def _frame(msg_type: int, payload: bytes) -> bytes:
    return bytes([msg_type]) + len(payload).to_bytes(2, "big") + payload


def _ns_payload(count: int) -> bytes:
    return bytes([count]) + b"".join(b"\x01a" for _ in range(count))


REJECT: list[tuple[str, bytes, type[MoqtError], str]] = [
    ("unknown type 0x01 (draft-00 SETUP)", h("01 0000"), ProtocolViolation, "unknown control message type"),
    ("unknown type 0x22", h("22 0000"), ProtocolViolation, "unknown control message type"),
    ("unknown type 0x40 (old CLIENT_SETUP)", h("4040 0000"), ProtocolViolation, "unknown control message type"),
    ("length longer than the fields", h("15 0003  4040 00"), ProtocolViolation, "after the last field"),
    ("length shorter than the fields", h("15 0001  4040"), ProtocolViolation, "run past the length"),
    ("filter type 5", h("03 000b  06  01 01 61  01 74  01 00 01  05  00"), ProtocolViolation, "unknown filter type"),
    ("filter type 0", h("03 000b  06  01 01 61  01 74  01 00 01  00  00"), ProtocolViolation, "unknown filter type"),
    ("forward 2", h("03 000d  06  01 01 61  01 74  01 00 02  03  00 00  00"), ProtocolViolation, "Forward"),
    ("subscribe group order 3", h("03 000d  06  01 01 61  01 74  01 03 01  03  00 00  00"), ProtocolViolation, "group order"),
    ("subscribe_ok group order 0", h("04 0006  02 09 00  00 00  00"), ProtocolViolation, "group order"),
    ("subscribe_ok content exists 2", h("04 0008  02 09 00  01 02  05 07  00"), ProtocolViolation, "Content Exists"),
    ("publish forward 2", h("1d 000e  01 01 04 6c697665 01 76 05 01 00 02 00"), ProtocolViolation, "Forward"),
    ("fetch_ok end of track 2", h("18 0006  08 01 02  04 01  00"), ProtocolViolation, "End Of Track"),
    ("fetch type 4", h("16 0005  0a 00 00  04  00"), ProtocolViolation, "fetch type"),
    ("namespace with 0 fields", _frame(0x09, b"\x00"), ProtocolViolation, "1..32"),
    ("namespace with 33 fields", _frame(0x09, _ns_payload(33)), ProtocolViolation, "1..32"),
    ("prefix with 0 fields", _frame(0x14, b"\x00"), ProtocolViolation, "1..32"),
    ("full track name over 4096 bytes",
     _frame(0x03, b"\x02\x01\x01a" + b"\x50\x00" + b"x" * 4096 + b"\x01\x00\x01\x02\x00"), ProtocolViolation, "4096"),
    ("reason over 1024 bytes", _frame(0x05, b"\x02\x04\x44\x01" + b"r" * 1025), ProtocolViolation, "1024"),
    ("reason not UTF-8", h("05 0004  02 04 01 ff"), ProtocolViolation, "UTF-8"),
    ("GOAWAY URI over 8192 bytes", _frame(0x10, b"\x60\x01" + b"u" * 8193), ProtocolViolation, "8192"),
    ("duplicate DELIVERY_TIMEOUT", h("11 000c  03  01 04 6c697665  02 02 05 02 06"), ProtocolViolation, "duplicate parameter 0x2"),
    ("duplicate setup PATH", h("21 000f  c0000000ff00000e  02 01 01 2f 01 01 2f"), ProtocolViolation, "duplicate parameter 0x1"),
    ("parameter value over 65535 bytes", h("21 000e  c0000000ff00000e  01  01 80010000"), ProtocolViolation, "65535"),
    ("parameter count beyond the message", h("21 000a  c0000000ff00000e  05  02"), ProtocolViolation, "parameter count"),
    ("CLIENT_SETUP without versions", h("20 0002  00 00"), ProtocolViolation, "0 versions"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "data", "error", "reason"), REJECT, ids=[r[0] for r in REJECT])
def test_rejects_malformed(what: str, data: bytes, error: type[MoqtError], reason: str) -> None:
    with pytest.raises(error) as info:
        ControlStreamParser().feed(data)
    assert info.value.code == error.code == SessionErrorCode.PROTOCOL_VIOLATION
    assert reason in info.value.reason
    # the same verdict however the bytes are split, and the parser stays failed afterwards
    parser = ControlStreamParser()
    with pytest.raises(error):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    with pytest.raises(error):
        parser.feed(b"")


def test_valid_mutation_base_parses() -> None:
    """The rejection rows above mutate this message; it must be valid itself."""
    assert ControlStreamParser().feed(h(SUB)) == [
        Subscribe(6, (b"a",), b"t", 1, GroupOrder.PUBLISHER, True, FilterType.ABSOLUTE_START, Location(0, 0))
    ]


def test_accepts_repeated_auth_tokens_and_unknown_parameters() -> None:
    data = h("11 0012  03  01 04 6c697665  04  03 01 61  03 01 62  2a 01  2a 02")
    (msg,) = ControlStreamParser().feed(data)
    assert isinstance(msg, SubscribeNamespace)
    assert msg.parameters == ((3, b"a"), (3, b"b"), (0x2A, 1), (0x2A, 2))


def test_non_minimal_varints_are_accepted() -> None:
    """RFC 9000 section 16: minimal encoding is a SHOULD for senders; receivers decode any length."""
    assert ControlStreamParser().feed(h("15 0008  c000000000000040")) == [MaxRequestId(64)]
    assert ControlStreamParser().feed(h("4015 0001  07")) == [MaxRequestId(7)]


def test_encoder_refuses_what_it_could_not_send() -> None:
    with pytest.raises(ValueError):
        encode_control(Subscribe(1, (), b"t"))  # empty namespace
    with pytest.raises(ValueError):
        encode_control(Subscribe(1, (b"a",), b"t", filter_type=FilterType.ABSOLUTE_START))  # no start
    with pytest.raises(ValueError):
        encode_control(SubscribeError(1, 0, "r" * 1025))
    with pytest.raises(ValueError):
        encode_control(PublishNamespace(1, (b"a",), ((0x02, b"bytes for an even type"),)))
    with pytest.raises(ValueError):
        encode_control(PublishNamespace(1, (b"a",), ((0x03, 5),)))
    with pytest.raises(ValueError):
        encode_control(Fetch(1, 0, 1, FetchType.STANDALONE))
    with pytest.raises(ValueError):
        encode_control(PublishNamespace(1, (b"a",), ((0x01, b"x" * 0x10000),)))  # frame over 65535


# --- hypothesis round trips ---------------------------------------------------------------------------------------

V = st.integers(0, (1 << 62) - 1)
SMALL = st.integers(0, 1 << 20)
U8 = st.integers(0, 255)
FIELD = st.binary(max_size=12)
NS = st.lists(FIELD, min_size=1, max_size=32).map(tuple)
NAME = st.binary(max_size=40)
REASON = st.text(max_size=40)
LOC = st.builds(Location, V, V)
PARAM = st.one_of(
    st.tuples(st.integers(0, 1 << 30).map(lambda t: t * 2), V),
    st.tuples(st.integers(0, 1 << 30).map(lambda t: t * 2 + 1), st.binary(max_size=20)),
)
# no repeats of the single-instance types (2 and 4) so the receiver's duplicate check stays quiet
PARAMS = st.lists(PARAM, max_size=5).map(lambda ps: tuple(p for p in ps if p[0] not in (1, 2, 4, 5, 7)))
REQ_ORDER = st.sampled_from(list(GroupOrder))
RESP_ORDER = st.sampled_from([GroupOrder.ASCENDING, GroupOrder.DESCENDING])


@st.composite
def filters(draw: st.DrawFn) -> tuple[FilterType, Location | None, int | None]:
    ft = draw(st.sampled_from(list(FilterType)))
    start = draw(LOC) if ft in (FilterType.ABSOLUTE_START, FilterType.ABSOLUTE_RANGE) else None
    end = draw(V) if ft == FilterType.ABSOLUTE_RANGE else None
    return ft, start, end


def _subscribe_like(cls: type[Subscribe] | type[TrackStatus]) -> st.SearchStrategy[ControlMessage]:
    return st.builds(
        lambda rid, ns, name, prio, order, fwd, flt, params: cls(rid, ns, name, prio, order, fwd, flt[0], flt[1], flt[2], params),
        V, NS, NAME, U8, REQ_ORDER, st.booleans(), filters(), PARAMS,
    )  # fmt: skip


MESSAGES: st.SearchStrategy[ControlMessage] = st.one_of(
    st.builds(ClientSetup, st.lists(V, min_size=1, max_size=4).map(tuple), PARAMS),
    st.builds(ServerSetup, V, PARAMS),
    st.builds(GoAway, st.text(max_size=60)),
    st.builds(MaxRequestId, V),
    st.builds(RequestsBlocked, V),
    _subscribe_like(Subscribe),
    _subscribe_like(TrackStatus),
    st.builds(SubscribeOk, V, V, V, RESP_ORDER, st.none() | LOC, PARAMS),
    st.builds(TrackStatusOk, V, V, V, RESP_ORDER, st.none() | LOC, PARAMS),
    st.builds(SubscribeError, V, V, REASON),
    st.builds(TrackStatusError, V, V, REASON),
    st.builds(SubscribeUpdate, V, V, LOC, V, U8, st.booleans(), PARAMS),
    st.builds(Unsubscribe, V),
    st.builds(PublishDone, V, V, V, REASON),
    st.builds(Publish, V, NS, NAME, V, RESP_ORDER, st.none() | LOC, st.booleans(), PARAMS),
    st.builds(
        lambda rid, fwd, prio, order, flt, params: PublishOk(
            rid, fwd, prio, order, flt[0], flt[1], flt[2], params
        ),
        V,
        st.booleans(),
        U8,
        RESP_ORDER,
        filters(),
        PARAMS,
    ),  # fmt: skip
    st.builds(PublishError, V, V, REASON),
    st.builds(
        Fetch,
        V,
        U8,
        REQ_ORDER,
        st.just(FetchType.STANDALONE),
        st.builds(StandaloneFetch, NS, NAME, LOC, LOC),
        st.none(),
        PARAMS,
    ),  # fmt: skip
    st.builds(
        Fetch,
        V,
        U8,
        REQ_ORDER,
        st.sampled_from([FetchType.RELATIVE_JOINING, FetchType.ABSOLUTE_JOINING]),
        st.none(),
        st.builds(JoiningFetch, V, V),
        PARAMS,
    ),  # fmt: skip
    st.builds(FetchOk, V, RESP_ORDER, st.booleans(), LOC, PARAMS),
    st.builds(FetchError, V, V, REASON),
    st.builds(FetchCancel, V),
    st.builds(PublishNamespace, V, NS, PARAMS),
    st.builds(PublishNamespaceOk, V),
    st.builds(PublishNamespaceError, V, V, REASON),
    st.builds(PublishNamespaceDone, NS),
    st.builds(PublishNamespaceCancel, NS, V, REASON),
    st.builds(SubscribeNamespace, V, NS, PARAMS),
    st.builds(SubscribeNamespaceOk, V),
    st.builds(SubscribeNamespaceError, V, V, REASON),
    st.builds(UnsubscribeNamespace, NS),
)


@settings(max_examples=400, deadline=None)
@given(MESSAGES)
def test_round_trip(msg: ControlMessage) -> None:
    data = encode_control(msg)
    assert decode_control(data) == (msg, len(data))


@settings(max_examples=100, deadline=None)
@given(st.lists(MESSAGES, min_size=1, max_size=6), st.data())
def test_round_trip_any_split(msgs: list[ControlMessage], data: st.DataObject) -> None:
    stream = b"".join(encode_control(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = ControlStreamParser()
    out: list[ControlMessage] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[prev:cut])
        prev = cut
    assert out == msgs and parser.buffered == 0


# --- AUTHORIZATION TOKEN parameter value (section 9.2.1.1) ---------------------------------------------------------

TOKENS = [
    (AuthToken(AuthTokenAliasType.DELETE, 5), "00 05            # DELETE alias 5"),
    (
        AuthToken(AuthTokenAliasType.REGISTER, 5, 0, b"jwt"),
        "01 05 00 6a7774  # REGISTER alias 5, type 0, value",
    ),
    (AuthToken(AuthTokenAliasType.USE_ALIAS, 5), "02 05            # USE_ALIAS 5"),
    (
        AuthToken(AuthTokenAliasType.USE_VALUE, None, 1, b""),
        "03 01            # USE_VALUE type 1, empty value",
    ),
]


@pytest.mark.parametrize(("token", "wire"), TOKENS, ids=[w.split("#")[1].strip() for _, w in TOKENS])
def test_auth_token_table(token: AuthToken, wire: str) -> None:
    assert encode_auth_token(token) == h(wire)
    assert decode_auth_token(h(wire)) == token


@pytest.mark.parametrize("wire", ["", "04 05", "00", "00 05 01", "01 05", "03", "40"])
def test_auth_token_rejects(wire: str) -> None:
    with pytest.raises(KeyValueFormattingError) as info:
        decode_auth_token(h(wire))
    assert info.value.code == SessionErrorCode.KEY_VALUE_FORMATTING_ERROR


def test_auth_token_encoder_checks_fields() -> None:
    with pytest.raises(ValueError):
        encode_auth_token(AuthToken(AuthTokenAliasType.DELETE))
    with pytest.raises(ValueError):
        encode_auth_token(AuthToken(AuthTokenAliasType.USE_VALUE, 3, 1, b"x"))
    with pytest.raises(ValueError):
        encode_auth_token(AuthToken(9, 1))


def test_version_negotiation() -> None:
    assert negotiate_version((0xFF00000D, DRAFT_14)) == DRAFT_14
    with pytest.raises(VersionNegotiationFailed) as info:
        negotiate_version((0xFF00000D, 0xFF00000F))
    assert info.value.code == SessionErrorCode.VERSION_NEGOTIATION_FAILED
