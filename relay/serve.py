"""`relay --hal none --listen HOST:PORT`: serve MoQT until SIGINT/SIGTERM (GOAWAY to every session, then close).

Prints exactly `listening on moqt://HOST:PORT` (the real port when 0 was asked) and then `ca: <path>` once ready,
flushed, because tests and scripts parse these two lines.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aioquic import tls

from crypto_offload import plaintext
from crypto_offload.aioquic_offload import OffloadedQuicConnection
from crypto_offload.controller import NicOffloadController
from crypto_offload.nic_io import in_netns
from hal import registry
from hal.base import Hal, HalError, HalFactory
from hal.none import NoneFactory
from relay import privilege, stats
from relay.cache import ObjectCache
from relay.collector import EndedConnectionCollector
from relay.config import ConfigError, RelayConfig, load_config
from relay.drop_policy import PRIORITY_P_FRAMES, DropPolicy
from relay.fastpath_runtime import FastPathUnavailable, KernelFastPath, OffloadObserver
from relay.kernel_recovery import DEFAULT_PASS_INTERVAL_MS
from relay.quic import ConnectionHooks, MoqtConnection, make_configuration, parse_url, serve_moqt
from relay.relay import Relay
from relay.tls import ensure_certificates
from relay.upstream import UpstreamLink

GOAWAY_GRACE = 0.5  # seconds between GOAWAY and closing the sessions on shutdown


def default_state_dir() -> Path:
    """/var/lib/moq-relay for root, else $XDG_STATE_HOME/moq-relay (~/.local/state/moq-relay)."""
    if os.geteuid() == 0:
        return Path("/var/lib/moq-relay")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "moq-relay"


def hal_backends() -> dict[str, HalFactory]:
    """The one list of HAL backends: hal.registry (entry points ``moq_relay.hal``); `none` is always there."""
    try:
        found = registry.available()
    except Exception as exc:  # a broken vendor package must not take `relay --help` down with it
        logging.getLogger("relay.hal").warning("HAL discovery failed: %s", exc)
        found = {}
    if "none" not in found:
        found["none"] = NoneFactory()
    return found


def configure(parser: argparse.ArgumentParser) -> None:
    backends = hal_backends()
    g = parser.add_argument_group("serving (when no command is given)")
    g.add_argument(
        "--hal", choices=sorted(backends), default=None,
        help="NIC backend: " + "; ".join(f"{n} = {f.summary}" for n, f in sorted(backends.items())),
    )  # fmt: skip
    g.add_argument(
        "--listen", metavar="HOST:PORT", help="UDP address to serve on, e.g. 127.0.0.1:4443 (port 0 = any)"
    )
    g.add_argument(
        "--cert", metavar="FILE", help="TLS certificate chain (PEM); default: made in the state dir"
    )
    g.add_argument("--key", metavar="FILE", help="TLS private key (PEM), with --cert")
    g.add_argument(
        "--state-dir", metavar="DIR", type=Path, default=None,
        help="where generated certificates live (default: /var/lib/moq-relay as root, else "
        "$XDG_STATE_HOME/moq-relay, i.e. ~/.local/state/moq-relay)",
    )  # fmt: skip
    g.add_argument("--qlog-dir", metavar="DIR", help="write one qlog file per QUIC connection here")
    g.add_argument(
        "--max-request-id", metavar="N", type=int, default=100, help="requests a peer may have (window)"
    )
    g.add_argument(
        "--key-update-every", metavar="SECONDS", type=float, default=None,
        help="TEST KNOB, not for production: request a QUIC key update (RFC 9001 section 6) on every connection "
        "every SECONDS, to exercise a NIC's key-phase handling",
    )  # fmt: skip
    g.add_argument(
        "--config", metavar="FILE", default=None,
        help="TOML file: cache sizes, limits, tokens per namespace (see docs/operations-config.md)",
    )  # fmt: skip
    g.add_argument(
        "--upstream", metavar="URL", default=None,
        help="cascade: SUBSCRIBEs for namespaces no local publisher announced go to this upstream relay "
        "(moqt://HOST:PORT), through one session, one upstream subscription per track (see docs/cascade.md)",
    )  # fmt: skip
    g.add_argument("--upstream-ca", metavar="FILE", default=None, help="CA (PEM) that signed the upstream's cert")
    g.add_argument(
        "--insecure-upstream", action="store_true",
        help="do not verify the upstream relay's certificate (tests only)",
    )  # fmt: skip
    g.add_argument(
        "--fast-path", choices=("auto", "on", "off"), default="auto",
        help="kernel fast path (TC programs clone and rewrite media datagrams, docs/fastpath.md): on needs a HAL "
        "with NIC packet protection and TC hooks (--hal sim); auto (default) = on where the HAL can; off = every "
        "copy from user space, to compare both paths on the same set-up",
    )  # fmt: skip
    g.add_argument(
        "--recovery", choices=("user", "kernel"), default=None,
        help="who tracks forwarded packets for ACKs and congestion control (docs/kernel-recovery.md): kernel = "
        "client_ingress applies the subscribers' ACKs in TC and only aggregates reach user space (default where it "
        "loads); user = every kernel-sent packet is registered in aioquic's recovery (per-packet records, the "
        "thesis design)",
    )  # fmt: skip
    g.add_argument(
        "--recovery-pass-ms", metavar="MS", type=float, default=DEFAULT_PASS_INTERVAL_MS,
        help="with --recovery kernel: at least one subscriber packet per connection reaches aioquic this often "
        "(keeps its idle timer and view of acknowledgements fresh), even when the kernel could consume it; "
        "default %(default)s",
    )  # fmt: skip
    g.add_argument(
        "--drop-above", metavar="PRIORITY", default=str(PRIORITY_P_FRAMES),
        help="drop policy of the fast path: while a subscriber is congested, its copies of objects whose publisher "
        "priority is greater than PRIORITY are dropped in the kernel (default 127: `relay pub` sends I-frames at 0 "
        "and P-frames at 128); `none` turns the policy off",
    )  # fmt: skip
    g.add_argument(
        "--congestion-high", metavar="FRACTION", type=float, default=0.9,
        help="a subscriber counts as congested once its bytes in flight reach FRACTION of its congestion window",
    )  # fmt: skip
    g.add_argument(
        "--congestion-low", metavar="FRACTION", type=float, default=0.6,
        help="... and stops counting as congested below this FRACTION (hysteresis)",
    )  # fmt: skip
    g.add_argument(
        "--drop-group-rest", choices=("on", "off"), default="on",
        help="after the policy drops an object, drop the rest of its group for that subscriber too (later objects "
        "of a group depend on earlier ones); off = judge every object alone",
    )  # fmt: skip
    g.add_argument(
        "--fast-path-first-pn", metavar="N", type=int, default=0,
        help="TEST KNOB: start the kernel's packet numbering of every connection at N or later (skipping packet "
        "numbers is legal), e.g. 65000 to cross the 16-bit boundary early",
    )  # fmt: skip
    g.add_argument(plaintext.OPTION, action="store_true", help=plaintext.HELP)
    g.add_argument(
        "--plan", action="store_true",
        help="print where the HAL backend would run each BPF program and why (e.g. --hal netronome), then exit",
    )  # fmt: skip
    g.add_argument(
        "--idle-timeout", metavar="SECONDS", type=float, default=30.0,
        help="QUIC idle timeout (RFC 9000 section 10.1): a peer that vanished without closing (killed, unplugged) "
        "is noticed after this long, and its subscribers get PUBLISH_DONE then (default 30; lower = faster notice, "
        "but idle peers must send something, e.g. PING, that often)",
    )  # fmt: skip
    g.add_argument(
        "--keep-privileges", action="store_true",
        help="do not drop capabilities once set up (default: drop all but what the data plane still needs, "
        "see docs/operations.md)",
    )  # fmt: skip
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for QUIC details)")
    stats.add_arguments(g)  # --metrics, --stats-socket (relay/stats.py)
    for factory in backends.values():
        factory.configure(parser)


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError with the expected form."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:4443 or [::1]:4443")
    return host.strip("[]"), int(port)


def _fail(msg: str) -> int:
    print(f"relay: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.hal is None:
        return _fail(
            "to serve, give --hal and --listen, e.g. `relay --hal none --listen 127.0.0.1:4443` (see --help)"
        )
    if args.listen is None and args.hal == "none":
        return _fail("--hal none needs --listen HOST:PORT, e.g. `relay --hal none --listen 127.0.0.1:4443`")
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            return _fail(str(exc))
    if bool(args.cert) != bool(args.key):
        return _fail("--cert and --key go together (or leave both out to have certificates made for you)")
    if args.max_request_id < 1:
        return _fail("--max-request-id must be at least 1")
    if getattr(args, "idle_timeout", 30.0) <= 0:
        return _fail("--idle-timeout must be a positive number of seconds")
    if args.key_update_every is not None and args.key_update_every <= 0:
        return _fail("--key-update-every must be a positive number of seconds")
    if getattr(args, "upstream", None):
        try:
            parse_url(args.upstream)
        except ValueError as exc:
            return _fail(f"--upstream: {exc}")
        if args.upstream_ca and args.insecure_upstream:
            return _fail("--upstream-ca and --insecure-upstream exclude each other")
    elif getattr(args, "upstream_ca", None) or getattr(args, "insecure_upstream", False):
        return _fail("--upstream-ca / --insecure-upstream need --upstream URL")
    try:  # a bad file is refused before anything starts
        args.relay_config = load_config(args.config) if getattr(args, "config", None) else RelayConfig()
    except ConfigError as exc:
        return _fail(str(exc))
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.verbose < 2:
        logging.getLogger("quic").setLevel(logging.WARNING)
    hal = hal_backends()[args.hal].create(args)
    if getattr(args, "plan", False):
        return _print_plan(hal)
    lab = bool(getattr(args, "insecure_lab_plaintext", False))
    if lab:
        plaintext.warn("relay")
    try:
        try:
            if hasattr(hal, "stop_on_engine_death"):
                hal.stop_on_engine_death = True  # the relay owns this HAL: a dead NIC engine stops it (exit 1)
            hal.start()
            if lab and hal.key_installer() is not None:
                return _fail(f"{plaintext.OPTION} is for NICs without QUIC crypto; --hal {hal.name} protects "
                             f"packets itself: leave the option out")
            args.listen = args.listen or hal.default_listen()
            host, port = parse_listen(args.listen or "")
        except (HalError, ValueError) as exc:
            return _fail(str(exc))
        # Serve from the HAL's namespace (the sim's relay host); only this thread's sockets move there.
        with in_netns(hal.netns()):
            fast, port, error = _start_fast_path(args, hal, host, port)
            if error:
                return _fail(error)
            try:
                with contextlib.suppress(KeyboardInterrupt):
                    rc = asyncio.run(_serve(args, host, port, hal, fast))
                    # the HAL stopped us because its NIC engine died (hal/sim.py): a failure, not a clean stop
                    return 1 if getattr(hal, "engine_failed", None) else rc
            finally:
                if fast is not None:
                    # one line scripts and tests parse: what the kernel did during this run
                    print(f"fast path counters: {json.dumps(fast.counters(), sort_keys=True)}", flush=True)
                    fast.stop()
        return 0
    finally:
        hal.teardown()


def _print_plan(hal: Hal) -> int:
    """`--plan`: the backend's placement of the BPF programs with reasons (a backend without one says so)."""
    plan_text = getattr(hal, "plan_text", None)
    if plan_text is None:
        print(f"--hal {hal.name} places no BPF programs on a NIC: nothing to plan")
        return 0
    try:
        print(plan_text(), flush=True)
    except HalError as exc:
        return _fail(str(exc))
    return 0


