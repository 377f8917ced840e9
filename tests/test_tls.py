"""TLS under ``liveswap run`` (--certfile, --keyfile, --ca-certs, --ssl-min-version, --watch-certs).

Certificates are made at test time (tests/tlscerts.py): a CA, two good pairs A and B, a broken pair
(B's certificate with A's key), an expired one and one not valid yet. Which certificate a client is
served is read from a fresh TLS connection (the sha256 of the leaf), after each reload's answer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, Instance, MakeInstance
from loadclient import LoadClient
from tlscerts import CA, Pair, peer_fingerprint

from liveswap.config import Settings
from liveswap.supervisor.certs import load_bundle, tls_probe
from liveswap.supervisor.generation import BootFailed
from liveswap.tls import CertBundle, server_context

pytestmark = pytest.mark.timeout(60)


def client_context(ca: CA, client: Pair | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    if client is not None:
        folder = Path(os.environ.get("TMPDIR", "/tmp"))
        cert, key = client.write(folder / f"client-{os.getpid()}-{id(client)}")
        ctx.load_cert_chain(cert, key)
        shutil.rmtree(cert.parent)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def fetch(inst: Instance, ctx: ssl.SSLContext) -> tuple[str, bytes]:
    """A fresh TLS connection: the certificate it was served and the answer to GET /."""
    with socket.create_connection((inst.host, inst.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=inst.host) as tls:
            served = peer_fingerprint(tls)
            tls.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return served, data


def refused(inst: Instance, ctx: ssl.SSLContext) -> bool:
    """The server would not serve this client: the handshake failed, or (TLS 1.3, where the client's
    handshake ends before the server has checked the client's certificate) no answer came."""
    try:
        return fetch(inst, ctx)[1] == b""
    except (ssl.SSLError, ConnectionError):
        return True


def install(pair_cert: Pair, pair_key: Pair, folder: Path) -> None:
    """Put a certificate and a key in place, each by an atomic rename (as a deploy tool does)."""
    for name, data in (("cert.pem", pair_cert.cert_pem), ("key.pem", pair_key.key_pem)):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


def test_certificate_swap_under_keepalive_load(liveswap: MakeInstance, tmp_path: Path, ca: CA) -> None:
    a, b = ca.issue("localhost"), ca.issue("localhost")
    expired = ca.issue("localhost", days=-1)
    folder = tmp_path / "tls"
    folder.mkdir()
    install(a, a, folder)
    inst = liveswap(
        app="scheme_app:app",
        args=["--workers", "2", "--certfile", str(folder / "cert.pem"), "--keyfile", str(folder / "key.pem")],
    )
    ctx = client_context(ca)
    served, answer = fetch(inst, ctx)
    assert served == a.fingerprint
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"scheme=https\n"), answer
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=4, ssl_context=ctx)
    lc.start()
    try:
        # B's certificate with A's key: a failed reload, with the reason; A keeps serving.
        install(b, a, folder)
        out = inst.reload()
        assert out.returncode == 1, out
        assert "TLS:" in out.stderr and "is not the key of the certificate" in out.stderr, out.stderr
        assert fetch(inst, ctx)[0] == a.fingerprint
        # The pair B: served by the new generation once the reload says ok.
        install(b, b, folder)
        out = inst.reload()
        assert out.returncode == 0, out.stderr
        assert fetch(inst, ctx)[0] == b.fingerprint
        # An expired pair: refused, B keeps serving.
        install(expired, expired, folder)
        out = inst.reload()
        assert out.returncode == 1 and "expired on" in out.stderr, out.stderr
        assert fetch(inst, ctx)[0] == b.fingerprint
        served_before = lc.snapshot().total
        lc.wait_for(lambda r: r.total >= served_before + 50, timeout=10.0)
    finally:
        res = lc.stop()
    assert res.failed == 0, res.summary()
    assert res.ok > 100, res.summary()
    assert "reload failed" in inst.output() and "keeps serving" in inst.output()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("mismatch", "is not the key of the certificate"),
        ("expired", "expired on"),
        ("not-yet-valid", "is not valid before"),
        ("no-keyfile", "needs both --certfile and --keyfile"),
        ("command", "not in command mode"),
    ],
)
def test_bad_pair_at_start_is_a_usage_error(tmp_path: Path, ca: CA, case: str, expected: str) -> None:
    a, b = ca.issue("localhost"), ca.issue("localhost")
    pair = {"expired": ca.issue("x", days=-1), "not-yet-valid": ca.issue("x", days=30, starts_in=2)}.get(case, a)
    cert, key = pair.write(tmp_path / "pair")
    if case == "mismatch":
        key.write_bytes(b.key_pem)
    args = ["--certfile", str(cert)] + ([] if case == "no-keyfile" else ["--keyfile", str(key)])
    target = ["--", "sleep", "60"] if case == "command" else ["scheme_app:app", "--app-dir", str(APPS)]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "liveswap", "run", "--bind", "127.0.0.1:0", *args, *target],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert out.returncode == 2, out
    assert "liveswap: error:" in out.stderr and expected in out.stderr, out.stderr
    assert "hint:" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_client_certificates_and_minimum_version(liveswap: MakeInstance, tmp_path: Path, ca: CA) -> None:
    cert, key = ca.issue("localhost").write(tmp_path / "server")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    inst = liveswap(
        app="scheme_app:app",
        args=[
            *("--certfile", str(cert), "--keyfile", str(key), "--ca-certs", str(tmp_path / "ca.pem")),
            *("--ssl-min-version", "1.3"),
        ],
    )
    # With a certificate signed by the CA: served.
    _, answer = fetch(inst, client_context(ca, ca.issue("client", client=True)))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"scheme=https\n"), answer
    # Without one, or with one from another CA: refused.
    assert refused(inst, client_context(ca))
    assert refused(inst, client_context(ca, CA("another CA").issue("client", client=True)))
    # TLS 1.2 at most: refused by --ssl-min-version 1.3.
    with pytest.raises(ssl.SSLError):
        fetch(inst, client_context(ca, ca.issue("client", client=True), max_version=ssl.TLSVersion.TLSv1_2))
    assert inst.proc is not None and inst.proc.poll() is None


