"""Varints (RFC 9000 section 16), the byte cursor, and the MoQT error registry (draft-14 section 13.1)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.moqt import (
    MAX_VARINT,
    FetchErrorCode,
    MoqtError,
    NeedMoreData,
    ProtocolViolation,
    PublishDoneCode,
    PublishNamespaceErrorCode,
    Reader,
    ResetStreamCode,
    SessionErrorCode,
    SubscribeErrorCode,
    SubscribeNamespaceErrorCode,
    Writer,
    decode_varint,
    encode_varint,
    errors,
    varint_len,
)

# RFC 9000 appendix A.1 sample encodings, plus the boundaries of each length.
VECTORS = [
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
    ("00", 0),
    ("3f", 63),
    ("4040", 64),
    ("7fff", 16383),
    ("80004000", 16384),
    ("bfffffff", 2**30 - 1),
    ("c000000040000000", 2**30),
    ("ffffffffffffffff", MAX_VARINT),
]


@pytest.mark.parametrize(("hexstr", "value"), VECTORS)
def test_varint_vectors(hexstr: str, value: int) -> None:
    assert encode_varint(value).hex() == hexstr
    assert decode_varint(bytes.fromhex(hexstr)) == (value, len(hexstr) // 2)
    assert varint_len(value) == len(hexstr) // 2


def test_decode_accepts_non_minimal() -> None:
    assert decode_varint(bytes.fromhex("4025")) == (37, 2)  # RFC 9000 A.1: 0x4025 also decodes to 37
    assert decode_varint(bytes.fromhex("c000000000000025")) == (37, 8)


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(ValueError):
        encode_varint(MAX_VARINT + 1)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX_VARINT), st.binary(max_size=4))
def test_varint_round_trip(value: int, trailing: bytes) -> None:
    data = encode_varint(value)
    assert decode_varint(data + trailing) == (value, len(data))
    for cut in range(len(data)):
        with pytest.raises(NeedMoreData):
            decode_varint(data[:cut])


def test_reader_pulls_and_does_not_advance_on_short_data() -> None:
    r = Reader(bytes.fromhex("25 4040 ab 0102 030405 c0"))
    assert r.pull_varint() == 37
    assert r.pull_varint() == 64
    assert r.pull_uint8() == 0xAB
    assert r.pull_uint16() == 0x0102
    sub = r.sub(3)
    assert sub.pull_bytes(2) == b"\x03\x04" and sub.remaining == 1
    with pytest.raises(NeedMoreData):
        sub.pull_uint16()  # the sub-reader ends at its length, not at the buffer's end
    assert r.pos == 9
    with pytest.raises(NeedMoreData):
        r.pull_varint()  # c0 announces 8 bytes, only 1 is here
    assert r.pos == 9 and r.remaining == 1
    with pytest.raises(NeedMoreData):
        r.pull_bytes(2)
    assert r.pull_rest() == b"\xc0" and r.eof()


def test_need_more_data_is_not_a_protocol_error() -> None:
    """Stream parsers wait on NeedMoreData; catching MoqtError must never swallow it (and vice versa)."""
    assert not issubclass(NeedMoreData, MoqtError)
    assert not issubclass(ProtocolViolation, NeedMoreData)


def test_writer_mirrors_reader() -> None:
    w = Writer()
    w.push_varint(15293)
    w.push_uint8(7)
    w.push_uint16(0xBEEF)
    w.push_bytes(b"xy")
    assert w.data().hex() == "7bbd07beef7879" and len(w) == 7
    with pytest.raises(ValueError):
        w.push_uint8(256)
    with pytest.raises(ValueError):
        w.push_uint16(0x10000)


# --- error registry -----------------------------------------------------------------------------------------------

SESSION_CODES = {  # draft-14 section 13.1.1, copied value by value from the IANA table
    "NoError": 0x0, "InternalError": 0x1, "Unauthorized": 0x2, "ProtocolViolation": 0x3, "InvalidRequestId": 0x4,
    "DuplicateTrackAlias": 0x5, "KeyValueFormattingError": 0x6, "TooManyRequests": 0x7, "InvalidPath": 0x8,
    "MalformedPath": 0x9, "GoawayTimeout": 0x10, "ControlMessageTimeout": 0x11, "DataStreamTimeout": 0x12,
    "AuthTokenCacheOverflow": 0x13, "DuplicateAuthTokenAlias": 0x14, "VersionNegotiationFailed": 0x15,
    "MalformedAuthToken": 0x16, "UnknownAuthTokenAlias": 0x17, "ExpiredAuthToken": 0x18, "InvalidAuthority": 0x19,
    "MalformedAuthority": 0x1A,
}  # fmt: skip


@pytest.mark.parametrize(("name", "code"), SESSION_CODES.items())
def test_session_error_classes_carry_their_code(name: str, code: int) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, MoqtError) and cls.code == code
    exc = cls("why")
    assert exc.code == code and exc.reason == "why" and str(exc) == "why"
    assert errors.error_class_for_code(code) is cls
    assert f"0x{code:x}" in repr(exc)


def test_every_session_code_has_a_class() -> None:
    assert {int(c) for c in SessionErrorCode} == set(SESSION_CODES.values())
    assert errors.error_class_for_code(0x999) is MoqtError


def test_request_code_values_match_draft_14() -> None:
    assert [(c.name, c.value) for c in SubscribeErrorCode] == [
        ("INTERNAL_ERROR", 0), ("UNAUTHORIZED", 1), ("TIMEOUT", 2), ("NOT_SUPPORTED", 3),
        ("TRACK_DOES_NOT_EXIST", 4), ("INVALID_RANGE", 5), ("MALFORMED_AUTH_TOKEN", 0x10), ("EXPIRED_AUTH_TOKEN", 0x12),
    ]  # fmt: skip
    assert [c.value for c in PublishDoneCode] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert PublishDoneCode.TOO_FAR_BEHIND == 6 and PublishDoneCode.MALFORMED_TRACK == 7
    assert FetchErrorCode.INVALID_JOINING_REQUEST_ID == 7 and FetchErrorCode.EXPIRED_AUTH_TOKEN == 0x12
    assert PublishNamespaceErrorCode.UNINTERESTED == 4
    assert SubscribeNamespaceErrorCode.NAMESPACE_PREFIX_OVERLAP == 5
    assert [c.value for c in ResetStreamCode] == [0, 1, 2, 3]
