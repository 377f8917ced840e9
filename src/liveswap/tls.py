"""TLS in a worker: the certificate pair the supervisor validated, as an ``ssl.SSLContext``.

The supervisor reads ``--certfile``, ``--keyfile`` and ``--ca-certs`` once per generation, checks
them (``supervisor/certs.py``) and hands the validated bytes to each worker of that generation in
its spawn request (``LIVESWAP_TLS``, popped before the app is imported). A worker never reads the
files itself: a file that changes between the check and a worker's start cannot slip in, and every
worker of a generation serves the same certificate, the one its health check saw.

This module imports nothing beyond the standard library (workers import it; ``cryptography`` is
the supervisor's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import ssl
from dataclasses import asdict, dataclass

__all__ = ["CA_INLINE_MAX", "VERSIONS", "CertBundle", "fingerprint", "health_client_context", "server_context"]

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# A spawn request is one datagram of at most 64 KiB: a CA bundle larger than this is passed by path.
CA_INLINE_MAX = 24 * 1024


@dataclass(frozen=True)
class CertBundle:
    """A validated certificate pair, as the workers of one generation get it."""

    cert: str  # PEM: the leaf first, then its chain
    key: str  # PEM
    min_version: str  # "1.2" or "1.3"
    fingerprint: str  # sha256 of the leaf's DER, hex: what the health check expects to be served
    ca: str = ""  # PEM of the CAs that sign client certificates (--ca-certs); "" for none
    ca_path: str = ""  # ... or the file to read them from, when too large to travel inline
    summary: str = ""  # "CN=example.com, valid until 2027-01-01 00:00 UTC" for logs

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> CertBundle:
        return cls(**json.loads(text))

    @property
    def verifies_clients(self) -> bool:
        return bool(self.ca or self.ca_path)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _no_password() -> str:
    # An encrypted key is refused by the supervisor's check; OpenSSL must never prompt on a terminal.
    raise ValueError("the private key is encrypted (a keyfile password is not supported)")


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    # load_cert_chain takes file names only: the bytes go through anonymous memory files, so the key
    # is never written anywhere, and what is loaded is exactly what was validated.
    fds: list[int] = []
    try:
        for data in (cert, key):
            fd = os.memfd_create("liveswap-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            with open(fd, "wb", closefd=False) as f:
                f.write(data.encode("ascii"))
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}", password=_no_password)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def server_context(bundle: CertBundle, verify_clients: bool = True) -> ssl.SSLContext:
    """The context a worker serves with. ``verify_clients=False``: the same certificate without asking
    for a client certificate (the supervisor's private health connection has none to give)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[bundle.min_version]
    ctx.set_alpn_protocols(["http/1.1"])
    _load_chain(ctx, bundle.cert, bundle.key)
    if verify_clients and bundle.verifies_clients:
        ctx.verify_mode = ssl.CERT_REQUIRED
        if bundle.ca:
            ctx.load_verify_locations(cadata=bundle.ca)
        else:
            ctx.load_verify_locations(cafile=bundle.ca_path)
    return ctx


def health_client_context() -> ssl.SSLContext:
    """The supervisor's side of the health check: no verification by a CA (the worker serves a pair the
    supervisor validated itself); the served certificate is compared by fingerprint instead."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
