"""Request state machines as data (h11 style): one table per kind, one `advance` function.

The session consults these tables to decide whether a received response is legal for the request it names; a
transition missing from the table is the peer's fault (PROTOCOL_VIOLATION). Keeping them here, as data, lets the docs
draw the diagrams from the same table the code uses.
"""

from __future__ import annotations

from enum import Enum

from relay.moqt.errors import ProtocolViolation


class RequestKind(Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH_NAMESPACE = "publish_namespace"
    TRACK_STATUS = "track_status"
    SUBSCRIBE_NAMESPACE = "subscribe_namespace"
    FETCH = "fetch"
    PUBLISH = "publish"


class RequestState(Enum):
    PENDING = "pending"  # request sent or received, no answer yet
    ESTABLISHED = "established"  # OK sent/received: a live subscription or namespace
    CLOSED = "closed"  # error, done, cancel, unsubscribe: the request id is spent


class Input(Enum):
    OK = "ok"  # *_OK
    ERROR = "error"  # *_ERROR
    END = "end"  # UNSUBSCRIBE, PUBLISH_DONE, PUBLISH_NAMESPACE_DONE / _CANCEL, FETCH_CANCEL


P, E, C = RequestState.PENDING, RequestState.ESTABLISHED, RequestState.CLOSED

# (state, input) -> next state. Draft-14 section 9: an OK or ERROR answers a pending request exactly once; an
# established request ends once; UNSUBSCRIBE may also cancel a subscription still pending (section 9.11).
TRANSITIONS: dict[tuple[RequestState, Input], RequestState] = {
    (P, Input.OK): E,
    (P, Input.ERROR): C,
    (P, Input.END): C,
    (E, Input.END): C,
}


def advance(state: RequestState, event: Input, what: str = "request") -> RequestState:
    """The next state, or ProtocolViolation naming the illegal step (e.g. a second SUBSCRIBE_OK)."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise ProtocolViolation(f"{event.value} not allowed for {what} in state {state.value}")
    return nxt
