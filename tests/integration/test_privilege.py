"""Privilege and exposure (issue #10, item 4): root-only pins and control socket, the capability drop of a running
relay read from /proc/<pid>/status, `relay doctor`'s warnings, TLS verification on by default."""

from __future__ import annotations

import asyncio
import ctypes
import os
import ssl
import stat
from pathlib import Path

import pytest
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection

from bpf import libbpf
from bpf.loader import BpfObject, PinDir, build_path
from bpf.structs import SelftestConfig
from crypto_offload.control import serve_control
from crypto_offload.engine import NicCryptoEngine
from relay import doctor, privilege
from relay.quic import make_configuration
from relay.tls import ensure_certificates
from relay.tools.endpoint import parse_endpoint
from tests.bpf.conftest import bpf_build, run_prefix
from tests.integration.relay_process import have_relay, running_relay
from tests.support import have_root, require

__all__ = ["bpf_build", "run_prefix"]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.root
@pytest.mark.bpf
def test_pin_folder_and_pins_are_root_only(bpf_build: Path, run_prefix: str) -> None:
    old = os.umask(0o000)  # the loader must not depend on a careful umask
    try:
        pins = PinDir(run_prefix)
        with BpfObject.load(build_path("selftest"), rodata={"selftest_cfg": SelftestConfig(magic=1)},
                            pin_dir=pins):  # fmt: skip
            assert _mode(pins.path) == 0o700
            entries = list(pins.path.iterdir())
            assert entries
            assert {e.name: _mode(e) for e in entries} == {e.name: 0o600 for e in entries}
    finally:
        os.umask(old)
    assert not pins.path.exists()


def test_control_socket_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"

    async def run() -> int:
        os.umask(old)  # whatever the caller's umask, the socket is 0600
        server = await serve_control(NicCryptoEngine(max_flows=1), str(path))
        mode = _mode(path)
        server.close()
        await server.wait_closed()
        return mode

    old = os.umask(0o000)
    try:
        assert asyncio.run(run()) & 0o077 == 0
    finally:
        os.umask(old)


@pytest.mark.root
def test_dropped_capabilities_still_update_maps_but_cannot_make_them() -> None:
    """Why the relay may drop CAP_BPF for map updates on this kernel: an fd it holds keeps working."""
    require(have_root(), "root (capabilities to drop)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            lib = libbpf.lib()
            fd = lib.bpf_map_create(2, None, 4, 4, 1, None)  # BPF_MAP_TYPE_ARRAY
            caps = privilege.drop_capabilities(set())
            key, value = ctypes.c_uint32(0), ctypes.c_uint32(7)
            update = lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0)
            create = lib.bpf_map_create(2, None, 4, 4, 1, None)
            os.write(w, f"{fd} {caps.effective} {caps.bounding} {update} {create}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = os.read(r, 200).decode().split()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    fd, eff, bnd, update, create = map(int, out)
    assert fd >= 0 and eff == 0 and bnd == 0
    assert update == 0, "a map fd made before the drop must stay writable (the fast path updates its maps)"
    assert create < 0, "no new map without capabilities"


def _relay_caps(pid: int) -> list[privilege.CapSets]:
    return [privilege.read_caps(pid, int(t.name)) for t in Path(f"/proc/{pid}/task").iterdir()]


@pytest.mark.root
def test_running_relay_drops_every_capability(tmp_path: Path) -> None:
    require(have_root(), "root (a relay with capabilities)")
    require(have_relay(), "the relay package")
    with running_relay(tmp_path / "state") as relay:
        caps = _relay_caps(relay.proc.pid)
        assert [(c.effective, c.permitted, c.bounding) for c in caps] == [(0, 0, 0)] * len(caps), relay.log()
    with running_relay(tmp_path / "state", extra=["--keep-privileges"]) as relay:
        assert privilege.read_caps(relay.proc.pid).effective >> privilege.CAP_NET_ADMIN & 1


def test_needed_capabilities_policy() -> None:
    assert privilege.needed_capabilities(fast_path=False, netns=False) == frozenset()
    assert privilege.CAP_NET_ADMIN in privilege.needed_capabilities(fast_path=True, netns=False)
    assert privilege.CAP_SYS_ADMIN in privilege.needed_capabilities(fast_path=False, netns=True)


def test_doctor_warns_about_unsafe_settings(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "key.pem").write_text("k")
    os.chmod(state / "key.pem", 0o644)
    checks = doctor.security_checks(state, ["--hal", "sim", "--insecure-upstream", "--keep-privileges"])
    by_name = {c.name: c for c in checks}
    assert not by_name["state dir"].ok and "key.pem mode 644" in by_name["state dir"].detail
    assert not by_name["flag --insecure-upstream"].ok and not by_name["flag --keep-privileges"].ok
    assert all(not c.required for c in checks), "warnings: the relay still runs"
    os.chmod(state / "key.pem", 0o600)
    assert doctor.check_state_dir(state).ok
    unpriv = doctor._sysctl("kernel.unprivileged_bpf_disabled")
    assert by_name["unprivileged bpf"].ok == (unpriv is None or unpriv != 0)
    harden = doctor._sysctl("net.core.bpf_jit_harden")
    assert by_name["bpf jit hardening"].ok == (harden is None or harden >= 1)
    assert "warn" in doctor.render(checks) and "fix: leave out --insecure-upstream" in doctor.render(checks)


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    """A client made the way `relay pub`/`relay sub` make theirs, given no CA, refuses the relay's certificate."""
    paths = ensure_certificates(tmp_path, "localhost")
    ccfg = make_configuration(is_client=True, server_name="localhost")
    assert ccfg.verify_mode in (None, ssl.CERT_REQUIRED)  # None: aioquic's client default, CERT_REQUIRED
    client = QuicConnection(configuration=ccfg)
    server = QuicConnection(
        configuration=make_configuration(is_client=False, cert=str(paths.cert), key=str(paths.key)),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    now = 1.0
    client.connect(("198.18.0.2", 4443), now=now)
    for _ in range(20):
        for a, b, src in ((client, server, ("198.18.0.1", 40000)), (server, client, ("198.18.0.2", 4443))):
            for data, _ in a.datagrams_to_send(now):
                b.receive_datagram(data, src, now=now)
        now += 0.01
    events = []
    while (ev := client.next_event()) is not None:
        events.append(ev)
    assert not any(isinstance(e, qe.HandshakeCompleted) for e in events)
    closed = [e for e in events if isinstance(e, qe.ConnectionTerminated)]
    close = closed[0] if closed else client._close_event
    assert close is not None and "certificate" in close.reason_phrase.lower(), close
    with pytest.raises(Exception, match="--insecure"):
        parse_endpoint("moqt://127.0.0.1:4443", None, False)  # relay pub/sub: no --ca, no --insecure -> refused
    assert not parse_endpoint("moqt://127.0.0.1:4443", paths.ca, False).insecure
