"""The sim NIC's kernel-only crypto engine: bpf/src/nic_crypto.bpf.c on the NIC namespace's veths.

Same job and the same key-install API as `crypto_offload/engine.py` (NicCryptoEngine), but the packets never
leave the kernel: `ncr_wire_rx` (wire-facing veth ingress) decrypts and redirects to the host-facing veth,
`ncr_host_tx` (host-facing ingress) encrypts and redirects to the wire. This object loads and pins the programs,
turns install/rekey/remove into map updates, and reads the counters back. ChaCha20-Poly1305 only: mainline BPF
has no AES-GCM, so the relay offers only TLS_CHACHA20_POLY1305_SHA256 when this engine is selected.

`python -m crypto_offload.tc_engine --host-if X --wire-if Y --control PATH` is the drop-in for
`crypto_offload.nic_io` (same "ready" line, same control socket): hal/sim.py starts one or the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
from dataclasses import asdict, dataclass, field, fields

from bpf.attach import Direction as TcDirection
from bpf.attach import TcFilter
from bpf.loader import BpfObject, PinDir, build_path
from bpf.structs import NCR_DIR_RX, NCR_DIR_TX, NcrConfig, NcrCounter, NcrFlow, NcrFlowKey
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
from crypto_offload.control import serve_control

SUITES = frozenset({CipherSuite.CHACHA20_POLY1305_SHA256})
MAX_FLOWS = 4096  # NCR_MAX_FLOWS in structs.h: the hash map's capacity
_DIR = {Direction.RX: NCR_DIR_RX, Direction.TX: NCR_DIR_TX}
_COUNTER_NAMES = [f.name for f in fields(Counters)]  # api.Counters order == enum ncr_counter


def _words(raw: bytes) -> list[int]:
    """Wire bytes as little-endian 32-bit words (RFC 8439 2.3 reads key and nonce that way)."""
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]


def _key(flow: FlowKey) -> NcrFlowKey:
    k = NcrFlowKey(dir=_DIR[flow.direction], cid_len=len(flow.cid))
    k.cid[:len(flow.cid)] = list(flow.cid)
    return k


def _counters(raw: list[int]) -> Counters:
    return Counters(**{name: int(raw[i]) for i, name in enumerate(_COUNTER_NAMES)})


@dataclass
class TcCryptoEngine:
    """The loaded programs and maps of one NIC port, and its KeyInstaller (map updates)."""

    obj: BpfObject
    filters: list[TcFilter] = field(default_factory=list)
    pass_unkeyed_protected_tx: bool = False
    _cid_lens: dict[Direction, dict[int, int]] = field(
        default_factory=lambda: {Direction.RX: {}, Direction.TX: {}})

    @classmethod
    def load(cls, pin_dir: PinDir, pass_unkeyed_protected_tx: bool = False) -> TcCryptoEngine:
        """Load nic_crypto.o, maps pinned under `pin_dir` (per-run prefix; libbpf would use bpffs root without)."""
        engine = cls(BpfObject.load(build_path("nic_crypto"), pin_dir=pin_dir),
                     pass_unkeyed_protected_tx=pass_unkeyed_protected_tx)
        for d in (Direction.RX, Direction.TX):
            engine._write_config(d, 0)
        return engine

    def _write_config(self, direction: Direction, peer_ifindex: int | None = None) -> None:
        idx = _DIR[direction]
        cur = NcrConfig.from_buffer_copy(bytes(self.obj.maps["ncr_config"].lookup(idx)))
        if peer_ifindex is not None:
            cur.peer_ifindex = peer_ifindex
        cur.cid_len_mask = sum(1 << n for n in self._cid_lens[direction])
        cur.pass_unkeyed_protected_tx = int(self.pass_unkeyed_protected_tx)
        self.obj.maps["ncr_config"].update(idx, bytes(cur))

    def attach(self, host_if: str, wire_if: str, netns: str | None = None) -> None:
        """ncr_wire_rx on the wire veth's ingress -> host veth; ncr_host_tx on the host veth's ingress -> wire."""
        host_idx, wire_idx = (socket.if_nametoindex(n) for n in (host_if, wire_if)) if netns is None else (0, 0)
        rx = TcFilter.by_name(self.obj.programs["ncr_wire_rx"].fd, wire_if, netns,
                              direction=TcDirection.INGRESS, name="nic_crypto")
        tx = TcFilter.by_name(self.obj.programs["ncr_host_tx"].fd, host_if, netns,
                              direction=TcDirection.INGRESS, name="nic_crypto")
        if netns is not None:
            host_idx, wire_idx = tx.ifindex, rx.ifindex
        self._write_config(Direction.RX, host_idx)
        self._write_config(Direction.TX, wire_idx)
        for f in (rx, tx):
            f.attach()
            self.filters.append(f)

    def close(self) -> None:
        """Detach the filters (the port stops forwarding until passthrough is back), free and unpin everything."""
        while self.filters:
            with contextlib.suppress(Exception):
                self.filters.pop().detach()
        self.obj.close()

    # ---- KeyInstaller ------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(suites=SUITES, max_flows=MAX_FLOWS)

    def install(self, flow: FlowKey, keys: KeyInstall) -> None:
        if keys.suite not in SUITES:
            raise KeyInstallError(f"cipher suite {keys.suite.name} not supported by this NIC (TC engine: "
                                  f"ChaCha20-Poly1305 only)")
        exists = self._lookup(flow) is not None
        if not exists and self.flow_count() >= MAX_FLOWS:
            raise KeyInstallError(f"flow table full ({MAX_FLOWS} flows)")
        v = NcrFlow()
        v.hp_key[:] = _words(keys.hp_key)
        v.key[keys.key_phase][:] = _words(keys.payload_key)
        v.iv[keys.key_phase][:] = _words(keys.iv)
        v.has_key[keys.key_phase] = 1
        v.current_phase = keys.key_phase
        v.drop_on_failure = int(keys.decrypt_failure_policy is DecryptFailurePolicy.DROP)
        v.largest_pn = keys.largest_pn if flow.direction is Direction.RX else keys.next_pn - 1
        self.obj.maps["ncr_flows"].update(_key(flow), bytes(v))
        if not exists:
            lens = self._cid_lens[flow.direction]
            lens[len(flow.cid)] = lens.get(len(flow.cid), 0) + 1
            self._write_config(flow.direction)

    def rekey(self, flow: FlowKey, rekey: Rekey) -> None:
        """Fill the other key-phase slot; HP key, PN state and counters stay (RFC 9001 section 6)."""
        v = self._lookup(flow)
        if v is None:
            raise KeyInstallError(f"no {flow.direction.value} flow for CID {flow.cid.hex()}")
        if len(rekey.payload_key) != 32:
            raise KeyInstallError("CHACHA20_POLY1305_SHA256 needs a 32-byte key")
        v.key[rekey.key_phase][:] = _words(rekey.payload_key)
        v.iv[rekey.key_phase][:] = _words(rekey.iv)
        v.has_key[rekey.key_phase] = 1
        self.obj.maps["ncr_flows"].update(_key(flow), bytes(v))

    def remove(self, flow: FlowKey) -> bool:
        if not self.obj.maps["ncr_flows"].delete(_key(flow)):
            return False
        lens = self._cid_lens[flow.direction]
        lens[len(flow.cid)] -= 1
        if not lens[len(flow.cid)]:
            del lens[len(flow.cid)]
            self._write_config(flow.direction)
        return True

    def _lookup(self, flow: FlowKey) -> NcrFlow | None:
        raw = self.obj.maps["ncr_flows"].lookup(_key(flow))
        return None if raw is None else NcrFlow.from_buffer_copy(bytes(raw))

    def stats(self) -> EngineStats:
        m = self.obj.maps["ncr_port_stats"]
        port = _counters([m.sum_percpu(i) for i in range(NcrCounter.NCR_C_MAX)])
        flows: dict[FlowKey, Counters] = {}
        for raw_key, raw_val in self.obj.maps["ncr_flows"].items():
            k = NcrFlowKey.from_buffer_copy(bytes(raw_key))
            v = NcrFlow.from_buffer_copy(bytes(raw_val))
            d = Direction.RX if k.dir == NCR_DIR_RX else Direction.TX
            flows[FlowKey(d, bytes(k.cid[:k.cid_len]))] = _counters(list(v.counters))
        return EngineStats(port, flows)

    def flow_count(self) -> int:
        return sum(sum(lens.values()) for lens in self._cid_lens.values())


async def serve(engine: TcCryptoEngine, control_path: str, ready: object = None) -> None:
    """Serve the key-install control socket until SIGTERM/SIGINT (the datapath runs in the kernel)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control_path)
    server = await serve_control(engine, control_path)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path)


def main(argv: list[str] | None = None) -> None:
    """The TC engine process: load, attach, serve keys, and on SIGTERM detach, unpin, print the counters."""
    parser = argparse.ArgumentParser(description="QUIC crypto engine as TC programs (simulated NIC, kernel only)")
    parser.add_argument("--host-if", required=True, help="host-facing interface (plaintext side)")
    parser.add_argument("--wire-if", required=True, help="wire-facing interface (protected side)")
    parser.add_argument("--control", required=True, help="AF_UNIX path of the key-install socket")
    parser.add_argument("--netns", help="attach in this `ip netns` namespace")
    parser.add_argument("--pin-prefix", default=f"nic-crypto-{os.getpid()}",
                        help="folder under /sys/fs/bpf for the maps (per run)")
    args = parser.parse_args(argv)
    pin_dir = PinDir(args.pin_prefix)
    engine = TcCryptoEngine.load(pin_dir)
    try:
        engine.attach(args.host_if, args.wire_if, args.netns)
        asyncio.run(serve(engine, args.control))
        print(json.dumps({"engine": asdict(engine.stats().port)}), flush=True)
    finally:
        engine.close()
        with contextlib.suppress(OSError):
            pin_dir.remove()



if __name__ == "__main__":
    main()
