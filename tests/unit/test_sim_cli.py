"""`relay sim` without root: wrong arguments and missing privileges say what to do; list and down read state."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from relay import cli
from sim import topology
from sim.state import STATE_DIR_ENV, StateStore
from tests.unit.test_sim_state import sample


def parse(*argv: str) -> argparse.Namespace:
    parser, _ = cli.build_parser()
    return parser.parse_args(["sim", *argv])


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    return tmp_path


def test_bad_link_exits_2_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("up", "--link", "sub0=fast")
    assert info.value.code == 2
    assert "--link sub0=10mbit,loss=2%" in capsys.readouterr().err


def test_up_parses_links_and_defaults() -> None:
    args = parse("up", "--prefix", "lab", "--subscribers", "3", "--link", "sub0=10mbit", "--link", "sub2=loss=5%")
    assert (args.prefix, args.publishers, args.subscribers, args.ipv6) == ("lab", 1, 3, False)
    assert [name for name, _ in args.link] == ["sub0", "sub2"]
    assert [a for a in parse("exec", "sub0", "--", "ip", "-br", "a").cmd if a != "--"] == ["ip", "-br", "a"]


def test_not_root_says_run_as_root(state_root: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(topology.os, "geteuid", lambda: 1000)
    assert cli.main(["sim", "up", "--prefix", "lab"]) == 1
    assert "run as root" in capsys.readouterr().err
    assert list(state_root.iterdir()) == []  # nothing claimed


def test_same_node_twice_is_refused(state_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "up", "--link", "sub0=1mbit", "--link", "sub0=2mbit"]) == 1
    assert "one --link" in capsys.readouterr().err


def test_list_and_down_of_unknown_prefix(state_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "list"]) == 0
    assert "no simulated network is up" in capsys.readouterr().out
    assert cli.main(["sim", "down", "--prefix", "nosuch"]) == 1
    assert "no simulated network with prefix 'nosuch'" in capsys.readouterr().err
    StateStore(state_root).claim(sample("lab"))
    assert cli.main(["sim", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["prefix"] for s in listed] == ["lab"] and listed[0]["ports"][0]["nic_mode"] == "passthrough"


def test_exec_needs_a_command(state_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    StateStore(state_root).claim(sample("lab"))
    assert cli.main(["sim", "exec", "--prefix", "lab", "sub0", "--"]) == 1
    assert "relay sim exec NODE -- COMMAND" in capsys.readouterr().err
    assert cli.main(["sim", "exec", "--prefix", "lab", "pub7", "--", "true"]) == 1
    assert "no node 'pub7'" in capsys.readouterr().err