def _lab_plaintext_hooks(hooks: ConnectionHooks) -> ConnectionHooks:
    """INSECURE lab mode: every new connection runs 1-RTT in clear (crypto_offload/plaintext.py)."""
    made_before = hooks.connection_made

    def made(conn: MoqtConnection) -> None:
        plaintext.LabPlaintextQuicConnection.adopt(conn._quic)
        made_before(conn)

    return dataclasses.replace(hooks, connection_made=made)


def _fast_path_wanted(args: argparse.Namespace, hal: Hal) -> tuple[bool, str | None]:
    """(run it, error): `on` where the HAL cannot is an error that says what to do; `auto` just stays off."""
    mode = getattr(args, "fast_path", "off")
    if mode == "off":
        return False, None
    caps = hal.capabilities()
    able = caps.crypto_offload and caps.tc_hooks and bool(hal.ports()) and hal.key_installer() is not None
    if able:
        return True, None
    if mode == "on":
        return False, (f"--fast-path on needs a HAL whose NIC protects packets and offers TC hooks; --hal {hal.name} "
                       f"does not: use --hal sim, or --fast-path off")
    return False, None


def _start_fast_path(
    args: argparse.Namespace, hal: Hal, host: str, port: int
) -> tuple[KernelFastPath | None, int, str | None]:
    """Load and attach the programs before the event loop runs (pyroute2's netlink calls are synchronous here);
    returns the fast path (or None), the port to serve on (a free one for port 0: the programs need it), an error."""
    want_fast, error = _fast_path_wanted(args, hal)
    if error or not want_fast:
        return None, port, error
    try:
        policy = drop_policy(args)
    except ValueError as exc:
        return None, port, str(exc)
    if port == 0:
        port = _free_udp_port(host)
    try:
        fast = KernelFastPath.start(hal.ports()[0].ifname, port, first_pn=max(0, args.fast_path_first_pn),
                                    policy=policy, recovery=args.recovery or "auto",
                                    pass_interval_ms=args.recovery_pass_ms,
                                    registration_ring=(getattr(args, "relay_config", None) or RelayConfig()).fastpath.registration_ring)
    except FastPathUnavailable as exc:
        if args.fast_path == "on":
            return None, port, str(exc)
        logging.getLogger("relay.fastpath").warning("fast path off: %s", exc)
        return None, port, None
    return fast, port, None


