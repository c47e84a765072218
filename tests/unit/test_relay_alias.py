"""Downstream track aliases keep the publisher's varint length, so rewriting never moves payload bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.moqt.varint import varint_len
from relay.relay import choose_alias


def test_publisher_alias_is_kept_when_free() -> None:
    assert choose_alias(5, set()) == 5
    assert choose_alias(1000, {5}) == 1000


def test_taken_alias_is_replaced_by_one_of_the_same_length() -> None:
    assert choose_alias(5, {5}) == 0
    assert choose_alias(5, {0, 1, 5}) == 2
    assert choose_alias(1000, {1000}) == 64
    assert choose_alias(70000, {70000}) == 0x4000


def test_a_full_length_class_falls_back_to_any_free_alias() -> None:
    used = set(range(64))
    assert choose_alias(3, used) == 64


@given(alias=st.integers(0, 2**30), used=st.sets(st.integers(0, 200), max_size=60))
def test_chosen_alias_is_free_and_keeps_length_when_possible(alias: int, used: set[int]) -> None:
    got = choose_alias(alias, used)
    assert got not in used
    assert varint_len(got) == varint_len(alias)
