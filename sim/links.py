"""Per-link shaping as the user writes it: `subK=RATE[,loss=X%][,dir=both|down|up]`.

A link is the veth between one node and the switch. `down` is switch -> node (what a subscriber receives),
`up` is node -> switch; `both` (the default) shapes each direction alike, as on a symmetric access link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

Direction = Literal["both", "down", "up"]

LINK_EXAMPLE = "--link sub0=10mbit,loss=2%   (or sub1=500kbit, pub0=loss=5%, sub2=1gbit,dir=down)"

_NODE = re.compile(r"^(relay|pub\d+|sub\d+)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|k|m|g)?$", re.IGNORECASE)
_RATE_SCALE = {"": 1, "bit": 1, "k": 10**3, "kbit": 10**3, "m": 10**6, "mbit": 10**6, "g": 10**9, "gbit": 10**9}
_MIN_RATE_BPS = 8_000
_MAX_RATE_BPS = 100 * 10**9


class LinkSpecError(ValueError):
    """A --link value that does not parse; the message shows the right syntax."""


@dataclass(frozen=True)
class LinkShape:
    """How one link is shaped: rate in bits per second (None = unlimited) and loss as a fraction (0..1)."""

    rate_bps: int | None = None
    loss: float = 0.0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not _MIN_RATE_BPS <= self.rate_bps <= _MAX_RATE_BPS:
            raise LinkSpecError(f"rate {self.rate_bps} bit/s out of range (8kbit..100gbit); example: {LINK_EXAMPLE}")
        if not 0.0 <= self.loss <= 1.0:
            raise LinkSpecError(f"loss {self.loss!r} out of range (0%..100%); example: {LINK_EXAMPLE}")
        if self.direction not in ("both", "down", "up"):
            raise LinkSpecError(f"dir must be both, down or up, not {self.direction!r}; example: {LINK_EXAMPLE}")

    @property
    def shaped(self) -> bool:
        return self.rate_bps is not None or self.loss > 0

    def applies_down(self) -> bool:
        return self.shaped and self.direction in ("both", "down")

    def applies_up(self) -> bool:
        return self.shaped and self.direction in ("both", "up")

    def describe(self) -> str:
        """Short human form for `relay sim list`, e.g. `10mbit loss=2% both`."""
        parts = [format_rate(self.rate_bps) if self.rate_bps is not None else "unlimited"]
        if self.loss:
            parts.append(f"loss={self.loss * 100:g}%")
        parts.append(self.direction)
        return " ".join(parts)


def format_rate(bps: int) -> str:
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"


def parse_rate(text: str) -> int:
    """`10mbit`, `500k`, `1.5gbit`, `64000` (bit/s) -> bits per second. Units are bits, as in tc."""
    m = _RATE.match(text.strip())
    if m is None:
        raise LinkSpecError(f"bad rate {text!r}: use a number with bit, kbit, mbit or gbit; example: {LINK_EXAMPLE}")
    return round(float(m.group(1)) * _RATE_SCALE[(m.group(2) or "").lower()])


def parse_loss(text: str) -> float:
    """`2%` or `2` (percent) -> 0.02."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise LinkSpecError(f"bad loss {text!r}: use a percentage such as loss=2%; example: {LINK_EXAMPLE}") from None
    if not 0.0 <= value <= 100.0:
        raise LinkSpecError(f"loss {text!r} out of range (0%..100%); example: {LINK_EXAMPLE}")
    return value / 100.0


def parse_link(text: str) -> tuple[str, LinkShape]:
    """`sub0=10mbit,loss=2%` -> ("sub0", LinkShape(10_000_000, 0.02))."""
    node, sep, rest = text.partition("=")
    node = node.strip()
    if not sep or not rest.strip():
        raise LinkSpecError(f"bad --link {text!r}: expected NODE=RATE[,loss=X%]; example: {LINK_EXAMPLE}")
    if not _NODE.match(node):
        raise LinkSpecError(f"bad node {node!r} in --link {text!r}: use pubK, subK or relay; example: {LINK_EXAMPLE}")
    rate: int | None = None
    loss = 0.0
    direction = "both"
    seen: set[str] = set()
    for i, item in enumerate(part.strip() for part in rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            if i != 0:
                raise LinkSpecError(f"the rate must come first in --link {text!r}; example: {LINK_EXAMPLE}")
            key, value = "rate", item
        if key in seen:
            raise LinkSpecError(f"{key} given twice in --link {text!r}; example: {LINK_EXAMPLE}")
        seen.add(key)
        if key == "rate":
            rate = parse_rate(value)
        elif key == "loss":
            loss = parse_loss(value)
        elif key == "dir":
            direction = value.strip().lower()
            if direction not in ("both", "down", "up"):
                raise LinkSpecError(f"dir must be both, down or up, not {value!r}; example: {LINK_EXAMPLE}")
        else:
            raise LinkSpecError(f"unknown key {key!r} in --link {text!r} (rate, loss, dir); example: {LINK_EXAMPLE}")
    return node, LinkShape(rate_bps=rate, loss=loss, direction=cast(Direction, direction))
