"""`gateway certs dev`: a usable self-signed server certificate for the hosts asked for."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509

from gateway.cli import main
from gateway.edge.tls import server_ssl_context


def test_certs_dev_writes_a_server_certificate(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "dev", "--out", str(out), "--host", "gw.test", "--host", "10.1.2.3"]) == 0
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gw.test"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    context = server_ssl_context(out / "cert.pem", out / "key.pem")  # the pair loads as a listener's
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
