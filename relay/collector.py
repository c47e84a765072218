"""Frees ended QUIC connections promptly, so a relay with steady churn keeps a flat heap.

aioquic's `QuicConnection` is a web of reference cycles (its frame-handler table, its loss recovery's `send_probe`
and its TLS key callbacks are bound methods of itself), so an ended connection - its TLS state, OpenSSL cipher
contexts, streams and packet history - is freed only by a full garbage-collection pass, never by reference
counting. CPython runs that pass when the objects that reached its oldest generation have grown by 25 %; in a relay
that takes a few hundred ended connections, i.e. minutes of churn, during which the heap climbs in a sawtooth that
looks like a leak (the soak measured ~25 KiB/s, docs/operations.md). One full pass shortly after connections end,
at most every `min_interval` seconds, keeps the heap flat; it costs one pass (milliseconds; `pause_max_ms` shows
it) per interval, only while connections end.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MIN_INTERVAL = 10.0  # seconds between two passes at most once per this
DEFAULT_DELAY = 1.0  # after an end: let aioquic and the relay drop their last references first


@dataclass
class EndedConnectionCollector:
    """Schedules `gc.collect()` after connections end; rate-limited, never more than one pending."""

    loop: asyncio.AbstractEventLoop
    min_interval: float = DEFAULT_MIN_INTERVAL
    delay: float = DEFAULT_DELAY
    ended: int = 0  # connections reported gone
    passes: int = 0  # full collections run
    freed: int = 0  # unreachable objects those passes found
    pause_max_ms: float = 0.0
    pause_total_ms: float = 0.0
    _pending: asyncio.TimerHandle | None = field(default=None, repr=False)
    _last: float = field(default=float("-inf"), repr=False)

    def note_ended(self, *_: Any) -> None:
        """A connection is gone: make sure a pass runs soon (or at the next allowed time)."""
        self.ended += 1
        if self._pending is None:
            now = self.loop.time()
            self._pending = self.loop.call_at(max(now + self.delay, self._last + self.min_interval), self._collect)

    def _collect(self) -> None:
        self._pending = None
        started = time.perf_counter()
        self.freed += gc.collect()
        pause = (time.perf_counter() - started) * 1000
        self.passes += 1
        self.pause_max_ms = max(self.pause_max_ms, pause)
        self.pause_total_ms += pause
        self._last = self.loop.time()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def figures(self) -> dict[str, Any]:
        """For the stats snapshot (`relay stats`, /metrics)."""
        return {
            "connections_ended": self.ended,
            "gc_passes": self.passes,
            "gc_freed_objects": self.freed,
            "gc_pause_max_ms": round(self.pause_max_ms, 2),
            "gc_pause_total_ms": round(self.pause_total_ms, 1),
        }
