"""`relay --hal none --listen HOST:PORT`: serve MoQT until SIGINT/SIGTERM (GOAWAY to every session, then close).

Prints exactly `listening on moqt://HOST:PORT` (the real port when 0 was asked) and then `ca: <path>` once ready,
flushed, because tests and scripts parse these two lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from aioquic import tls

from crypto_offload.aioquic_offload import OffloadedQuicConnection
from crypto_offload.controller import NicOffloadController
from crypto_offload.nic_io import in_netns
from hal import registry
from hal.base import Hal, HalError, HalFactory
from hal.none import NoneFactory
from relay.cache import ObjectCache
from relay.config import ConfigError, RelayConfig, load_config
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
    g.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for QUIC details)")
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
    try:
        try:
            hal.start()
            args.listen = args.listen or hal.default_listen()
            host, port = parse_listen(args.listen or "")
        except (HalError, ValueError) as exc:
            return _fail(str(exc))
        # Serve from the HAL's namespace (the sim's relay host); only this thread's sockets move there.
        with in_netns(hal.netns()), contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_serve(args, host, port, hal))
        return 0
    finally:
        hal.teardown()


def _hal_hooks(hal: Hal) -> tuple[ConnectionHooks, NicOffloadController | None]:
    """The seam where a HAL's NIC takes over 1-RTT packet protection.

    With a key installer, every new connection is adopted as an OffloadedQuicConnection before its first datagram:
    its 1-RTT keys go to the NIC as soon as TLS derives them, and are removed when the connection ends. With none
    (`--hal none`) aioquic protects every packet in software."""
    installer = hal.key_installer()
    if installer is None:
        return ConnectionHooks(), None
    log = logging.getLogger("relay.hal")
    controller = NicOffloadController(installer)

    def made(conn: MoqtConnection) -> None:
        OffloadedQuicConnection.adopt(conn._quic, controller)

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


async def _serve(args: argparse.Namespace, host: str, port: int, hal: Hal) -> int:
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
    config = make_configuration(is_client=False, cert=cert, key=key, qlog_dir=args.qlog_dir)
    hooks, controller = _hal_hooks(hal)
    if controller is not None:
        # Offer only what the NIC can protect, so every connection can be offloaded.
        config.cipher_suites = [
            tls.CipherSuite(int(s)) for s in sorted(controller.installer.capabilities().suites)
        ]
    rc: RelayConfig = getattr(args, "relay_config", None) or RelayConfig()
    relay = Relay(cache=ObjectCache(rc.cache), auth=rc.authorizer(), limits=rc.limits)
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
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on moqt://{shown}:{server.port}", flush=True)
    print(f"ca: {ca}", flush=True)
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
    return 0


async def _key_updates(connections: set[MoqtConnection], every: float) -> None:
    """`--key-update-every` (a test knob): start a key update on every connection periodically, so tests see the
    relay initiate phase changes the NIC must follow. aioquic defers the update until the handshake is confirmed."""
    while True:
        await asyncio.sleep(every)
        for conn in list(connections):
            conn._quic.request_key_update()
            conn.transmit()
