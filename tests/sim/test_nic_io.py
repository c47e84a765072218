"""The NIC engine's AF_PACKET loop between two veths in a namespace, with real UDP traffic through it.

host ns (eth0 198.18.0.1, fd00::1) == nh [nic ns: NicIo + engine] nw == (eth0 198.18.0.2, fd00::2) wire ns.
Packets reach a UDP socket only with a correct checksum, so delivery itself checks the checksum rewrite.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto_offload.api import CipherSuite, Direction, FlowKey, key_install_from_secret
from crypto_offload.control import RemoteKeyInstaller
from crypto_offload.engine import ZERO_TAG, NicCryptoEngine
from crypto_offload.nic_io import NicIo, in_netns
from tests.support import REPO, have_root, have_tool, require

pytestmark = [pytest.mark.root, pytest.mark.sim]

HOST_CID = bytes.fromhex("a1a2a3a4a5a6a7a8")  # issued by the host: the NIC decrypts packets carrying it
PEER_CID = bytes.fromhex("b1b2b3b4")  # issued by the peer: the NIC encrypts packets carrying it
SECRET_TO_HOST = bytes(range(32))
SECRET_TO_PEER = bytes(range(32, 64))
SUITE = CipherSuite.CHACHA20_POLY1305_SHA256
HOST_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
PORT = 4443


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


@dataclass
class Topology:
    host: str
    nic: str
    wire: str


@pytest.fixture
def topology() -> Iterator[Topology]:
    require(have_root(), "root (network namespaces, AF_PACKET)")
    require(have_tool("ip"), "the 'ip' command (iproute2)")
    prefix = f"co{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"
    topo = Topology(f"{prefix}h", f"{prefix}n", f"{prefix}w")
    created: list[str] = []
    try:
        for ns in (topo.host, topo.nic, topo.wire):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "-n", topo.nic, "link", "add", "nh", "type", "veth", "peer", "name", "eth0", "netns", topo.host)
        sh("ip", "-n", topo.nic, "link", "add", "nw", "type", "veth", "peer", "name", "eth0", "netns", topo.wire)
        for ns, mac, v4, v6, peer_mac, peer_v4, peer_v6 in (
            (topo.host, HOST_MAC, "198.18.0.1", "fd00::1", PEER_MAC, "198.18.0.2", "fd00::2"),
            (topo.wire, PEER_MAC, "198.18.0.2", "fd00::2", HOST_MAC, "198.18.0.1", "fd00::1"),
        ):
            sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "neigh", "add", peer_v4, "lladdr", peer_mac, "dev", "eth0", "nud", "permanent")
            sh("ip", "-n", ns, "neigh", "add", peer_v6, "lladdr", peer_mac, "dev", "eth0", "nud", "permanent")
        for dev in ("nh", "nw"):
            sh("ip", "-n", topo.nic, "link", "set", dev, "up")
        yield topo
    finally:
        for ns in reversed(created):  # deleting a namespace deletes its veths (and their peers)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def udp_socket(ns: str, family: socket.AddressFamily, addr: str) -> socket.socket:
    with in_netns(ns):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((addr, PORT))
    sock.setblocking(False)
    return sock


def host_packet(cid: bytes, pn: int, payload: bytes) -> bytes:
    return bytes([0x41]) + cid + pn.to_bytes(2, "big") + payload + ZERO_TAG  # RFC 9000 17.3.1, 2-byte PN


def engines() -> tuple[NicCryptoEngine, NicCryptoEngine, NicCryptoEngine]:
    """The relay NIC under test, the peer's view (reference protect/unprotect), and a fresh TX reference."""
    nic, peer, reference = NicCryptoEngine(), NicCryptoEngine(), NicCryptoEngine()
    nic.install(FlowKey(Direction.RX, HOST_CID), key_install_from_secret(SUITE, SECRET_TO_HOST))
    nic.install(FlowKey(Direction.TX, PEER_CID), key_install_from_secret(SUITE, SECRET_TO_PEER))
    peer.install(FlowKey(Direction.TX, HOST_CID), key_install_from_secret(SUITE, SECRET_TO_HOST))
    peer.install(FlowKey(Direction.RX, PEER_CID), key_install_from_secret(SUITE, SECRET_TO_PEER))
    reference.install(FlowKey(Direction.TX, PEER_CID), key_install_from_secret(SUITE, SECRET_TO_PEER))
    return nic, peer, reference


