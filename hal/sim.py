"""`--hal sim`: the simulated SmartNIC - QUIC packet protection in a NIC namespace, the relay in its own namespace.

`start()` attaches to the simulated network of `--prefix` (or brings one up, and then owns it), hands the relay
port from passthrough to the crypto engine, starts the engine process inside `<prefix>-nic`, and connects to its
key-install socket. `teardown()` undoes exactly that: the engine process ends, the port goes back to passthrough,
and a network this run brought up is taken down (also after Ctrl-C: serve.py calls it in a `finally`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from crypto_offload.api import CipherSuite
from crypto_offload.control import RemoteKeyInstaller
from hal.base import Hal, HalCapabilities, HalError, Port
from sim.state import SimStateError, state_dir
from sim.topology import Topology

ENGINE_READY_TIMEOUT = 10.0
DEFAULT_PORT = 4443


class SimHal:
    name = "sim"

    def __init__(self, prefix: str, publishers: int, subscribers: int, port_name: str = "port0",
                 nic_engine: str = "user") -> None:
        self.prefix = prefix
        self.nic_engine = nic_engine  # "user": crypto_offload.nic_io; "tc": crypto_offload.tc_engine (kernel only)
        self.publishers = publishers
        self.subscribers = subscribers
        self.port_name = port_name
        self.topology: Topology | None = None
        self.created = False
        self.engine: subprocess.Popen[str] | None = None
        self.installer: RemoteKeyInstaller | None = None
        self.control_path = str(state_dir() / f"{prefix}.nic.sock")
        self.engine_failed: str | None = None  # why the engine died under the relay (None: it did not)
        self.stop_on_engine_death = False  # `relay --hal sim` sets it; in-process users (conformance) manage the engine
        self._stopping = False
        self._old_sigchld: Any = None

    def capabilities(self) -> HalCapabilities:
        caps = self.installer.capabilities() if self.installer else None
        suites = tuple(CipherSuite(s).name for s in sorted(caps.suites)) if caps else ()
        return HalCapabilities(crypto_offload=True, cipher_suites=suites, max_flows=caps.max_flows if caps else 0,
                               tc_hooks=True, notes=(self._engine_note(),))

    def _engine_note(self) -> str:
        if self.nic_engine == "tc":
            return ("simulated NIC: TC crypto engine (kernel only, ChaCha20-Poly1305 only: TLS offers "
                    "TLS_CHACHA20_POLY1305_SHA256 alone)")
        return "simulated NIC: user-space crypto engine in a namespace"

    def start(self) -> None:
        if os.geteuid() != 0:
            raise HalError("--hal sim needs root (namespaces, veths, tc): run as root, or use --hal none")
        try:
            try:
                self.topology = Topology.attach(self.prefix)
            except SimStateError:
                print(f"sim {self.prefix}: bringing up the simulated network "
                      f"({self.publishers} publisher(s), {self.subscribers} subscriber(s))", flush=True)
                self.topology = Topology.up(self.prefix, self.publishers, self.subscribers,
                                            progress=lambda m: print(m, flush=True))
                self.created = True
            self._start_engine()
        except SimStateError as exc:
            self.teardown()
            raise HalError(str(exc)) from None
        except BaseException:
            self.teardown()
            raise

    def _start_engine(self) -> None:
        assert self.topology is not None
        port = self.topology.port(self.port_name)
        if port.nic_mode == "engine":
            raise HalError(f"the NIC of sim {self.prefix} is already in engine mode: another relay uses it "
                           f"(stop it, or use another --prefix)")
        self.topology.set_nic_mode("engine", self.port_name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        argv = [sys.executable, "-m", "crypto_offload.nic_io", "--host-if", port.host_if, "--wire-if",
                port.wire_if, "--control", self.control_path]
        if self.nic_engine == "tc":
            argv[2] = "crypto_offload.tc_engine"
            argv += ["--pin-prefix", f"{self.prefix}-nic-crypto"]
        self.engine = self.topology.exec("nic", argv, stdout=subprocess.PIPE, text=True)
        assert self.engine.stdout is not None
        deadline = time.monotonic() + ENGINE_READY_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.engine.stdout], [], [], 0.1)
            if ready and self.engine.stdout.readline().strip() == "ready":
                break
            if self.engine.poll() is not None:
                raise HalError(f"the NIC engine exited with status {self.engine.returncode} at start")
        else:
            raise HalError(f"the NIC engine did not become ready within {ENGINE_READY_TIMEOUT:.0f} s")
        self.installer = RemoteKeyInstaller(self.control_path)
        self._watch_engine()

    def _watch_engine(self) -> None:
        """Issue #10: if the engine process dies, no 1-RTT packet can be protected any more (the NIC namespace does
        not bridge in engine mode, so nothing leaves in plaintext, but every session would hang until its idle
        timeout). The engine is our child: on its SIGCHLD, say so on stderr and SIGTERM ourselves, so the relay
        stops through its normal path (GOAWAY, detach, unpin, teardown). A handler, not a thread: a thread made
        before the capability drop would stay privileged (relay/privilege.py)."""
        if not self.stop_on_engine_death or threading.current_thread() is not threading.main_thread():
            return
        self._old_sigchld = signal.getsignal(signal.SIGCHLD)

        def chld(signum: int, frame: Any) -> None:
            engine = self.engine
            if engine is not None and not self._stopping and self.engine_failed is None and engine.poll() is not None:
                self.engine_failed = (f"the NIC engine (pid {engine.pid}) exited with status {engine.returncode}: "
                                      f"no packet can be protected any more; stopping the relay")
                print(f"relay: error: {self.engine_failed}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
            if callable(self._old_sigchld):
                self._old_sigchld(signum, frame)

        signal.signal(signal.SIGCHLD, chld)

    def ports(self) -> list[Port]:
        if self.topology is None:
            return []
        p = self.topology.port(self.port_name)
        relay = self.topology.node("relay")
        return [Port(p.name, p.relay_if, self.topology.state.relay_ns, [relay.ipv4, relay.ipv6])]

    def netns(self) -> str | None:
        return self.topology.state.relay_ns if self.topology else None

    def default_listen(self) -> str | None:
        return f"{self.topology.relay_address}:{DEFAULT_PORT}" if self.topology else None

    def tls_names(self) -> list[str]:
        if self.topology is None:
            return []
        return ["relay", self.topology.relay_ipv4, self.topology.relay_ipv6]

    def key_installer(self) -> Any | None:
        return self.installer

    def stats(self) -> dict[str, Any]:
        if self.installer is None:
            return {}
        return {"engine": self.installer.stats().port}

    def usage_hint(self, url: str) -> str:
        """How to run a publisher and a subscriber in this simulated network (printed once the relay is ready)."""
        topo = self.topology
        if topo is None:
            return ""
        pub = topo.publishers[0] if topo.publishers else "pub0"
        sub = topo.subscribers[0] if topo.subscribers else "sub0"
        port = url.rsplit(":", 1)[-1]
        exe = shutil.which("relay") or (os.path.abspath(sys.argv[0]) if sys.argv[0].endswith("relay") else "relay")
        media = f"--url moqt://relay:{port} --ca CA --namespace live/cam1 --track video --duration 30"
        return (f"in another terminal (CA = the path printed above):\n"
                f"  {exe} sim exec --prefix {self.prefix} {pub} -- {exe} pub {media}\n"
                f"  {exe} sim exec --prefix {self.prefix} {sub} -- {exe} sub {media}")

    def teardown(self) -> None:
        self._stopping = True  # our own stop of the engine below is not a failure
        if self.installer is not None:
            self.installer.close()
            self.installer = None
        if self.engine is not None:
            if self.engine.poll() is None:
                self.engine.terminate()
                try:
                    self.engine.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.engine.kill()
                    self.engine.wait()
            if self.engine.stdout is not None:
                self.engine.stdout.close()
            self.engine = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        if self.topology is not None:
            if self.created:
                self.topology.down()
            else:
                with contextlib.suppress(SimStateError, subprocess.CalledProcessError):
                    self.topology.set_nic_mode("passthrough", self.port_name)
            self.topology = None


class SimFactory:
    name = "sim"
    summary = "simulated SmartNIC with QUIC crypto offload, in network namespaces (root)"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("simulated NIC (--hal sim)")
        g.add_argument("--prefix", default="moq", help="name prefix of the simulated network to use or create "
                                                        "(default moq; see `relay sim list`)")
        g.add_argument("--sim-publishers", type=int, default=1, metavar="M",
                       help="publisher nodes when the network has to be brought up (default 1)")
        g.add_argument("--sim-subscribers", type=int, default=2, metavar="N",
                       help="subscriber nodes when the network has to be brought up (default 2)")
        g.add_argument("--nic-engine", choices=("user", "tc"), default=os.environ.get("RELAY_NIC_ENGINE", "user"),
                       help="the NIC's crypto engine: user (user-space process, all suites) or tc (TC programs, "
                            "kernel only, ChaCha20-Poly1305 only; docs/tc-crypto-engine.md); default from $RELAY_NIC_ENGINE "
                            "(how `relay demo --nic-engine` reaches the relays it starts), else user")

    def create(self, args: argparse.Namespace) -> Hal:
        return SimHal(args.prefix, args.sim_publishers, args.sim_subscribers,
                      nic_engine=getattr(args, "nic_engine", "user"))
