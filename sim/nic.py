"""The simulated NIC's two modes per port: `passthrough` (a NIC without QUIC offload) and `engine`.

In passthrough mode a u32 match-all filter with a mirred redirect on each veth's clsact ingress hands every frame
to the other veth unchanged, so the topology works with no crypto engine at all. In engine mode those filters are
gone and a user-space engine (AF_PACKET on host_if and wire_if, started in the nic namespace) moves the frames.
Only our own filter (a fixed, unusual preference) is removed when leaving passthrough, and clsact only if we added
it and nothing else is attached to it (remove only what you created).
"""

from __future__ import annotations

from typing import Literal

NicMode = Literal["passthrough", "engine"]
NIC_MODES: tuple[NicMode, ...] = ("passthrough", "engine")

PASSTHROUGH_PREF = "49152"


def passthrough_on_commands(host_if: str, wire_if: str, add_clsact: bool) -> list[list[str]]:
    cmds = []
    for dev in (host_if, wire_if):
        if add_clsact:
            cmds.append(["tc", "qdisc", "add", "dev", dev, "clsact"])
    for src, dst in ((host_if, wire_if), (wire_if, host_if)):
        cmds.append(["tc", "filter", "add", "dev", src, "ingress", "pref", PASSTHROUGH_PREF, "protocol", "all",
                     "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", dst])
    return cmds


def passthrough_off_commands(host_if: str, wire_if: str) -> list[list[str]]:
    return [["tc", "filter", "del", "dev", dev, "ingress", "pref", PASSTHROUGH_PREF] for dev in (host_if, wire_if)]


def clsact_del_command(dev: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", dev, "clsact"]
