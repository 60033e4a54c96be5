"""The certificates and keys one real control plane needs, as envtest makes them.

Per simulated cluster: a CA; a serving certificate for kube-apiserver on loopback (127.0.0.1,
::1, localhost and the in-cluster names); the service-account signing key pair; a client
certificate for an administrator (group `system:masters`, which RBAC lets do anything); and a
kubeconfig that kubectl and kubernetes_asyncio use unchanged. Keys are ECDSA P-256 except the
service-account key, which is RSA because every version of every component accepts it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed import kubeconfig

__all__ = ["Pki", "make_pki", "write_kubeconfig"]

SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local")
SERVING_IPS = ("127.0.0.1", "::1")
ADMIN_GROUP = "system:masters"


class _File:
    """A file of the PKI directory, named once."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, pki: Pki, owner: type[Pki] | None = None) -> Path:
        return pki.directory / self.name


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files in one directory."""

    directory: Path

    ca_cert = _File("ca.crt")
    ca_key = _File("ca.key")
    serving_cert = _File("apiserver.crt")
    serving_key = _File("apiserver.key")
    sa_key = _File("sa.key")
    sa_pub = _File("sa.pub")
    admin_cert = _File("admin.crt")
    admin_key = _File("admin.key")


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(pem(cert))


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cn: str, start: datetime, end: datetime) -> tuple[ec.EllipticCurvePrivateKey,
                                                             x509.Certificate]:
    """A self-signed certificate authority valid from `start` to `end`."""
    ca_key = _ec_key()
    ca_name = _name(cn)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    return ca_key, ca


def make_pki(directory: Path, *, cluster: str = "testbed", days: int = 365,
             now: datetime | None = None) -> Pki:
    """Create every file in `directory` (made if missing) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    start = (now or datetime.now(UTC)) - timedelta(minutes=5)  # tolerate a little clock skew
    end = start + timedelta(days=days)

    ca_key, ca = make_ca(f"{cluster}-ca", start, end)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca)

    def leaf(cn: str, org: str | None, usage: x509.ObjectIdentifier,
             san: x509.SubjectAlternativeName | None) -> tuple[x509.Certificate,
                                                               ec.EllipticCurvePrivateKey]:
        key = _ec_key()
        builder = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                                content_commitment=False,
                                                data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in SERVING_NAMES]
        + [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVING_IPS])
    serving, serving_key = leaf("kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, san)
    _write_key(pki.serving_key, serving_key)
    _write_cert(pki.serving_cert, serving)

    admin, admin_key = leaf("outpost-admin", ADMIN_GROUP, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    _write_key(pki.admin_key, admin_key)
    _write_cert(pki.admin_cert, admin)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def admin_kubeconfig(server: str, pki: Pki, *, name: str = "testbed") -> dict[str, Any]:
    """A kubeconfig with the CA and the admin client certificate embedded (no file paths)."""
    return kubeconfig.kubeconfig(name, server, ca=pki.ca_cert.read_bytes(),
                                 cert=pki.admin_cert.read_bytes(),
                                 key=pki.admin_key.read_bytes())


def write_kubeconfig(path: Path, server: str, pki: Pki, *, name: str = "testbed") -> Path:
    """`admin_kubeconfig`, written atomically."""
    return kubeconfig.write_document(path, admin_kubeconfig(server, pki, name=name))
