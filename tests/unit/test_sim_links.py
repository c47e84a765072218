"""`--link` parsing: the shapes users write, the errors that show the right syntax, and a round trip."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.links import LINK_EXAMPLE, LinkShape, LinkSpecError, format_rate, parse_link, parse_loss, parse_rate

CASES = [
    ("sub0=10mbit", "sub0", LinkShape(10_000_000, 0.0, "both")),
    ("sub12=500kbit,loss=2%", "sub12", LinkShape(500_000, 0.02, "both")),
    ("pub0=1.5gbit,loss=0.5%,dir=down", "pub0", LinkShape(1_500_000_000, 0.005, "down")),
    ("sub1=loss=50%", "sub1", LinkShape(None, 0.5, "both")),
    ("relay=2M,dir=up", "relay", LinkShape(2_000_000, 0.0, "up")),
    ("sub3=64000", "sub3", LinkShape(64_000, 0.0, "both")),
    ("sub3=8kbit,loss=100", "sub3", LinkShape(8_000, 1.0, "both")),
]


@pytest.mark.parametrize(("text", "node", "shape"), CASES)
def test_parse_link_accepts_documented_forms(text: str, node: str, shape: LinkShape) -> None:
    assert parse_link(text) == (node, shape)


@pytest.mark.parametrize("text", [
    "sub0", "sub0=", "=10mbit", "host1=10mbit", "sub0=10x", "sub0=10mbit,loss=abc", "sub0=10mbit,loss=150%",
    "sub0=10mbit,jitter=5ms", "sub0=loss=2%,10mbit", "sub0=10mbit,loss=1%,loss=2%", "sub0=10mbit,dir=sideways",
    "sub0=1bit", "sub0=500gbit",
])
def test_bad_link_says_how_to_write_it(text: str) -> None:
    with pytest.raises(LinkSpecError) as info:
        parse_link(text)
    assert LINK_EXAMPLE in str(info.value)


def test_direction_selects_sides() -> None:
    assert LinkShape(10**6, 0, "down").applies_down() and not LinkShape(10**6, 0, "down").applies_up()
    assert LinkShape(10**6, 0, "up").applies_up() and not LinkShape(10**6, 0, "up").applies_down()
    assert not LinkShape().applies_down() and not LinkShape().applies_up()  # nothing to shape


def test_describe_is_short_and_exact() -> None:
    assert LinkShape(10_000_000, 0.02, "both").describe() == "10mbit loss=2% both"
    assert LinkShape(None, 0.5, "down").describe() == "unlimited loss=50% down"
    assert format_rate(1_500_000) == "1500kbit"
    assert format_rate(12_345) == "12345bit"


@given(rate=st.integers(8_000, 100 * 10**9), loss=st.integers(0, 10000), direction=st.sampled_from(["both", "down", "up"]))
def test_round_trip_through_cli_syntax(rate: int, loss: int, direction: str) -> None:
    text = f"sub7={format_rate(rate)},loss={loss / 100}%,dir={direction}"
    node, shape = parse_link(text)
    assert node == "sub7"
    assert shape.rate_bps == rate
    assert shape.loss == pytest.approx(loss / 10000)
    assert shape.direction == direction


@given(st.text(max_size=20))
def test_parser_never_fails_with_anything_but_link_spec_error(text: str) -> None:
    with contextlib.suppress(LinkSpecError):
        parse_link(text)


def test_rate_and_loss_units() -> None:
    assert parse_rate("1gbit") == parse_rate("1G") == parse_rate("1000mbit") == 10**9
    assert parse_loss("5") == parse_loss("5%") == 0.05
