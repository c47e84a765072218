"""Prometheus text exposition of a relay snapshot (relay.stats), served over a minimal asyncio HTTP endpoint.

Why no client library: the format is a few lines of text (exposition format 0.0.4) and the relay already runs an
event loop; a dependency would buy nothing. Metric names are listed in docs/observability.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snap: dict[str, Any]) -> str:
    """The snapshot as Prometheus text: gauges for current state, counters for totals since start."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value}" if lab else f"{name} {value}")

    metric("moq_relay_sessions", "gauge", "Open MoQT sessions.", [({}, snap["sessions"])])
    metric("moq_relay_tracks", "gauge", "Tracks with forwarding state.", [({}, snap["tracks"])])
    metric("moq_relay_subscribers", "gauge", "Downstream subscriptions.", [({}, snap["subscribers"])])
    metric(
        "moq_relay_kernel_subscribers",
        "gauge",
        "Subscriptions served by the kernel fast path.",
        [({}, snap["kernel_subscribers"])],
    )
    metric(
        "moq_relay_user_datagrams_in_total",
        "counter",
        "Object datagrams received by the user-space relay.",
        [({}, snap["user"]["datagrams_in"])],
    )
    metric(
        "moq_relay_user_copies_out_total",
        "counter",
        "Object copies sent by the user-space relay.",
        [({}, snap["user"]["copies_out"])],
    )
    metric(
        "moq_relay_track_subscribers",
        "gauge",
        "Subscriptions per track.",
        [({"track": t["track"]}, len(t["subscribers"])) for t in snap["track_list"]],
    )
    casc = snap["cascade"]
    metric(
        "moq_relay_upstream_subscribes_total",
        "counter",
        "SUBSCRIBEs sent to the upstream relay.",
        [({}, casc["upstream_subscribes"])],
    )
    metric(
        "moq_relay_loops_refused_total",
        "counter",
        "SUBSCRIBEs refused as relay loops.",
        [({}, casc["loops_refused"])],
    )
    # providers: every numeric leaf becomes moq_relay_provider{provider=..., key=...} (fast path, HAL)
    samples: list[tuple[dict[str, str], float]] = []
    for prov, data in snap.get("providers", {}).items():
        for key, value in _leaves(data):
            samples.append(({"provider": prov, "key": key}, value))
    if samples:
        metric(
            "moq_relay_provider", "gauge", "Numeric figures from stats providers (HAL, fast path).", samples
        )
    return "\n".join(lines) + "\n"


def _leaves(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(data, bool):
        return [(prefix, float(data))]
    if isinstance(data, (int, float)):
        return [(prefix, float(data))]
    if isinstance(data, dict):
        out: list[tuple[str, float]] = []
        for k, v in data.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return []


async def serve_metrics(host: str, port: int, make: Callable[[], dict[str, Any]]) -> asyncio.Server:
    """HTTP/1.0-style endpoint: GET /metrics answers the rendered snapshot, anything else 404."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
                body, status, ctype = render(make()).encode(), "200 OK", CONTENT_TYPE
            else:
                body, status, ctype = b"not found\n", "404 Not Found", "text/plain"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port)


def parse_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