async def recv(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), 2.0)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_engine_between_veths(topology: Topology, family: socket.AddressFamily) -> None:
    host_addr, peer_addr = ("198.18.0.1", "198.18.0.2") if family == socket.AF_INET else ("fd00::1", "fd00::2")
    nic, peer, reference = engines()
    io = NicIo.open(nic, "nh", "nw", netns=topology.nic)
    host = udp_socket(topology.host, family, host_addr)
    wire = udp_socket(topology.wire, family, peer_addr)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(io.run(stop))
        try:
            for pn in range(3):
                # host -> wire: plaintext with zero tag room in, exactly the reference ciphertext out
                sent = host_packet(PEER_CID, pn, b"object %d " % pn + bytes(40))
                host.sendto(sent, (peer_addr, PORT))
                on_wire = await recv(wire)
                assert on_wire == reference.tx(sent)
                assert on_wire != sent and peer.rx(on_wire) == sent
                # wire -> host: protected in, NIC-verified plaintext (zero tag) out
                plain = host_packet(HOST_CID, pn, b"ack %d " % pn + bytes(30))
                wire.sendto(peer.tx(plain) or b"", (host_addr, PORT))
                assert await recv(host) == plain
            # long header (an Initial, software-protected by the host's stack) passes untouched both ways
            # (type Initial, v1, empty CIDs and token, Length 56 covering the rest: RFC 9000 17.2.2)
            initial = bytes.fromhex("c300000001000000") + (0x4000 | 56).to_bytes(2, "big") + bytes(56)
            host.sendto(initial, (peer_addr, PORT))
            assert await recv(wire) == initial
            # no TX key for this CID: dropped (the next packet is the first to arrive); never plaintext on the wire
            host.sendto(host_packet(b"\xee" * 4, 9, bytes(30)), (peer_addr, PORT))
            host.sendto(initial, (peer_addr, PORT))
            assert await recv(wire) == initial
            # zero-tag forgery from the wire: dropped; a protected packet of an unknown CID: passed up unchanged
            wire.sendto(host_packet(HOST_CID, 7, b"forged" + bytes(30)), (host_addr, PORT))
            unknown = bytes([0x41]) + b"\xdd" * 8 + bytes(20) + b"\x01" * 16
            wire.sendto(unknown, (host_addr, PORT))
            assert await recv(host) == unknown
        finally:
            stop.set()
            await task

    try:
        asyncio.run(scenario())
    finally:
        io.close()
        host.close()
        wire.close()
    port = nic.stats().port
    assert (port.encrypted, port.decrypted, port.no_key_drops, port.zero_tag_forgery_drops, port.no_key_passes) == (
        3, 3, 1, 1, 1)
    assert io.to_wire.dropped == 1 and io.to_host.dropped == 1 and io.to_wire.send_errors == 0
    # veth hands locally generated UDP over with a partial checksum; delivery above proves we completed it
    assert io.to_wire.csum_partial >= 1


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("the engine process printed nothing")
    return proc.stdout.readline().strip()


def test_engine_process_with_keys_over_control_socket(topology: Topology, tmp_path: Path) -> None:
    """The way hal/sim.py runs it: a separate process in the nic namespace, keys from another process."""
    control = str(tmp_path / "nic.sock")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", topology.nic, sys.executable, "-m", "crypto_offload.nic_io",
         "--host-if", "nh", "--wire-if", "nw", "--control", control],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    host = udp_socket(topology.host, socket.AF_INET, "198.18.0.1")
    wire = udp_socket(topology.wire, socket.AF_INET, "198.18.0.2")
    try:
        assert read_line(proc, 10) == "ready"
        client = RemoteKeyInstaller(control)
        _, peer, reference = engines()
        client.install(FlowKey(Direction.RX, HOST_CID), key_install_from_secret(SUITE, SECRET_TO_HOST))
        client.install(FlowKey(Direction.TX, PEER_CID), key_install_from_secret(SUITE, SECRET_TO_PEER))

        async def scenario() -> None:
            sent = host_packet(PEER_CID, 0, b"via process" + bytes(30))
            host.sendto(sent, ("198.18.0.2", PORT))
            assert await recv(wire) == reference.tx(sent)
            plain = host_packet(HOST_CID, 0, b"reply" + bytes(30))
            wire.sendto(peer.tx(plain) or b"", ("198.18.0.1", PORT))
            assert await recv(host) == plain

        asyncio.run(scenario())
        flows = client.stats().flows
        assert flows[FlowKey(Direction.TX, PEER_CID)].encrypted == 1
        assert flows[FlowKey(Direction.RX, HOST_CID)].decrypted == 1
        client.close()
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["engine"]["encrypted"] == 1 and report["engine"]["decrypted"] == 1
        assert not os.path.exists(control)  # the engine removed its control socket
    finally:
        host.close()
        wire.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
