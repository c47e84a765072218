"""`relay conformance --hal NAME [--json]`: run the HAL conformance suite against a backend (docs/conformance.md).

Only wiring: the cases are relay/conformance.py. Backend options are accepted either directly (every installed
backend's options are added to this command, as `relay --hal` does) or after `--`, parsed by the chosen backend
alone, e.g. `relay conformance --hal sim -- --prefix cf1 --nic-engine tc`.
Exit status: 0 every case passed, 1 a case failed, 2 usage error or the backend did not start, 3 nothing failed
but some cases were not applicable.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import sys

from hal import registry
from hal.base import HalFactory
from hal.none import NoneFactory
from relay.conformance import CASE_NAMES, CASES, EXIT_START, CaseResult, Report, format_table, run_suite


def backends() -> dict[str, HalFactory]:
    """Installed backends (entry points `moq_relay.hal`); a broken vendor package must not break `--help`."""
    try:
        found = registry.available()
    except Exception as exc:
        logging.getLogger("relay.hal").warning("HAL discovery failed: %s", exc)
        found = {}
    found.setdefault("none", NoneFactory())
    return found


def configure(parser: argparse.ArgumentParser) -> None:
    found = backends()
    parser.add_argument("--hal", required=False, metavar="NAME",
                        help=f"backend to check (installed: {', '.join(sorted(found))})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (schema in the docs)")
    parser.add_argument("--case", action="append", choices=CASE_NAMES, metavar="CASE", default=None,
                        help="run only this case (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for a packet to cross the NIC (default 5)")
    parser.add_argument("backend_args", nargs=argparse.REMAINDER, metavar="-- BACKEND-OPTIONS",
                        help="options for the backend alone, after --")
    for name, factory in found.items():
        try:
            factory.configure(parser)
        except argparse.ArgumentError as exc:  # two backends claim one option: name yours after the backend
            logging.getLogger("relay.hal").warning("backend %s: options not added here (%s); pass them after --",
                                                   name, exc)


def _backend_namespace(factory: HalFactory, args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """The backend's own parser over the options after `--`, on top of what the command line already set."""
    extra = list(args.backend_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    if not extra:
        return args, []
    parser = argparse.ArgumentParser(prog=f"relay conformance --hal {factory.name} --", add_help=True)
    factory.configure(parser)
    return parser.parse_args(extra, namespace=copy.copy(args)), extra


def _print_progress(result: CaseResult) -> None:
    print(f"  {result.case}: {result.result.value.replace('_', ' ')}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.list:
        width = max(len(c.name) for c in CASES)
        for c in CASES:
            print(f"{c.name:<{width}}  {c.summary}")
        return 0
    found = backends()
    if not args.hal:
        print("relay conformance: give --hal NAME (installed: " + ", ".join(sorted(found)) + ")", file=sys.stderr)
        return EXIT_START
    factory = found.get(args.hal)
    if factory is None:
        print(f"relay conformance: unknown HAL backend {args.hal!r} (installed: {', '.join(sorted(found))})",
              file=sys.stderr)
        return EXIT_START
    bargs, extra = _backend_namespace(factory, args)
    if not args.json:
        print(f"relay conformance: checking backend {factory.name}", file=sys.stderr, flush=True)
    # With --json, stdout carries the report alone: a backend's own progress lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report: Report = run_suite(factory, bargs, cases=tuple(args.case or ()), backend_args=extra,
                                   timeout=args.timeout, progress=(lambda r: None) if args.json else _print_progress)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    return report.exit_status
