"""Pins of a relay killed with SIGKILL are removed by the next relay that starts (relay/fastpath_runtime.py)."""

from __future__ import annotations

import os
from pathlib import Path

from relay.fastpath_runtime import PIN_PREFIX, sweep_stale_pins


def test_only_folders_of_dead_relays_go(tmp_path: Path) -> None:
    dead = tmp_path / f"{PIN_PREFIX}999999999"
    alive = tmp_path / f"{PIN_PREFIX}{os.getpid()}"
    other = tmp_path / "someone-else"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "track_subs").write_text("")
    assert sweep_stale_pins(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
