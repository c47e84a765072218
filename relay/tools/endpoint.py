"""Where a tool connects and how it trusts the relay: the options `relay pub` and `relay sub` share.

TLS verification is on unless the user says `--insecure`; a silent fallback would make a test against the wrong
server pass.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PORT = 443


class UsageError(ValueError):
    """Bad command-line input; the message is printed as is."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed `moqt://HOST:PORT[/PATH]` (draft-14 section on URI schemes: raw QUIC uses `moqt`)."""

    host: str
    port: int
    path: str
    ca: Path | None
    insecure: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"moqt://{host}:{self.port}{self.path}"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the relay, moqt://HOST:PORT")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--ca", type=Path, help="PEM file of the CA that signed the relay's certificate")
    trust.add_argument("--insecure", action="store_true", help="do not verify the relay's certificate")


def parse_endpoint(url: str, ca: Path | None, insecure: bool) -> Endpoint:
    """Validate the URL and the trust choice; raise UsageError with a message a user can act on."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme != "moqt":
        raise UsageError(f"bad URL {url!r}: the scheme must be moqt:// (raw QUIC, ALPN moq-00)")
    if not parts.hostname:
        raise UsageError(f"bad URL {url!r}: no host")
    if ca is not None and not ca.is_file():
        raise UsageError(f"CA file {str(ca)!r} does not exist (the relay prints its path as 'ca: ...')")
    if ca is None and not insecure:
        raise UsageError("give --ca FILE to verify the relay's certificate, or --insecure to skip verification")
    return Endpoint(parts.hostname, port or DEFAULT_PORT, parts.path or "", ca, insecure)
