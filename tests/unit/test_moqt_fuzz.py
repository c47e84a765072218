"""Every MoQT parser, fed random and mutated bytes, must either decode, wait for more data, or raise a MoqtError:
never another exception, never a hang (each loop consumes input, so bounded examples finish in seconds)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.moqt import (
    ControlStreamParser,
    DataStreamParser,
    MoqtError,
    NeedMoreData,
    datagram_offsets,
    decode_control,
    decode_datagram,
    subgroup_header_offsets,
)
from tests.unit.test_moqt_messages import TABLE as CONTROL_TABLE
from tests.unit.test_moqt_messages import h
from tests.unit.test_moqt_objects import DATAGRAMS, STREAMS

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONTROL_SEEDS = [h(w) for _, w in CONTROL_TABLE]
DATAGRAM_SEEDS = [h(w) for _, w in DATAGRAMS]
STREAM_SEEDS = [h(w) for _, _, _, w in STREAMS]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, inserted or cut: reaches deeper than pure noise."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "insert", "cut"]))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif data:
            del data[pos : pos + draw(st.integers(1, 3))]
    return bytes(data)


def _control_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=80), mutated(CONTROL_SEEDS))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _run(parser: Any, chunks: list[bytes]) -> tuple[list[Any], type[MoqtError] | None, int]:
    """Feed chunks; return (events, error class or None, bytes still buffered)."""
    events: list[Any] = []
    try:
        for chunk in chunks:
            events += parser.feed(chunk)
    except MoqtError as exc:
        return events, type(exc), -1
    return events, None, parser.buffered


@FUZZ
@given(_control_bytes(), st.lists(st.integers(0, 200), max_size=5))
def test_control_parser_fuzz(data: bytes, cuts: list[int]) -> None:
    whole = _run(ControlStreamParser(), [data])
    split = _run(ControlStreamParser(), _chunks(data, cuts))
    assert split[1] == whole[1]  # the verdict does not depend on how the bytes arrived
    if whole[1] is None:
        assert split == whole
    with contextlib.suppress(MoqtError, NeedMoreData):
        decode_control(data)


@FUZZ
@given(st.one_of(st.binary(max_size=60), mutated(DATAGRAM_SEEDS)))
def test_datagram_fuzz(data: bytes) -> None:
    try:
        obj = decode_datagram(data)
    except MoqtError:
        return
    off = datagram_offsets(data)  # whatever decodes must also yield offsets
    assert data[off.priority_offset] == obj.publisher_priority


@FUZZ
@given(st.one_of(st.binary(max_size=80), mutated(STREAM_SEEDS)), st.lists(st.integers(0, 200), max_size=5))
def test_data_stream_fuzz(data: bytes, cuts: list[int]) -> None:
    whole = _run(DataStreamParser(), [data])
    split = _run(DataStreamParser(), _chunks(data, cuts))
    assert split[1] == whole[1]
    if whole[1] is None:
        assert split == whole
    parser = DataStreamParser()
    with contextlib.suppress(MoqtError):
        parser.feed(data)
        parser.end()
    with contextlib.suppress(MoqtError, NeedMoreData):
        subgroup_header_offsets(data)


def test_mutation_fuzz_reaches_both_outcomes() -> None:
    """Guard against a fuzz that only ever hits the first error: mutated seeds decode *and* fail."""
    ok = bad = 0
    for seed in CONTROL_SEEDS:
        for i in range(len(seed)):
            data = seed[:i] + bytes([seed[i] ^ 0x01]) + seed[i + 1 :]
            try:
                ControlStreamParser().feed(data)
                ok += 1
            except MoqtError:
                bad += 1
    assert ok > 50 and bad > 50
