"""State files: exact round trip, one owner per prefix, safe names, and the name-resolution files of a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.cli import render
from sim.links import LinkShape
from sim.state import NodeState, PortState, ProcessState, SimState, SimStateError, StateStore, check_prefix
from sim.topology import Topology, gai_conf


def sample(prefix: str = "moq") -> SimState:
    st = SimState(prefix=prefix, relay_ns=f"{prefix}-relay", nic_ns=f"{prefix}-nic", switch_ns=f"{prefix}-sw")
    st.namespaces = [st.relay_ns, st.nic_ns, st.switch_ns, f"{prefix}-sub0"]
    st.nodes = [
        NodeState("relay", "relay", st.relay_ns, "eth0", "198.18.0.1", "fd00:6d6f:71::1", "02:6d:00:00:00:00", "nic0"),
        NodeState("sub0", "sub", f"{prefix}-sub0", "eth0", "198.19.0.1", "fd00:6d6f:71::2:1", "02:6d:02:00:00:00",
                  "sub0", {"rate_bps": 10_000_000, "loss": 0.02, "direction": "down"}),
    ]
    st.ports = [PortState("port0", "eth0", "host0", "wire0", "nic0")]
    st.processes = [ProcessState(pid=123, starttime=456, node="sub0", argv=["sleep", "1"])]
    return st


def test_state_round_trips_exactly(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    st = sample()
    store.claim(st)
    st.complete = True
    store.save(st)
    loaded = store.load("moq")
    assert loaded == st
    assert loaded is not None and loaded.node("sub0").link_shape() == LinkShape(10_000_000, 0.02, "down")
    assert loaded.node("moq-sub0").name == "sub0"  # by namespace name too
    assert store.prefixes() == ["moq"]
    store.remove("moq")
    assert store.load("moq") is None and store.prefixes() == []


def test_second_claim_of_a_prefix_says_to_run_down_first(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.claim(sample("a1"))
    store.claim(sample("b2"))  # another prefix coexists
    with pytest.raises(SimStateError, match="relay sim down --prefix a1"):
        store.claim(sample("a1"))


def test_damaged_state_file_says_how_to_clean_up(tmp_path: Path) -> None:
    (tmp_path / "moq.json").write_text("{not json")
    with pytest.raises(SimStateError, match="ip netns list"):
        StateStore(tmp_path).load("moq")


@pytest.mark.parametrize("prefix", ["", "Moq", "9moq", "moq-1", "a/b", "x" * 17, "../etc"])
def test_prefix_must_be_a_plain_name(prefix: str) -> None:
    with pytest.raises(SimStateError, match="--prefix"):
        check_prefix(prefix)


def test_hosts_and_gai_files() -> None:
    topo = Topology(sample(), StateStore(Path("/nonexistent")))
    hosts = topo._hosts_file().splitlines()
    assert "198.18.0.1\trelay relay4" in hosts and "fd00:6d6f:71::1\trelay relay6" in hosts
    assert "198.19.0.1\tsub0" in hosts
    assert "precedence ::ffff:0:0/96 100" in gai_conf(prefer_ipv6=False)  # IPv4 first by default
    assert "precedence ::ffff:0:0/96 10" in gai_conf(prefer_ipv6=True).splitlines()
    assert topo.netns_of("nic") == "moq-nic" and topo.netns_of("sub0") == "moq-sub0"
    assert topo.netns_of("moq-sub0") == "moq-sub0"
    with pytest.raises(SimStateError, match="relay, sub0, nic, sw"):
        topo.netns_of("pub9")


def test_list_renders_nodes_shaping_and_nic_mode() -> None:
    text = render([sample()])
    assert "nic port0: passthrough" in text
    assert "sub0" in text and "10mbit loss=2% down" in text and "198.19.0.1" in text
    assert "incomplete" in text  # not complete: tells the user how to clean up
    assert "relay sim up" in render([])


def test_remove_also_clears_a_temporary_left_by_a_killed_save(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    (tmp_path / "tq1.json").write_text("{}")
    (tmp_path / "tq1.tmp4242").write_text("{")
    (tmp_path / "tq10.tmp7").write_text("{")  # another prefix's: must stay
    store.remove("tq1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tq10.tmp7"]
