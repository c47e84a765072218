"""`relay pub` and `relay sub` against an independent peer, without our relay: tests/interop_peer/aiomoqt_stub.py.

The stub frames and parses every message and object with aiomoqt 0.5.3 (over qh3), so these tests show the tools
speak draft-14 as another implementation reads and writes it - the "works against any relay" half of their
contract. TLS is verified (--ca) against a certificate made here, and the error paths users meet are checked.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.relay_process import (
    AIOMOQT_MISSING,
    INTEROP_PYTHON,
    free_udp_port,
    have_aiomoqt,
    relay_env,
    stop,
)
from tests.support import REPO, require

STUB = REPO / "tests" / "interop_peer" / "aiomoqt_stub.py"


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (aioquic accepts it as its own CA when given as --ca)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class StubPeer:
    url: str
    ca: Path
    log: Path

    def records(self, kind: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubPeer]:
    require(have_aiomoqt(), AIOMOQT_MISSING)
    cert, key = make_cert(tmp_path, "stub")
    port = free_udp_port()
    log = tmp_path / "stub.jsonl"
    proc = subprocess.Popen(
        [str(INTEROP_PYTHON), str(STUB), "--port", str(port), "--cert", str(cert), "--key", str(key),
         "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        yield StubPeer(f"moqt://127.0.0.1:{port}", cert, log)
    finally:
        stop(proc)


def relay_tool(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], cwd=REPO, env=relay_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.interop
def test_relay_sub_reads_what_aiomoqt_wrote(stub: StubPeer, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    run = relay_tool("sub", "--url", stub.url, "--ca", str(stub.ca), "--namespace", "live/cam1", "--duration", "5",
                     "--dump", str(dump))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    got = [json.loads(line) for line in dump.read_text().splitlines()]
    key = ("group", "object", "priority", "size", "sha256", "datagram")
    assert [tuple(r[k] for k in key) for r in got] == [tuple(r[k] for k in key) for r in stub.records("sent")]
    assert report["objects"] == 9 and report["datagrams"] == 6 and report["streams"] == 1
    assert report["errors"] == [] and report["decodable"] == 9
    assert report["publish_done"] == {"status": "TRACK_ENDED", "code": 2, "stream_count": 1, "reason": "stub done"}
    assert report["elapsed_s"] < 4  # PUBLISH_DONE ended it, not --duration


@pytest.mark.interop
@pytest.mark.parametrize("mode", ["datagram", "stream-per-object", "stream-per-group"])
def test_aiomoqt_parses_what_relay_pub_sent(stub: StubPeer, mode: str) -> None:
    run = relay_tool("pub", "--url", stub.url, "--ca", str(stub.ca), "--namespace", "live/cam1", "--mode", mode,
                     "--fps", "50", "--gop", "5", "--bitrate", "200k", "--duration", "0.3", "--start-delay", "0.3")
    assert run.returncode == 0, run.stderr
    published = json.loads(run.stdout.splitlines()[-1])
    objects = stub.records("object")
    assert published["generated"] == 15 and published["objects"] == 15 == len(objects)
    [ok] = stub.records("subscribe_ok")
    assert {o["alias"] for o in objects} == {ok["alias"]}
    assert sorted((o["group"], o["object"]) for o in objects) == [(g, i) for g in range(3) for i in range(5)]
    assert all(o["datagram"] == (mode == "datagram") for o in objects)
    if mode == "stream-per-group":
        assert {o["priority"] for o in objects} == {0}
    else:
        assert {(o["object"] == 0, o["priority"]) for o in objects} == {(True, 0), (False, 128)}
    [done] = stub.records("publish_done")
    assert done["status"] == 2 and done["stream_count"] == published["streams"]
    assert len(stub.records("publish_namespace_done")) == 1


@pytest.mark.interop
def test_wrong_ca_is_refused_with_a_tls_message(stub: StubPeer, tmp_path: Path) -> None:
    other, _ = make_cert(tmp_path, "other")
    run = relay_tool("sub", "--url", stub.url, "--ca", str(other), "--namespace", "live/cam1", "--duration", "2")
    assert run.returncode == 1
    assert "relay sub:" in run.stderr and ("TLS" in run.stderr or "certificate" in run.stderr), run.stderr
    assert "Traceback" not in run.stderr


def test_unreachable_relay_is_a_one_line_error() -> None:
    port = free_udp_port()
    run = relay_tool("sub", "--url", f"moqt://127.0.0.1:{port}", "--insecure", "--namespace", "a", "--duration", "1")
    assert run.returncode == 1
    assert run.stderr.startswith("relay sub: ") and "Traceback" not in run.stderr, run.stderr
    assert f"moqt://127.0.0.1:{port}" in run.stderr
