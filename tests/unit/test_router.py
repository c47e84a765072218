"""Namespace routing: whole tuple fields, longest prefix, one owner per namespace."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.router import NamespaceTaken, Router

fields = st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=6).map(tuple)


def test_longest_prefix_by_whole_fields() -> None:
    r: Router[str] = Router()
    r.add((b"live",), "A")
    r.add((b"live", b"cam1"), "B")
    assert r.lookup((b"live", b"cam1", b"hd")) == ((b"live", b"cam1"), "B")
    assert r.lookup((b"live", b"cam2")) == ((b"live",), "A")
    assert r.lookup((b"liv",)) is None
    assert r.lookup((b"livestream",)) is None  # (live) is not a prefix of (livestream)
    assert r.lookup((b"foo", b"live")) is None


def test_one_owner_per_namespace_and_withdrawal() -> None:
    r: Router[str] = Router()
    r.add((b"a",), "A")
    r.add((b"a",), "A")  # idempotent for the same owner
    with pytest.raises(NamespaceTaken):
        r.add((b"a",), "B")
    assert not r.remove((b"a",), "B")
    r.add((b"a", b"b"), "A")
    r.add((b"c",), "C")
    assert sorted(r.remove_owner("A")) == [(b"a",), (b"a", b"b")]
    assert r.namespaces() == [(b"c",)] and len(r) == 1


@given(published=st.lists(fields, max_size=8), query=fields)
def test_lookup_matches_a_linear_scan(published: list[tuple[bytes, ...]], query: tuple[bytes, ...]) -> None:
    r: Router[int] = Router()
    for i, ns in enumerate(published):
        with contextlib.suppress(NamespaceTaken):
            r.add(ns, i)
    candidates = [ns for ns in r.namespaces() if query[: len(ns)] == ns]
    expected = max(candidates, key=len) if candidates else None
    found = r.lookup(query)
    assert (found[0] if found else None) == expected
