"""The key-install API on a wire: how the relay reaches a NIC engine that runs as its own process.

A real SmartNIC takes keys through its driver; the simulated one is a separate process in the NIC namespace, so the
same `KeyInstaller` calls travel over a Unix stream socket, one JSON object per line each way. Keys are hex. This
module holds the encoding both ends use, so the message shapes live in one place.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from dataclasses import asdict
from typing import Any

from crypto_offload.api import (
    Capabilities,
    CipherSuite,
    Counters,
    DecryptFailurePolicy,
    Direction,
    EngineStats,
    FlowKey,
    KeyInstall,
    KeyInstaller,
    KeyInstallError,
    Rekey,
)

MAX_LINE = 64 * 1024  # one request or reply; a stats reply of a few thousand flows fits


def flow_to_wire(flow: FlowKey) -> dict[str, Any]:
    return {"dir": flow.direction.value, "cid": flow.cid.hex()}


def flow_from_wire(msg: dict[str, Any]) -> FlowKey:
    return FlowKey(Direction(msg["dir"]), bytes.fromhex(msg["cid"]))


def install_to_wire(keys: KeyInstall) -> dict[str, Any]:
    return {"suite": int(keys.suite), "payload_key": keys.payload_key.hex(), "iv": keys.iv.hex(),
            "hp_key": keys.hp_key.hex(), "key_phase": keys.key_phase, "largest_pn": keys.largest_pn,
            "next_pn": keys.next_pn, "policy": keys.decrypt_failure_policy.value}


def install_from_wire(msg: dict[str, Any]) -> KeyInstall:
    return KeyInstall(CipherSuite(msg["suite"]), bytes.fromhex(msg["payload_key"]), bytes.fromhex(msg["iv"]),
                      bytes.fromhex(msg["hp_key"]), int(msg["key_phase"]), int(msg["largest_pn"]),
                      int(msg["next_pn"]), DecryptFailurePolicy(msg["policy"]))


encode_install = install_to_wire
decode_install = install_from_wire


def rekey_to_wire(rekey: Rekey) -> dict[str, Any]:
    return {"key_phase": rekey.key_phase, "payload_key": rekey.payload_key.hex(), "iv": rekey.iv.hex()}


def rekey_from_wire(msg: dict[str, Any]) -> Rekey:
    return Rekey(int(msg["key_phase"]), bytes.fromhex(msg["payload_key"]), bytes.fromhex(msg["iv"]))


def capabilities_to_wire(caps: Capabilities) -> dict[str, Any]:
    return {"suites": sorted(int(s) for s in caps.suites), "max_flows": caps.max_flows,
            "key_phases": caps.key_phases, "max_cid_length": caps.max_cid_length}


def capabilities_from_wire(msg: dict[str, Any]) -> Capabilities:
    return Capabilities(frozenset(CipherSuite(s) for s in msg["suites"]), int(msg["max_flows"]),
                        int(msg["key_phases"]), int(msg["max_cid_length"]))


def stats_to_wire(stats: EngineStats) -> dict[str, Any]:
    return {"port": asdict(stats.port),
            "flows": [{**flow_to_wire(f), "counters": asdict(c)} for f, c in stats.flows.items()]}


def stats_from_wire(msg: dict[str, Any]) -> EngineStats:
    return EngineStats(Counters(**msg["port"]), {flow_from_wire(f): Counters(**f["counters"]) for f in msg["flows"]})


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise KeyInstallError(f"control message of {len(line)} bytes exceeds {MAX_LINE}")
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise KeyInstallError(f"malformed control message: {exc}") from None
    if not isinstance(msg, dict):
        raise KeyInstallError("control message must be a JSON object")
    return msg


# --- the engine side -------------------------------------------------------------------------------------------


def handle(installer: KeyInstaller, msg: dict[str, Any]) -> Any:
    """One request against the engine; KeyInstallError (and malformed fields) become error replies."""
    op = msg.get("op")
    if op == "capabilities":
        return capabilities_to_wire(installer.capabilities())
    if op == "install":
        installer.install(flow_from_wire(msg), install_from_wire(msg["keys"]))
        return None
    if op == "rekey":
        installer.rekey(flow_from_wire(msg), rekey_from_wire(msg["rekey"]))
        return None
    if op == "remove":
        return installer.remove(flow_from_wire(msg))
    if op == "stats":
        return stats_to_wire(installer.stats())
    raise KeyInstallError(f"unknown control operation {op!r}")


async def serve_control(installer: KeyInstaller, path: str) -> asyncio.Server:
    """Serve the key-install API on a Unix socket (mode 0600: keys travel over it)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = {"ok": True, "result": handle(installer, decode(line))}
                except (KeyInstallError, KeyError, ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc) or type(exc).__name__}
                writer.write(encode(reply))
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the engine is shutting down (SIGTERM): the relay sees the socket close, that is the message
        finally:
            writer.close()

    old = os.umask(0o077)
    try:
        return await asyncio.start_unix_server(client, path=path, limit=MAX_LINE)
    finally:
        os.umask(old)


# --- the host side ---------------------------------------------------------------------------------------------


class NicUnavailable(KeyInstallError):
    """The engine process is gone or not answering: no key can be installed, so nothing is offloaded."""


class RemoteKeyInstaller:
    """A KeyInstaller that talks to an engine process; calls are synchronous (a key install takes ~0.1 ms)."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise NicUnavailable(f"cannot reach the NIC engine at {path}: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rb")

    def _call(self, msg: dict[str, Any]) -> Any:
        try:
            self._sock.sendall(encode(msg))
            line = self._file.readline(MAX_LINE + 1)
        except OSError as exc:
            raise NicUnavailable(f"NIC engine at {self.path} failed: {exc.strerror or exc}") from None
        if not line:
            raise NicUnavailable(f"NIC engine at {self.path} closed the control connection")
        reply = decode(line)
        if not reply.get("ok"):
            raise KeyInstallError(str(reply.get("error", "unknown error")))
        return reply.get("result")

    def capabilities(self) -> Capabilities:
        return capabilities_from_wire(self._call({"op": "capabilities"}))

    def install(self, flow: FlowKey, keys: KeyInstall) -> None:
        self._call({"op": "install", **flow_to_wire(flow), "keys": install_to_wire(keys)})

    def rekey(self, flow: FlowKey, rekey: Rekey) -> None:
        self._call({"op": "rekey", **flow_to_wire(flow), "rekey": rekey_to_wire(rekey)})

    def remove(self, flow: FlowKey) -> bool:
        return bool(self._call({"op": "remove", **flow_to_wire(flow)}))

    def stats(self) -> EngineStats:
        return stats_from_wire(self._call({"op": "stats"}))

    def close(self) -> None:
        self._file.close()
        self._sock.close()
