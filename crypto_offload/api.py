"""The NIC key-install API: what the host hands a QUIC crypto-offload NIC, per direction and connection ID.

Shaped after Microsoft QEO and the Linux QUIC offload proposal (DESIGN.md section 5): derived keys go in (payload
key, IV, header-protection key), never the TLS secret; a rekey brings a new payload key and IV for the next key
phase and keeps the HP key (RFC 9001 section 6); remove ends a flow. HAL backends implement `KeyInstaller`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

from crypto_offload.keys import IV_SIZE, CipherSuite, derive_traffic_keys, next_traffic_secret

MAX_CID_LENGTH = 20  # RFC 9000 section 17.2: a v1 connection ID is at most 20 bytes

__all__ = [
    "MAX_CID_LENGTH", "Capabilities", "CipherSuite", "Counters", "DecryptFailurePolicy", "Direction", "EngineStats",
    "FlowKey", "KeyInstall", "KeyInstallError", "KeyInstaller", "Rekey", "key_install_from_secret", "next_rekey",
    "rekey_from_secret",
]


class Direction(enum.Enum):
    RX = "rx"  # wire -> host: the NIC decrypts packets addressed to a connection ID the host issued
    TX = "tx"  # host -> wire: the NIC encrypts packets addressed to the peer's connection ID


class DecryptFailurePolicy(enum.Enum):
    """What the NIC does with a packet of a keyed flow that fails to decrypt (QEO's decrypt-failure action)."""

    DROP = "drop"
    PASS_UP = "pass_up"  # unchanged, tag intact: the host's stack decides (it may be a stateless reset)


class KeyInstallError(ValueError):
    """The NIC refused the request (unsupported suite, table full, unknown flow, malformed keys)."""


@dataclass(frozen=True)
class FlowKey:
    """One table entry: a direction and the Destination Connection ID the packets carry (RFC 9000 section 5.1)."""

    direction: Direction
    cid: bytes

    def __post_init__(self) -> None:
        if len(self.cid) > MAX_CID_LENGTH:
            raise KeyInstallError(f"connection ID of {len(self.cid)} bytes exceeds {MAX_CID_LENGTH}")


def _check_phase(key_phase: int) -> None:
    if key_phase not in (0, 1):
        raise KeyInstallError(f"key phase must be 0 or 1 (RFC 9000 17.3.1 key-phase bit), got {key_phase}")


@dataclass(frozen=True)
class KeyInstall:
    """Everything the NIC needs to protect one flow (RFC 9001 section 5: key, IV, HP key of the current phase)."""

    suite: CipherSuite
    payload_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    hp_key: bytes = field(repr=False)
    key_phase: int = 0
    largest_pn: int = -1  # RX: largest packet number received so far, -1 for none (RFC 9000 A.3 expansion)
    next_pn: int = 0  # TX: packet number the host sends next (the NIC expands truncated PNs from it)
    decrypt_failure_policy: DecryptFailurePolicy = DecryptFailurePolicy.PASS_UP

    def __post_init__(self) -> None:
        object.__setattr__(self, "suite", CipherSuite(int(self.suite)))
        size = self.suite.key_size
        if len(self.payload_key) != size or len(self.hp_key) != size or len(self.iv) != IV_SIZE:
            raise KeyInstallError(f"{self.suite.name} needs {size}-byte keys and a {IV_SIZE}-byte IV")
        _check_phase(self.key_phase)
        if self.largest_pn < -1 or self.next_pn < 0:
            raise KeyInstallError("packet numbers must be non-negative (largest_pn -1 means none yet)")


@dataclass(frozen=True)
class Rekey:
    """Keys of another key phase (RFC 9001 section 6); the header-protection key stays the one installed."""

    key_phase: int
    payload_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_phase(self.key_phase)
        if len(self.iv) != IV_SIZE:
            raise KeyInstallError(f"IV must be {IV_SIZE} bytes")


@dataclass(frozen=True)
class Capabilities:
    """What the NIC's crypto can do; the relay offers only these suites in TLS when it wants offload."""

    suites: frozenset[CipherSuite]
    max_flows: int
    key_phases: int = 2  # receive key phases held at once (RFC 9001 section 6.5 needs at least 2)
    max_cid_length: int = MAX_CID_LENGTH


@dataclass
class Counters:
    """Packet counters, kept per flow and per port (a port's counters are the sum plus unkeyed traffic)."""

    decrypted: int = 0  # RX packets verified and handed up as plaintext with a zeroed tag
    encrypted: int = 0  # TX packets sealed and header-protected
    auth_failures: int = 0  # RX packets of a keyed flow whose tag did not verify (or that were too short)
    no_key_drops: int = 0  # TX packets without a key for their DCID / key phase
    no_key_passes: int = 0  # RX short-header packets without a key, passed up unchanged
    key_phase_switches: int = 0  # RX: the peer moved to the other phase; TX: the host did
    zero_tag_forgery_drops: int = 0  # RX packets not verified whose last 16 bytes were zero (DESIGN.md 5)
    malformed_drops: int = 0  # TX packets that cannot be sealed (too short, tag room not zero)
    long_header_passes: int = 0  # packets the engine does not touch (Initial, Handshake, non-QUIC)

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class EngineStats:
    port: Counters
    flows: dict[FlowKey, Counters]


@runtime_checkable
class KeyInstaller(Protocol):
    """The NIC's key-install endpoint (HAL backends implement it; `hal.base.Hal.key_installer` returns one)."""

    def capabilities(self) -> Capabilities: ...

    def install(self, flow: FlowKey, keys: KeyInstall) -> None:
        """Install or replace a flow's keys; raises KeyInstallError when the NIC cannot take them."""

    def rekey(self, flow: FlowKey, rekey: Rekey) -> None:
        """Add the keys of `rekey.key_phase` (RX: ready for the peer's update; TX: the host switches next)."""

    def remove(self, flow: FlowKey) -> bool:
        """Remove a flow; False when it was not installed."""

    def stats(self) -> EngineStats: ...


def key_install_from_secret(suite: int, secret: bytes, *, key_phase: int = 0, largest_pn: int = -1,
                            next_pn: int = 0,
                            policy: DecryptFailurePolicy = DecryptFailurePolicy.PASS_UP) -> KeyInstall:
    """A KeyInstall from a 1-RTT traffic secret as aioquic holds it (`CryptoContext.secret`, `.cipher_suite`).

    `suite` may be aioquic's `tls.CipherSuite` (same TLS code points).
    """
    keys = derive_traffic_keys(CipherSuite(int(suite)), secret)
    return KeyInstall(keys.suite, keys.key, keys.iv, keys.hp, key_phase, largest_pn, next_pn, policy)


def rekey_from_secret(suite: int, secret: bytes, key_phase: int) -> Rekey:
    """A Rekey for the phase whose traffic secret is `secret` (after a key update aioquic holds the new one)."""
    keys = derive_traffic_keys(CipherSuite(int(suite)), secret)
    return Rekey(key_phase, keys.key, keys.iv)


def next_rekey(suite: int, secret: bytes, key_phase: int) -> tuple[bytes, Rekey]:
    """The next phase's secret and its Rekey ("quic ku", RFC 9001 6.1): install it on RX ahead of the peer's update."""
    nxt = next_traffic_secret(CipherSuite(int(suite)), secret)
    return nxt, rekey_from_secret(suite, nxt, key_phase ^ 1)
