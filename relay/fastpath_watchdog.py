"""Notice when our TC filters are removed from under the relay (issue #10, item 2: "our TC filters removed by someone
else -> the relay notices and falls back to the user-space path, counted and logged").

Why a periodic netlink check and not an event: a `tc filter del` by another process sends the relay nothing, and the
kernel copies simply stop (ingress gone) or leave unrewritten (egress gone: the clones would go out with the
publisher's connection ID). Listing a device's filters is one netlink dump, a millisecond, so once per second costs
nothing. A filter counts as present when a cls_bpf filter with our priority and handle is on the same hook and,
when the kernel reports it, carries our program's name (a filter someone replaced with their own program is gone).

The watchdog only decides and counts; what "fall back" means is the caller's `on_lost` (relay/fastpath_runtime.py):
detach what is left (a half path must not run), then serve every subscription from user space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from bpf.attach import TcFilter, _filters, _ipr

log = logging.getLogger("relay.fastpath")

CHECK_INTERVAL = 1.0  # seconds between checks (the runtime's timer)


def _name(f: Any) -> str | None:
    """TCA_OPTIONS/TCA_BPF_NAME of a dumped cls_bpf filter, when pyroute2 decodes it (None: not reported)."""
    try:
        opts = f.get_attr("TCA_OPTIONS")
        return None if opts is None else opts.get_attr("TCA_BPF_NAME")
    except (AttributeError, KeyError, TypeError):
        return None


def missing_filters(filters: list[TcFilter]) -> list[TcFilter]:
    """The filters of `filters` no longer attached as we attached them (device gone included)."""
    gone: list[TcFilter] = []
    dumps: dict[tuple[str | None, int, int], list[Any]] = {}
    for want in filters:
        key = (want.netns, want.ifindex, want.direction.parent)
        if key not in dumps:
            try:
                with _ipr(want.netns) as ipr:
                    dumps[key] = _filters(ipr, want.ifindex, want.direction)
            except NetlinkError as exc:
                if exc.code not in (2, 19, 22):  # ENOENT, ENODEV, EINVAL: the device or its clsact is gone
                    raise
                dumps[key] = []
        present = any(
            f.get_attr("TCA_KIND") == "bpf"
            and f["info"] >> 16 == want.prio
            and f["handle"] == want.handle
            and _name(f) in (None, want.name)
            for f in dumps[key]
        )
        if not present:
            gone.append(want)
    return gone


@dataclass
class FilterWatchdog:
    """Call `check()` every CHECK_INTERVAL seconds. The first time a filter is missing: count it, log an error, and
    call `on_lost(missing)` once; later checks only count (`checks`). `counters()` is for `fast path counters`."""

    filters: list[TcFilter]
    on_lost: Callable[[list[TcFilter]], None] = lambda missing: None
    checks: int = 0
    check_errors: int = 0  # netlink itself failed (counted, retried next time; never a crash)
    filters_lost: int = 0  # filters found missing (once each)
    fallen_back: bool = False
    lost: list[str] = field(default_factory=list)  # "server_ingress ingress prio 2" of each missing filter

    def check(self) -> bool:
        """True while every filter is attached (and after the fallback: False, nothing more to do)."""
        if self.fallen_back:
            return False
        self.checks += 1
        try:
            missing = missing_filters(self.filters)
        except (NetlinkError, OSError) as exc:
            self.check_errors += 1
            log.warning("fast path watchdog: listing TC filters failed (%s); retrying", exc)
            return True
        if not missing:
            return True
        self.fallen_back = True
        self.filters_lost += len(missing)
        self.lost = [f"{f.name} {f.direction.name.lower()} prio {f.prio}" for f in missing]
        for f in missing:
            f.attached = (
                False  # someone else removed it: a later detach must not delete a filter that is not ours
            )
        log.error("fast path: TC filter(s) removed by someone else (%s); falling back to the user-space path",
                  ", ".join(self.lost))  # fmt: skip
        self.on_lost(missing)
        return False

    def counters(self) -> dict[str, Any]:
        return {
            "watchdog_checks": self.checks,
            "watchdog_check_errors": self.check_errors,
            "filters_lost": self.filters_lost,
            "fallen_back": self.fallen_back,
            "lost": list(self.lost),
        }
