"""Certificates for `relay` when the user gives none: a private CA plus a leaf for the listen address.

Why a CA and a leaf rather than one self-signed certificate: some QUIC stacks (qh3, used by aiomoqt) reject a server
certificate that is its own CA, while a leaf signed by a CA given with --ca verifies everywhere. Files live in the
state directory and are reused on restart (clients keep trusting the same ca.pem) as long as the leaf still names
the listen host and has not expired.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _leaf_usable(paths: CertPaths, hosts: list[str]) -> bool:
    if not (paths.ca.exists() and paths.cert.exists() and paths.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now + datetime.timedelta(days=1):
        return False
    return all(_san_entry(h) in san for h in hosts)


def ensure_certificates(state_dir: str | Path, host: str, extra_names: Sequence[str] = ()) -> CertPaths:
    """ca.pem, cert.pem, key.pem in `state_dir` for `host` (plus localhost names and `extra_names`, e.g. the name a
    simulated network resolves to the relay); reuse what is still valid."""
    d = Path(state_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(d / "ca.pem", d / "cert.pem", d / "key.pem")
    hosts = [host] if host not in ("", "0.0.0.0", "::") else []
    hosts += [h for h in ("localhost", "127.0.0.1", "::1", *extra_names) if h not in hosts]
    if _leaf_usable(paths, hosts):
        return paths
    now = datetime.datetime.now(datetime.UTC)
    ca_key_path = d / "ca-key.pem"
    if paths.ca.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("moq-relay local CA"))
            .issuer_name(_name("moq-relay local CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=10 * VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))  # fmt: skip
        paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san_entry(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    paths.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return paths
