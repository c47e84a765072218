"""What a subscriber saw, as numbers: the JSON `relay sub` writes and the acceptance tests read.

Kept apart from the network code so that the rules (what counts as an order violation, a loss, a decodable frame)
are tested without a relay.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from relay.tools.media import PayloadError, decodable_frames, parse_payload

MAX_ERRORS_KEPT = 20  # the first few messages explain a failure; thousands of copies do not


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None when there is nothing to rank."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class SubscriberStats:
    """Accumulates objects as they arrive; `to_json()` is the report.

    `stream` identifies where an object came from: a QUIC stream id for subgroup streams, None for datagrams.
    Order is only promised within a stream (draft-14, relays: "must not reorder objects within a
    stream"), so only there does a step backwards count as a violation; across streams/datagrams it is `reordered`.
    """

    objects: int = 0
    nbytes: int = 0
    by_priority: Counter[int] = field(default_factory=Counter)
    groups: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    order_violations: int = 0
    reordered: int = 0
    duplicates: int = 0
    mismatched_ids: int = 0
    datagrams: int = 0
    streams: set[int] = field(default_factory=set)
    first_seq: int | None = None
    dump: list[dict[str, Any]] | None = None  # when a list: one record per object, for byte-exact comparisons
    last_seq: int | None = None
    _last_in_stream: dict[int, tuple[int, int]] = field(default_factory=dict)
    _max_seq: int = -1
    _seen: set[int] = field(default_factory=set)

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    def add(
        self, group: int, obj: int, priority: int, payload: bytes, stream: int | None, now_ns: int | None = None
    ) -> None:
        """Account one object; check its payload against the ids the relay delivered it under."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        self.objects += 1
        self.nbytes += len(payload)
        self.by_priority[priority] += 1
        if self.dump is not None:
            self.dump.append(
                {
                    "group": group,
                    "object": obj,
                    "priority": priority,
                    "size": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "datagram": stream is None,
                }
            )
        if stream is None:
            self.datagrams += 1
        else:
            self.streams.add(stream)
            last = self._last_in_stream.get(stream)
            if last is not None and (group, obj) <= last:
                self.order_violations += 1
                self.error(f"stream {stream}: object {group}/{obj} after {last[0]}/{last[1]}")
            self._last_in_stream[stream] = (group, obj)
        try:
            head = parse_payload(payload)
        except PayloadError as exc:
            self.error(str(exc))
            return
        if (head.group, head.obj) != (group, obj):
            self.mismatched_ids += 1
            self.error(f"object delivered as {group}/{obj} carries {head.group}/{head.obj}")
            return
        if head.seq in self._seen:
            self.duplicates += 1
            self.error(f"duplicate object {group}/{obj} (seq {head.seq})")
            return
        self._seen.add(head.seq)
        self.groups[group].add(obj)
        if head.seq < self._max_seq:
            self.reordered += 1
        self._max_seq = max(self._max_seq, head.seq)
        self.first_seq = head.seq if self.first_seq is None else min(self.first_seq, head.seq)
        self.last_seq = head.seq if self.last_seq is None else max(self.last_seq, head.seq)
        self.latencies_ms.append((now_ns - head.send_ns) / 1e6)

    @property
    def missing(self) -> int:
        """Sequence gaps between the first and last object seen (the publisher numbers every object)."""
        if self.first_seq is None or self.last_seq is None:
            return 0
        return self.last_seq - self.first_seq + 1 - len(self._seen)

    def to_json(self, **extra: Any) -> dict[str, Any]:
        p50 = percentile(self.latencies_ms, 50)
        p99 = percentile(self.latencies_ms, 99)
        out: dict[str, Any] = {
            "objects": self.objects,
            "bytes": self.nbytes,
            "groups": len(self.groups),
            "by_priority": {str(k): v for k, v in sorted(self.by_priority.items())},
            "decodable": decodable_frames(self.groups),
            "missing": self.missing,
            "latency_ms": {
                "p50": None if p50 is None else round(p50, 3),
                "p99": None if p99 is None else round(p99, 3),
                "max": round(max(self.latencies_ms), 3) if self.latencies_ms else None,
            },
            "order_violations": self.order_violations,
            "reordered": self.reordered,
            "duplicates": self.duplicates,
            "mismatched_ids": self.mismatched_ids,
            "datagrams": self.datagrams,
            "streams": len(self.streams),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "error_count": self.error_count,
            "errors": list(self.errors),
        }
        out.update(extra)
        return out
