"""Cascade counters and the relay-path parameter that detects relay loops.

Why counters: aggregation ("one upstream subscription per track per relay") must be checkable at every hop, from
both sides of each link: a relay counts the SUBSCRIBEs it sent upstream and the SUBSCRIBEs it received from
downstream relays. `RelayCounters` is a plain dataclass on `Relay.counters`, so a stats reader (relay/stats.py)
can copy it with `snapshot()` without knowing the relay.

Why a relay path: relays configured in a cycle (A upstream B, B upstream A) would otherwise forward a SUBSCRIBE for
a track nobody publishes round the cycle (and, with aggregation, leave every hop waiting for the next one's answer
forever). A relay forwarding a SUBSCRIBE upstream adds the Version Specific Parameter RELAY_PATH: the 8-byte ids of
every relay the request crossed, itself last. A relay that finds its own id in it (or more than MAX_HOPS ids)
refuses with SUBSCRIBE_ERROR TRACK_DOES_NOT_EXIST: no publisher is reachable without going round in circles.
The type is odd (a length-prefixed byte value) and unregistered; draft-14 receivers ignore parameter types they do
not know (section 9.2), so peers that are not our relays are unaffected.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field

from relay.moqt import messages as M

RELAY_PATH_PARAMETER = 0x3A0B  # private Version Specific Parameter: relay ids, 8 bytes each
RELAY_ID_BYTES = 8
MAX_HOPS = 16
MAX_ENDED_KEPT = 4096

TrackKey = tuple[M.Namespace, bytes]


def new_relay_id() -> bytes:
    return os.urandom(RELAY_ID_BYTES)


def relay_path(parameters: M.Parameters) -> tuple[bytes, ...] | None:
    """The relay ids a SUBSCRIBE crossed (None: it did not come from one of our relays). A value that is not a
    whole number of ids counts as a path of MAX_HOPS + 1 (refused), never as no path."""
    value = M.get_parameter(parameters, RELAY_PATH_PARAMETER)
    if not isinstance(value, bytes):
        return None
    if len(value) % RELAY_ID_BYTES:
        return (b"",) * (MAX_HOPS + 1)
    return tuple(value[i : i + RELAY_ID_BYTES] for i in range(0, len(value), RELAY_ID_BYTES))


def loop_reason(relay_id: bytes, path: tuple[bytes, ...] | None) -> str | None:
    """Why a SUBSCRIBE with this path must be refused here, or None."""
    if path is None:
        return None
    if relay_id in path:
        return f"relay loop: this relay is already on the request's path ({len(path)} hops)"
    if len(path) > MAX_HOPS:
        return f"relay path longer than {MAX_HOPS} hops"
    return None


def forward_parameters(relay_id: bytes, path: tuple[bytes, ...] | None) -> M.Parameters:
    """The parameters of the SUBSCRIBE this relay sends upstream: the path so far plus this relay."""
    return ((RELAY_PATH_PARAMETER, b"".join(path or ()) + relay_id),)


def track_label(key: TrackKey) -> str:
    return "/".join(f.decode(errors="replace") for f in key[0]) + "/" + key[1].decode(errors="replace")


@dataclass
class RelayCounters:
    """What crossed this relay's cascade links, per track (namespace, name)."""

    #: SUBSCRIBEs this relay sent to its upstream relay
    upstream_subscribes: Counter[TrackKey] = field(default_factory=Counter)
    #: SUBSCRIBEs received from downstream relays (those carrying RELAY_PATH)
    relay_subscribes: Counter[TrackKey] = field(default_factory=Counter)
    #: SUBSCRIBEs refused because they came round a loop (or crossed too many relays)
    loops_refused: int = 0
    #: final figures of every downstream subscription that ended (relay.stats archives them as they go, so a
    #: run's per-subscriber accounting can be read after its subscribers left; the newest MAX_ENDED_KEPT)
    ended_subscriptions: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=MAX_ENDED_KEPT))

    def count_upstream(self, key: TrackKey) -> int:
        self.upstream_subscribes[key] += 1
        return self.upstream_subscribes[key]

    def count_relay(self, key: TrackKey) -> int:
        self.relay_subscribes[key] += 1
        return self.relay_subscribes[key]

    def subscription_ended(self, entry: dict[str, object]) -> None:
        self.ended_subscriptions.append(entry)  # the newest MAX_ENDED_KEPT: a long-running relay stays bounded

    def snapshot(self) -> dict[str, object]:
        """JSON-ready copy: totals and per-track counts keyed "namespace/track"."""
        return {
            "upstream_subscribes": sum(self.upstream_subscribes.values()),
            "relay_subscribes": sum(self.relay_subscribes.values()),
            "loops_refused": self.loops_refused,
            "upstream_subscribes_by_track": {track_label(k): n for k, n in self.upstream_subscribes.items()},
            "relay_subscribes_by_track": {track_label(k): n for k, n in self.relay_subscribes.items()},
        }
