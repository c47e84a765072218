"""Backend discovery through the ``moq_relay.hal`` entry-point group (vendors ship backends as packages)."""

from __future__ import annotations

from importlib.metadata import entry_points

from hal.base import HalError, HalFactory

GROUP = "moq_relay.hal"


def available() -> dict[str, HalFactory]:
    """Every installed backend by name; a backend that fails to import is reported, not hidden."""
    found: dict[str, HalFactory] = {}
    for ep in entry_points(group=GROUP):
        factory = ep.load()
        found[ep.name] = factory() if isinstance(factory, type) else factory
    return found


def get(name: str) -> HalFactory:
    backends = available()
    if name not in backends:
        known = ", ".join(sorted(backends)) or "none installed"
        raise HalError(f"unknown HAL backend '{name}' (installed: {known}); did you run `make setup`?")
    return backends[name]
