"""ClassifierHooks: the classifier's `subscribed` map holds a track while it has at least one subscriber, whoever
serves it, and forgets it with its last subscriber, its end, or its publisher's session."""

from __future__ import annotations

from typing import Any

from bpf.structs import TrackKey
from relay.ingress_classifier import ClassifierHooks
from relay.relay import Downstream, Track


class Recorder:
    def __init__(self) -> None:
        self.data: dict[bytes, int] = {}

    def update(self, key: Any, value: int, flags: int = 0) -> None:
        self.data[bytes(key)] = value

    def delete(self, key: Any) -> bool:
        return self.data.pop(bytes(key), None) is not None


def _track(publisher: object, alias: int | None = 5) -> Track:
    return Track(key=((b"ns",), b"video"), publisher=publisher, request_id=1, alias=alias)  # type: ignore[arg-type]


def _sub(track: Track, n: int) -> Downstream:
    return Downstream(session=object(), request_id=n, subscriber_priority=128, forward=True, track=track,  # type: ignore[arg-type]
                      seq=n)


def test_counted_per_track_and_removed_with_the_last_subscriber() -> None:
    m, pub = Recorder(), object()
    hooks = ClassifierHooks(m, lambda session: 3 if session is pub else None)
    t = _track(pub)
    a, b = _sub(t, 1), _sub(t, 2)
    hooks.subscriber_added(t, a)
    hooks.subscriber_added(t, b)
    assert list(m.data) == [bytes(TrackKey(conn_id=3, alias=5))]
    hooks.subscriber_removed(t, a)
    assert m.data
    hooks.subscriber_removed(t, b)
    assert m.data == {}


def test_track_end_and_publisher_close_forget_it() -> None:
    m, pub = Recorder(), object()
    hooks = ClassifierHooks(m, lambda session: 3)
    t1, t2 = _track(pub, 5), _track(pub, 6)
    hooks.subscriber_added(t1, _sub(t1, 1))
    hooks.subscriber_added(t2, _sub(t2, 2))
    hooks.track_ended(t1)
    assert list(m.data) == [bytes(TrackKey(conn_id=3, alias=6))]
    hooks.session_closed(pub)  # type: ignore[arg-type]
    assert m.data == {}


def test_unknown_publisher_or_unbound_alias_is_left_alone() -> None:
    m = Recorder()
    hooks = ClassifierHooks(m, lambda session: None)
    t = _track(object())
    hooks.subscriber_added(t, _sub(t, 1))
    hooks2 = ClassifierHooks(m, lambda session: 3)
    t2 = _track(object(), alias=None)
    hooks2.subscriber_added(t2, _sub(t2, 1))
    hooks2.subscriber_removed(t2, _sub(t2, 1))
    assert m.data == {}
