"""What one `relay sim up` created, in a small JSON file per prefix, so `down` removes exactly that.

The file is claimed (created exclusively) before the first namespace exists and rewritten after every step, so a
run that crashes half-way still leaves a record `relay sim down --prefix P` can clean up. One file per prefix
lets several prefixes (parallel test runs) coexist.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.links import LinkShape
from sim.nic import NicMode

DEFAULT_STATE_DIR = Path("/run/moq-sim")
STATE_DIR_ENV = "MOQ_SIM_STATE_DIR"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


class SimStateError(RuntimeError):
    """A state-file problem the user can act on; the message says what to do."""


def state_dir(override: Path | None = None) -> Path:
    if override is not None:
        return override
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env) if env else DEFAULT_STATE_DIR


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise SimStateError(f"bad prefix {prefix!r}: use 1-16 lower-case letters and digits, starting with a letter "
                            "(e.g. --prefix moq2)")
    return prefix


@dataclass
class NodeState:
    """A simulated host: the relay, a publisher or a subscriber, with its one interface."""

    name: str  # short name: relay, pub0, sub3
    role: str
    netns: str
    ifname: str
    ipv4: str
    ipv6: str
    mac: str
    switch_if: str  # the switch-side end of its link (for the relay: the switch port facing the NIC)
    shape: dict[str, Any] | None = None

    def link_shape(self) -> LinkShape | None:
        return LinkShape(**self.shape) if self.shape else None


@dataclass
class PortState:
    """One relay port through the simulated NIC."""

    name: str
    relay_if: str  # in <prefix>-relay
    host_if: str  # in <prefix>-nic, peer of relay_if
    wire_if: str  # in <prefix>-nic, peer of switch_if
    switch_if: str  # in <prefix>-sw, enslaved to the bridge
    nic_mode: NicMode = "passthrough"
    clsact_added: bool = False


@dataclass
class ProcessState:
    """A process started in a node, with its start time so a reused PID is never mistaken for it."""

    pid: int
    starttime: int
    node: str
    argv: list[str]


@dataclass
class SimState:
    prefix: str
    relay_ns: str
    nic_ns: str
    switch_ns: str
    bridge: str = "br0"
    prefer_ipv6: bool = False
    complete: bool = False
    namespaces: list[str] = field(default_factory=list)  # in creation order
    etc_dirs: list[str] = field(default_factory=list)
    nodes: list[NodeState] = field(default_factory=list)
    ports: list[PortState] = field(default_factory=list)
    processes: list[ProcessState] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SimState:
        raw = json.loads(text)
        raw["nodes"] = [NodeState(**n) for n in raw.get("nodes", [])]
        raw["ports"] = [PortState(**p) for p in raw.get("ports", [])]
        raw["processes"] = [ProcessState(**p) for p in raw.get("processes", [])]
        return cls(**raw)

    def node(self, name: str) -> NodeState:
        """A node by short name (pub0, relay) or by namespace name (moq-pub0)."""
        for n in self.nodes:
            if name in (n.name, n.netns):
                return n
        raise KeyError(name)


@dataclass
class StateStore:
    """The state files of one directory."""

    root: Path

    def path(self, prefix: str) -> Path:
        return self.root / f"{check_prefix(prefix)}.json"

    def claim(self, state: SimState) -> None:
        """Create the prefix's file exclusively: a second `up` of the same prefix fails here, before touching anything."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(state.prefix)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise SimStateError(f"prefix {state.prefix!r} is already up (state {path}): "
                                f"run `relay sim down --prefix {state.prefix}` first, or pick another --prefix") from None
        with os.fdopen(fd, "w") as f:
            f.write(state.to_json())

    def save(self, state: SimState) -> None:
        path = self.path(state.prefix)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(state.to_json())
        os.replace(tmp, path)

    def load(self, prefix: str) -> SimState | None:
        path = self.path(prefix)
        try:
            return SimState.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise SimStateError(f"state file {path} is damaged ({exc}); remove the namespaces `ip netns list | "
                                f"grep ^{prefix}-` by hand, then delete the file") from None

    def remove(self, prefix: str) -> None:
        self.path(prefix).unlink(missing_ok=True)
        # A process ended between writing `<prefix>.tmp<pid>` and renaming it (see save) leaves the temporary behind.
        for tmp in self.root.glob(f"{prefix}.tmp*"):
            tmp.unlink(missing_ok=True)

    def prefixes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if PREFIX_RE.match(p.stem))
