"""Certificates made at test time (``cryptography``): a CA, server pairs it signs, client certificates.

ca = CA("test CA")
ca.issue("localhost").write(tmp_path / "a")      # a/cert.pem (leaf + CA), a/key.pem
ca.issue("localhost", days=-1)                   # expired yesterday
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "Pair", "fingerprint_of", "peer_fingerprint"]

_DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any) -> bytes:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data


@dataclass
class Pair:
    cert: x509.Certificate
    key: Any
    chain: list[x509.Certificate]  # the issuers after the leaf

    @property
    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [self.cert, *self.chain])

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.cert.public_bytes(serialization.Encoding.DER))

    def write(self, folder: Path, cert: str = "cert.pem", key: str = "key.pem") -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / cert).write_bytes(self.cert_pem)
        (folder / key).write_bytes(self.key_pem)
        return folder / cert, folder / key


class CA:
    def __init__(self, cn: str = "liveswap test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, days: float = 30, starts_in: float = 0, client: bool = False) -> Pair:
        """A certificate for ``cn``, valid until ``days`` from now (negative: expired), from ``starts_in``
        days from now (positive: not yet valid)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start = now + starts_in * _DAY if starts_in > 0 else now - 2 * _DAY
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return Pair(builder.sign(self.key, hashes.SHA256()), key, [self.cert])


def fingerprint_of(der: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None, "no certificate from the server"
    return fingerprint_of(der)
