"""`relay offload-check OBJ.o`: will these BPF programs run on that NIC or hook? (docs/offload-check.md)

Only wiring: the analysis is bpf/offload_check.py, the targets are data in bpf/profiles/. Exit status: 0 when
every program fits, 1 when one does not, 2 for usage errors (missing or non-BPF file, unknown target).
"""

from __future__ import annotations

import argparse
import json
import sys

from bpf.offload_check import OffloadCheckError, check, format_table, profile_names

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_USAGE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("object", metavar="OBJ.o", help="a compiled BPF object (clang -target bpf -g)")
    parser.add_argument("--target", default="nfp",
                        help=f"a profile name ({', '.join(profile_names())}) or the path of a profile .toml "
                             "(default: nfp)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (schema in the docs)")


def run(args: argparse.Namespace) -> int:
    try:
        report = check(args.object, args.target)
    except OffloadCheckError as exc:
        print(f"relay offload-check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    return EXIT_FITS if report.fits else EXIT_DOES_NOT_FIT
