"""The drop policy's state machine and its command-line options (relay/drop_policy.py, relay/serve.py)."""

from __future__ import annotations

import argparse

import pytest

from relay.drop_policy import DropPolicy
from relay.serve import configure, drop_policy


def test_hysteresis_between_high_and_low() -> None:
    p = DropPolicy(high=0.9, low=0.6)
    assert not p.congested(80, 100, was=False)
    assert p.congested(90, 100, was=False)
    assert p.congested(70, 100, was=True)  # stays congested above low
    assert not p.congested(59, 100, was=True)
    assert p.congested(0, 0, was=True)  # no window figure: keep the state


@pytest.mark.parametrize("bad", [dict(drop_above=256), dict(high=0.5, low=0.6), dict(low=0.0), dict(interval=0)])
def test_bad_thresholds_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DropPolicy(**bad)  # type: ignore[arg-type]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def test_cli_defaults_drop_p_frames_and_the_rest_of_their_group() -> None:
    p = drop_policy(_args())
    assert (p.drop_above, p.high, p.low, p.rest_of_group) == (127, 0.9, 0.6, True)
    assert drop_policy(_args("--drop-above", "none", "--drop-group-rest", "off")).drop_above is None
    with pytest.raises(ValueError, match="--drop-above"):
        drop_policy(_args("--drop-above", "p-frames"))
