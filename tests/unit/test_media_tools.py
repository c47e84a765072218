"""`relay pub` / `relay sub` without a network: argument checks, and how frames map onto datagrams and streams."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from relay.tools import client, pub, sub
from relay.tools.client import (
    Event,
    ObjectReceived,
    PublishDone,
    RequestRejected,
    SubscribeRequested,
    Unsubscribed,
)
from relay.tools.endpoint import Endpoint, UsageError, parse_endpoint
from relay.tools.media import PRIORITY_I, PRIORITY_P, MediaModel, build_payload, parse_payload


@dataclass
class RecordingSink:
    """An ObjectSink that writes down every call, as (verb, args...)."""

    calls: list[tuple[object, ...]] = field(default_factory=list)
    next_stream: int = 2

    def send_datagram(self, alias: int, group: int, obj: int, priority: int, payload: bytes) -> None:
        self.calls.append(("dgram", alias, group, obj, priority))

    def open_subgroup(self, alias: int, group: int, subgroup: int, priority: int) -> int:
        sid = self.next_stream
        self.next_stream += 4
        self.calls.append(("open", sid, alias, group, subgroup, priority))
        return sid

    def write_object(self, stream: int, obj: int, payload: bytes, fin: bool) -> None:
        self.calls.append(("write", stream, obj, fin))

    def finish_stream(self, stream: int) -> None:
        self.calls.append(("fin", stream))


def _send_frames(mode: str, n: int, gop: int = 3) -> tuple[RecordingSink, pub.PublishStats, pub.TrackSender]:
    sink = RecordingSink()
    stats = pub.PublishStats()
    sender = pub.TrackSender(sink, alias=7, mode=mode, stats=stats)
    model = MediaModel(bitrate=100_000, fps=30, gop=gop)
    for frame in itertools.islice(model.frames(), n):
        sender.send(frame, b"x" * 10, last_in_group=frame.obj == gop - 1)
    return sink, stats, sender


def test_datagram_mode_one_datagram_per_object() -> None:
    sink, stats, _ = _send_frames("datagram", 4)
    assert sink.calls == [
        ("dgram", 7, 0, 0, PRIORITY_I),
        ("dgram", 7, 0, 1, PRIORITY_P),
        ("dgram", 7, 0, 2, PRIORITY_P),
        ("dgram", 7, 1, 0, PRIORITY_I),
    ]
    assert stats.to_json()["by_priority"] == {str(PRIORITY_I): 2, str(PRIORITY_P): 2}
    assert stats.datagrams == 4 and stats.streams == 0 and stats.bytes == 40


def test_stream_per_object_opens_a_subgroup_per_object() -> None:
    sink, stats, sender = _send_frames("stream-per-object", 3)
    assert sink.calls == [
        ("open", 2, 7, 0, 0, PRIORITY_I),
        ("write", 2, 0, True),
        ("open", 6, 7, 0, 1, PRIORITY_P),
        ("write", 6, 1, True),
        ("open", 10, 7, 0, 2, PRIORITY_P),
        ("write", 10, 2, True),
    ]
    assert stats.streams == 3 and sender.streams_opened == 3


def test_stream_per_group_one_stream_per_group_with_the_i_frame_priority() -> None:
    sink, stats, sender = _send_frames("stream-per-group", 5)
    assert sink.calls == [
        ("open", 2, 7, 0, 0, PRIORITY_I),
        ("write", 2, 0, False),
        ("write", 2, 1, False),
        ("write", 2, 2, True),
        ("open", 6, 7, 1, 0, PRIORITY_I),
        ("write", 6, 0, False),
        ("write", 6, 1, False),
    ]
    # one priority per subgroup stream: what went on the wire is what the stats count
    assert stats.to_json()["by_priority"] == {str(PRIORITY_I): 5}
    sender.close()
    assert sink.calls[-1] == ("fin", 6)
    sender.close()  # idempotent
    assert sink.calls[-1] == ("fin", 6) and len(sink.calls) == 8


def test_datagram_frames_are_clamped_to_a_packet() -> None:
    model = MediaModel(bitrate=2_000_000, fps=30, gop=30)
    frame = next(model.frames())
    assert frame.size > pub.DATAGRAM_MAX_PAYLOAD
    small = pub.clamp_for_mode(frame, "datagram")
    assert small.size == pub.DATAGRAM_MAX_PAYLOAD and (small.group, small.obj) == (0, 0)
    assert pub.clamp_for_mode(frame, "stream-per-group") == frame
    assert parse_payload(build_payload(small, 1)).length == pub.DATAGRAM_MAX_PAYLOAD


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:4443", "scheme must be moqt"),
        ("moqt://:4443", "no host"),
        ("moqt://127.0.0.1:99999", "bad URL"),
        ("127.0.0.1:4443", "scheme must be moqt"),
    ],
)
def test_bad_urls_are_explained(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_endpoint(url, None, True)


def test_tls_needs_a_choice(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--ca FILE .* or --insecure"):
        parse_endpoint("moqt://127.0.0.1:4443", None, False)
    with pytest.raises(UsageError, match="does not exist"):
        parse_endpoint("moqt://127.0.0.1:4443", tmp_path / "nope.pem", False)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    ep = parse_endpoint("moqt://[::1]:4443/live", ca, False)
    assert (ep.host, ep.port, ep.path, ep.ca, ep.insecure) == ("::1", 4443, "/live", ca, False)
    assert ep.url == "moqt://[::1]:4443/live"


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.configure(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_pub_arguments() -> None:
    args = _parse(pub, ["--url", "moqt://127.0.0.1:4443", "--insecure", "--namespace", "live/cam1", "--bitrate",
                        "500k", "--mode", "datagram", "--duration", "2", "--fill", "ab"])
    cfg = pub.config_from_args(args)
    assert cfg.namespace == (b"live", b"cam1") and cfg.track == b"video"
    assert cfg.model == MediaModel(500_000, 30.0, 30, 6.0)
    assert (cfg.mode, cfg.duration, cfg.fill) == ("datagram", 2.0, b"ab")


def test_ca_and_insecure_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        _parse(sub, ["--url", "moqt://h:1", "--ca", "x", "--insecure", "--namespace", "a"])


@pytest.mark.parametrize("namespace", ["", "a//b", "/".join("x" * 33)])
def test_bad_namespace(namespace: str) -> None:
    args = _parse(sub, ["--url", "moqt://127.0.0.1:4443", "--insecure", "--namespace", namespace])
    with pytest.raises(UsageError, match="namespace"):
        sub.config_from_args(args)


def test_bad_usage_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(sub, ["--url", "quic://x:1", "--insecure", "--namespace", "a"])
    assert sub.run(args) == 2
    assert "scheme must be moqt" in capsys.readouterr().err
    args = _parse(pub, ["--url", "moqt://x:1", "--insecure", "--namespace", "a", "--bitrate", "lots"])
    assert pub.run(args) == 2
    assert "bad bitrate" in capsys.readouterr().err


def test_sub_error_names_and_exit_status() -> None:
    assert client.error_name(0x4, client.SUBSCRIBE_ERROR_NAMES) == "TRACK_DOES_NOT_EXIST"
    assert client.error_name(0x99, client.SUBSCRIBE_ERROR_NAMES) == "UNKNOWN_0x99"
    clean = {"error_count": 0, "order_violations": 0, "duplicates": 0, "mismatched_ids": 0}
    assert sub.exit_status(clean) == sub.EXIT_OK
    assert sub.exit_status({**clean, "order_violations": 1}) == sub.EXIT_INTEGRITY


# --- the tools' session logic against an in-memory relay ------------------------------------------------------


class FakeRelay:
    """Just enough relay for the tools: one upstream SUBSCRIBE per downstream one, objects passed through."""

    def __init__(self) -> None:
        self.publisher: FakeClient | None = None
        self.namespaces: set[tuple[bytes, ...]] = set()
        # upstream request id -> (subscriber client, its request id)
        self.routes: dict[int, tuple[FakeClient, int]] = {}
        self.aliases: dict[int, int] = {}  # alias -> upstream request id
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.next_up = 1

    async def connect(self, endpoint: Endpoint) -> FakeClient:
        return FakeClient(self)


class FakeClient:
    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.streams: dict[int, tuple[int, int, int, int]] = {}  # id -> alias, group, subgroup, priority
        self.next_stream = 3
        self.next_request = 0
        self.closed = False
        self.sent_done: list[tuple[int, int, int]] = []

    async def publish_namespace(self, namespace: tuple[bytes, ...]) -> None:
        self.relay.publisher = self
        self.relay.namespaces.add(namespace)

    def publish_namespace_done(self, namespace: tuple[bytes, ...]) -> None:
        self.relay.namespaces.discard(namespace)

    async def subscribe(self, namespace: tuple[bytes, ...], track: bytes, priority: int, filter_type: int) -> int:
        relay = self.relay
        if namespace not in relay.namespaces or relay.publisher is None:
            raise RequestRejected("SUBSCRIBE", 0x4, "no publisher", "TRACK_DOES_NOT_EXIST")
        request_id = self.next_request
        self.next_request += 2
        up = relay.next_up
        relay.next_up += 2
        relay.routes[up] = (self, request_id)
        relay.pending[up] = asyncio.get_running_loop().create_future()
        relay.publisher.events.put_nowait(SubscribeRequested(up, namespace, track))
        await relay.pending[up]
        return request_id

    def unsubscribe(self, request_id: int) -> None:
        relay = self.relay
        for up, (owner, rid) in list(relay.routes.items()):
            if owner is self and rid == request_id:
                del relay.routes[up]
                assert relay.publisher is not None
                relay.publisher.events.put_nowait(Unsubscribed(up))

    def subscribe_ok(self, request_id: int, alias: int) -> None:
        self.relay.aliases[alias] = request_id
        self.relay.pending[request_id].set_result(None)

    def subscribe_error(self, request_id: int, code: int, reason: str) -> None:
        raise AssertionError("unexpected SUBSCRIBE_ERROR")

    def publish_done(self, request_id: int, status: int, stream_count: int, reason: str) -> None:
        self.sent_done.append((request_id, status, stream_count))
        route = self.relay.routes.get(request_id)
        if route is not None:
            route[0].events.put_nowait(PublishDone(route[1], status, stream_count, reason))

    async def next_event(self) -> Event:
        return await self.events.get()

    def _deliver(self, alias: int, group: int, subgroup: int, obj: int, prio: int, payload: bytes,
                 stream: int | None) -> None:
        route = self.relay.routes.get(self.relay.aliases[alias])
        if route is not None:
            client, rid = route
            client.events.put_nowait(ObjectReceived(rid, group, subgroup, obj, prio, payload, stream))

    def send_datagram(self, alias: int, group: int, obj: int, priority: int, payload: bytes) -> None:
        self._deliver(alias, group, 0, obj, priority, payload, None)

    def open_subgroup(self, alias: int, group: int, subgroup: int, priority: int) -> int:
        sid = self.next_stream
        self.next_stream += 4
        self.streams[sid] = (alias, group, subgroup, priority)
        return sid

    def write_object(self, stream: int, obj: int, payload: bytes, fin: bool) -> None:
        alias, group, subgroup, prio = self.streams[stream]
        self._deliver(alias, group, subgroup, obj, prio, payload, stream)

    def finish_stream(self, stream: int) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


def _cfgs(tmp_path: Path, mode: str, subscribers: int = 1, unsub: float | None = None
          ) -> tuple[pub.PubConfig, sub.SubConfig]:
    ep = parse_endpoint("moqt://127.0.0.1:1", None, True)
    pcfg = pub.PubConfig(ep, (b"live", b"cam"), b"video", MediaModel(300_000, 100.0, 10), mode, 0.3, 0.05, None, 0,
                         None)
    scfg = sub.SubConfig(ep, (b"live", b"cam"), b"video", 3.0, 2, 128, None, None, None, subscribers, unsub)
    return pcfg, scfg


async def _run_pair(pcfg: pub.PubConfig, scfg: sub.SubConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    relay = FakeRelay()
    await relay.connect(pcfg.endpoint)
    pub_task = asyncio.create_task(pub.publish(pcfg, relay.connect))
    while not relay.namespaces:
        await asyncio.sleep(0.001)
    reports = await sub.subscribe_many(scfg, relay.connect)
    return await pub_task, reports


@pytest.mark.parametrize("mode", pub.MODES)
def test_tools_end_to_end_in_memory(tmp_path: Path, mode: str) -> None:
    pcfg, scfg = _cfgs(tmp_path, mode, subscribers=3)
    published, reports = asyncio.run(_run_pair(pcfg, scfg))
    assert published["generated"] == 30 and published["subscriptions"] == 3
    assert published["objects"] == 90 and not published["aborted"]
    for report in reports:
        assert report["objects"] == 30 and report["groups"] == 3 and report["decodable"] == 30
        assert report["errors"] == [] and report["missing"] == 0 and report["order_violations"] == 0
        assert report["publish_done"]["status"] == "TRACK_ENDED"
        assert report["elapsed_s"] < 2.0  # PUBLISH_DONE ended the run, not --duration
        assert sub.exit_status(report) == sub.EXIT_OK
        if mode == "stream-per-group":
            assert report["streams"] == 3 and report["publish_done"]["stream_count"] == 3
            assert report["by_priority"] == {str(PRIORITY_I): 30}
        else:
            assert report["by_priority"] == {str(PRIORITY_I): 3, str(PRIORITY_P): 27}


def test_unsubscribe_stops_delivery_in_memory(tmp_path: Path) -> None:
    pcfg, scfg = _cfgs(tmp_path, "datagram", unsub=0.1)
    scfg = dataclasses.replace(scfg, duration=0.5)
    published, [report] = asyncio.run(_run_pair(pcfg, scfg))
    assert 0 < report["objects"] < 30
    assert report["objects_after_unsubscribe"] <= 1  # at most what was already queued
    assert report["objects_late_after_unsubscribe"] == 0
    assert report["publish_done"] is None


def test_subscribe_error_is_a_tool_error(tmp_path: Path) -> None:
    _, scfg = _cfgs(tmp_path, "datagram")
    relay = FakeRelay()
    with pytest.raises(RequestRejected, match=r"TRACK_DOES_NOT_EXIST \(0x4\): no publisher"):
        asyncio.run(sub.subscribe_many(scfg, relay.connect))


def test_subscriber_started_before_the_publisher_waits_for_the_track(tmp_path: Path) -> None:
    pcfg, scfg = _cfgs(tmp_path, "stream-per-object")
    pcfg = dataclasses.replace(pcfg, start_delay=0.5)  # more than one retry interval of the subscriber
    scfg = dataclasses.replace(scfg, wait=2.0)

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        relay = FakeRelay()
        subs = asyncio.create_task(sub.subscribe_many(scfg, relay.connect))
        await asyncio.sleep(0.3)  # SUBSCRIBE_ERROR(TRACK_DOES_NOT_EXIST) at least once meanwhile
        published = await pub.publish(pcfg, relay.connect)
        return published, await subs

    published, [report] = asyncio.run(main())
    assert report["objects"] == published["generated"] == 30 and report["errors"] == []


def test_unsubscribe_after_n_objects_in_memory(tmp_path: Path) -> None:
    pcfg, scfg = _cfgs(tmp_path, "stream-per-object")
    scfg = dataclasses.replace(scfg, duration=0.6, unsubscribe_after_objects=5)
    published, [report] = asyncio.run(_run_pair(pcfg, scfg))
    assert published["generated"] == 30
    assert 5 <= report["objects"] <= 6 and report["objects_after_unsubscribe"] <= 1
    assert report["objects_late_after_unsubscribe"] == 0
