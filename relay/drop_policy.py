"""Congestion-driven dropping of low-priority objects for one subscriber (docs/fastpath.md, "Drop policy").

With `--recovery user` the congestion state of a subscriber's connection (bytes in flight, congestion window)
lives in aioquic's recovery, which the registration loop keeps exact for every copy the kernel sent: a sweep every
`interval` turns it into one byte per subscription in `downstream_conns` (the priority threshold) that the egress
program applies per copy. With `--recovery kernel` the window is the kernel's (NewReno on the subscriber's ACKs,
bpf/src/recovery.h) and the egress program applies the same hysteresis itself on every copy (`prio_auto`; `high`
and `low` are load-time constants). Hysteresis keeps the threshold from flapping: it is set when bytes in flight
reach `high` of the window and cleared once they fall below `low`.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIORITY_P_FRAMES = 127  # `relay pub` sends I-frames at priority 0 and P-frames at 128 (lower = more important)


@dataclass(frozen=True)
class DropPolicy:
    """Thresholds of the policy; `relay --drop-above/--congestion-high/--congestion-low/--drop-group-rest`."""

    drop_above: int | None = PRIORITY_P_FRAMES  # while congested, drop objects with a greater priority value
    high: float = 0.9  # congested once bytes in flight >= high * window
    low: float = 0.6  # ... until they fall below low * window
    rest_of_group: bool = True  # a dropped object takes the rest of its group with it
    interval: float = 0.02  # seconds between sweeps (each costs Python work per enabled connection)

    def __post_init__(self) -> None:
        if self.drop_above is not None and not 0 <= self.drop_above <= 255:
            raise ValueError("--drop-above is a priority, 0..255")
        if not 0 < self.low <= self.high <= 1.5:
            raise ValueError("need 0 < --congestion-low <= --congestion-high <= 1.5")
        if self.interval <= 0:
            raise ValueError("the sweep interval must be positive")

    def congested(self, in_flight: int, window: int, was: bool) -> bool:
        """The next state of one connection from its recovery figures."""
        if window <= 0:
            return was
        if was:
            return in_flight >= self.low * window
        return in_flight >= self.high * window