def drop_policy(args: argparse.Namespace) -> DropPolicy:
    """The drop policy from the command line (ValueError says which option is wrong)."""
    above = str(args.drop_above).lower()
    if above != "none" and not above.isdigit():
        raise ValueError(f"--drop-above {args.drop_above!r}: give a priority 0..255 or `none`")
    return DropPolicy(drop_above=None if above == "none" else int(above), high=args.congestion_high,
                      low=args.congestion_low, rest_of_group=args.drop_group_rest == "on")


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _hal_hooks(hal: Hal, wrap: Any = None) -> tuple[ConnectionHooks, NicOffloadController | None]:
    """The seam where a HAL's NIC takes over 1-RTT packet protection.

    With a key installer, every new connection is adopted as an OffloadedQuicConnection before its first datagram:
    its 1-RTT keys go to the NIC as soon as TLS derives them, and are removed when the connection ends. With none
    (`--hal none`) aioquic protects every packet in software."""
    installer = hal.key_installer()
    if installer is None:
        return ConnectionHooks(), None
    log = logging.getLogger("relay.hal")
    controller = NicOffloadController(installer)
    offload = wrap(controller) if wrap is not None else controller

    def made(conn: MoqtConnection) -> None:
        OffloadedQuicConnection.adopt(conn._quic, offload)

    def lost(conn: MoqtConnection) -> None:
        quic = conn._quic
        if isinstance(quic, OffloadedQuicConnection):
            st = quic.offload_status()
            mode = "offloaded" if st.rx_offloaded and st.tx_offloaded else "software"
            log.info("connection %s: 1-RTT protection %s (NIC-verified rx %d, plaintext tx %d, software rx %d tx %d, "
                     "key updates %d)", quic.host_cid.hex(), mode, st.rx_plaintext_packets, st.tx_plaintext_packets,
                     st.rx_software_packets, st.tx_software_packets, st.key_updates)
            quic.offload_release()

    return ConnectionHooks(connection_made=made, connection_lost=lost), controller


