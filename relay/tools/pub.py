"""`relay pub`: a synthetic video publisher, an ordinary MoQT draft-14 peer.

It announces a namespace (PUBLISH_NAMESPACE), answers the relay's SUBSCRIBE for its track, and sends one object per
video frame at the frame rate, as datagrams or on subgroup streams. At the end it sends PUBLISH_DONE for every
subscription (that is what a relay turns into PUBLISH_DONE for its own subscribers), PUBLISH_NAMESPACE_DONE, and
closes.

The mapping of frames onto datagrams and streams (`TrackSender`) is kept free of I/O so it is tested in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from crypto_offload import plaintext
from relay.auth import use_token
from relay.tools.client import (
    MoqtClient,
    SessionClosed,
    SubscribeRequested,
    ToolError,
    Unsubscribed,
    connect,
)
from relay.tools.endpoint import Endpoint, UsageError, add_connection_args, parse_endpoint
from relay.tools.media import HEADER_SIZE, Frame, MediaModel, build_payload, parse_bitrate

MODES = ("datagram", "stream-per-object", "stream-per-group")
# An object datagram must fit one QUIC packet (RFC 9221: DATAGRAM frames are never fragmented). 1200 bytes is the
# smallest QUIC MTU; leave room for the short header, the AEAD tag, the frame and the MoQT datagram header.
DATAGRAM_MAX_PAYLOAD = 1000
# PUBLISH_DONE status codes (draft-14, PUBLISH_DONE): 0x2 = track ended.
STATUS_TRACK_ENDED = 0x2
# SUBSCRIBE_ERROR code (draft-14, SUBSCRIBE_ERROR): 0x4 = track does not exist.
SUBSCRIBE_TRACK_DOES_NOT_EXIST = 0x4


class ObjectSink(Protocol):
    """The data-plane verbs a MoQT session offers a publisher; the real session implements them."""

    def send_datagram(self, alias: int, group: int, obj: int, priority: int, payload: bytes) -> None: ...

    def open_subgroup(self, alias: int, group: int, subgroup: int, priority: int) -> int: ...

    def write_object(self, stream: int, obj: int, payload: bytes, fin: bool) -> None: ...

    def finish_stream(self, stream: int) -> None: ...


@dataclass
class PublishStats:
    """What went onto the wire, for `--json` (by_priority counts the priority each object was *sent* with)."""

    objects: int = 0
    bytes: int = 0
    datagrams: int = 0
    streams: int = 0
    clamped: int = 0
    groups: set[int] = field(default_factory=set)
    by_priority: Counter[int] = field(default_factory=Counter)

    def to_json(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "objects": self.objects,
            "bytes": self.bytes,
            "groups": len(self.groups),
            "by_priority": {str(k): v for k, v in sorted(self.by_priority.items())},
            "datagrams": self.datagrams,
            "streams": self.streams,
            "clamped": self.clamped,
        }
        out.update(extra)
        return out


@dataclass
class TrackSender:
    """Sends one subscription's frames in one mode; remembers the open stream of stream-per-group.

    stream-per-object: every object on its own stream, subgroup id = object id, the object's own priority.
    stream-per-group: one stream per group, subgroup 0; its priority is that of the first object sent on it (the
    I-frame), because a subgroup stream carries a single Publisher Priority (draft-14, subgroup header).
    """

    sink: ObjectSink
    alias: int
    mode: str
    stats: PublishStats
    _group_stream: tuple[int, int] | None = None  # (group, stream id)
    _group_priority: int = 0
    _streams_opened: int = 0

    @property
    def streams_opened(self) -> int:
        return self._streams_opened

    def send(self, frame: Frame, payload: bytes, last_in_group: bool) -> None:
        prio = frame.priority
        if self.mode == "datagram":
            self.sink.send_datagram(self.alias, frame.group, frame.obj, prio, payload)
            self.stats.datagrams += 1
        elif self.mode == "stream-per-object":
            stream = self.sink.open_subgroup(self.alias, frame.group, frame.obj, prio)
            self._streams_opened += 1
            self.stats.streams += 1
            self.sink.write_object(stream, frame.obj, payload, True)
        elif self.mode == "stream-per-group":
            if self._group_stream is not None and self._group_stream[0] != frame.group:
                self.close()
            if self._group_stream is None:
                stream = self.sink.open_subgroup(self.alias, frame.group, 0, prio)
                self._group_stream = (frame.group, stream)
                self._group_priority = prio
                self._streams_opened += 1
                self.stats.streams += 1
            prio = self._group_priority
            self.sink.write_object(self._group_stream[1], frame.obj, payload, last_in_group)
            if last_in_group:
                self._group_stream = None
        else:
            raise ValueError(f"unknown mode {self.mode!r}")
        self.stats.objects += 1
        self.stats.bytes += len(payload)
        self.stats.groups.add(frame.group)
        self.stats.by_priority[prio] += 1

    def close(self) -> None:
        """End the open group stream (FIN), e.g. when the run ends mid-group."""
        if self._group_stream is not None:
            self.sink.finish_stream(self._group_stream[1])
            self._group_stream = None


def clamp_for_mode(frame: Frame, mode: str) -> Frame:
    """Datagram mode cannot carry a frame larger than a packet: send it truncated (counted as `clamped`)."""
    if mode == "datagram" and frame.size > DATAGRAM_MAX_PAYLOAD:
        return Frame(frame.seq, frame.group, frame.obj, max(HEADER_SIZE, DATAGRAM_MAX_PAYLOAD), frame.priority)
    return frame


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    parser.add_argument("--namespace", required=True, help="track namespace, fields separated by '/': live/cam1")
    parser.add_argument("--track", default="video", help="track name (default: video)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames (objects) per second (default: 30)")
    parser.add_argument("--gop", type=int, default=30, help="frames per group; object 0 is the I-frame (default: 30)")
    parser.add_argument("--bitrate", default="2M", help="average bitrate, e.g. 500k, 2M (default: 2M)")
    parser.add_argument("--i-ratio", type=float, default=6.0, help="I-frame size / P-frame size (default: 6)")
    parser.add_argument("--mode", choices=MODES, default="stream-per-group", help="how objects travel")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of media to send (default: 10)")
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds between announce and first frame")
    parser.add_argument("--fill", help="payload filler text (default: random bytes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random filler")
    parser.add_argument("--json", type=Path, help="write what was published to this file")
    parser.add_argument("--token", help="authorization token for PUBLISH_NAMESPACE (see docs/operations-config.md)")
    parser.add_argument(plaintext.OPTION, action="store_true", help=plaintext.HELP)


def namespace_tuple(text: str) -> tuple[bytes, ...]:
    """'a/b' -> (b'a', b'b'): draft-14 namespaces are tuples of 1..32 byte strings."""
    fields = tuple(part.encode() for part in text.split("/"))
    if not 1 <= len(fields) <= 32 or any(not f for f in fields):
        raise UsageError(f"bad namespace {text!r}: 1 to 32 non-empty fields separated by '/'")
    return fields


@dataclass(frozen=True)
class PubConfig:
    endpoint: Endpoint
    namespace: tuple[bytes, ...]
    track: bytes
    model: MediaModel
    mode: str
    duration: float
    start_delay: float
    fill: bytes | None
    seed: int
    json_path: Path | None
    token: bytes | None = None
    lab_plaintext: bool = False  # INSECURE (crypto_offload/plaintext.py)


def config_from_args(args: argparse.Namespace) -> PubConfig:
    endpoint = parse_endpoint(args.url, args.ca, args.insecure)
    try:
        model = MediaModel(parse_bitrate(args.bitrate), args.fps, args.gop, args.i_ratio)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.duration < 0 or args.start_delay < 0:
        raise UsageError("--duration and --start-delay must not be negative")
    return PubConfig(
        endpoint,
        namespace_tuple(args.namespace),
        args.track.encode(),
        model,
        args.mode,
        args.duration,
        args.start_delay,
        args.fill.encode() if args.fill else None,
        args.seed,
        args.json,
        args.token.encode() if getattr(args, "token", None) else None,
        bool(getattr(args, "insecure_lab_plaintext", False)),
    )


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except UsageError as exc:
        print(f"relay pub: {exc}", file=sys.stderr)
        return 2
    try:
        if cfg.lab_plaintext:
            plaintext.warn("relay pub")
        result = asyncio.run(publish(cfg, partial(connect, lab_plaintext=cfg.lab_plaintext)))
    except ToolError as exc:
        print(f"relay pub: {exc}", file=sys.stderr)
        return 1
    write_json(cfg.json_path, result)
    print(json.dumps(result))
    return 0


def _matches(cfg: PubConfig, req: SubscribeRequested) -> bool:
    return req.namespace == cfg.namespace and req.track == cfg.track


async def publish(cfg: PubConfig, connect_client: Callable[[Endpoint], Awaitable[MoqtClient]] = connect) -> dict[str, Any]:
    """Announce, serve subscriptions while pacing frames, then end every subscription with PUBLISH_DONE.

    SIGTERM/SIGINT make the publisher *go away*: it closes the session without PUBLISH_DONE, so the relay has to
    notice and tell its subscribers itself.
    """
    client = await connect_client(cfg.endpoint)
    use_token(client, cfg.token)
    stats = PublishStats()
    senders: dict[int, TrackSender] = {}
    served = 0
    closed = asyncio.Event()
    close_reason: list[str] = []

    async def handle_events() -> None:
        nonlocal served
        while True:
            event = await client.next_event()
            if isinstance(event, SubscribeRequested):
                if not _matches(cfg, event):
                    client.subscribe_error(event.request_id, SUBSCRIBE_TRACK_DOES_NOT_EXIST, "no such track")
                    continue
                # Track aliases are chosen by the publisher side of the session (draft-14 SUBSCRIBE_OK).
                alias = served
                served += 1
                client.subscribe_ok(event.request_id, alias)
                senders[event.request_id] = TrackSender(client, alias, cfg.mode, stats)
            elif isinstance(event, Unsubscribed):
                sender = senders.pop(event.request_id, None)
                if sender is not None:
                    sender.close()
            elif isinstance(event, SessionClosed):
                close_reason.append(event.reason)
                closed.set()
                return

    events = asyncio.create_task(handle_events())
    pacing: asyncio.Task[dict[str, Any]] | None = None
    aborted = False
    loop = asyncio.get_running_loop()
    try:
        await client.publish_namespace(cfg.namespace)
        print(f"announced {'/'.join(f.decode(errors='replace') for f in cfg.namespace)}", flush=True)

        async def media() -> dict[str, Any]:
            await asyncio.sleep(cfg.start_delay)
            return await pace_frames(cfg, lambda: list(senders.values()), stats)

        pacing = asyncio.create_task(media())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pacing.cancel)
        closed_wait = asyncio.create_task(closed.wait())
        await asyncio.wait({pacing, closed_wait}, return_when=asyncio.FIRST_COMPLETED)
        closed_wait.cancel()
        if closed.is_set():
            pacing.cancel()
            raise ToolError(f"the relay closed the session: {close_reason[0] if close_reason else 'no reason'}")
        try:
            info = pacing.result()
        except asyncio.CancelledError:
            aborted, info = True, {}
        if not aborted:
            for request_id, sender in list(senders.items()):
                sender.close()
                client.publish_done(request_id, STATUS_TRACK_ENDED, sender.streams_opened, "publisher finished")
            client.publish_namespace_done(cfg.namespace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if pacing is not None:
            pacing.cancel()
        events.cancel()
        await client.close()
    return stats.to_json(subscriptions=served, aborted=aborted, mode=cfg.mode, **info)


async def pace_frames(
    cfg: PubConfig, senders: Callable[[], list[TrackSender]], stats: PublishStats
) -> dict[str, Any]:
    """Generate frames at the frame rate for --duration and hand each to every current subscription."""
    rng = random.Random(cfg.seed)
    n_frames = round(cfg.duration * cfg.model.fps)
    start = time.monotonic()
    generated = 0
    frames = cfg.model.frames()
    for i in range(n_frames):
        delay = start + i * cfg.model.frame_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = clamp_for_mode(next(frames), cfg.mode)
        if frame.size < cfg.model.sizes()[0 if frame.key else 1]:
            stats.clamped += 1
        generated += 1
        payload = build_payload(frame, time.time_ns(), cfg.fill, rng)
        last = frame.obj == cfg.model.gop - 1 or i == n_frames - 1
        for sender in senders():
            sender.send(frame, payload, last)
    return {"generated": generated, "elapsed_s": round(time.monotonic() - start, 3)}


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2) + "\n")
