"""Ended connections are freed by the relay's collector pass, not left for CPython's rare full collection.

The premise is checked too: an aioquic connection that ended is cyclic garbage (reference counting never frees it),
so without a full pass a relay with churn keeps every ended connection's TLS and packet state for minutes.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.collector import EndedConnectionCollector
from tests.unit.test_session_harness import Net, certs


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """Only explicit passes collect during the test, so what frees an object is known."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _ended_connections(tmp: Path) -> list[weakref.ref[object]]:
    """Two MoQT sessions set up over real aioquic connections, then closed and every reference dropped."""
    net = Net(certs(tmp))
    client, server = net.pair("c")
    client.session.close(0, "bye")
    net.pump()
    refs: list[weakref.ref[object]] = [weakref.ref(client.quic), weakref.ref(server.quic)]
    net.endpoints.clear()
    del client, server, net
    return refs


def test_an_ended_aioquic_connection_outlives_its_last_reference(tmp_path: Path, no_automatic_gc: None) -> None:
    refs = _ended_connections(tmp_path)
    assert all(r() is not None for r in refs), "freed by reference counting: the collector would not be needed"
    gc.collect()
    assert all(r() is None for r in refs)


def test_collector_frees_ended_connections_soon_after_they_end(tmp_path: Path, no_automatic_gc: None) -> None:
    async def scenario() -> tuple[list[bool], EndedConnectionCollector]:
        collector = EndedConnectionCollector(asyncio.get_running_loop(), min_interval=0.3, delay=0.05)
        refs = _ended_connections(tmp_path)
        collector.note_ended()
        collector.note_ended()  # a second end before the pass: still one pass
        await asyncio.sleep(0.2)
        return [r() is None for r in refs], collector

    freed, collector = asyncio.run(scenario())
    assert freed == [True, True]
    assert collector.passes == 1 and collector.ended == 2
    assert collector.figures()["gc_freed_objects"] > 100  # the connections' objects, found as garbage


def test_collector_passes_are_rate_limited() -> None:
    async def scenario() -> list[int]:
        collector = EndedConnectionCollector(asyncio.get_running_loop(), min_interval=0.4, delay=0.01)
        seen = []
        collector.note_ended()
        await asyncio.sleep(0.1)
        seen.append(collector.passes)  # the first pass ran after `delay`
        collector.note_ended()  # within min_interval of that pass: deferred
        await asyncio.sleep(0.1)
        seen.append(collector.passes)
        await asyncio.sleep(0.35)
        seen.append(collector.passes)  # ... until min_interval after the first
        collector.note_ended()
        collector.close()  # a pending pass is cancelled at shutdown
        await asyncio.sleep(0.5)
        seen.append(collector.passes)
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2, 2]
