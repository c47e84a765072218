"""MoQT draft-14 control messages (draft-ietf-moq-transport-14 section 9): one dataclass per message, one codec.

Framing (section 9): Type (i) | Length (16) | Payload. Draft-14's text shows a varint Length for PUBLISH,
PUBLISH_OK and PUBLISH_ERROR; deployed draft-14 peers use the 16-bit length for every message, and so do we.

Conventions for users of this module:
- `track_namespace` is a tuple of bytes fields (1..32 fields, section 2.4.1); `track_name` is bytes.
- `parameters` is an ordered tuple of (type, value): even type -> int value, odd type -> bytes (section 1.4.2/9.2).
- reasons are `str` (UTF-8 on the wire, <= 1024 bytes, section 1.4.3); error codes are plain ints, with IntEnums
  in relay.moqt.errors for the known values (unknown codes must still round-trip).
- `encode_control(msg)` frames a message; `ControlStreamParser.feed(data)` returns the complete messages so far and
  keeps the rest; any malformation raises a MoqtError subclass carrying the session-termination code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeAlias

from relay.moqt.errors import KeyValueFormattingError, MoqtError, ProtocolViolation, VersionNegotiationFailed
from relay.moqt.varint import NeedMoreData, Reader, Writer

# Section 9.3.1 (versions): draft N = 0xff000000 + N.
DRAFT_14 = 0xFF00000E
SUPPORTED_VERSIONS: tuple[int, ...] = (DRAFT_14,)


def negotiate_version(offered: tuple[int, ...], supported: tuple[int, ...] = SUPPORTED_VERSIONS) -> int:
    """The server's pick from CLIENT_SETUP's list (section 9.3.1): our most preferred version the client offers;
    none in common -> VersionNegotiationFailed (the session closes with VERSION_NEGOTIATION_FAILED)."""
    for version in supported:
        if version in offered:
            return version
    raise VersionNegotiationFailed(f"no common version in {[hex(v) for v in offered]}")


MAX_NAMESPACE_FIELDS = 32  # section 2.4.1
MAX_FULL_TRACK_NAME = 4096  # section 2.4.1: sum of namespace field lengths + track name length
MAX_REASON_LENGTH = 1024  # section 1.4.3
MAX_GOAWAY_URI_LENGTH = 8192  # section 9.4
MAX_KVP_VALUE_LENGTH = 0xFFFF  # section 1.4.2
MAX_MESSAGE_LENGTH = 0xFFFF  # Length (16)

Parameter: TypeAlias = tuple[int, int | bytes]
Parameters: TypeAlias = tuple[Parameter, ...]
Namespace: TypeAlias = tuple[bytes, ...]


class MessageType(IntEnum):
    """Control message types, draft-14 section 9 (table of message types)."""

    SUBSCRIBE_UPDATE = 0x02
    SUBSCRIBE = 0x03
    SUBSCRIBE_OK = 0x04
    SUBSCRIBE_ERROR = 0x05
    PUBLISH_NAMESPACE = 0x06
    PUBLISH_NAMESPACE_OK = 0x07
    PUBLISH_NAMESPACE_ERROR = 0x08
    PUBLISH_NAMESPACE_DONE = 0x09
    UNSUBSCRIBE = 0x0A
    PUBLISH_DONE = 0x0B
    PUBLISH_NAMESPACE_CANCEL = 0x0C
    TRACK_STATUS = 0x0D
    TRACK_STATUS_OK = 0x0E
    TRACK_STATUS_ERROR = 0x0F
    GOAWAY = 0x10
    SUBSCRIBE_NAMESPACE = 0x11
    SUBSCRIBE_NAMESPACE_OK = 0x12
    SUBSCRIBE_NAMESPACE_ERROR = 0x13
    UNSUBSCRIBE_NAMESPACE = 0x14
    MAX_REQUEST_ID = 0x15
    FETCH = 0x16
    FETCH_CANCEL = 0x17
    FETCH_OK = 0x18
    FETCH_ERROR = 0x19
    REQUESTS_BLOCKED = 0x1A
    PUBLISH = 0x1D
    PUBLISH_OK = 0x1E
    PUBLISH_ERROR = 0x1F
    CLIENT_SETUP = 0x20
    SERVER_SETUP = 0x21


class SetupParameter(IntEnum):
    """Setup parameter types (version-independent space), draft-14 section 9.3.2."""

    PATH = 0x01  # bytes, client only, raw QUIC
    MAX_REQUEST_ID = 0x02  # varint, default 0
    AUTHORIZATION_TOKEN = 0x03  # bytes (Token structure), may repeat
    MAX_AUTH_TOKEN_CACHE_SIZE = 0x04  # varint
    AUTHORITY = 0x05  # bytes, client only, raw QUIC
    # Draft-14 9.3.2.6 says 0x05 too (a clash with AUTHORITY, fixed in draft-15); deployed peers send 0x07.
    MOQT_IMPLEMENTATION = 0x07


class VersionParameter(IntEnum):
    """Version-specific parameter types (all non-setup messages), draft-14 section 9.2.1."""

    DELIVERY_TIMEOUT = 0x02  # varint ms
    AUTHORIZATION_TOKEN = 0x03  # bytes, may repeat
    MAX_CACHE_DURATION = 0x04  # varint ms


class GroupOrder(IntEnum):
    """Group Order field (8 bit), draft-14 section 9.7: 0 only valid in requests (= the publisher's order)."""

    PUBLISHER = 0x0
    ASCENDING = 0x1
    DESCENDING = 0x2


class FilterType(IntEnum):
    """Subscription filter types, draft-14 section 9.7."""

    NEXT_GROUP_START = 0x1
    LARGEST_OBJECT = 0x2
    ABSOLUTE_START = 0x3
    ABSOLUTE_RANGE = 0x4


class FetchType(IntEnum):
    """Fetch Type, draft-14 section 9.16."""

    STANDALONE = 0x1
    RELATIVE_JOINING = 0x2
    ABSOLUTE_JOINING = 0x3


@dataclass(frozen=True, order=True)
class Location:
    """Location structure (section 1.4.1); ordering is (group, object), as the draft defines A < B."""

    group: int
    object: int


class AuthTokenAliasType(IntEnum):
    """Alias Type of the Token structure in AUTHORIZATION TOKEN parameters, draft-14 section 9.2.1.1."""

    DELETE = 0x0  # Alias only
    REGISTER = 0x1  # Alias, Type, Value
    USE_ALIAS = 0x2  # Alias only
    USE_VALUE = 0x3  # Type, Value


@dataclass(frozen=True)
class AuthToken:
    """Token structure (section 9.2.1.1): the value of an AUTHORIZATION TOKEN parameter (type 0x03)."""

    alias_type: int
    token_alias: int | None = None
    token_type: int | None = None
    token_value: bytes | None = None


def encode_auth_token(token: AuthToken) -> bytes:
    """Token structure bytes (section 9.2.1.1); ValueError if the fields do not fit the alias type."""
    w = Writer()
    w.push_varint(token.alias_type)
    has_alias = token.alias_type in (AuthTokenAliasType.DELETE, AuthTokenAliasType.REGISTER,
                                     AuthTokenAliasType.USE_ALIAS)  # fmt: skip
    has_value = token.alias_type in (AuthTokenAliasType.REGISTER, AuthTokenAliasType.USE_VALUE)
    if token.alias_type not in AuthTokenAliasType.__members__.values():
        raise ValueError(f"unknown token alias type {token.alias_type}")
    if (
        has_alias != (token.token_alias is not None)
        or has_value != (token.token_type is not None)
        or (has_value != (token.token_value is not None))
    ):
        raise ValueError(f"token fields do not match alias type {token.alias_type}")
    if token.token_alias is not None:
        w.push_varint(token.token_alias)
    if token.token_type is not None and token.token_value is not None:
        w.push_varint(token.token_type)
        w.push_bytes(token.token_value)
    return w.data()


def decode_auth_token(value: bytes) -> AuthToken:
    """Parse a Token structure; one that cannot be decoded is a KEY_VALUE_FORMATTING_ERROR (section 9.2.1.1)."""
    r = Reader(value)
    try:
        alias_type = r.pull_varint()
        if alias_type in (AuthTokenAliasType.DELETE, AuthTokenAliasType.USE_ALIAS):
            token = AuthToken(AuthTokenAliasType(alias_type), r.pull_varint())
            if not r.eof():
                raise KeyValueFormattingError("bytes after the token alias")
            return token
        if alias_type == AuthTokenAliasType.REGISTER:
            alias = r.pull_varint()
            return AuthToken(AuthTokenAliasType.REGISTER, alias, r.pull_varint(), r.pull_rest())
        if alias_type == AuthTokenAliasType.USE_VALUE:
            token_type = r.pull_varint()
            return AuthToken(AuthTokenAliasType.USE_VALUE, None, token_type, r.pull_rest())
    except NeedMoreData as exc:
        raise KeyValueFormattingError("truncated token structure") from exc
    raise KeyValueFormattingError(f"unknown token alias type {alias_type}")


# --- setup and session messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSetup:
    """CLIENT_SETUP 0x20 (section 9.3)."""

    TYPE: ClassVar[MessageType] = MessageType.CLIENT_SETUP
    supported_versions: tuple[int, ...]
    parameters: Parameters = ()


@dataclass(frozen=True)
class ServerSetup:
    """SERVER_SETUP 0x21 (section 9.3)."""

    TYPE: ClassVar[MessageType] = MessageType.SERVER_SETUP
    selected_version: int
    parameters: Parameters = ()


@dataclass(frozen=True)
class GoAway:
    """GOAWAY 0x10 (section 9.4): the URI to reconnect to ('' = the current one); <= 8192 bytes."""

    TYPE: ClassVar[MessageType] = MessageType.GOAWAY
    new_session_uri: str = ""


@dataclass(frozen=True)
class MaxRequestId:
    """MAX_REQUEST_ID 0x15 (section 9.5): the peer may use request ids below this value."""

    TYPE: ClassVar[MessageType] = MessageType.MAX_REQUEST_ID
    request_id: int


@dataclass(frozen=True)
class RequestsBlocked:
    """REQUESTS_BLOCKED 0x1A (section 9.6)."""

    TYPE: ClassVar[MessageType] = MessageType.REQUESTS_BLOCKED
    maximum_request_id: int


# --- subscriptions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SubscribeFields:
    """Fields shared by SUBSCRIBE and TRACK_STATUS (section 9.20: 'identical to SUBSCRIBE')."""

    request_id: int
    track_namespace: Namespace
    track_name: bytes
    subscriber_priority: int = 128
    group_order: int = GroupOrder.PUBLISHER
    forward: bool = True
    filter_type: int = FilterType.LARGEST_OBJECT
    start_location: Location | None = None  # present iff filter_type is ABSOLUTE_START or ABSOLUTE_RANGE
    end_group: int | None = None  # present iff filter_type is ABSOLUTE_RANGE
    parameters: Parameters = ()


@dataclass(frozen=True)
class Subscribe(_SubscribeFields):
    """SUBSCRIBE 0x03 (section 9.7)."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE


@dataclass(frozen=True)
class TrackStatus(_SubscribeFields):
    """TRACK_STATUS 0x0D (section 9.20); not a Subscribe (isinstance-wise) on purpose."""

    TYPE: ClassVar[MessageType] = MessageType.TRACK_STATUS


@dataclass(frozen=True)
class _SubscribeOkFields:
    """Fields shared by SUBSCRIBE_OK and TRACK_STATUS_OK (section 9.21)."""

    request_id: int
    track_alias: int
    expires: int = 0  # ms, 0 = never
    group_order: int = GroupOrder.ASCENDING  # 1 or 2 (0 is a protocol error here)
    largest_location: Location | None = None  # Content Exists (8) is 1 iff this is present

    parameters: Parameters = ()

    @property
    def content_exists(self) -> bool:
        return self.largest_location is not None


@dataclass(frozen=True)
class SubscribeOk(_SubscribeOkFields):
    """SUBSCRIBE_OK 0x04 (section 9.8)."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_OK


@dataclass(frozen=True)
class TrackStatusOk(_SubscribeOkFields):
    """TRACK_STATUS_OK 0x0E (section 9.21): track_alias is 0."""

    TYPE: ClassVar[MessageType] = MessageType.TRACK_STATUS_OK


@dataclass(frozen=True)
class _RequestErrorFields:
    """Request ID (i), Error Code (i), Error Reason (Reason Phrase): every *_ERROR with a request id."""

    request_id: int
    error_code: int
    reason: str = ""


@dataclass(frozen=True)
class SubscribeError(_RequestErrorFields):
    """SUBSCRIBE_ERROR 0x05 (section 9.9); codes: errors.SubscribeErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_ERROR


@dataclass(frozen=True)
class TrackStatusError(_RequestErrorFields):
    """TRACK_STATUS_ERROR 0x0F (section 9.22); codes: errors.SubscribeErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.TRACK_STATUS_ERROR


@dataclass(frozen=True)
class SubscribeUpdate:
    """SUBSCRIBE_UPDATE 0x02 (section 9.10); end_group 0 = open-ended, else last group + 1."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_UPDATE
    request_id: int
    subscription_request_id: int
    start_location: Location
    end_group: int
    subscriber_priority: int
    forward: bool
    parameters: Parameters = ()


@dataclass(frozen=True)
class Unsubscribe:
    """UNSUBSCRIBE 0x0A (section 9.11)."""

    TYPE: ClassVar[MessageType] = MessageType.UNSUBSCRIBE
    request_id: int


@dataclass(frozen=True)
class PublishDone:
    """PUBLISH_DONE 0x0B (section 9.12); codes: errors.PublishDoneCode."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_DONE
    request_id: int
    status_code: int
    stream_count: int
    reason: str = ""


@dataclass(frozen=True)
class Publish:
    """PUBLISH 0x1D (section 9.13)."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH
    request_id: int
    track_namespace: Namespace
    track_name: bytes
    track_alias: int
    group_order: int = GroupOrder.ASCENDING
    largest_location: Location | None = None  # Content Exists (8) is 1 iff present
    forward: bool = True
    parameters: Parameters = ()

    @property
    def content_exists(self) -> bool:
        return self.largest_location is not None


@dataclass(frozen=True)
class PublishOk:
    """PUBLISH_OK 0x1E (section 9.14)."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_OK
    request_id: int
    forward: bool = True
    subscriber_priority: int = 128
    group_order: int = GroupOrder.ASCENDING
    filter_type: int = FilterType.LARGEST_OBJECT
    start_location: Location | None = None
    end_group: int | None = None
    parameters: Parameters = ()


@dataclass(frozen=True)
class PublishError(_RequestErrorFields):
    """PUBLISH_ERROR 0x1F (section 9.15); codes: errors.PublishErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_ERROR


# --- fetch --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StandaloneFetch:
    """Standalone Fetch structure (section 9.16.1)."""

    track_namespace: Namespace
    track_name: bytes
    start_location: Location
    end_location: Location


@dataclass(frozen=True)
class JoiningFetch:
    """Joining Fetch structure (section 9.16.2), for RELATIVE_JOINING and ABSOLUTE_JOINING."""

    joining_request_id: int
    joining_start: int


@dataclass(frozen=True)
class Fetch:
    """FETCH 0x16 (section 9.16): exactly one of standalone / joining, matching fetch_type."""

    TYPE: ClassVar[MessageType] = MessageType.FETCH
    request_id: int
    subscriber_priority: int
    group_order: int
    fetch_type: int
    standalone: StandaloneFetch | None = None
    joining: JoiningFetch | None = None
    parameters: Parameters = ()


@dataclass(frozen=True)
class FetchOk:
    """FETCH_OK 0x18 (section 9.17)."""

    TYPE: ClassVar[MessageType] = MessageType.FETCH_OK
    request_id: int
    group_order: int
    end_of_track: bool
    end_location: Location
    parameters: Parameters = ()


@dataclass(frozen=True)
class FetchError(_RequestErrorFields):
    """FETCH_ERROR 0x19 (section 9.18); codes: errors.FetchErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.FETCH_ERROR


@dataclass(frozen=True)
class FetchCancel:
    """FETCH_CANCEL 0x17 (section 9.19)."""

    TYPE: ClassVar[MessageType] = MessageType.FETCH_CANCEL
    request_id: int


# --- namespaces ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishNamespace:
    """PUBLISH_NAMESPACE 0x06 (section 9.23)."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_NAMESPACE
    request_id: int
    track_namespace: Namespace
    parameters: Parameters = ()


@dataclass(frozen=True)
class PublishNamespaceOk:
    """PUBLISH_NAMESPACE_OK 0x07 (section 9.24)."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_NAMESPACE_OK
    request_id: int


@dataclass(frozen=True)
class PublishNamespaceError(_RequestErrorFields):
    """PUBLISH_NAMESPACE_ERROR 0x08 (section 9.25); codes: errors.PublishNamespaceErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_NAMESPACE_ERROR


@dataclass(frozen=True)
class PublishNamespaceDone:
    """PUBLISH_NAMESPACE_DONE 0x09 (section 9.26): no request id in draft-14."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_NAMESPACE_DONE
    track_namespace: Namespace


@dataclass(frozen=True)
class PublishNamespaceCancel:
    """PUBLISH_NAMESPACE_CANCEL 0x0C (section 9.27); codes: errors.PublishNamespaceErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.PUBLISH_NAMESPACE_CANCEL
    track_namespace: Namespace
    error_code: int
    reason: str = ""


@dataclass(frozen=True)
class SubscribeNamespace:
    """SUBSCRIBE_NAMESPACE 0x11 (section 9.28)."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_NAMESPACE
    request_id: int
    track_namespace_prefix: Namespace
    parameters: Parameters = ()


@dataclass(frozen=True)
class SubscribeNamespaceOk:
    """SUBSCRIBE_NAMESPACE_OK 0x12 (section 9.29)."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_NAMESPACE_OK
    request_id: int


@dataclass(frozen=True)
class SubscribeNamespaceError(_RequestErrorFields):
    """SUBSCRIBE_NAMESPACE_ERROR 0x13 (section 9.30); codes: errors.SubscribeNamespaceErrorCode."""

    TYPE: ClassVar[MessageType] = MessageType.SUBSCRIBE_NAMESPACE_ERROR


@dataclass(frozen=True)
class UnsubscribeNamespace:
    """UNSUBSCRIBE_NAMESPACE 0x14 (section 9.31)."""

    TYPE: ClassVar[MessageType] = MessageType.UNSUBSCRIBE_NAMESPACE
    track_namespace_prefix: Namespace


ControlMessage: TypeAlias = (
    ClientSetup | ServerSetup | GoAway | MaxRequestId | RequestsBlocked
    | Subscribe | SubscribeOk | SubscribeError | SubscribeUpdate | Unsubscribe | PublishDone
    | Publish | PublishOk | PublishError
    | Fetch | FetchOk | FetchError | FetchCancel
    | TrackStatus | TrackStatusOk | TrackStatusError
    | PublishNamespace | PublishNamespaceOk | PublishNamespaceError | PublishNamespaceDone | PublishNamespaceCancel
    | SubscribeNamespace | SubscribeNamespaceOk | SubscribeNamespaceError | UnsubscribeNamespace
)  # fmt: skip


# --- field codecs (section 1.4) -----------------------------------------------------------------------------------

# Parameters that must not repeat (section 9.2: receivers SHOULD reject duplicates of known, non-repeatable types).
# AUTHORITY (0x05) is left out: draft-14's text also gives MOQT_IMPLEMENTATION 0x05, so a literal peer may send both.
_SETUP_SINGLE = frozenset(
    (SetupParameter.PATH, SetupParameter.MAX_REQUEST_ID, SetupParameter.MAX_AUTH_TOKEN_CACHE_SIZE,
     SetupParameter.MOQT_IMPLEMENTATION)
)  # fmt: skip
_VERSION_SINGLE = frozenset((VersionParameter.DELIVERY_TIMEOUT, VersionParameter.MAX_CACHE_DURATION))


def push_key_value_pairs(w: Writer, pairs: tuple[tuple[int, int | bytes], ...]) -> None:
    """Key-Value-Pairs without the count (section 1.4.2): even type -> varint, odd type -> length + bytes."""
    for kvp_type, value in pairs:
        w.push_varint(kvp_type)
        if kvp_type % 2 == 0:
            if not isinstance(value, int):
                raise ValueError(f"even key-value type 0x{kvp_type:x} needs an int value")
            w.push_varint(value)
        else:
            if not isinstance(value, bytes | bytearray):
                raise ValueError(f"odd key-value type 0x{kvp_type:x} needs a bytes value")
            if len(value) > MAX_KVP_VALUE_LENGTH:
                raise ValueError("key-value value longer than 65535 bytes")
            w.push_varint(len(value))
            w.push_bytes(bytes(value))


def pull_key_value_pair(r: Reader) -> tuple[int, int | bytes]:
    """One Key-Value-Pair (section 1.4.2); a value length over 2^16-1 is a PROTOCOL_VIOLATION."""
    kvp_type = r.pull_varint()
    if kvp_type % 2 == 0:
        return kvp_type, r.pull_varint()
    length = r.pull_varint()
    if length > MAX_KVP_VALUE_LENGTH:
        raise ProtocolViolation(f"key-value length {length} exceeds 65535")
    return kvp_type, r.pull_bytes(length)


def _push_parameters(w: Writer, params: Parameters) -> None:
    w.push_varint(len(params))
    push_key_value_pairs(w, params)


def _pull_parameters(r: Reader, single: frozenset[int]) -> Parameters:
    count = r.pull_varint()
    if count > r.remaining:  # each parameter takes at least 2 bytes; also bounds the loop
        raise ProtocolViolation("parameter count exceeds message length")
    out: list[Parameter] = []
    seen: set[int] = set()
    for _ in range(count):
        kvp_type, value = pull_key_value_pair(r)
        if kvp_type in single:
            if kvp_type in seen:
                raise ProtocolViolation(f"duplicate parameter 0x{kvp_type:x}")
            seen.add(kvp_type)
        out.append((kvp_type, value))
    return tuple(out)


def _check_namespace(ns: Namespace, what: str) -> None:
    if not 1 <= len(ns) <= MAX_NAMESPACE_FIELDS:
        raise ValueError(f"{what} must have 1..32 fields, has {len(ns)}")


def _push_tuple(w: Writer, ns: Namespace) -> None:
    w.push_varint(len(ns))
    for f in ns:
        w.push_varint(len(f))
        w.push_bytes(bytes(f))


def _pull_namespace(r: Reader) -> Namespace:
    """Track Namespace (tuple), section 1.4 / 2.4.1: 1..32 fields, else PROTOCOL_VIOLATION."""
    count = r.pull_varint()
    if not 1 <= count <= MAX_NAMESPACE_FIELDS:
        raise ProtocolViolation(f"namespace tuple with {count} fields (must be 1..32)")
    fields = []
    total = 0
    for _ in range(count):
        length = r.pull_varint()
        total += length
        if total > MAX_FULL_TRACK_NAME:
            raise ProtocolViolation("track namespace longer than 4096 bytes")
        fields.append(r.pull_bytes(length))
    return tuple(fields)


def _pull_full_track_name(r: Reader) -> tuple[Namespace, bytes]:
    """Namespace + Track Name; together at most 4096 bytes (section 2.4.1)."""
    ns = _pull_namespace(r)
    length = r.pull_varint()
    if sum(map(len, ns)) + length > MAX_FULL_TRACK_NAME:
        raise ProtocolViolation("full track name longer than 4096 bytes")
    return ns, r.pull_bytes(length)


def _push_full_track_name(w: Writer, ns: Namespace, name: bytes) -> None:
    _check_namespace(ns, "track namespace")
    if sum(map(len, ns)) + len(name) > MAX_FULL_TRACK_NAME:
        raise ValueError("full track name longer than 4096 bytes")
    _push_tuple(w, ns)
    w.push_varint(len(name))
    w.push_bytes(bytes(name))


def _push_reason(w: Writer, reason: str) -> None:
    raw = reason.encode()
    if len(raw) > MAX_REASON_LENGTH:
        raise ValueError("reason phrase longer than 1024 bytes")
    w.push_varint(len(raw))
    w.push_bytes(raw)


def _pull_reason(r: Reader) -> str:
    """Reason Phrase (section 1.4.3): <= 1024 bytes of UTF-8, else PROTOCOL_VIOLATION."""
    length = r.pull_varint()
    if length > MAX_REASON_LENGTH:
        raise ProtocolViolation(f"reason phrase of {length} bytes (max 1024)")
    try:
        return r.pull_bytes(length).decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("reason phrase is not UTF-8") from exc


def _push_location(w: Writer, loc: Location) -> None:
    w.push_varint(loc.group)
    w.push_varint(loc.object)


def _pull_location(r: Reader) -> Location:
    return Location(r.pull_varint(), r.pull_varint())


def _pull_flag(r: Reader, what: str) -> bool:
    """An 8-bit field that must be 0 or 1 (Forward, Content Exists, End Of Track)."""
    value = r.pull_uint8()
    if value > 1:
        raise ProtocolViolation(f"{what} must be 0 or 1, got {value}")
    return value == 1


def _pull_group_order(r: Reader, request: bool) -> int:
    """Group Order (8): requests allow 0 (publisher's order), responses only 1 or 2 (sections 9.7, 9.8)."""
    value = r.pull_uint8()
    if value > GroupOrder.DESCENDING or (value == GroupOrder.PUBLISHER and not request):
        raise ProtocolViolation(f"group order {value} not allowed here")
    return GroupOrder(value)


def _push_filter(w: Writer, filter_type: int, start: Location | None, end_group: int | None) -> None:
    if filter_type not in FilterType.__members__.values():
        raise ValueError(f"unknown filter type {filter_type}")
    w.push_varint(filter_type)
    if filter_type in (FilterType.ABSOLUTE_START, FilterType.ABSOLUTE_RANGE):
        if start is None:
            raise ValueError("absolute filters need start_location")
        _push_location(w, start)
    if filter_type == FilterType.ABSOLUTE_RANGE:
        if end_group is None:
            raise ValueError("ABSOLUTE_RANGE needs end_group")
        w.push_varint(end_group)


def _pull_filter(r: Reader) -> tuple[int, Location | None, int | None]:
    """Filter Type (i) [Start Location] [End Group] (section 9.7); unknown filter -> PROTOCOL_VIOLATION."""
    value = r.pull_varint()
    try:
        filter_type = FilterType(value)
    except ValueError as exc:
        raise ProtocolViolation(f"unknown filter type {value}") from exc
    start = end_group = None
    if filter_type in (FilterType.ABSOLUTE_START, FilterType.ABSOLUTE_RANGE):
        start = _pull_location(r)
    if filter_type == FilterType.ABSOLUTE_RANGE:
        end_group = r.pull_varint()  # end < start is a request error (INVALID_RANGE), left to the session
    return filter_type, start, end_group


# --- per-message payload codecs ------------------------------------------------------------------------------------


def _encode_payload(msg: ControlMessage, w: Writer) -> None:
    match msg:
        case ClientSetup():
            w.push_varint(len(msg.supported_versions))
            for v in msg.supported_versions:
                w.push_varint(v)
            _push_parameters(w, msg.parameters)
        case ServerSetup():
            w.push_varint(msg.selected_version)
            _push_parameters(w, msg.parameters)
        case GoAway():
            uri = msg.new_session_uri.encode()
            if len(uri) > MAX_GOAWAY_URI_LENGTH:
                raise ValueError("GOAWAY URI longer than 8192 bytes")
            w.push_varint(len(uri))
            w.push_bytes(uri)
        case MaxRequestId() | Unsubscribe() | FetchCancel() | PublishNamespaceOk() | SubscribeNamespaceOk():
            w.push_varint(msg.request_id)
        case RequestsBlocked():
            w.push_varint(msg.maximum_request_id)
        case Subscribe() | TrackStatus():
            w.push_varint(msg.request_id)
            _push_full_track_name(w, msg.track_namespace, msg.track_name)
            w.push_uint8(msg.subscriber_priority)
            w.push_uint8(msg.group_order)
            w.push_uint8(int(msg.forward))
            _push_filter(w, msg.filter_type, msg.start_location, msg.end_group)
            _push_parameters(w, msg.parameters)
        case SubscribeOk() | TrackStatusOk():
            w.push_varint(msg.request_id)
            w.push_varint(msg.track_alias)
            w.push_varint(msg.expires)
            w.push_uint8(msg.group_order)
            w.push_uint8(int(msg.content_exists))
            if msg.largest_location is not None:
                _push_location(w, msg.largest_location)
            _push_parameters(w, msg.parameters)
        case (
            SubscribeError() | TrackStatusError() | PublishError() | FetchError() | PublishNamespaceError()
            | SubscribeNamespaceError()
        ):  # fmt: skip
            w.push_varint(msg.request_id)
            w.push_varint(msg.error_code)
            _push_reason(w, msg.reason)
        case SubscribeUpdate():
            w.push_varint(msg.request_id)
            w.push_varint(msg.subscription_request_id)
            _push_location(w, msg.start_location)
            w.push_varint(msg.end_group)
            w.push_uint8(msg.subscriber_priority)
            w.push_uint8(int(msg.forward))
            _push_parameters(w, msg.parameters)
        case PublishDone():
            w.push_varint(msg.request_id)
            w.push_varint(msg.status_code)
            w.push_varint(msg.stream_count)
            _push_reason(w, msg.reason)
        case Publish():
            w.push_varint(msg.request_id)
            _push_full_track_name(w, msg.track_namespace, msg.track_name)
            w.push_varint(msg.track_alias)
            w.push_uint8(msg.group_order)
            w.push_uint8(int(msg.content_exists))
            if msg.largest_location is not None:
                _push_location(w, msg.largest_location)
            w.push_uint8(int(msg.forward))
            _push_parameters(w, msg.parameters)
        case PublishOk():
            w.push_varint(msg.request_id)
            w.push_uint8(int(msg.forward))
            w.push_uint8(msg.subscriber_priority)
            w.push_uint8(msg.group_order)
            _push_filter(w, msg.filter_type, msg.start_location, msg.end_group)
            _push_parameters(w, msg.parameters)
        case Fetch():
            w.push_varint(msg.request_id)
            w.push_uint8(msg.subscriber_priority)
            w.push_uint8(msg.group_order)
            w.push_varint(msg.fetch_type)
            if msg.fetch_type == FetchType.STANDALONE:
                if msg.standalone is None or msg.joining is not None:
                    raise ValueError("a standalone FETCH needs `standalone` (only)")
                sa = msg.standalone
                _push_full_track_name(w, sa.track_namespace, sa.track_name)
                _push_location(w, sa.start_location)
                _push_location(w, sa.end_location)
            elif msg.fetch_type in (FetchType.RELATIVE_JOINING, FetchType.ABSOLUTE_JOINING):
                if msg.joining is None or msg.standalone is not None:
                    raise ValueError("a joining FETCH needs `joining` (only)")
                w.push_varint(msg.joining.joining_request_id)
                w.push_varint(msg.joining.joining_start)
            else:
                raise ValueError(f"unknown fetch type {msg.fetch_type}")
            _push_parameters(w, msg.parameters)
        case FetchOk():
            w.push_varint(msg.request_id)
            w.push_uint8(msg.group_order)
            w.push_uint8(int(msg.end_of_track))
            _push_location(w, msg.end_location)
            _push_parameters(w, msg.parameters)
        case PublishNamespace():
            w.push_varint(msg.request_id)
            _check_namespace(msg.track_namespace, "track namespace")
            _push_tuple(w, msg.track_namespace)
            _push_parameters(w, msg.parameters)
        case PublishNamespaceDone():
            _check_namespace(msg.track_namespace, "track namespace")
            _push_tuple(w, msg.track_namespace)
        case PublishNamespaceCancel():
            _check_namespace(msg.track_namespace, "track namespace")
            _push_tuple(w, msg.track_namespace)
            w.push_varint(msg.error_code)
            _push_reason(w, msg.reason)
        case SubscribeNamespace():
            w.push_varint(msg.request_id)
            _check_namespace(msg.track_namespace_prefix, "namespace prefix")
            _push_tuple(w, msg.track_namespace_prefix)
            _push_parameters(w, msg.parameters)
        case UnsubscribeNamespace():
            _check_namespace(msg.track_namespace_prefix, "namespace prefix")
            _push_tuple(w, msg.track_namespace_prefix)
        case _:
            raise TypeError(f"not a control message: {msg!r}")


def _decode_payload(msg_type: int, r: Reader) -> ControlMessage:
    """Decode one payload; `r` spans exactly the payload. Unknown type -> PROTOCOL_VIOLATION (section 9)."""
    vp = _VERSION_SINGLE
    match msg_type:
        case MessageType.CLIENT_SETUP:
            count = r.pull_varint()
            if count == 0 or count > r.remaining:
                raise ProtocolViolation(f"CLIENT_SETUP offers {count} versions")
            versions = tuple(r.pull_varint() for _ in range(count))
            return ClientSetup(versions, _pull_parameters(r, _SETUP_SINGLE))
        case MessageType.SERVER_SETUP:
            return ServerSetup(r.pull_varint(), _pull_parameters(r, _SETUP_SINGLE))
        case MessageType.GOAWAY:
            length = r.pull_varint()
            if length > MAX_GOAWAY_URI_LENGTH:
                raise ProtocolViolation(f"GOAWAY URI of {length} bytes (max 8192)")
            try:
                return GoAway(r.pull_bytes(length).decode())
            except UnicodeDecodeError as exc:
                raise ProtocolViolation("GOAWAY URI is not UTF-8") from exc
        case MessageType.MAX_REQUEST_ID:
            return MaxRequestId(r.pull_varint())
        case MessageType.REQUESTS_BLOCKED:
            return RequestsBlocked(r.pull_varint())
        case MessageType.SUBSCRIBE | MessageType.TRACK_STATUS:
            request_id = r.pull_varint()
            ns, name = _pull_full_track_name(r)
            priority = r.pull_uint8()
            order = _pull_group_order(r, request=True)
            forward = _pull_flag(r, "Forward")
            filter_type, start, end_group = _pull_filter(r)
            cls_s = Subscribe if msg_type == MessageType.SUBSCRIBE else TrackStatus
            return cls_s(request_id, ns, name, priority, order, forward, filter_type, start, end_group,
                         _pull_parameters(r, vp))  # fmt: skip
        case MessageType.SUBSCRIBE_OK | MessageType.TRACK_STATUS_OK:
            request_id, alias, expires = r.pull_varint(), r.pull_varint(), r.pull_varint()
            order = _pull_group_order(r, request=False)
            largest = _pull_location(r) if _pull_flag(r, "Content Exists") else None
            cls_o = SubscribeOk if msg_type == MessageType.SUBSCRIBE_OK else TrackStatusOk
            return cls_o(request_id, alias, expires, order, largest, _pull_parameters(r, vp))
        case (
            MessageType.SUBSCRIBE_ERROR | MessageType.TRACK_STATUS_ERROR | MessageType.PUBLISH_ERROR
            | MessageType.FETCH_ERROR | MessageType.PUBLISH_NAMESPACE_ERROR | MessageType.SUBSCRIBE_NAMESPACE_ERROR
        ):  # fmt: skip
            request_id, code = r.pull_varint(), r.pull_varint()
            return _ERROR_CLASSES[msg_type](request_id, code, _pull_reason(r))
        case MessageType.SUBSCRIBE_UPDATE:
            request_id, sub_id = r.pull_varint(), r.pull_varint()
            start = _pull_location(r)
            end_group = r.pull_varint()
            priority = r.pull_uint8()
            forward = _pull_flag(r, "Forward")
            return SubscribeUpdate(
                request_id, sub_id, start, end_group, priority, forward, _pull_parameters(r, vp)
            )
        case MessageType.UNSUBSCRIBE:
            return Unsubscribe(r.pull_varint())
        case MessageType.PUBLISH_DONE:
            request_id, status, streams = r.pull_varint(), r.pull_varint(), r.pull_varint()
            return PublishDone(request_id, status, streams, _pull_reason(r))
        case MessageType.PUBLISH:
            request_id = r.pull_varint()
            ns, name = _pull_full_track_name(r)
            alias = r.pull_varint()
            order = _pull_group_order(r, request=False)
            largest = _pull_location(r) if _pull_flag(r, "Content Exists") else None
            forward = _pull_flag(r, "Forward")
            return Publish(request_id, ns, name, alias, order, largest, forward, _pull_parameters(r, vp))
        case MessageType.PUBLISH_OK:
            request_id = r.pull_varint()
            forward = _pull_flag(r, "Forward")
            priority = r.pull_uint8()
            order = _pull_group_order(r, request=False)
            filter_type, start, end_group = _pull_filter(r)
            return PublishOk(request_id, forward, priority, order, filter_type, start, end_group,
                             _pull_parameters(r, vp))  # fmt: skip
        case MessageType.FETCH:
            request_id = r.pull_varint()
            priority = r.pull_uint8()
            order = _pull_group_order(r, request=True)
            fetch_type = r.pull_varint()
            standalone = joining = None
            if fetch_type == FetchType.STANDALONE:
                ns, name = _pull_full_track_name(r)
                standalone = StandaloneFetch(ns, name, _pull_location(r), _pull_location(r))
            elif fetch_type in (FetchType.RELATIVE_JOINING, FetchType.ABSOLUTE_JOINING):
                joining = JoiningFetch(r.pull_varint(), r.pull_varint())
            else:
                raise ProtocolViolation(f"unknown fetch type {fetch_type}")
            return Fetch(request_id, priority, order, FetchType(fetch_type), standalone, joining,
                         _pull_parameters(r, vp))  # fmt: skip
        case MessageType.FETCH_OK:
            request_id = r.pull_varint()
            order = _pull_group_order(r, request=False)
            end_of_track = _pull_flag(r, "End Of Track")
            return FetchOk(request_id, order, end_of_track, _pull_location(r), _pull_parameters(r, vp))
        case MessageType.FETCH_CANCEL:
            return FetchCancel(r.pull_varint())
        case MessageType.PUBLISH_NAMESPACE:
            request_id = r.pull_varint()
            return PublishNamespace(request_id, _pull_namespace(r), _pull_parameters(r, vp))
        case MessageType.PUBLISH_NAMESPACE_OK:
            return PublishNamespaceOk(r.pull_varint())
        case MessageType.PUBLISH_NAMESPACE_DONE:
            return PublishNamespaceDone(_pull_namespace(r))
        case MessageType.PUBLISH_NAMESPACE_CANCEL:
            ns = _pull_namespace(r)
            code = r.pull_varint()
            return PublishNamespaceCancel(ns, code, _pull_reason(r))
        case MessageType.SUBSCRIBE_NAMESPACE:
            request_id = r.pull_varint()
            return SubscribeNamespace(request_id, _pull_namespace(r), _pull_parameters(r, vp))
        case MessageType.SUBSCRIBE_NAMESPACE_OK:
            return SubscribeNamespaceOk(r.pull_varint())
        case MessageType.UNSUBSCRIBE_NAMESPACE:
            return UnsubscribeNamespace(_pull_namespace(r))
    raise ProtocolViolation(f"unknown control message type 0x{msg_type:x}")


_ERROR_CLASSES: dict[int, Callable[[int, int, str], ControlMessage]] = {
    MessageType.SUBSCRIBE_ERROR: SubscribeError,
    MessageType.TRACK_STATUS_ERROR: TrackStatusError,
    MessageType.PUBLISH_ERROR: PublishError,
    MessageType.FETCH_ERROR: FetchError,
    MessageType.PUBLISH_NAMESPACE_ERROR: PublishNamespaceError,
    MessageType.SUBSCRIBE_NAMESPACE_ERROR: SubscribeNamespaceError,
}


def get_parameter(parameters: Parameters, param_type: int) -> int | bytes | None:
    """The first value of `param_type`, or None."""
    for t, v in parameters:
        if t == param_type:
            return v
    return None


def encode_control(msg: ControlMessage) -> bytes:
    """Type (i) | Length (16) | Payload (section 9). ValueError for a message that cannot be encoded."""
    body = Writer()
    _encode_payload(msg, body)
    if len(body) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"{type(msg).__name__} payload of {len(body)} bytes exceeds 65535")
    w = Writer()
    w.push_varint(msg.TYPE)
    w.push_uint16(len(body))
    w.push_bytes(body.data())
    return w.data()


def decode_control(data: bytes | bytearray | memoryview) -> tuple[ControlMessage, int]:
    """Decode the first framed message in `data`; returns (message, bytes consumed).

    Raises NeedMoreData when the frame is incomplete, a MoqtError subclass when it is malformed. The type is
    checked before the payload arrives, so an unknown type fails fast."""
    r = Reader(data)
    msg_type = r.pull_varint()
    if msg_type not in _KNOWN_TYPES:
        raise ProtocolViolation(f"unknown control message type 0x{msg_type:x}")
    length = r.pull_uint16()
    payload = r.sub(length)
    try:
        msg = _decode_payload(msg_type, payload)
    except NeedMoreData as exc:
        raise ProtocolViolation(f"{MessageType(msg_type).name}: fields run past the length {length}") from exc
    if not payload.eof():
        raise ProtocolViolation(
            f"{MessageType(msg_type).name}: {payload.remaining} bytes after the last field"
        )
    return msg, r.pos


_KNOWN_TYPES = frozenset(int(t) for t in MessageType)


class ControlStreamParser:
    """Incremental control-stream decoder: bytes in (any split), complete messages out; keeps partial frames.

    After a MoqtError the parser is poisoned (the session must close), so a second feed raises again."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: MoqtError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message waiting for more data."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[ControlMessage]:
        """Append `data`; return every message now complete. Raises MoqtError for a malformed message."""
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[ControlMessage] = []
        pos = 0
        view = memoryview(self._buf)
        try:
            while pos < len(self._buf):
                try:
                    msg, used = decode_control(view[pos:])
                except NeedMoreData:
                    break
                out.append(msg)
                pos += used
        except MoqtError as exc:
            self._error = exc
            raise
        finally:
            view.release()
        del self._buf[:pos]
        return out


__all__ = [
    "DRAFT_14", "SUPPORTED_VERSIONS", "negotiate_version", "MessageType", "SetupParameter", "VersionParameter", "GroupOrder",
    "FilterType", "FetchType", "Location", "AuthTokenAliasType", "AuthToken", "encode_auth_token",
    "decode_auth_token", "Parameter", "Parameters", "Namespace", "ControlMessage",
    "ClientSetup", "ServerSetup", "GoAway", "MaxRequestId", "RequestsBlocked", "Subscribe", "SubscribeOk",
    "SubscribeError", "SubscribeUpdate", "Unsubscribe", "PublishDone", "Publish", "PublishOk", "PublishError",
    "StandaloneFetch", "JoiningFetch", "Fetch", "FetchOk", "FetchError", "FetchCancel", "TrackStatus",
    "TrackStatusOk", "TrackStatusError", "PublishNamespace", "PublishNamespaceOk", "PublishNamespaceError",
    "PublishNamespaceDone", "PublishNamespaceCancel", "SubscribeNamespace", "SubscribeNamespaceOk",
    "SubscribeNamespaceError", "UnsubscribeNamespace", "get_parameter", "encode_control", "decode_control",
    "ControlStreamParser", "NeedMoreData", "KeyValueFormattingError", "ProtocolViolation", "Reader", "Writer",
]  # fmt: skip
