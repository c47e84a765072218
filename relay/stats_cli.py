"""`relay stats [--socket PATH | --prefix P] [--once] [--json]`: a running relay's state, from its control socket.

Why a socket and not maps: the relay owns the user-space figures (sessions, subscriptions, copies); the fast-path
figures reach the same snapshot through its StatsProvider, so one read shows both paths consistently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from relay.stats import RUN_DIR, read_socket


def configure(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the relay's control socket (printed at its start)")
    where.add_argument(
        "--prefix", metavar="P", help=f"pick the newest socket in {RUN_DIR} or /tmp whose name starts with P"
    )
    parser.add_argument(
        "--once", action="store_true", help="print one snapshot and exit (default: refresh every 1 s)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    parser.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds (default 1)")


def find_socket(prefix: str = "") -> Path | None:
    """The newest relay control socket (RUN_DIR/<pid>.sock or /tmp/moq-relay-<pid>.sock) matching the prefix."""
    found: list[Path] = []
    for d, pattern in (
        (RUN_DIR, "*.sock"),
        (Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp"), "moq-relay-*.sock"),
    ):
        if d.is_dir():
            found += [p for p in d.glob(pattern) if p.name.startswith(prefix) or p.stem.startswith(prefix)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def table(snap: dict[str, Any]) -> str:
    """Human view: totals, user/fast counts, providers' drop reasons, then one line per subscription."""
    lines = [
        f"relay pid {snap['pid']}  sessions {snap['sessions']}  tracks {snap['tracks']}  "
        f"subscribers {snap['subscribers']} (kernel {snap['kernel_subscribers']})",
        f"user path: datagrams in {snap['user']['datagrams_in']}  copies out {snap['user']['copies_out']}",
    ]
    for name, data in snap.get("providers", {}).items():
        flat = ", ".join(f"{k}={v}" for k, v in data.items() if isinstance(v, (int, float, str)))
        if flat:
            lines.append(f"{name}: {flat}")
        for reason, n in (data.get("drops") or {}).items() if isinstance(data.get("drops"), dict) else ():
            lines.append(f"  drop {reason}: {n}")
    lines.append(
        f"{'track':32} {'peer':>15} {'req':>5} {'prio':>4} {'fwd':>3} {'path':>6} {'streams':>8} {'sent u/k':>13} "
        f"{'drops p/g/b':>12} {'cwnd':>8} {'flight':>8} {'rtt ms':>7}"
    )
    for t in snap["track_list"]:
        for s in t["subscribers"]:
            cwnd = s.get("cwnd", "-")
            flight = s.get("bytes_in_flight", "-")
            rtt = s.get("rtt_ms", "-")
            sent = f"{s.get('datagrams_sent', 0)}/{s.get('kernel_sent', 0)}"
            drops = f"{s.get('kernel_priority_drops', 0)}/{s.get('kernel_group_drops', 0)}/{s.get('backlog_drops', 0)}"
            lines.append(
                f"{t['track'][:32]:32} {s.get('peer', '-')[:15]:>15} {s['request_id']:>5} {s['priority']:>4} "
                f"{'y' if s['forward'] else 'n':>3} {'kernel' if s['kernel'] else 'user':>6} {s['streams_sent']:>8} "
                f"{sent:>13} {drops:>12} {cwnd!s:>8} {flight!s:>8} {rtt!s:>7}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    path = Path(args.socket) if args.socket else find_socket(args.prefix or "")
    if path is None:
        print(
            f"relay stats: no relay control socket found in {RUN_DIR} or /tmp; give --socket PATH",
            file=sys.stderr,
        )
        return 1
    try:
        while True:
            try:
                snap = asyncio.run(read_socket(path))
            except (OSError, TimeoutError, json.JSONDecodeError) as exc:
                print(f"relay stats: cannot read {path}: {exc}", file=sys.stderr)
                return 1
            text = json.dumps(snap, indent=2) if args.json else table(snap)
            if args.once:
                print(text)
                return 0
            print("\x1b[H\x1b[2J" + text, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
