"""`--hal none`: plain sockets in the caller's namespace, no crypto offload, no BPF - the user-space relay."""

from __future__ import annotations

import argparse
from typing import Any

from hal.base import Hal, HalCapabilities, Port


class NoneHal:
    name = "none"

    def capabilities(self) -> HalCapabilities:
        return HalCapabilities(notes=("user-space relay: aioquic protects every packet in software",))

    def start(self) -> None:
        return None

    def ports(self) -> list[Port]:
        return []

    def netns(self) -> str | None:
        return None

    def default_listen(self) -> str | None:
        return None

    def tls_names(self) -> list[str]:
        return []

    def usage_hint(self, url: str) -> str:
        return ""

    def key_installer(self) -> Any | None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    def teardown(self) -> None:
        return None


class NoneFactory:
    name = "none"
    summary = "plain sockets, no NIC offload, no BPF (the user-space relay and the baseline)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        return None

    def create(self, args: argparse.Namespace) -> Hal:
        return NoneHal()
