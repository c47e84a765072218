"""The synthetic media model and the subscriber's checks: sizes follow the bitrate, I-frames outweigh P-frames,
the payload header survives a round trip and catches damage, and the decodability rule is the GOP rule."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.tools.media import (
    HEADER_SIZE,
    PRIORITY_I,
    PRIORITY_P,
    Frame,
    MediaModel,
    PayloadError,
    build_payload,
    decodable_frames,
    decodable_in_group,
    parse_bitrate,
    parse_payload,
)
from relay.tools.report import SubscriberStats, percentile

models = st.builds(
    MediaModel,
    bitrate=st.integers(min_value=200_000, max_value=50_000_000),
    fps=st.sampled_from([15.0, 24.0, 25.0, 30.0, 50.0, 60.0]),
    gop=st.integers(min_value=2, max_value=120),
    i_ratio=st.floats(min_value=1.0, max_value=12.0),
)


@pytest.mark.parametrize(
    ("text", "bps"),
    [("2M", 2_000_000), ("500k", 500_000), ("1.5M", 1_500_000), ("64000", 64_000), ("1G", 10**9), ("3mbps", 3 * 10**6)],
)
def test_parse_bitrate(text: str, bps: int) -> None:
    assert parse_bitrate(text) == bps


@pytest.mark.parametrize("text", ["", "fast", "2X", "-1M", "0"])
def test_parse_bitrate_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bitrate"):
        parse_bitrate(text)


@settings(max_examples=60, deadline=None)
@given(models)
def test_one_gop_spends_the_bitrate(model: MediaModel) -> None:
    """A GOP lasts gop/fps seconds, so its bytes are bitrate*gop/fps/8 (within rounding of each frame)."""
    frames = list(itertools.islice(model.frames(), model.gop))
    expected = model.bitrate * model.gop / model.fps / 8
    assert abs(sum(f.size for f in frames) - expected) <= model.gop  # at most half a byte of rounding per frame


@settings(max_examples=60, deadline=None)
@given(models)
def test_i_frame_is_i_ratio_times_a_p_frame(model: MediaModel) -> None:
    i, p = model.sizes()
    assert i >= p
    assert abs(i - model.i_ratio * p) <= model.i_ratio  # rounding of p, amplified by the ratio


@settings(max_examples=30, deadline=None)
@given(models, st.integers(min_value=1, max_value=4))
def test_groups_objects_priorities(model: MediaModel, n_groups: int) -> None:
    frames = list(itertools.islice(model.frames(), model.gop * n_groups))
    assert [f.seq for f in frames] == list(range(len(frames)))
    for f in frames:
        assert f.group == f.seq // model.gop
        assert f.obj == f.seq % model.gop
        assert f.priority == (PRIORITY_I if f.obj == 0 else PRIORITY_P)
        assert f.key == (f.obj == 0)
    assert PRIORITY_I < PRIORITY_P  # lower number = more important (draft-14 priorities)


def test_default_model_i_frame_several_times_p() -> None:
    i, p = MediaModel(bitrate=2_000_000, fps=30, gop=30).sizes()
    assert i >= 4 * p
    assert (i + 29 * p) * 8 == pytest.approx(2_000_000, rel=0.001)


def test_tiny_bitrate_still_carries_a_header() -> None:
    i, p = MediaModel(bitrate=1_000, fps=30, gop=30).sizes()
    assert p == HEADER_SIZE and i >= HEADER_SIZE


def test_bad_model_rejected() -> None:
    with pytest.raises(ValueError):
        MediaModel(bitrate=1_000_000, gop=0)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=HEADER_SIZE, max_value=5000),
    st.integers(min_value=0, max_value=2**63),
    st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
)
def test_payload_round_trip(seq: int, group: int, obj: int, size: int, send_ns: int, fill: bytes | None) -> None:
    frame = Frame(seq=seq, group=group, obj=obj, size=size, priority=PRIORITY_P)
    data = build_payload(frame, send_ns, fill, random.Random(seq))
    assert len(data) == size
    head = parse_payload(data)
    assert (head.seq, head.group, head.obj, head.send_ns, head.length, head.key) == (
        seq,
        group,
        obj,
        send_ns,
        size,
        obj == 0,
    )
    if fill:
        assert data[HEADER_SIZE:] == (fill * size)[: size - HEADER_SIZE]


def test_fill_text_is_visible_in_the_payload() -> None:
    data = build_payload(Frame(0, 0, 0, 100, PRIORITY_I), 1, b"hello ")
    assert data[HEADER_SIZE:].startswith(b"hello hello ")


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=HEADER_SIZE + 1, max_value=600), st.data())
def test_any_flipped_bit_is_caught(size: int, data: st.DataObject) -> None:
    payload = bytearray(build_payload(Frame(7, 3, 2, size, PRIORITY_P), 123, None, random.Random(size)))
    pos = data.draw(st.integers(min_value=0, max_value=size - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    payload[pos] ^= 1 << bit
    with pytest.raises(PayloadError):
        parse_payload(bytes(payload))


def test_truncated_and_foreign_payloads() -> None:
    good = build_payload(Frame(1, 0, 1, 200, PRIORITY_P), 5, b"x")
    with pytest.raises(PayloadError, match="length"):
        parse_payload(good[:-1])
    with pytest.raises(PayloadError, match="shorter"):
        parse_payload(good[:10])
    with pytest.raises(PayloadError, match="magic"):
        parse_payload(b"Z" * 200)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=40)))
def test_decodable_is_the_prefix_rule(received: set[int]) -> None:
    """Object k is decodable iff 0..k all arrived: checked frame by frame against the count."""
    n = decodable_in_group(received)
    for k in range(42):
        assert (k < n) == all(j in received for j in range(k + 1))


def test_decodable_examples() -> None:
    assert decodable_in_group([]) == 0
    assert decodable_in_group([1, 2, 3]) == 0  # I-frame lost: nothing of the group can be shown
    assert decodable_in_group([0, 1, 3]) == 2  # P2 lost: P3 is not decodable either
    assert decodable_frames({0: [0, 1, 2], 1: [1], 2: [0]}) == 4


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0


def _payload(seq: int, group: int, obj: int, send_ns: int = 0) -> bytes:
    return build_payload(Frame(seq, group, obj, 120, PRIORITY_I if obj == 0 else PRIORITY_P), send_ns, b"ab")


def test_stats_counts_and_json() -> None:
    stats = SubscriberStats()
    for seq in range(6):
        g, o = divmod(seq, 3)
        stats.add(g, o, PRIORITY_I if o == 0 else PRIORITY_P, _payload(seq, g, o, 1_000_000), 4, now_ns=3_000_000)
    out = stats.to_json(track="video")
    assert out["objects"] == 6 and out["bytes"] == 720 and out["groups"] == 2
    assert out["by_priority"] == {str(PRIORITY_I): 2, str(PRIORITY_P): 4}
    assert out["decodable"] == 6 and out["missing"] == 0
    assert out["latency_ms"]["p50"] == 2.0 and out["latency_ms"]["p99"] == 2.0
    assert out["order_violations"] == 0 and out["errors"] == [] and out["track"] == "video"


def test_stats_flags_order_loss_duplicates_and_rewrites() -> None:
    stats = SubscriberStats()
    stats.add(0, 0, PRIORITY_I, _payload(0, 0, 0), 4)
    stats.add(0, 2, PRIORITY_P, _payload(2, 0, 2), 4)  # seq 1 lost
    stats.add(0, 1, PRIORITY_P, _payload(1, 0, 1), 4)  # back in the same stream: violation
    stats.add(0, 1, PRIORITY_P, _payload(1, 0, 1), None)  # duplicate, as a datagram
    stats.add(0, 3, PRIORITY_P, _payload(9, 0, 9), 8)  # relay changed the ids
    stats.add(0, 4, PRIORITY_P, b"garbage", 8)
    out = stats.to_json()
    assert out["order_violations"] == 1
    assert out["duplicates"] == 1
    assert out["mismatched_ids"] == 1
    assert out["reordered"] == 1
    assert out["error_count"] == 4
    assert out["decodable"] == 3
    assert out["datagrams"] == 1 and out["streams"] == 2


def test_stats_missing_counts_gaps() -> None:
    stats = SubscriberStats()
    for seq in (10, 11, 14):
        stats.add(0, seq, PRIORITY_P, _payload(seq, 0, seq), None)
    assert stats.missing == 2
