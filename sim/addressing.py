"""The address plan of the simulated network: one flat L2 segment, IPv4 and IPv6 on every node.

Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking range) and a ULA prefix inside fd00::/8
(DESIGN.md section 5), so nothing a simulated host sends can ever be routed to a real network. Every node gets a
fixed address derived from its role and index, so captures and logs read the same in every run, and two prefixes
may reuse the same plan: their namespaces are separate L2 domains.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Role = Literal["relay", "pub", "sub"]

IPV4_NET = ipaddress.IPv4Network("198.18.0.0/15")
# "moq" in ASCII (6d 6f 71) inside fd00::/8.
IPV6_NET = ipaddress.IPv6Network("fd00:6d6f:71::/64")

MAX_PORTS = 16
MAX_PUBLISHERS = 1000
MAX_SUBSCRIBERS = 10000

# Host offsets inside IPV4_NET: relay ports at 198.18.0.1.., publishers from 198.18.1.1, subscribers from 198.19.0.1.
_V4_BASE: dict[Role, int] = {"relay": 1, "pub": 0x100 + 1, "sub": 0x10000 + 1}
# Host offsets inside IPV6_NET: relay ::1.., publishers ::1:1.., subscribers ::2:1..
_V6_BASE: dict[Role, int] = {"relay": 1, "pub": 0x10000 + 1, "sub": 0x20000 + 1}
_LIMIT: dict[Role, int] = {"relay": MAX_PORTS, "pub": MAX_PUBLISHERS, "sub": MAX_SUBSCRIBERS}
# Second byte of the locally administered MAC address (first byte 0x02) per role.
_MAC_ROLE: dict[Role, int] = {"relay": 0x00, "pub": 0x01, "sub": 0x02}


@dataclass(frozen=True)
class NodeAddress:
    """What one simulated interface carries."""

    ipv4: str
    ipv6: str
    mac: str
    ipv4_prefixlen: int = IPV4_NET.prefixlen
    ipv6_prefixlen: int = IPV6_NET.prefixlen


def address_for(role: Role, index: int) -> NodeAddress:
    """The fixed addresses of node `index` of `role` (relay index = relay port)."""
    if role not in _V4_BASE:
        raise ValueError(f"unknown role {role!r}: expected relay, pub or sub")
    if not 0 <= index < _LIMIT[role]:
        raise ValueError(f"{role} index {index} out of range: at most {_LIMIT[role]} {role} nodes")
    v4 = IPV4_NET.network_address + _V4_BASE[role] + index
    v6 = IPV6_NET.network_address + _V6_BASE[role] + index
    mac = f"02:6d:{_MAC_ROLE[role]:02x}:{(index >> 16) & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"
    return NodeAddress(ipv4=str(v4), ipv6=str(v6), mac=mac)
