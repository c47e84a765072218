"""`relay sub`: subscribe to one track through any draft-14 relay, check what arrives, report it as JSON.

Checks: every payload is one of `relay pub`'s (CRC, length), carries the group/object ids it was delivered under,
arrives once, and in order within its stream. The report (see relay/tools/report.py) adds loss (sequence gaps),
decodable frames and one-way latency. Exit status: 0 delivered and clean, 1 connecting or subscribing failed,
2 bad usage, 3 delivered with integrity or order errors.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from crypto_offload import plaintext
from relay.auth import use_token
from relay.moqt import messages as M
from relay.tools.client import (
    PUBLISH_DONE_NAMES,
    FetchDone,
    FetchedObject,
    MoqtClient,
    ObjectReceived,
    PublishDone,
    RequestRejected,
    SessionClosed,
    ToolError,
    connect,
    error_name,
)
from relay.tools.endpoint import Endpoint, UsageError, add_connection_args, parse_endpoint
from relay.tools.pub import namespace_tuple
from relay.tools.report import SubscriberStats

# SUBSCRIBE filter types (draft-14, SUBSCRIBE): 0x1 next group start, 0x2 largest object.
FILTERS = {"next-group": 0x1, "largest": 0x2}
SUBSCRIBE_TRACK_DOES_NOT_EXIST = 0x4
RETRY_S = 0.2
DRAIN_S = 1.0  # after PUBLISH_DONE, wait this long at most for streams still in flight
STREAM_TAIL_S = 0.2  # ... and this long once every announced stream has been seen
# Objects already in flight when UNSUBSCRIBE leaves may still arrive; later than this they count as late.
UNSUBSCRIBE_GRACE_S = 0.5
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTEGRITY = 0, 1, 2, 3


@runtime_checkable
class TransportTriggers(Protocol):
    """QUIC-level actions a test can trigger mid-stream (the real SessionClient has them; in-memory fakes not)."""

    def request_key_update(self) -> None: ...

    def change_connection_id(self) -> bool: ...


@dataclass(frozen=True)
class SubConfig:
    endpoint: Endpoint
    namespace: tuple[bytes, ...]
    track: bytes
    duration: float
    filter_type: int
    priority: int
    max_objects: int | None
    json_path: Path | None
    dump_path: Path | None
    subscribers: int = 1
    unsubscribe_after: float | None = None
    wait: float = 0.0
    unsubscribe_after_objects: int | None = None
    key_update_after: int | None = None
    change_cid_after: int | None = None
    token: bytes | None = None
    lab_plaintext: bool = False  # INSECURE (crypto_offload/plaintext.py)


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    parser.add_argument("--namespace", required=True, help="track namespace, fields separated by '/': live/cam1")
    parser.add_argument("--track", default="video", help="track name (default: video)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds to stay subscribed; PUBLISH_DONE ends it earlier"
    )
    parser.add_argument("--filter", choices=sorted(FILTERS), default="largest", help="SUBSCRIBE filter")
    parser.add_argument("--priority", type=int, default=128, help="subscriber priority 0-255 (lower = first)")
    parser.add_argument("--max-objects", type=int, help="stop after this many objects")
    parser.add_argument("--json", type=Path, help="write the report to this file (it is also printed)")
    parser.add_argument(
        "--wait", type=float, default=2.0, help="retry while the track does not exist yet, for S seconds (default 2)"
    )
    parser.add_argument("--subscribers", type=int, default=1, help="independent sessions in this process")
    parser.add_argument("--unsubscribe-after", type=float, help="send UNSUBSCRIBE after S seconds, keep listening")
    parser.add_argument("--unsubscribe-after-objects", type=int, help="send UNSUBSCRIBE after N objects")
    parser.add_argument("--fetch", metavar="START:END",
                        help="instead of subscribing, FETCH the range (G[.O]:G[.O], End as on the wire: object 0 = "
                             "the whole end group) and report its objects (see docs/tools.md)")
    parser.add_argument("--token", help="authorization token for the SUBSCRIBE (see docs/operations-config.md)")
    parser.add_argument("--dump", type=Path, help="write one JSON line per object (ids, priority, sha256)")
    parser.add_argument("--key-update-after", type=int, metavar="N",
                        help="request a QUIC key update (RFC 9001 section 6) after N objects (testing)")
    parser.add_argument("--change-cid-after", type=int, metavar="N",
                        help="switch to a new QUIC connection ID (RFC 9000 section 5.1.2) after N objects (testing)")
    parser.add_argument(plaintext.OPTION, action="store_true", help=plaintext.HELP)


def config_from_args(args: argparse.Namespace) -> SubConfig:
    endpoint = parse_endpoint(args.url, args.ca, args.insecure)
    if args.duration <= 0:
        raise UsageError("--duration must be positive")
    if args.subscribers < 1:
        raise UsageError("--subscribers must be at least 1")
    if not 0 <= args.priority <= 255:
        raise UsageError("--priority must be 0-255 (an 8-bit field)")
    for name in ("key_update_after", "change_cid_after"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    return SubConfig(
        endpoint,
        namespace_tuple(args.namespace),
        args.track.encode(),
        args.duration,
        FILTERS[args.filter],
        args.priority,
        args.max_objects,
        args.json,
        args.dump,
        args.subscribers,
        args.unsubscribe_after,
        args.wait,
        args.unsubscribe_after_objects,
        getattr(args, "key_update_after", None),
        getattr(args, "change_cid_after", None),
        args.token.encode() if getattr(args, "token", None) else None,
        bool(getattr(args, "insecure_lab_plaintext", False)),
    )


def exit_status(report: dict[str, Any]) -> int:
    """Integrity or order problems make the run fail even though objects arrived."""
    bad = report["error_count"] or report["order_violations"] or report["duplicates"] or report["mismatched_ids"]
    return EXIT_INTEGRITY if bad else EXIT_OK


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except UsageError as exc:
        print(f"relay sub: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fetch_range = getattr(args, "fetch", None)
    if fetch_range is not None:
        try:
            start, end = parse_fetch_range(fetch_range)
        except UsageError as exc:
            print(f"relay sub: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            report = asyncio.run(fetch_once(cfg, start, end, partial(connect, lab_plaintext=cfg.lab_plaintext)))
        except ToolError as exc:
            print(f"relay sub: {exc}", file=sys.stderr)
            return EXIT_FAILED
        dump = report.pop("_dump")
        if cfg.dump_path is not None:
            cfg.dump_path.write_text("".join(json.dumps(r) + "\n" for r in dump))
        text = json.dumps(report, indent=2)
        if cfg.json_path is not None:
            cfg.json_path.write_text(text + "\n")
        print(text)
        return EXIT_OK if report["complete"] else EXIT_INTEGRITY
    try:
        if cfg.lab_plaintext:
            plaintext.warn("relay sub")
        reports = asyncio.run(subscribe_many(cfg, partial(connect, lab_plaintext=cfg.lab_plaintext)))
    except ToolError as exc:
        print(f"relay sub: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if cfg.dump_path is not None:
        with cfg.dump_path.open("w") as out:
            for report in reports:
                for record in report.pop("_dump", []):
                    out.write(json.dumps(record) + "\n")
    else:
        for report in reports:
            report.pop("_dump", None)
    result: dict[str, Any] = reports[0] if len(reports) == 1 else {"subscribers": reports}
    text = json.dumps(result, indent=2)
    if cfg.json_path is not None:
        cfg.json_path.write_text(text + "\n")
    print(text)
    return max(exit_status(r) for r in reports)


async def subscribe_many(
    cfg: SubConfig, connect_client: Callable[[Endpoint], Awaitable[MoqtClient]] = connect
) -> list[dict[str, Any]]:
    """`--subscribers N` sessions in one process (one event loop): cheap fan-out for tests and demos."""
    results = await asyncio.gather(
        *(subscribe_one(cfg, connect_client) for _ in range(cfg.subscribers)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


async def subscribe_when_announced(client: MoqtClient, cfg: SubConfig) -> int:
    """SUBSCRIBE; while the track does not exist yet, retry for --wait seconds (a live track appears when its
    publisher announces, and subscribers are often started alongside it)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + cfg.wait
    while True:
        try:
            return await client.subscribe(cfg.namespace, cfg.track, cfg.priority, cfg.filter_type)
        except RequestRejected as exc:
            if exc.code != SUBSCRIBE_TRACK_DOES_NOT_EXIST or loop.time() + RETRY_S > give_up:
                raise
        await asyncio.sleep(RETRY_S)


