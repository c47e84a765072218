"""Fixtures shared by every tier; the helpers live in tests/support.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import have_root, have_tool, require


@pytest.fixture
def need_root() -> None:
    require(have_root(), "root (run the test as root)")


@pytest.fixture
def need_tool() -> Callable[[str], None]:
    def check(name: str) -> None:
        require(have_tool(name), f"the '{name}' command (run `make setup`)")

    return check
