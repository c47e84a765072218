"""The NIC's QUIC crypto engine for one port, sans I/O: UDP payloads in, UDP payloads (or a drop) out.

RX (wire -> host): a short-header packet whose DCID the host installed is unprotected and handed up as plaintext
of the same length, first byte and packet number unmasked, the 16 tag bytes zeroed: the zero tag is the host's
signal "NIC-verified" (DESIGN.md section 5). A packet that cannot be verified goes up unchanged, unless its last
16 bytes are zero: then it is a forgery of that signal and is dropped. TX (host -> wire): a short-header packet in
plaintext with 16 zero bytes of tag room is sealed with the key of the phase the host set in its first byte and
header-protected; without a key it is dropped, so plaintext never reaches the wire. Long-header packets are
software-protected by the host and pass untouched; a 1-RTT packet coalesced after them is still handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crypto_offload.api import (
    Capabilities,
    CipherSuite,
    Counters,
    DecryptFailurePolicy,
    Direction,
    EngineStats,
    FlowKey,
    KeyInstall,
    KeyInstallError,
    Rekey,
)
from crypto_offload.pn import decode_packet_number
from crypto_offload.protection import (
    FIXED_BIT,
    KEY_PHASE_BIT,
    MIN_PROTECTED_AFTER_PN,
    PN_LENGTH_MASK,
    TAG_SIZE,
    HeaderProtection,
    PayloadProtection,
    ProtectionError,
    is_long_header,
    long_header_bounds,
    protect,
    unprotect,
)

ZERO_TAG = bytes(TAG_SIZE)
ALL_SUITES = frozenset(CipherSuite)


@dataclass
class _Flow:
    """Engine state of one installed flow: HP (fixed), one payload key slot per key-phase bit, PN tracking."""

    suite: CipherSuite
    hp: HeaderProtection
    slots: list[PayloadProtection | None]
    current_phase: int
    largest_pn: int  # RX: largest verified; TX: largest sent (next_pn - 1)
    policy: DecryptFailurePolicy
    counters: Counters = field(default_factory=Counters)


class _Table:
    """Flows of one direction keyed by DCID. Short headers do not carry the DCID length, so the table tries each
    length it holds (normally one per port: the host picks its own CID length)."""

    def __init__(self) -> None:
        self.flows: dict[bytes, _Flow] = {}
        self._lengths: dict[int, int] = {}
        self.lengths: tuple[int, ...] = ()

    def put(self, cid: bytes, flow: _Flow) -> None:
        if cid not in self.flows:
            self._lengths[len(cid)] = self._lengths.get(len(cid), 0) + 1
            self.lengths = tuple(sorted(self._lengths, reverse=True))
        self.flows[cid] = flow

    def pop(self, cid: bytes) -> _Flow | None:
        flow = self.flows.pop(cid, None)
        if flow is not None:
            self._lengths[len(cid)] -= 1
            if not self._lengths[len(cid)]:
                del self._lengths[len(cid)]
            self.lengths = tuple(sorted(self._lengths, reverse=True))
        return flow

    def lookup(self, packet: bytes) -> tuple[bytes, _Flow] | None:
        for length in self.lengths:
            cid = packet[1: 1 + length]
            flow = self.flows.get(cid) if len(cid) == length else None
            if flow is not None:
                return cid, flow
        return None


def short_header_offset(datagram: bytes) -> int | None:
    """Where the datagram's short-header packet starts (after any coalesced long-header packets), or None.

    RFC 9000 section 12.2: a short-header packet, if any, is the last one in a datagram. A long header we cannot
    walk (Retry, Version Negotiation, another version) ends the search: the rest is not ours to touch. Without the
    fixed bit (RFC 9000 17.3.1) it is not a QUIC v1 packet: zero padding after coalesced packets, or not QUIC at
    all; the host's stack discards such bytes, so they pass untouched.
    """
    offset = 0
    while offset < len(datagram):
        if not is_long_header(datagram[offset]):
            return offset if datagram[offset] & FIXED_BIT else None
        try:
            _, end = long_header_bounds(datagram[offset:])
        except ProtectionError:
            return None
        offset += end
    return None


class NicCryptoEngine:
    """One port's crypto engine; also its KeyInstaller (the HAL's sim backend hands this object to the relay)."""

    def __init__(self, *, max_flows: int = 4096, suites: frozenset[CipherSuite] = ALL_SUITES,
                 pass_unkeyed_protected_tx: bool = False) -> None:
        """`pass_unkeyed_protected_tx`: forward TX packets without a key whose tag room is NOT zero (the host
        protected them in software, e.g. after the NIC refused a key); off by default, DESIGN.md invariant 7."""
        self._caps = Capabilities(suites=frozenset(suites), max_flows=max_flows)
        self._tables = {Direction.RX: _Table(), Direction.TX: _Table()}
        self._port = Counters()
        self._pass_unkeyed_protected_tx = pass_unkeyed_protected_tx

    # ---- KeyInstaller ------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return self._caps

    def install(self, flow: FlowKey, keys: KeyInstall) -> None:
        if keys.suite not in self._caps.suites:
            raise KeyInstallError(f"cipher suite {keys.suite.name} not supported by this NIC")
        table = self._tables[flow.direction]
        if flow.cid not in table.flows and self.flow_count() >= self._caps.max_flows:
            raise KeyInstallError(f"flow table full ({self._caps.max_flows} flows)")
        slots: list[PayloadProtection | None] = [None, None]
        slots[keys.key_phase] = PayloadProtection(keys.suite, keys.payload_key, keys.iv)
        largest = keys.largest_pn if flow.direction is Direction.RX else keys.next_pn - 1
        table.put(flow.cid, _Flow(keys.suite, HeaderProtection(keys.suite, keys.hp_key), slots, keys.key_phase,
                                  largest, keys.decrypt_failure_policy))

    def rekey(self, flow: FlowKey, rekey: Rekey) -> None:
        entry = self._tables[flow.direction].flows.get(flow.cid)
        if entry is None:
            raise KeyInstallError(f"no {flow.direction.value} flow for CID {flow.cid.hex()}")
        if len(rekey.payload_key) != entry.suite.key_size:
            raise KeyInstallError(f"{entry.suite.name} needs a {entry.suite.key_size}-byte key")
        entry.slots[rekey.key_phase] = PayloadProtection(entry.suite, rekey.payload_key, rekey.iv)

    def remove(self, flow: FlowKey) -> bool:
        return self._tables[flow.direction].pop(flow.cid) is not None

    def stats(self) -> EngineStats:
        flows = {FlowKey(d, cid): Counters(**vars(f.counters)) for d, t in self._tables.items()
                 for cid, f in t.flows.items()}
        return EngineStats(Counters(**vars(self._port)), flows)

    def flow_count(self) -> int:
        return sum(len(t.flows) for t in self._tables.values())

    def _count(self, flow: _Flow | None, name: str) -> None:
        setattr(self._port, name, getattr(self._port, name) + 1)
        if flow is not None:
            setattr(flow.counters, name, getattr(flow.counters, name) + 1)

    # ---- data path ---------------------------------------------------------------------------------------
    def rx(self, datagram: bytes) -> bytes | None:
        """Wire -> host. Returns the datagram for the host (the same object when unchanged) or None to drop."""
        start = short_header_offset(datagram)
        if start is None:
            self._count(None, "long_header_passes")
            return datagram
        packet = datagram[start:]
        zero_tag = len(packet) > TAG_SIZE and packet[-TAG_SIZE:] == ZERO_TAG
        found = self._tables[Direction.RX].lookup(packet)
        if found is None:
            if zero_tag:
                self._count(None, "zero_tag_forgery_drops")
                return None
            self._count(None, "no_key_passes")
            return datagram
        cid, flow = found
        try:
            plain = unprotect(packet, 1 + len(cid), flow.largest_pn + 1, flow.hp, flow.slots)
        except ProtectionError:
            self._count(flow, "auth_failures")
            if zero_tag:
                self._count(flow, "zero_tag_forgery_drops")
                return None
            return None if flow.policy is DecryptFailurePolicy.DROP else datagram
        # RFC 9001 6.3: a newer packet in the other phase means the peer updated its keys.
        if plain.key_phase != flow.current_phase and plain.packet_number > flow.largest_pn:
            flow.current_phase = plain.key_phase
            self._count(flow, "key_phase_switches")
        flow.largest_pn = max(flow.largest_pn, plain.packet_number)
        self._count(flow, "decrypted")
        return datagram[:start] + plain.header + plain.payload + ZERO_TAG

    def tx(self, datagram: bytes) -> bytes | None:
        """Host -> wire. Returns the protected datagram, the same object for long headers, or None to drop."""
        start = short_header_offset(datagram)
        if start is None:
            self._count(None, "long_header_passes")
            return datagram
        packet = datagram[start:]
        found = self._tables[Direction.TX].lookup(packet)
        if found is None:
            if self._pass_unkeyed_protected_tx and packet[-TAG_SIZE:] != ZERO_TAG:
                self._count(None, "no_key_passes")
                return datagram
            self._count(None, "no_key_drops")
            return None
        cid, flow = found
        pn_offset = 1 + len(cid)
        first = packet[0]
        pn_length = (first & PN_LENGTH_MASK) + 1
        header_end = pn_offset + pn_length
        if (len(packet) < max(header_end + TAG_SIZE, pn_offset + MIN_PROTECTED_AFTER_PN)
                or packet[-TAG_SIZE:] != ZERO_TAG):
            self._count(flow, "malformed_drops")
            return None
        key_phase = (first & KEY_PHASE_BIT) >> 2
        aead = flow.slots[key_phase]
        if aead is None:
            self._count(flow, "no_key_drops")
            return None
        truncated = int.from_bytes(packet[pn_offset:header_end], "big")
        pn = decode_packet_number(truncated, 8 * pn_length, flow.largest_pn + 1)
        if key_phase != flow.current_phase:
            flow.current_phase = key_phase
            self._count(flow, "key_phase_switches")
        flow.largest_pn = max(flow.largest_pn, pn)
        self._count(flow, "encrypted")
        return datagram[:start] + protect(packet[:header_end], packet[header_end:-TAG_SIZE], pn, aead, flow.hp)
