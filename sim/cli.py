"""`relay sim`: bring the simulated network up or down, list it, run a command in a node, switch a NIC port's mode.

Wired by relay/cli.py through `configure(parser)` and `run(args) -> int`; relay/ never imports sim/ otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from types import FrameType

from sim import netns
from sim.links import LinkShape, LinkSpecError, parse_link
from sim.nic import NIC_MODES
from sim.state import SimState, SimStateError
from sim.topology import Topology, down_prefix, list_prefixes

EPILOG = """\
examples:
  relay sim up --publishers 1 --subscribers 3 --link sub0=10mbit,loss=2% --link sub1=2mbit
  relay sim list
  relay sim exec sub0 -- python -m sim.probe ping relay        (the nodes have no ping binary)
  relay sim exec relay -- ip addr
  relay sim nic engine                                          (hand port0 to a crypto engine)
  relay sim down
"""


def _link_arg(text: str) -> tuple[str, LinkShape]:
    try:
        return parse_link(text)
    except LinkSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="sim_command", metavar="ACTION", required=True)
    prefix = argparse.ArgumentParser(add_help=False)
    prefix.add_argument("--prefix", default="moq", help="name prefix of the namespaces (default moq)")

    up = sub.add_parser("up", parents=[prefix], help="create the namespaces, links, addresses and shaping")
    up.add_argument("--publishers", type=int, default=1, metavar="M", help="publisher nodes pub0.. (default 1)")
    up.add_argument("--subscribers", type=int, default=2, metavar="N", help="subscriber nodes sub0.. (default 2)")
    up.add_argument("--link", type=_link_arg, action="append", default=[], metavar="NODE=RATE[,loss=X%][,dir=D]",
                    help="shape a node's link, e.g. sub0=10mbit,loss=2%% (dir both|down|up, default both); repeatable")
    up.add_argument("--ipv6", action="store_true", help="make `relay` resolve to its IPv6 address first")

    ls = sub.add_parser("list", help="prefixes, nodes, addresses, link shaping and NIC mode")
    ls.add_argument("--json", action="store_true", help="print the state files as JSON")

    ex = sub.add_parser("exec", parents=[prefix], help="run a command in a node and return its exit status")
    ex.add_argument("node", help="pub0, sub3, relay, nic, sw, or a full namespace name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

    nic = sub.add_parser("nic", parents=[prefix], help="switch a NIC port between passthrough and engine")
    nic.add_argument("mode", choices=NIC_MODES)
    nic.add_argument("--port", default="port0", help="NIC port (default port0)")

    sub.add_parser("down", parents=[prefix], help="remove everything `up` created for the prefix")


def _sigterm_unwinds() -> list[int]:
    """Make SIGTERM during set-up unwind like Ctrl-C, in this process only; returns the list the handler appends
    the signal to, so the caller can tell afterwards that one came.

    pyroute2 forks short-lived helpers (to open sockets inside a namespace) and ends them with SIGTERM; such a
    copy must simply exit, never unwind through our code and tear the network down. The KeyboardInterrupt the
    handler raises can be swallowed by library code it lands in (seen under load), hence the record: every later
    progress step raises again, and a set-up that still completes is taken down (`_up`).
    """
    owner = os.getpid()
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    return received


def _print(line: str) -> None:
    print(line, flush=True)


def render(states: list[SimState]) -> str:
    if not states:
        return "no simulated network is up (start one with `relay sim up`)"
    out = []
    for st in states:
        status = "" if st.complete else "  (incomplete: run `relay sim down --prefix " + st.prefix + "`)"
        out.append(f"{st.prefix}{status}")
        for port in st.ports:
            out.append(f"  nic {port.name}: {port.nic_mode}  ({port.host_if} <-> {port.wire_if} in {st.nic_ns}; "
                       f"relay side {port.relay_if} in {st.relay_ns})")
        out.append(f"  {'node':<8}{'namespace':<22}{'ipv4':<16}{'ipv6':<24}link")
        for node in st.nodes:
            shape = node.link_shape()
            out.append(f"  {node.name:<8}{node.netns:<22}{node.ipv4:<16}{node.ipv6:<24}"
                       f"{shape.describe() if shape else 'unshaped'}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except (SimStateError, netns.CommandError) as exc:
        print(f"relay sim: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    action = args.sim_command
    if action == "list":
        states = list_prefixes()
        print(json.dumps([json.loads(s.to_json()) for s in states], indent=2) if args.json else render(states))
        return 0
    if action == "up":
        received = _sigterm_unwinds()
        links = dict(args.link)
        if len(links) != len(args.link):
            raise SimStateError("a node appears in two --link options: give each node one --link")

        def progress(line: str) -> None:
            if received:
                raise KeyboardInterrupt  # a SIGTERM whose KeyboardInterrupt was swallowed: unwind now
            _print(line)

        topo = Topology.up(args.prefix, args.publishers, args.subscribers, links, prefer_ipv6=args.ipv6,
                           progress=progress)
        if received:  # the signal came after the last step: honour it all the same
            down_prefix(args.prefix, progress=_print)
            raise KeyboardInterrupt
        print(render([topo.state]))
        print(f"next: relay sim exec --prefix {args.prefix} sub0 -- python -m sim.probe ping relay")
        return 0
    if action == "down":
        down_prefix(args.prefix, progress=_print)
        return 0
    topo = Topology.attach(args.prefix)
    if action == "nic":
        topo.progress = _print
        topo.set_nic_mode(args.mode, args.port)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise SimStateError("no command given: relay sim exec NODE -- COMMAND [ARGS...]")
    try:
        return subprocess.run(netns.exec_argv(topo.netns_of(args.node), cmd)).returncode
    except KeyboardInterrupt:
        return 130
