"""TLS in the supervisor: the certificate pair is validated before a generation boots, its workers get
the validated bytes, their health check goes over TLS and must be served that very certificate, and
``--watch-certs`` turns a change of the files into a reload.

A pair that cannot serve (a key of another certificate, expired or not yet valid, a chain that does
not parse or is out of order, an encrypted key) fails the reload with the reason, like a boot that
fails: the old generation keeps serving its certificate. At the first start it is a usage error
(``liveswap: error: ...`` with a hint, exit 2).

``cryptography`` does the parsing and the checks (the ``ssl`` module checks that a key matches, but
reads neither dates nor chains without private functions); it is imported only when TLS is on.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..tls import CA_INLINE_MAX, CertBundle, fingerprint, health_client_context, server_context
from .generation import BootFailed
from .health import probe, request

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["CertificateError", "GenerationCerts", "check_startup", "load_bundle", "tls_probe", "watch"]

log = logging.getLogger("liveswap.supervisor")

_HINT = "fix the files named by --certfile/--keyfile (the key must be the certificate's own, PEM, not encrypted)"
WATCH_QUIET_MS = 100  # --watch-certs: a burst of writes ends after this long without another one
WATCH_RETRY = 1.0  # seconds between attempts to watch again after the watch failed


class CertificateError(ConfigError):
    """The certificate pair cannot be served; the message says why."""


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(
            f"{flag}: cannot read {path}: {exc.strerror or exc}", hint=f"{flag} takes a readable PEM file"
        ) from None


def _describe(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    who = f"CN={names[0].value}" if names else cert.subject.rfc4514_string() or "(no subject)"
    return f"{who}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def load_bundle(settings: Settings) -> CertBundle:
    """Read and validate --certfile, --keyfile and --ca-certs; raises CertificateError."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem, key_pem = _read("--certfile", settings.certfile), _read("--keyfile", settings.keyfile)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(
            f"--certfile {settings.certfile}: no PEM certificate could be read ({exc})", _HINT
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(
            f"--keyfile {settings.keyfile}: the key is encrypted", "decrypt it: openssl pkey -in KEY -out PLAIN.key"
        ) from None
    except ValueError as exc:
        raise CertificateError(
            f"--keyfile {settings.keyfile}: no PEM private key could be read ({exc})", _HINT
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise CertificateError(
            f"--keyfile {settings.keyfile} is not the key of the certificate in --certfile {settings.certfile} "
            f"({_describe(chain[0])})",
            "give the key that was generated with this certificate (the two files of one pair)",
        )
    now = datetime.datetime.now(datetime.UTC)
    for i, cert in enumerate(chain):
        which = "the certificate" if i == 0 else f"certificate {i + 1} of the chain"
        if now > cert.not_valid_after_utc:
            raise CertificateError(
                f"--certfile {settings.certfile}: {which} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                "renew it; clients refuse an expired certificate",
            )
        if now < cert.not_valid_before_utc:
            raise CertificateError(
                f"--certfile {settings.certfile}: {which} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                "check the clock, or the dates the certificate was issued with",
            )
        if i and not _issued_by(chain[i - 1], cert):
            raise CertificateError(
                f"--certfile {settings.certfile}: certificate {i} of the chain was not issued by certificate {i + 1}",
                "put the server's certificate first, then each issuer in order (what most CAs call fullchain.pem)",
            )
    ca, ca_path = "", ""
    if settings.ca_certs:
        ca_pem = _read("--ca-certs", settings.ca_certs)
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise CertificateError(
                f"--ca-certs {settings.ca_certs}: no PEM certificate could be read ({exc})",
                "--ca-certs takes the PEM certificates of the CAs that sign your clients' certificates",
            ) from None
        ca, ca_path = (ca_pem.decode("ascii"), "") if len(ca_pem) <= CA_INLINE_MAX else ("", settings.ca_certs)
    bundle = CertBundle(
        cert=cert_pem.decode("ascii"),
        key=key_pem.decode("ascii"),
        min_version=settings.ssl_min_version,
        fingerprint=fingerprint(chain[0].public_bytes(serialization.Encoding.DER)),
        ca=ca,
        ca_path=ca_path,
        summary=_describe(chain[0]),
    )
    try:  # what OpenSSL itself thinks of it (a key below its security level, say), as a worker will load it
        server_context(bundle)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise CertificateError(f"--certfile/--keyfile: OpenSSL refuses the pair: {exc}", _HINT) from None
    return bundle


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError, TypeError, InvalidSignature: not this issuer, whatever the reason
        return False
    return True


def check_startup(settings: Settings, dev: bool) -> CertBundle | None:
    """Before anything is bound: the TLS options make sense together and the pair can serve."""
    given = [f for f in ("certfile", "keyfile", "ca_certs") if getattr(settings, f)]
    if settings.watch_certs:
        given.append("watch_certs")
    if not given:
        return None
    flags = ", ".join("--" + f.replace("_", "-") for f in given)
    if settings.command:
        raise ConfigError(
            f"{flags}: TLS is served by liveswap's own workers, not in command mode",
            "terminate TLS in the command's server, or in a proxy in front of liveswap",
        )
    if dev:
        raise ConfigError(f"{flags}: liveswap dev serves plain HTTP", "use liveswap run for TLS")
    if not settings.certfile or not settings.keyfile:
        raise ConfigError(
            f"{flags}: TLS needs both --certfile and --keyfile",
            "liveswap run APP --certfile cert.pem --keyfile key.pem",
        )
    bundle = load_bundle(settings)
    log.debug("TLS certificate ok: %s", bundle.summary)
    return bundle


class GenerationCerts:
    """The validated pair of each generation, read once when its first worker spawns; a crash
    restart in a generation serves that generation's pair, whatever the files hold by then."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_generation: dict[int, CertBundle] = {}
        self.failed: tuple[int, BootFailed] | None = None  # (a failed generation is never restarted)
        self.serving = ""  # the fingerprint of the last pair that loaded

    def for_generation(self, number: int) -> CertBundle:
        found = self.by_generation.get(number)
        if found is None:
            found = self.by_generation[number] = self._load(number)
            # Only a successful reload adds one: the live generation's pair is among the newest 8.
            for old in sorted(self.by_generation)[:-8]:
                del self.by_generation[old]
            if found.fingerprint != self.serving:
                log.info("generation %d: TLS certificate %s (sha256 %s)", number, found.summary, found.fingerprint[:16])
                self.serving = found.fingerprint
        return found

    def _load(self, number: int) -> CertBundle:
        if self.failed is not None and self.failed[0] == number:  # the other workers of a failing generation
            raise BootFailed(str(self.failed[1]), self.failed[1].detail)
        try:
            return load_bundle(self.settings)
        except CertificateError as exc:
            failed = BootFailed(f"TLS: {exc}", f"hint: {exc.hint}" if exc.hint else "")
            self.failed = number, failed
            raise BootFailed(str(failed), failed.detail) from None


async def tls_probe(sock: socket.socket, bundle: CertBundle, path: str, host: str) -> int:
    """The health check over TLS on the private socket pair: the worker must serve ``bundle``."""
    sock.setblocking(False)
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=health_client_context(), server_hostname=host.rpartition(":")[0].strip("[]") or "localhost"
        )
    except (ssl.SSLError, ConnectionError) as exc:
        raise BootFailed(f"health check: the TLS handshake with the worker failed: {exc}") from None
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    served = fingerprint(der) if der else "nothing"
    if served != bundle.fingerprint:
        writer.close()
        raise BootFailed(f"health check: the worker serves certificate {served[:16]}, not {bundle.fingerprint[:16]}")
    writer.write(request(path, host))
    return await probe(reader, writer, path, host, sent=True)


def _digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        try:
            h.update(Path(path).read_bytes())  # through symlinks: Kubernetes swaps ..data under them
        except OSError as exc:
            h.update(f"unreadable: {exc.errno}".encode())
        h.update(b"\0")
    return h.hexdigest()


async def watch(settings: Settings, reload: Callable[[str], None]) -> None:
    """--watch-certs: ask for a reload when the content of the certificate files changes.

    The watch is on the files' directories (not the files: an atomic rename or Kubernetes' ``..data``
    symlink swap replaces what the name points to), and what counts is the content behind the names:
    a touch or a rewrite with the same bytes reloads nothing. A burst of writes (the certificate,
    then the key) is one change once the directory has been quiet for WATCH_QUIET_MS."""
    import watchfiles

    paths = [p for p in (settings.certfile, settings.keyfile, settings.ca_certs) if p]
    dirs = sorted({str(Path(p).absolute().parent) for p in paths})
    last = _digest(paths)
    log.info("watching the certificate files in %s", ", ".join(dirs))
    failed = ""
    while True:
        try:
            async for _changes in watchfiles.awatch(*dirs, watch_filter=None, step=WATCH_QUIET_MS, recursive=False):
                failed = ""
                now = _digest(paths)
                if now != last:
                    last = now
                    log.info("certificate files changed: reloading")
                    reload("certificate files changed (--watch-certs)")
                if not all(os.path.isdir(d) for d in dirs):  # its watch went with it, silently
                    raise FileNotFoundError(f"{', '.join(d for d in dirs if not os.path.isdir(d))} was removed")
        except Exception as exc:  # a watched directory removed, say: watch again once it is back
            if str(exc) != failed:
                failed = str(exc)
                log.error(
                    "--watch-certs: watching %s failed (%s); retrying every %.0f s, and SIGHUP or liveswap "
                    "reload still reload",
                    ", ".join(dirs),
                    exc or type(exc).__name__,
                    WATCH_RETRY,
                )
        await asyncio.sleep(WATCH_RETRY)
        if _digest(paths) != last:  # changed while nothing watched
            last = _digest(paths)
            reload("certificate files changed (--watch-certs)")
