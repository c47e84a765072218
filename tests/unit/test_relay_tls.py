"""Generated certificates: a CA plus a leaf naming the listen address, reused across restarts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from relay.tls import ensure_certificates


def test_leaf_is_signed_by_the_ca_and_names_the_host(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, "198.18.0.2")
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("198.18.0.2") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert oct(paths.key.stat().st_mode & 0o777) == "0o600"


def test_restart_reuses_files_and_a_new_host_keeps_the_ca(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, "127.0.0.1")
    ca_bytes, leaf_bytes = first.ca.read_bytes(), first.cert.read_bytes()
    again = ensure_certificates(tmp_path, "127.0.0.1")
    assert (again.ca.read_bytes(), again.cert.read_bytes()) == (ca_bytes, leaf_bytes)
    moved = ensure_certificates(tmp_path, "relay.example")
    assert moved.ca.read_bytes() == ca_bytes  # clients keep trusting the same CA
    assert moved.cert.read_bytes() != leaf_bytes
