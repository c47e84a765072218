"""Run a NicCryptoEngine between two interfaces (host-facing and wire-facing veth) with AF_PACKET sockets.

This is the simulated SmartNIC's datapath: frames from the host side go through `engine.tx`, frames from the wire
through `engine.rx`; non-UDP frames (ARP, ND) and UDP payloads the engine does not touch pass unchanged. Frames
handed over by veth may carry a partial UDP checksum (CHECKSUM_PARTIAL, DESIGN.md section 7); PACKET_AUXDATA
tells which, and those leave with a full checksum, like every frame whose payload changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from crypto_offload.control import serve_control
from crypto_offload.engine import NicCryptoEngine
from crypto_offload.frames import Transform, transform_ethernet

ETH_P_ALL = 0x0003  # linux/if_ether.h
SOL_PACKET = 263  # linux/socket.h
PACKET_AUXDATA = 8  # linux/if_packet.h
PACKET_OUTGOING = 4  # linux/if_packet.h: a frame this host sent (our own transmissions show up as these)
TP_STATUS_CSUMNOTREADY = 1 << 3  # linux/if_packet.h: checksum is partial (CHECKSUM_PARTIAL)
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
CLONE_NEWNET = 0x40000000
MAX_FRAME = 65536


@dataclass
class IoCounters:
    """Frame counters of one direction (the engine counts the QUIC-level verdicts)."""

    frames: int = 0
    forwarded: int = 0
    dropped: int = 0
    csum_partial: int = 0  # frames that arrived with TP_STATUS_CSUMNOTREADY
    send_errors: int = 0
    engine_errors: int = 0  # the engine raised on a frame: dropped (never forwarded unprotected), loop goes on


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Switch this thread into network namespace `name` (an `ip netns` name) and back; sockets keep their ns."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name} failed")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
    finally:
        os.close(own)
        os.close(target)


def open_packet_socket(ifname: str, netns: str | None = None) -> socket.socket:
    """A non-blocking raw AF_PACKET socket on `ifname` receiving every protocol, with PACKET_AUXDATA on."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
    return sock


def read_frame(sock: socket.socket) -> tuple[bytes, bool] | None:
    """One received frame and whether its checksum is partial; None when nothing is pending.

    Our own transmissions on this interface (PACKET_OUTGOING) are skipped.
    """
    while True:
        try:
            frame, ancdata, _flags, addr = sock.recvmsg(MAX_FRAME, socket.CMSG_SPACE(AUXDATA.size))
        except BlockingIOError:
            return None
        if addr[2] == PACKET_OUTGOING:
            continue
        partial = False
        for level, kind, data in ancdata:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= AUXDATA.size:
                partial = bool(AUXDATA.unpack_from(data)[0] & TP_STATUS_CSUMNOTREADY)
        return frame, partial


class NicIo:
    """Moves frames host_if <-> wire_if through the engine. Sockets are opened by the caller (maybe in a netns)."""

    def __init__(self, engine: NicCryptoEngine, host_sock: socket.socket, wire_sock: socket.socket) -> None:
        self.engine = engine
        self._host = host_sock
        self._wire = wire_sock
        self.to_wire = IoCounters()
        self.to_host = IoCounters()

    @classmethod
    def open(cls, engine: NicCryptoEngine, host_if: str, wire_if: str, netns: str | None = None) -> NicIo:
        host = open_packet_socket(host_if, netns)
        try:
            wire = open_packet_socket(wire_if, netns)
        except OSError:
            host.close()
            raise
        return cls(engine, host, wire)

    def close(self) -> None:
        self._host.close()
        self._wire.close()

    def pump(self, from_host: bool, budget: int = 256) -> int:
        """Move up to `budget` pending frames one way; returns how many were read (sans waiting)."""
        src, dst = (self._host, self._wire) if from_host else (self._wire, self._host)
        fn: Transform = self.engine.tx if from_host else self.engine.rx
        counters = self.to_wire if from_host else self.to_host
        done = 0
        while done < budget:
            got = read_frame(src)
            if got is None:
                break
            frame, partial = got
            done += 1
            counters.frames += 1
            counters.csum_partial += partial
            try:
                out = transform_ethernet(frame, fn, fix_checksum=partial)
            except Exception:  # one bad frame must not stop the NIC
                counters.engine_errors += 1
                out = None
            if out is None:
                counters.dropped += 1
                continue
            try:
                dst.send(out)
                counters.forwarded += 1
            except OSError:
                counters.send_errors += 1
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Serve both directions from the running loop until `stop` is set."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._host.fileno(), self.pump, True)
        loop.add_reader(self._wire.fileno(), self.pump, False)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(self._host.fileno())
            loop.remove_reader(self._wire.fileno())


async def serve(engine: NicCryptoEngine, host_if: str, wire_if: str, control_path: str,
                netns: str | None = None, ready: Callable[[], None] = lambda: None) -> tuple[IoCounters, IoCounters]:
    """Run the datapath and the key-install control socket until SIGTERM/SIGINT; returns the I/O counters."""
    io = NicIo.open(engine, host_if, wire_if, netns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path)  # a stale socket of a crashed run
        server = await serve_control(engine, control_path)
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            ready()
            await io.run(stop)
        finally:
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(control_path)
    finally:
        io.close()
    return io.to_wire, io.to_host


def main(argv: list[str] | None = None) -> None:
    """`python -m crypto_offload.nic_io --host-if X --wire-if Y --control PATH`: the simulated NIC's engine process.

    Prints "ready" once keys can be installed (hal/sim.py waits for it) and the counters as JSON on exit.
    """
    parser = argparse.ArgumentParser(description="QUIC crypto engine between two interfaces (simulated NIC)")
    parser.add_argument("--host-if", required=True, help="host-facing interface (plaintext side)")
    parser.add_argument("--wire-if", required=True, help="wire-facing interface (protected side)")
    parser.add_argument("--control", required=True, help="AF_UNIX path of the key-install socket")
    parser.add_argument("--netns", help="open the interfaces in this `ip netns` namespace")
    parser.add_argument("--max-flows", type=int, default=4096)
    args = parser.parse_args(argv)
    engine = NicCryptoEngine(max_flows=args.max_flows)
    to_wire, to_host = asyncio.run(serve(engine, args.host_if, args.wire_if, args.control, args.netns,
                                         ready=lambda: print("ready", flush=True)))
    print(json.dumps({"engine": asdict(engine.stats().port), "to_wire": asdict(to_wire),
                      "to_host": asdict(to_host)}), flush=True)


if __name__ == "__main__":
    main()
