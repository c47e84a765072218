"""The address plan: unique, inside the benchmarking and ULA ranges only, stable, and bounded."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.addressing import IPV4_NET, IPV6_NET, MAX_PUBLISHERS, MAX_SUBSCRIBERS, address_for


def test_fixed_addresses_of_the_first_nodes() -> None:
    relay = address_for("relay", 0)
    assert (relay.ipv4, relay.ipv6, relay.mac) == ("198.18.0.1", "fd00:6d6f:71::1", "02:6d:00:00:00:00")
    assert address_for("pub", 0).ipv4 == "198.18.1.1"
    assert address_for("pub", 0).ipv6 == "fd00:6d6f:71::1:1"
    assert address_for("sub", 3).ipv4 == "198.19.0.4"
    assert address_for("sub", 3).ipv6 == "fd00:6d6f:71::2:4"
    assert address_for("sub", 258).mac == "02:6d:02:00:01:02"


def test_every_address_is_unique_and_stays_in_the_simulation_ranges() -> None:
    plan = [address_for("relay", 0)]
    plan += [address_for("pub", i) for i in range(MAX_PUBLISHERS)]
    plan += [address_for("sub", i) for i in range(MAX_SUBSCRIBERS)]
    for kind in ("ipv4", "ipv6", "mac"):
        values = [getattr(a, kind) for a in plan]
        assert len(set(values)) == len(values), kind
    assert all(ipaddress.ip_address(a.ipv4) in ipaddress.ip_network("198.18.0.0/15") for a in plan)
    assert all(ipaddress.ip_address(a.ipv6) in ipaddress.ip_network("fd00::/8") for a in plan)
    assert all(ipaddress.ip_address(a.ipv4) not in (IPV4_NET.network_address, IPV4_NET.broadcast_address) for a in plan)
    assert all(int(a.mac.split(":")[0], 16) & 0x03 == 0x02 for a in plan)  # locally administered unicast


@given(role=st.sampled_from(["pub", "sub"]), index=st.integers(0, MAX_PUBLISHERS - 1))
def test_addresses_are_on_the_one_segment(role: str, index: int) -> None:
    a = address_for(role, index)  # type: ignore[arg-type]
    assert ipaddress.ip_interface(f"{a.ipv4}/{a.ipv4_prefixlen}").network == IPV4_NET
    assert ipaddress.ip_interface(f"{a.ipv6}/{a.ipv6_prefixlen}").network == IPV6_NET


@pytest.mark.parametrize(("role", "index"), [("pub", MAX_PUBLISHERS), ("sub", MAX_SUBSCRIBERS), ("sub", -1),
                                             ("relay", 16), ("host", 0)])
def test_out_of_plan_is_an_error(role: str, index: int) -> None:
    with pytest.raises(ValueError):
        address_for(role, index)  # type: ignore[arg-type]