async def _serve(args: argparse.Namespace, host: str, port: int, hal: Hal, fast: KernelFastPath | None) -> int:
    ca: str
    if args.cert:
        cert, key, ca = args.cert, args.key, args.cert
    else:
        state = args.state_dir or default_state_dir()
        try:
            paths = ensure_certificates(state, host, hal.tls_names())
        except OSError as exc:
            print(f"relay: cannot write certificates in {state}: {exc}; use --state-dir DIR", file=sys.stderr)
            return 2
        cert, key, ca = str(paths.cert), str(paths.key), str(paths.ca)
    config = make_configuration(
        is_client=False, cert=cert, key=key, qlog_dir=args.qlog_dir,
        idle_timeout=getattr(args, "idle_timeout", 30.0),
    )  # fmt: skip
    f = fast
    hooks, controller = _hal_hooks(hal, (lambda c: OffloadObserver(c, f)) if f is not None else None)
    if fast is not None:
        hooks = fast.connection_hooks(hooks)
    if getattr(args, "insecure_lab_plaintext", False):
        plaintext.configure(config)  # only the lab ALPN: a peer without the option fails the handshake
        hooks = _lab_plaintext_hooks(hooks)
    if controller is not None:
        # Offer only what the NIC can protect, so every connection can be offloaded.
        config.cipher_suites = [
            tls.CipherSuite(int(s)) for s in sorted(controller.installer.capabilities().suites)
        ]
        print(f"TLS offers the NIC's cipher suites only: {', '.join(s.name for s in config.cipher_suites)}",
              flush=True)
    collector = EndedConnectionCollector(asyncio.get_running_loop())  # ended connections freed promptly
    lost_before = hooks.connection_lost

    def lost(conn: MoqtConnection) -> None:
        lost_before(conn)
        collector.note_ended()

    hooks = dataclasses.replace(hooks, connection_lost=lost)
    rc: RelayConfig = getattr(args, "relay_config", None) or RelayConfig()
    relay = Relay(cache=ObjectCache(rc.cache), auth=rc.authorizer(), limits=rc.limits)
    providers: dict[str, stats.StatsProvider] = {"memory": stats.FunctionProvider(collector.figures)}
    if fast is not None:
        fast.install(relay)
        fast.run(asyncio.get_running_loop())
        providers["fastpath"] = stats.FunctionProvider(fast.counters)
    relay.stats_providers = providers  # type: ignore[attr-defined]
    # with --config, [limits] max_requests_per_session replaces --max-request-id
    max_request_id = (
        rc.limits.max_requests_per_session if getattr(args, "config", None) else args.max_request_id
    )
    try:
        server = await serve_moqt(
            host, port, configuration=config, handler=relay, hooks=hooks,
            max_request_id=max_request_id,
        )  # fmt: skip
    except OSError as exc:
        print(f"relay: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    link: UpstreamLink | None = None
    if getattr(args, "upstream", None):
        link = UpstreamLink(
            args.upstream, relay, ca=args.upstream_ca, insecure=bool(args.insecure_upstream)
        )
        relay.upstream = link
        link.start()
    notes: list[str] = []
    observers = await stats.start(args, relay, hal, say=notes.append)  # control socket, --metrics (relay/stats.py)
    if not getattr(args, "keep_privileges", False):
        _drop_privileges(hal, fast)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on moqt://{shown}:{server.port}", flush=True)  # these two lines first: the readiness contract
    print(f"ca: {ca}", flush=True)
    for line in notes:
        print(line, flush=True)
    if fast is not None:
        progs = "client_ingress + server_ingress + client_egress" if fast.recovery else "server_ingress + client_egress"
        print(f"fast path: on ({fast.ifname}: {progs}, recovery {'kernel' if fast.recovery else 'user'})", flush=True)
    else:
        print("fast path: off (every copy is sent from user space)", flush=True)
    if getattr(args, "insecure_lab_plaintext", False):
        print(f"1-RTT: INSECURE LAB PLAINTEXT (ALPN {plaintext.LAB_ALPN}, no encryption, no authentication)", flush=True)
    if hint := hal.usage_hint(f"moqt://{shown}:{server.port}"):
        print(hint, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rekeying = None
    if args.key_update_every is not None:
        rekeying = asyncio.create_task(_key_updates(server.connections, args.key_update_every))
    await stop.wait()
    if rekeying is not None:
        rekeying.cancel()
    if link is not None:
        await link.stop()
    relay.goaway_all()
    for conn in list(server.connections):
        conn.transmit()
    await asyncio.sleep(GOAWAY_GRACE if server.connections else 0)
    for conn in list(server.connections):
        conn.close_session(0, "relay shutting down")
    await asyncio.sleep(0.05)
    server.close()
    collector.close()
    stats.stop(observers)
    return 0


def _drop_privileges(hal: Hal, fast: KernelFastPath | None) -> None:
    """Set-up is over (socket bound, programs attached): keep only what the data plane needs (relay/privilege.py).
    Capabilities are per thread, so the loop's thread pool (made for getaddrinfo) is replaced by one whose threads
    start after the drop."""
    keep = privilege.needed_capabilities(fast_path=fast is not None, netns=hal.netns() is not None)
    log = logging.getLogger("relay.privilege")
    loop = asyncio.get_running_loop()
    old = getattr(loop, "_default_executor", None)
    try:
        privilege.drop_capabilities(keep)
    except OSError as exc:
        log.warning("could not drop capabilities (%s): the relay keeps running with the ones it had", exc)
        return
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(thread_name_prefix="relay"))
    if old is not None:
        old.shutdown(wait=True)  # idle getaddrinfo threads: they still hold the capabilities of the set-up
    if left := privilege.privileged_tasks(keep):
        log.warning("threads %s still hold capabilities beyond what the relay needs", left)


async def _key_updates(connections: set[MoqtConnection], every: float) -> None:
    """`--key-update-every` (a test knob): start a key update on every connection periodically, so tests see the
    relay initiate phase changes the NIC must follow. aioquic defers the update until the handshake is confirmed."""
    while True:
        await asyncio.sleep(every)
        for conn in list(connections):
            conn._quic.request_key_update()
            conn.transmit()
