"""The HAL contract: what the relay may ask of a NIC backend, and nothing about QUIC or MoQT parsing.

A backend is a factory of `Hal` objects. The relay asks it for the place to serve from (a network namespace or the
host's own), whether it can take over 1-RTT packet protection (then it hands keys to `key_installer`), which BPF hook
points it offers, and finally to tear down exactly what it created. Backends register under the Python entry-point
group ``moq_relay.hal`` so a vendor ships one as its own package.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class HalError(RuntimeError):
    """A backend cannot do what was asked; the message says what the user can do about it."""


@dataclass(frozen=True)
class HalCapabilities:
    """What a backend can do: the relay plans the fast path and TLS cipher suites from this."""

    crypto_offload: bool = False
    cipher_suites: tuple[str, ...] = ()
    max_flows: int = 0
    tc_hooks: bool = False
    hw_bpf_offload: bool = False
    notes: tuple[str, ...] = ()


@dataclass
class Port:
    """One relay-facing interface: where the relay's sockets live and where TC programs attach."""

    name: str
    ifname: str
    netns: str | None = None
    addresses: list[str] = field(default_factory=list)


@runtime_checkable
class Hal(Protocol):
    name: str

    def capabilities(self) -> HalCapabilities: ...

    def start(self) -> None:
        """Create or find the ports, start the crypto engine if any. Idempotent per instance."""

    def ports(self) -> list[Port]: ...

    def netns(self) -> str | None:
        """The namespace the relay must serve from, or None for the caller's own."""

    def default_listen(self) -> str | None:
        """HOST:PORT to serve on when the user gave no --listen (the sim knows its relay address), or None."""

    def tls_names(self) -> list[str]:
        """Names and addresses clients of this backend use for the relay (they go into a generated certificate)."""

    def usage_hint(self, url: str) -> str:
        """Lines telling the user how to reach the relay from this backend's world (printed once ready)."""

    def key_installer(self) -> Any | None:
        """The NIC's key-install endpoint (crypto_offload.api.KeyInstaller), or None without crypto offload."""

    def stats(self) -> dict[str, Any]: ...

    def teardown(self) -> None:
        """Remove exactly what `start` created (namespaces, qdiscs, filters, pins, processes)."""


class HalFactory(Protocol):
    """What an entry point in ``moq_relay.hal`` resolves to."""

    name: str
    summary: str

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add backend-specific options (prefixed with the backend's name) to the relay's parser."""

    def create(self, args: argparse.Namespace) -> Hal: ...
