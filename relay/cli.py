"""The `relay` command: serving options at the top level, tools as sub-commands.

Each command lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``; this file only
wires them, so `relay --help` stays cheap and a newcomer finds each command's code by its name.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

# name -> (module, one-line help). `sim` is wired here only: relay/ never imports sim/ at run time.
COMMANDS: dict[str, tuple[str, str]] = {
    "pub": ("relay.tools.pub", "publish a synthetic video track to a MoQT relay"),
    "sub": ("relay.tools.sub", "subscribe to a track, check it and report delivery and latency as JSON"),
    "doctor": ("relay.doctor", "check every prerequisite (root, BPF, BTF, clsact, veth, netns, clang, libbpf)"),
    "sim": ("sim.cli", "bring the simulated network up or down, list it, run a command in a node"),
    "demo": ("sim.demo", "run the demonstration end to end and write a report"),
    "bench": ("sim.bench", "measure the fast path against the user-space path and the floor, as ratios (root)"),
    "offload-check": ("relay.offload_check_cli", "check that BPF programs fit a target (nfp, host-tc, host-xdp)"),
    "stats": ("relay.stats_cli", "show a running relay's sessions, tracks, subscribers and counters (control socket)"),
    "conformance": ("relay.conformance_cli", "run the HAL conformance suite against a NIC backend (--hal NAME)"),
}
SERVE_MODULE = "relay.serve"

EPILOG = """\
examples:
  relay --hal none --listen 127.0.0.1:4443            serve on loopback, TLS certificates made for you
  relay pub --url moqt://127.0.0.1:4443 --ca STATE/ca.pem --namespace live/cam1 --track video --duration 10
  relay sub --url moqt://127.0.0.1:4443 --ca STATE/ca.pem --namespace live/cam1 --track video --duration 10
  relay doctor                                         what this machine is missing, and how to fix it
"""


def _load(module: str) -> ModuleType | None:
    """Import a command module; a command whose module is not part of this build is left out of --help."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Media-over-QUIC (draft-14) relay with an eBPF fast path. Without a command it serves.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a sub-command's --insecure must never be read as an abbreviation of a serve option
    )
    serve = _load(SERVE_MODULE)
    if serve is not None:
        serve.configure(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, ModuleType] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        modules[name] = module
    if serve is not None:
        modules[""] = serve
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    module = modules.get(args.command or "")
    if module is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
