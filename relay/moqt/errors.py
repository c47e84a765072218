"""MoQT draft-14 errors and error-code registries.

Every session-terminating error is a `MoqtError` subclass whose wire code sits at class level (as aioquic's
QuicConnectionError and h3's ProtocolError do): the session catches `MoqtError` and closes the QUIC connection with
`exc.code` and `exc.reason`. Request-level codes (SUBSCRIBE_ERROR etc.) are only IntEnums: they are sent in a
message, the session lives on. Values checked against draft-ietf-moq-transport-14 section 13.1 (IANA tables).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class SessionErrorCode(IntEnum):
    """Session termination codes, draft-14 section 3.4 and 13.1.1."""

    NO_ERROR = 0x0
    INTERNAL_ERROR = 0x1
    UNAUTHORIZED = 0x2
    PROTOCOL_VIOLATION = 0x3
    INVALID_REQUEST_ID = 0x4
    DUPLICATE_TRACK_ALIAS = 0x5
    KEY_VALUE_FORMATTING_ERROR = 0x6
    TOO_MANY_REQUESTS = 0x7
    INVALID_PATH = 0x8
    MALFORMED_PATH = 0x9
    GOAWAY_TIMEOUT = 0x10
    CONTROL_MESSAGE_TIMEOUT = 0x11
    DATA_STREAM_TIMEOUT = 0x12
    AUTH_TOKEN_CACHE_OVERFLOW = 0x13
    DUPLICATE_AUTH_TOKEN_ALIAS = 0x14
    VERSION_NEGOTIATION_FAILED = 0x15
    MALFORMED_AUTH_TOKEN = 0x16
    UNKNOWN_AUTH_TOKEN_ALIAS = 0x17
    EXPIRED_AUTH_TOKEN = 0x18
    INVALID_AUTHORITY = 0x19
    MALFORMED_AUTHORITY = 0x1A


class MoqtError(Exception):
    """A condition that terminates the MoQT session with `code` (CONNECTION_CLOSE application error code)."""

    code: ClassVar[SessionErrorCode] = SessionErrorCode.INTERNAL_ERROR

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code=0x{int(self.code):x}, reason={self.reason!r})"


class NoError(MoqtError):
    code = SessionErrorCode.NO_ERROR


class InternalError(MoqtError):
    code = SessionErrorCode.INTERNAL_ERROR


class Unauthorized(MoqtError):
    code = SessionErrorCode.UNAUTHORIZED


class ProtocolViolation(MoqtError):
    """The peer broke the spec (bad framing, unknown message type, out-of-range field...)."""

    code = SessionErrorCode.PROTOCOL_VIOLATION


class InvalidRequestId(MoqtError):
    code = SessionErrorCode.INVALID_REQUEST_ID


class DuplicateTrackAlias(MoqtError):
    code = SessionErrorCode.DUPLICATE_TRACK_ALIAS


class KeyValueFormattingError(MoqtError):
    code = SessionErrorCode.KEY_VALUE_FORMATTING_ERROR


class TooManyRequests(MoqtError):
    code = SessionErrorCode.TOO_MANY_REQUESTS


class InvalidPath(MoqtError):
    code = SessionErrorCode.INVALID_PATH


class MalformedPath(MoqtError):
    code = SessionErrorCode.MALFORMED_PATH


class GoawayTimeout(MoqtError):
    code = SessionErrorCode.GOAWAY_TIMEOUT


class ControlMessageTimeout(MoqtError):
    code = SessionErrorCode.CONTROL_MESSAGE_TIMEOUT


class DataStreamTimeout(MoqtError):
    code = SessionErrorCode.DATA_STREAM_TIMEOUT


class AuthTokenCacheOverflow(MoqtError):
    code = SessionErrorCode.AUTH_TOKEN_CACHE_OVERFLOW


class DuplicateAuthTokenAlias(MoqtError):
    code = SessionErrorCode.DUPLICATE_AUTH_TOKEN_ALIAS


class VersionNegotiationFailed(MoqtError):
    code = SessionErrorCode.VERSION_NEGOTIATION_FAILED


class MalformedAuthToken(MoqtError):
    code = SessionErrorCode.MALFORMED_AUTH_TOKEN


class UnknownAuthTokenAlias(MoqtError):
    code = SessionErrorCode.UNKNOWN_AUTH_TOKEN_ALIAS


class ExpiredAuthToken(MoqtError):
    code = SessionErrorCode.EXPIRED_AUTH_TOKEN


class InvalidAuthority(MoqtError):
    code = SessionErrorCode.INVALID_AUTHORITY


class MalformedAuthority(MoqtError):
    code = SessionErrorCode.MALFORMED_AUTHORITY


def error_class_for_code(code: int) -> type[MoqtError]:
    """The MoqtError subclass for a received termination code (MoqtError itself for unknown codes)."""
    for cls in _ALL_ERRORS:
        if int(cls.code) == code:
            return cls
    return MoqtError


_ALL_ERRORS: tuple[type[MoqtError], ...] = (
    NoError, InternalError, Unauthorized, ProtocolViolation, InvalidRequestId, DuplicateTrackAlias,
    KeyValueFormattingError, TooManyRequests, InvalidPath, MalformedPath, GoawayTimeout, ControlMessageTimeout,
    DataStreamTimeout, AuthTokenCacheOverflow, DuplicateAuthTokenAlias, VersionNegotiationFailed,
    MalformedAuthToken, UnknownAuthTokenAlias, ExpiredAuthToken, InvalidAuthority, MalformedAuthority,
)  # fmt: skip


# --- request error codes (sent in *_ERROR messages; the session continues) -------------------------------------


class SubscribeErrorCode(IntEnum):
    """SUBSCRIBE_ERROR (and TRACK_STATUS_ERROR) codes, draft-14 section 13.1.2."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    TRACK_DOES_NOT_EXIST = 0x4
    INVALID_RANGE = 0x5
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class PublishDoneCode(IntEnum):
    """PUBLISH_DONE status codes, draft-14 section 13.1.3."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TRACK_ENDED = 0x2
    SUBSCRIPTION_ENDED = 0x3
    GOING_AWAY = 0x4
    EXPIRED = 0x5
    TOO_FAR_BEHIND = 0x6
    MALFORMED_TRACK = 0x7


class PublishErrorCode(IntEnum):
    """PUBLISH_ERROR codes, draft-14 section 13.1.4."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    UNINTERESTED = 0x4


