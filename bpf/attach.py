"""Attach a loaded TC program to a device: clsact qdisc + cls_bpf direct-action filter, through pyroute2.

Netlink rather than libbpf's bpf_tc_attach because only netlink can ask for ``skip_sw`` (hardware-only
offload, e.g. the NFP), and pyroute2 also reaches devices inside network namespaces. The clsact qdisc is
created only when absent and removed only by the attachment that created it, and only once no filter is
left on it (libbpf-bootstrap tc.c's "remove only what you created").
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    nla,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELTFILTER, RTM_NEWTFILTER

ETH_P_ALL = 0x0003
TC_H_CLSACT = 0xFFFFFFF1  # the clsact qdisc's parent id (include/uapi/linux/pkt_sched.h)
TC_H_MIN_INGRESS, TC_H_MIN_EGRESS = 0xFFF2, 0xFFF3
TCA_BPF_FLAG_ACT_DIRECT = 1  # TCA_BPF_FLAGS: the program's return value is the verdict
TCA_CLS_FLAGS_SKIP_HW, TCA_CLS_FLAGS_SKIP_SW = 1, 2  # TCA_BPF_FLAGS_GEN (include/uapi/linux/pkt_cls.h)


class Direction(Enum):
    INGRESS = TC_H_MIN_INGRESS
    EGRESS = TC_H_MIN_EGRESS

    @property
    def parent(self) -> int:
        return (TC_H_CLSACT & 0xFFFF0000) | self.value


class _bpf_filter(nlmsg):
    """struct tcmsg + TCA_KIND "bpf" + TCA_OPTIONS with every cls_bpf attribute up to TCA_BPF_FLAGS_GEN
    (pyroute2's own map stops before it)."""

    prefix = "TCA_"
    fields = (
        ("family", "B"),
        ("pad1", "B"),
        ("pad2", "H"),
        ("index", "i"),
        ("handle", "I"),
        ("parent", "I"),
        ("info", "I"),
    )
    nla_map = (("TCA_UNSPEC", "none"), ("TCA_KIND", "asciiz"), ("TCA_OPTIONS", "options"))

    class options(nla):
        nla_map = (
            ("TCA_BPF_UNSPEC", "none"),
            ("TCA_BPF_ACT", "hex"),
            ("TCA_BPF_POLICE", "hex"),
            ("TCA_BPF_CLASSID", "uint32"),
            ("TCA_BPF_OPS_LEN", "uint16"),
            ("TCA_BPF_OPS", "hex"),
            ("TCA_BPF_FD", "uint32"),
            ("TCA_BPF_NAME", "asciiz"),
            ("TCA_BPF_FLAGS", "uint32"),
            ("TCA_BPF_FLAGS_GEN", "uint32"),
            ("TCA_BPF_TAG", "hex"),
            ("TCA_BPF_ID", "uint32"),
        )


@dataclass
class TcFilter:
    """One cls_bpf filter on one hook of one device. ``attach()`` / ``detach()``, or use it as a context
    manager. ``netns`` is a namespace name (``ip netns``) or None for the current namespace."""

    prog_fd: int
    ifindex: int
    direction: Direction = Direction.INGRESS
    netns: str | None = None
    prio: int = 1
    handle: int = 1
    name: str = "moqt"
    skip_sw: bool = False  # hardware only: fails unless the device offloads the program
    skip_hw: bool = False
    replace: bool = True
    created_clsact: bool = field(default=False, init=False)
    attached: bool = field(default=False, init=False)

    @classmethod
    def by_name(cls, prog_fd: int, ifname: str, netns: str | None = None, **kw: Any) -> TcFilter:
        with _ipr(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LookupError(f"no device {ifname!r} in netns {netns or '(current)'}")
        return cls(prog_fd, found[0], netns=netns, **kw)

    def _msg(self) -> _bpf_filter:
        msg = _bpf_filter()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = self.ifindex
        msg["handle"] = self.handle
        msg["parent"] = self.direction.parent
        msg["info"] = (self.prio << 16) | socket.htons(ETH_P_ALL)
        return msg

    def attach(self) -> TcFilter:
        with _ipr(self.netns) as ipr:
            if not _has_clsact(ipr, self.ifindex):
                ipr.tc("add", "clsact", self.ifindex)
                self.created_clsact = True
            msg = self._msg()
            gen = (TCA_CLS_FLAGS_SKIP_SW if self.skip_sw else 0) | (TCA_CLS_FLAGS_SKIP_HW if self.skip_hw else 0)
            opts = [
                ["TCA_BPF_FD", self.prog_fd],
                ["TCA_BPF_NAME", self.name],
                ["TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT],
                ["TCA_BPF_FLAGS_GEN", gen],
            ]
            msg["attrs"] = [["TCA_KIND", "bpf"], ["TCA_OPTIONS", {"attrs": opts}]]
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_REPLACE if self.replace else NLM_F_EXCL)
            try:
                ipr.nlm_request(msg, msg_type=RTM_NEWTFILTER, msg_flags=flags)
            except BaseException:
                self._drop_clsact(ipr)
                raise
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove the filter (absent already is fine), then the clsact qdisc if we made it and it is empty."""
        with _ipr(self.netns) as ipr:
            if self.attached:
                msg = self._msg()
                msg["attrs"] = [["TCA_KIND", "bpf"]]
                try:
                    ipr.nlm_request(msg, msg_type=RTM_DELTFILTER, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
                except NetlinkError as e:
                    if e.code not in (2, 19):  # ENOENT, ENODEV: gone with the device or by someone else
                        raise
                self.attached = False
            self._drop_clsact(ipr)

    def _drop_clsact(self, ipr: IPRoute) -> None:
        if not self.created_clsact:
            return
        try:
            if not any(_filters(ipr, self.ifindex, d) for d in Direction):
                ipr.tc("del", "clsact", self.ifindex)
        except NetlinkError as e:
            if e.code not in (2, 19, 22):  # already gone (device removed)
                raise
        self.created_clsact = False

    def __enter__(self) -> TcFilter:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def _ipr(netns: str | None) -> IPRoute:
    # ext_ack: a refused request's NetlinkError carries the kernel's extended-ack text (the offload messages)
    ipr = IPRoute(netns=netns, ext_ack=True) if netns else IPRoute(ext_ack=True)
    # pyroute2 0.9's synchronous nlm_request reads this key, which only some constructors set.
    ipr.status["nlm_generator"] = False
    return ipr


def _has_clsact(ipr: IPRoute, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def _filters(ipr: IPRoute, ifindex: int, direction: Direction) -> list[Any]:
    """Real filters only: a dump also lists one per-priority header entry with handle 0."""
    return [f for f in ipr.get_filters(index=ifindex, parent=direction.parent) if f["handle"]]


def list_filters(ifindex: int, direction: Direction, netns: str | None = None) -> list[dict[str, Any]]:
    """The filters on a hook as {kind, prio, handle} (for checks and teardown reports)."""
    with _ipr(netns) as ipr:
        return [
            {"kind": f.get_attr("TCA_KIND"), "prio": f["info"] >> 16, "handle": f["handle"]}
            for f in _filters(ipr, ifindex, direction)
        ]