def test_wsgi_https_and_handshake_timeout(liveswap: MakeInstance, tmp_path: Path, ca: CA) -> None:
    cert, key = ca.issue("localhost").write(tmp_path / "server")
    args = ["--certfile", str(cert), "--keyfile", str(key), "--header-timeout", "0.5s"]
    inst = liveswap(app="scheme_app:wsgi_app", args=args)
    _, answer = fetch(inst, client_context(ca))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"scheme=https\n"), answer
    # A client that connects and never starts its handshake is cut off at --header-timeout (asyncio's
    # own default would hold the connection for 60 s).
    with socket.create_connection((inst.host, inst.port), timeout=5) as raw:
        t0 = time.monotonic()
        assert raw.recv(100) == b""
        assert time.monotonic() - t0 < 3.0


def test_health_check_wants_the_validated_certificate(tmp_path: Path, ca: CA) -> None:
    """The supervisor's TLS probe, against a real TLS server on a socket pair: it is answered when
    the worker serves the validated pair, and fails the boot when it serves another."""
    a, b = ca.issue("localhost"), ca.issue("localhost")

    def bundle(pair: Pair) -> CertBundle:
        folder = tmp_path / pair.fingerprint[:8]
        cert, key = pair.write(folder)
        return load_bundle(Settings.defaults("x:app", certfile=str(cert), keyfile=str(key)))

    async def probe_against(served: CertBundle, expected: CertBundle) -> int:
        ours, theirs = socket.socketpair()

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            writer.close()

        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), answer)

        theirs.setblocking(False)
        server = loop.create_task(loop.connect_accepted_socket(protocol, theirs, ssl=server_context(served)))
        try:
            return await asyncio.wait_for(tls_probe(ours, expected, "/", "localhost:8443"), 5)
        finally:
            server.cancel()
            theirs.close()

    bundle_a, bundle_b = bundle(a), bundle(b)
    assert asyncio.run(probe_against(bundle_a, bundle_a)) == 204
    with pytest.raises(BootFailed, match="serves certificate"):
        asyncio.run(probe_against(bundle_b, bundle_a))


def kubernetes_swap(mount: Path, cert: bytes, key: bytes, serial: int) -> None:
    """What the kubelet does to a mounted Secret: a new timestamped directory, a ..data_tmp symlink to it
    renamed over ..data, the old directory removed; tls.crt and tls.key are symlinks through ..data."""
    new = mount / f"..2026_11_29_{serial:02d}"
    new.mkdir()
    (new / "tls.crt").write_bytes(cert)
    (new / "tls.key").write_bytes(key)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(new.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old is not None:
        shutil.rmtree(mount / old)


def test_watch_certs_follows_a_kubernetes_secret(liveswap: MakeInstance, tmp_path: Path, ca: CA) -> None:
    a, b = ca.issue("localhost"), ca.issue("localhost")
    mount = tmp_path / "secret"
    mount.mkdir()
    kubernetes_swap(mount, a.cert_pem, a.key_pem, 1)
    inst = liveswap(
        app="scheme_app:app",
        args=["--certfile", str(mount / "tls.crt"), "--keyfile", str(mount / "tls.key"), "--watch-certs"],
    )
    ctx = client_context(ca)
    assert fetch(inst, ctx)[0] == a.fingerprint
    inst.wait_for("watching the certificate files")
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=2, ssl_context=ctx)
    lc.start()
    try:
        mark = inst.mark()
        kubernetes_swap(mount, b.cert_pem, b.key_pem, 2)
        inst.wait_for(r"reload ok: generation 2", timeout=10, start=mark)
        assert fetch(inst, ctx)[0] == b.fingerprint
        # A broken pair arrives the same way: the reload fails with the reason, B keeps serving.
        mark = inst.mark()
        kubernetes_swap(mount, a.cert_pem, b.key_pem, 3)
        m = inst.wait_for(r"reload failed.*keeps serving: (TLS: .*)", timeout=10, start=mark)
        assert "is not the key of the certificate" in m.group(1)
        assert fetch(inst, ctx)[0] == b.fingerprint
        # A rewrite with the same content (a touch) reloads nothing.
        mark = inst.mark()
        os.utime(mount / "tls.crt")
        kubernetes_swap(mount, a.cert_pem, b.key_pem, 4)
        served = lc.snapshot().total
        lc.wait_for(lambda r: r.total >= served + 20, timeout=10.0)
        assert "reload" not in inst.output_since(mark)
    finally:
        res = lc.stop()
    assert res.failed == 0, res.summary()
    assert fetch(inst, ctx)[0] == b.fingerprint
