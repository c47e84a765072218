"""A JSON snapshot of a running relay, and the local control socket that serves it.

Why a snapshot function: `relay stats`, the Prometheus endpoint (relay.metrics) and the demo report all read the same
figures; computing them in one place keeps their names and meanings identical. Providers (the HAL's stats(), the
kernel fast path once wired) plug in through `StatsProvider` so this module never imports them.

Why a unix socket: a local, permission-checked (0600) way to read a relay's state without opening a network port.
The protocol is one JSON document per connection: connect, read until EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from relay.counters import track_label
from relay.relay import Downstream, Relay

RUN_DIR = Path(os.environ.get("MOQ_RELAY_RUN_DIR", "/run/moq-relay"))


class StatsProvider(Protocol):
    """Anything with figures to add to the snapshot (HAL, kernel fast path): a JSON-ready dict."""

    def snapshot(self) -> dict[str, Any]: ...


class FunctionProvider:
    """Adapts a plain callable (e.g. `hal.stats`) to StatsProvider."""

    def __init__(self, fn: Callable[[], Mapping[str, Any]]) -> None:
        self._fn = fn

    def snapshot(self) -> dict[str, Any]:
        return dict(self._fn())


def snapshot(relay: Relay, providers: Mapping[str, StatsProvider] | None = None) -> dict[str, Any]:
    """Everything `relay stats` and `/metrics` show, as JSON-ready data. A failing provider is reported, not raised:
    a stats reader must never take the relay down."""
    sessions = set(relay._peers)  # noqa: SLF001 - the relay's session table is the source of truth
    tracks: list[dict[str, Any]] = []
    subscribers = 0
    kernel_subscribers = 0
    for track in relay.live | set(relay.tracks.values()):
        subs = []
        for sub in track.subscribers:
            subscribers += 1
            kernel_subscribers += int(sub.kernel)
            subs.append(subscription_entry(relay, sub))
        tracks.append(
            {
                "track": track_label(track.key),
                "subscribers": subs,
                "pending": len(track.pending),
                "upstream_streams": track.upstream_streams,
                "open_streams": track.open_streams,
                "ended": track.ending is not None or track.done_sent,
            }
        )
    fwd = relay.forwarder
    out: dict[str, Any] = {
        "time": time.time(),
        "pid": os.getpid(),
        "sessions": len(sessions),
        "tracks": len(tracks),
        "subscribers": subscribers,
        "kernel_subscribers": kernel_subscribers,
        "tasks": _task_count(),  # the soak checks it stays flat: a leaked task per session would grow it
        "user": {"datagrams_in": fwd.datagrams_in, "copies_out": fwd.copies_out},
        "cascade": relay.counters.snapshot(),
        "track_list": sorted(tracks, key=lambda t: str(t["track"])),
        "ended_subscriptions": list(relay.counters.ended_subscriptions),
        "providers": {},
    }
    for name, provider in (providers or {}).items():
        try:
            out["providers"][name] = provider.snapshot()
        except Exception as exc:  # noqa: BLE001 - see docstring
            out["providers"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _task_count() -> int | None:
    """asyncio tasks of the relay's loop (None when called outside a running loop, e.g. a test's snapshot)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


def subscription_entry(relay: Relay, sub: Downstream) -> dict[str, Any]:
    """One downstream subscription's figures: what user space sent, what the kernel sent or dropped for it (its
    slot's record), the session's backlog drops, and the connection's congestion state (the kernel's with kernel
    recovery, else aioquic's)."""
    entry: dict[str, Any] = {
        "request_id": sub.request_id,
        "priority": sub.subscriber_priority,
        "forward": sub.forward,
        "kernel": sub.kernel,
        "streams_sent": sub.streams_sent,
        "datagrams_sent": sub.datagrams_sent,
        "backlog_drops": int(getattr(sub.session, "datagrams_dropped", 0)),  # the session's (one sub per session)
    }
    quic: Any = getattr(sub.session, "quic", None)
    paths = getattr(quic, "_network_paths", None)
    if paths:
        entry["peer"] = str(paths[0].addr[0])
    loss = getattr(quic, "_loss", None)
    if loss is not None:
        entry["cwnd"] = int(loss.congestion_window)
        entry["bytes_in_flight"] = int(loss.bytes_in_flight)
        if getattr(loss, "_rtt_initialized", False):
            entry["rtt_ms"] = round(float(loss._rtt_smoothed) * 1000, 2)  # noqa: SLF001 - aioquic keeps it private
    with contextlib.suppress(Exception):  # a stats reader must never take the relay down
        entry.update(relay.subscription_counts(sub) or {})
    return entry


