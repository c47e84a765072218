"""Operator limits: how much one relay, and one session on it, may hold.

Reaching a limit refuses only the request that would cross it, with the draft's error for that request (the session
and everyone else keep being served); see docs/operations-config.md for the codes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Configuration file section [limits]; 0 means "no limit" for the counts."""

    max_sessions: int = (
        0  # set-up sessions at once; one more is closed at setup (INTERNAL_ERROR, reason says why)
    )
    max_requests_per_session: int = 100  # MAX_REQUEST_ID window granted to each peer (section 9.5)
    max_subscriptions_per_session: int = (
        0  # live SUBSCRIBEs per session; more: SUBSCRIBE_ERROR INTERNAL_ERROR
    )
    max_track_name_bytes: int = 4096  # full track name cap (section 2.4.1 allows 4096); more: SUBSCRIBE_ERROR
    max_namespace_bytes: int = 4096  # namespace tuple bytes; more: *_ERROR

    def __post_init__(self) -> None:
        for name in (
            "max_sessions",
            "max_subscriptions_per_session",
            "max_track_name_bytes",
            "max_namespace_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_requests_per_session < 1:
            raise ValueError("max_requests_per_session must be >= 1")


def namespace_bytes(namespace: tuple[bytes, ...]) -> int:
    return sum(len(f) for f in namespace)