async def subscribe_one(
    cfg: SubConfig, connect_client: Callable[[Endpoint], Awaitable[MoqtClient]] = connect
) -> dict[str, Any]:
    """One session, one SUBSCRIBE; collect until --duration, --max-objects, or PUBLISH_DONE (then drain)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    stats = SubscriberStats(dump=[] if cfg.dump_path is not None else None)
    client = await connect_client(cfg.endpoint)
    use_token(client, cfg.token)
    done: PublishDone | None = None
    closed: str | None = None
    unsubscribed_at: int | None = None
    unsubscribed_time = 0.0
    late = 0
    key_updates = cid_changes = 0
    try:
        request_id = await subscribe_when_announced(client, cfg)
        deadline = started + cfg.duration
        unsubscribe_at = None if cfg.unsubscribe_after is None else started + cfg.unsubscribe_after
        while True:
            now = loop.time()
            if unsubscribe_at is not None and now >= unsubscribe_at and unsubscribed_at is None:
                client.unsubscribe(request_id)
                unsubscribed_at, unsubscribed_time = stats.objects, now
            wake = deadline if unsubscribe_at is None or unsubscribed_at is not None else min(deadline, unsubscribe_at)
            if now >= deadline:
                break
            try:
                event = await asyncio.wait_for(client.next_event(), wake - now)
            except TimeoutError:
                continue
            if isinstance(event, ObjectReceived) and event.request_id == request_id:
                stats.add(event.group, event.obj, event.priority, event.payload, event.stream)
                if unsubscribed_at is not None and loop.time() - unsubscribed_time > UNSUBSCRIBE_GRACE_S:
                    late += 1
                limit = cfg.unsubscribe_after_objects
                if limit is not None and unsubscribed_at is None and stats.objects >= limit:
                    client.unsubscribe(request_id)
                    unsubscribed_at, unsubscribed_time = stats.objects, loop.time()
                if stats.objects == cfg.key_update_after:
                    key_updates += _trigger(client, "request_key_update")
                if stats.objects == cfg.change_cid_after:
                    cid_changes += _trigger(client, "change_connection_id")
                if cfg.max_objects is not None and stats.objects >= cfg.max_objects:
                    break
                if done is not None and done.stream_count and len(stats.streams) >= done.stream_count:
                    deadline = min(deadline, loop.time() + STREAM_TAIL_S)
            elif isinstance(event, PublishDone) and event.request_id == request_id:
                # Objects on data streams may still be behind the control message: drain briefly.
                done = event
                drained = done.stream_count == 0 or len(stats.streams) >= done.stream_count
                deadline = min(deadline, loop.time() + (STREAM_TAIL_S if drained else DRAIN_S))
            elif isinstance(event, SessionClosed):
                closed = event.reason
                break
    finally:
        await client.close()
    return stats.to_json(
        url=cfg.endpoint.url,
        namespace="/".join(f.decode(errors="replace") for f in cfg.namespace),
        track=cfg.track.decode(errors="replace"),
        elapsed_s=round(loop.time() - started, 3),
        publish_done=None
        if done is None
        else {
            "status": error_name(done.status, PUBLISH_DONE_NAMES),
            "code": done.status,
            "stream_count": done.stream_count,
            "reason": done.reason,
        },
        session_closed=closed,
        objects_after_unsubscribe=None if unsubscribed_at is None else stats.objects - unsubscribed_at,
        objects_late_after_unsubscribe=None if unsubscribed_at is None else late,
        key_updates_requested=key_updates,
        cid_changes_requested=cid_changes,
        _dump=stats.dump or [],
    )


def _trigger(client: MoqtClient, action: str) -> int:
    """Run one QUIC transport trigger; 1 when it took effect (the report counts these, so tests see a no-op)."""
    if not isinstance(client, TransportTriggers):
        raise ToolError(f"this client cannot {action.replace('_', ' ')}")
    return 0 if getattr(client, action)() is False else 1


def _location(text: str) -> M.Location:
    group, _, obj = text.partition(".")
    try:
        loc = M.Location(int(group), int(obj or 0))
    except ValueError:
        raise UsageError(f"--fetch: {text!r} is not GROUP or GROUP.OBJECT") from None
    if loc.group < 0 or loc.object < 0:
        raise UsageError("--fetch: locations are non-negative")
    return loc


def parse_fetch_range(text: str) -> tuple[M.Location, M.Location]:
    """`G[.O]:G[.O]` -> (Start Location, End Location) exactly as a standalone FETCH carries them (section 9.16.1)."""
    first, sep, last = text.partition(":")
    if not sep:
        raise UsageError("--fetch needs START:END, e.g. 0:3 or 2.5:4.0")
    return _location(first), _location(last)


async def fetch_once(
    cfg: SubConfig, start: M.Location, end: M.Location,
    connect_client: Callable[[Endpoint], Awaitable[MoqtClient]] = connect,
) -> dict[str, Any]:
    """One standalone FETCH: every object of the fetch stream, in arrival order, until its FIN (or --duration)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = await connect_client(cfg.endpoint)
    use_token(client, cfg.token)
    fetch = getattr(client, "fetch", None)
    if fetch is None:
        await client.close()
        raise ToolError("this client cannot FETCH")
    objects: list[dict[str, Any]] = []
    complete = False
    reset: int | None = None
    try:
        rid, ok = await fetch(cfg.namespace, cfg.track, start, end, cfg.priority)
        deadline = started + cfg.duration
        while (left := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(client.next_event(), left)
            except TimeoutError:
                break
            if isinstance(event, FetchedObject) and event.request_id == rid:
                objects.append({
                    "group": event.group, "subgroup": event.subgroup, "object": event.obj,
                    "priority": event.priority, "status": event.status, "size": len(event.payload),
                    "sha256": hashlib.sha256(event.payload).hexdigest(),
                })  # fmt: skip
            elif isinstance(event, FetchDone) and event.request_id == rid:
                complete, reset = event.reset is None, event.reset
                break
            elif isinstance(event, SessionClosed):
                break
    finally:
        await client.close()
    return {
        "url": cfg.endpoint.url,
        "namespace": "/".join(f.decode(errors="replace") for f in cfg.namespace),
        "track": cfg.track.decode(errors="replace"),
        "fetch": {"start": [start.group, start.object], "end": [end.group, end.object]},
        "fetch_ok_end": [ok.end_location.group, ok.end_location.object],
        "objects": len(objects),
        "groups": sorted({o["group"] for o in objects}),
        "complete": complete,
        "reset": reset,
        "elapsed_s": round(loop.time() - started, 3),
        "_dump": objects,
    }