class ArchivingHooks:
    """Wraps the relay's fast-path hooks: a subscription's final figures go to `relay.counters.ended_subscriptions`
    just before it is removed (while the kernel's slot still names it), so a run can be accounted for after its
    subscribers left. Everything else passes through unchanged."""

    def __init__(self, inner: Any, relay: Relay) -> None:
        self.inner_hooks = inner
        self._relay = relay

    def subscriber_removed(self, track: Any, sub: Downstream) -> None:
        with contextlib.suppress(Exception):
            entry = subscription_entry(self._relay, sub)
            self._relay.counters.subscription_ended({"track": track_label(track.key), **entry})
        self.inner_hooks.subscriber_removed(track, sub)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner_hooks, name)


def default_socket_path(name: str | None = None) -> Path:
    return RUN_DIR / f"{name or os.getpid()}.sock"


def sweep_stale_sockets(run_dir: Path = RUN_DIR) -> list[Path]:
    """Remove the sockets of relays that no longer run (killed with SIGKILL: no chance to remove their own)."""
    removed = []
    for path in run_dir.glob("*.sock") if run_dir.is_dir() else []:
        if path.stem.isdigit() and not Path(f"/proc/{path.stem}").exists():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


async def serve_socket(path: Path, make: Callable[[], dict[str, Any]]) -> asyncio.Server:
    """Serve `make()` as JSON to each connection on a 0600 unix socket at `path` (a stale file is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(make(), default=str).encode())
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(answer, path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def read_socket(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """One snapshot from a relay's control socket."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    result: dict[str, Any] = json.loads(data)
    return result


def add_arguments(group: Any) -> None:
    """The serve options of this module and relay.metrics (relay/serve.py calls this)."""
    group.add_argument(
        "--metrics", metavar="HOST:PORT", default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (names: docs/observability.md)",
    )  # fmt: skip
    group.add_argument(
        "--stats-socket", metavar="PATH", default=None,
        help=f"control socket for `relay stats` (default {RUN_DIR}/<pid>.sock, or $XDG_RUNTIME_DIR/tmp if unwritable)",
    )  # fmt: skip


async def start(args: Any, relay: Relay, hal: Any = None,
                say: Callable[[str], None] | None = None) -> list[asyncio.Server]:
    """Start the control socket (always; a failure only warns) and --metrics; say where they are (`say` lets the
    caller print these lines after its own readiness lines)."""
    say = say or (lambda line: print(line, flush=True))
    from relay import metrics  # noqa: PLC0415 - metrics imports nothing of ours, kept lazy for import cost

    if not isinstance(relay.hooks, ArchivingHooks):
        relay.hooks = ArchivingHooks(relay.hooks, relay)
    providers: dict[str, StatsProvider] = {}
    if hal is not None and hasattr(hal, "stats"):
        providers["hal"] = FunctionProvider(hal.stats)
    providers.update(getattr(relay, "stats_providers", {}))

    def make() -> dict[str, Any]:
        return snapshot(relay, {**providers, **getattr(relay, "stats_providers", {})})

    sweep_stale_sockets()
    servers = []
    candidates = (
        [Path(args.stats_socket)]
        if getattr(args, "stats_socket", None)
        else [
            default_socket_path(),
            Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"moq-relay-{os.getpid()}.sock",
        ]
    )
    for path in candidates:
        try:
            servers.append(await serve_socket(path, make))
            say(f"stats socket: {path}")
            break
        except OSError as exc:
            say(f"relay: no stats socket at {path}: {exc}")
    if getattr(args, "metrics", None):
        host, port = metrics.parse_hostport(args.metrics)
        server = await metrics.serve_metrics(host, port, make)
        bound = server.sockets[0].getsockname()
        say(f"metrics: http://{host}:{bound[1]}/metrics")
        servers.append(server)
    return servers


def stop(servers: list[asyncio.Server]) -> None:
    """Close the observers and remove the socket file (a leftover would point `relay stats` at a dead relay)."""
    for server in servers:
        for sock in server.sockets:
            name = sock.getsockname()
            if isinstance(name, str) and name:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        server.close()