class FetchErrorCode(IntEnum):
    """FETCH_ERROR codes, draft-14 section 13.1.5."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    TRACK_DOES_NOT_EXIST = 0x4
    INVALID_RANGE = 0x5
    NO_OBJECTS = 0x6
    INVALID_JOINING_REQUEST_ID = 0x7
    UNKNOWN_STATUS_IN_RANGE = 0x8
    MALFORMED_TRACK = 0x9
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class PublishNamespaceErrorCode(IntEnum):
    """PUBLISH_NAMESPACE_ERROR / PUBLISH_NAMESPACE_CANCEL codes (IANA "ANNOUNCE_ERROR"), draft-14 section 13.1.6."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    UNINTERESTED = 0x4
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class SubscribeNamespaceErrorCode(IntEnum):
    """SUBSCRIBE_NAMESPACE_ERROR codes, draft-14 section 13.1.7."""

    INTERNAL_ERROR = 0x0
    UNAUTHORIZED = 0x1
    TIMEOUT = 0x2
    NOT_SUPPORTED = 0x3
    NAMESPACE_PREFIX_UNKNOWN = 0x4
    NAMESPACE_PREFIX_OVERLAP = 0x5
    MALFORMED_AUTH_TOKEN = 0x10
    EXPIRED_AUTH_TOKEN = 0x12


class ResetStreamCode(IntEnum):
    """RESET_STREAM / STOP_SENDING codes for data streams, draft-14 section 13.1.8."""

    INTERNAL_ERROR = 0x0
    CANCELLED = 0x1
    DELIVERY_TIMEOUT = 0x2
    SESSION_CLOSED = 0x3


__all__ = [
    "SessionErrorCode", "MoqtError", "error_class_for_code", "SubscribeErrorCode", "PublishDoneCode",
    "PublishErrorCode", "FetchErrorCode", "PublishNamespaceErrorCode", "SubscribeNamespaceErrorCode",
    "ResetStreamCode", "NoError", "InternalError", "Unauthorized", "ProtocolViolation", "InvalidRequestId",
    "DuplicateTrackAlias", "KeyValueFormattingError", "TooManyRequests", "InvalidPath", "MalformedPath",
    "GoawayTimeout", "ControlMessageTimeout", "DataStreamTimeout", "AuthTokenCacheOverflow",
    "DuplicateAuthTokenAlias", "VersionNegotiationFailed", "MalformedAuthToken", "UnknownAuthTokenAlias",
    "ExpiredAuthToken", "InvalidAuthority", "MalformedAuthority",
]  # fmt: skip
