"""TLS: throughput of ``liveswap run --certfile`` against uvicorn ``--ssl-certfile`` with the same
certificate, and the time from a certificate change on disk to a client being served the new one.

1. Throughput. The benchmark app (``apps/bench_app.py``), one worker each, on the same certificate
   (an EC P-256 pair signed by a CA made for the run): ``liveswap run`` and ``uvicorn`` (uvloop and
   httptools, as liveswap's workers), each over HTTPS and, for the price of TLS itself, plain HTTP.
   ``wrk -t1 -c16 -d5s`` keep-alive GET, targets in a new random order each round, after a 2 s
   warm-up each; wrk and the server share the machine's cores. Besides req/s, the server's CPU time
   per request (its whole process tree, from /proc), which a busy machine disturbs less.
2. Certificate change. ``liveswap run --watch-certs``: a new pair is written (key, then certificate,
   each by an atomic rename, as a deploy tool does); a client opens a fresh TLS connection every 5 ms
   and the time until it is served the new certificate is taken, with the reload's own duration
   (from liveswap's log) beside it. uvicorn reads its certificate once:
   the alternative is a restart, timed the same way (stop, start, first connection served the new
   certificate), during which connections are refused.

    .venv/bin/python benchmarks/tls_bench.py                   # about 1.5 minutes
    .venv/bin/python benchmarks/tls_bench.py --rounds 5 --changes 20

Writes benchmarks/results/tls-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    APPS_DIR,
    BIN,
    HOST,
    BenchError,
    cpu_seconds,
    free_port,
    machine_info,
    median,
    parse_wrk,
    process_tree,
    run_wrk,
    write_results,
)
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TARGETS = ("liveswap-https", "uvicorn-https", "liveswap-http", "uvicorn-http")


# ---- certificates ---------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Issuer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("bench CA"))
            .issuer_name(_name("bench CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pair(self) -> tuple[bytes, bytes, str]:
        """(chain PEM, key PEM, sha256 of the leaf) of a new localhost certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        chain = cert.public_bytes(pem) + self.cert.public_bytes(pem)
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return chain, key_pem, hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def install(folder: Path, chain: bytes, key: bytes) -> None:
    for name, data in (("key.pem", key), ("cert.pem", chain)):
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


# ---- servers -------------------------------------------------------------------------------------
_CLIENT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_CLIENT.check_hostname = False
_CLIENT.verify_mode = ssl.CERT_NONE


def served(port: int, timeout: float = 1.0) -> str:
    """The sha256 of the certificate a fresh TLS connection is served ("" when it fails), after one GET."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            with _CLIENT.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True) or b""
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                if not tls.recv(64).startswith(b"HTTP/1.1 200"):
                    return ""
                return hashlib.sha256(der).hexdigest()
    except OSError:
        return ""


class Child:
    """A server in its own session (stopped by its process group), up once it answers."""

    def __init__(self, argv: list[str], port: int, tls: bool, env: dict[str, str]) -> None:
        self.port = port
        fd, name = tempfile.mkstemp(prefix="tlsbench-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        with open(self.log, "ab") as out:  # O_APPEND: our reads never move the child's writes
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{argv[:3]} exited: {self.output()}")
            if (served(port) if tls else _plain_ok(port)) != "":
                return
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{argv[:3]} did not answer within 30 s: {self.output()}")

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.unlink(missing_ok=True)


def _plain_ok(port: int) -> str:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return "ok" if s.recv(64).startswith(b"HTTP/1.1 200") else ""
    except OSError:
        return ""


def start(target: str, folder: Path, runtime: Path, extra: tuple[str, ...] = ()) -> Child:
    port = free_port()
    server, scheme = target.split("-")
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PYTHONPATH=str(APPS_DIR))
    tls = scheme == "https"
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    if server == "liveswap":
        argv = [str(BIN / "liveswap"), "run", "bench_app:app", "--app-dir", str(APPS_DIR), "--workers", "1"]
        argv += ["--bind", f"{HOST}:{port}", "--name", f"tlsbench-{port}", *extra]
        argv += ["--certfile", cert, "--keyfile", key] if tls else []
    else:
        argv = [str(BIN / "uvicorn"), "bench_app:app", "--app-dir", str(APPS_DIR), "--host", HOST, "--port", str(port)]
        argv += ["--log-level", "warning"] + (["--ssl-certfile", cert, "--ssl-keyfile", key] if tls else [])
    return Child(argv, port, tls, env)


def wrk_target(target: str, port: int, duration: float) -> dict[str, Any]:
    scheme = target.split("-")[1]
    if scheme == "http":
        return run_wrk(port, duration, threads=1, conns=16).as_dict()
    # benchlib's run_wrk speaks http://; the same command line with https://
    argv = ["wrk", "-t1", "-c16", f"-d{max(1, round(duration))}s", "--timeout", "2s", f"https://{HOST}:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True)
    return parse_wrk(out.stdout).as_dict()


# ---- the two measurements ----------------------------------------------------------------------
def throughput(folder: Path, runtime: Path, rounds: int, duration: float) -> dict[str, Any]:
    runs: dict[str, list[float]] = {t: [] for t in TARGETS}
    cpu_us: dict[str, list[float]] = {t: [] for t in TARGETS}  # server CPU per request: steadier under contention
    failures: dict[str, int] = dict.fromkeys(TARGETS, 0)
    for r in range(rounds):
        order = random.sample(TARGETS, len(TARGETS))
        for target in order:
            child = start(target, folder, runtime)
            try:
                wrk_target(target, child.port, 2.0)  # warm-up
                pids = process_tree(child.proc.pid)  # liveswap: supervisor, template, spares, the worker
                cpu0 = sum(cpu_seconds(p) for p in pids)
                res = wrk_target(target, child.port, duration)
                cpu_us[target].append((sum(cpu_seconds(p) for p in pids) - cpu0) / max(1, res["requests"]) * 1e6)
            finally:
                child.stop()
            runs[target].append(res["rps"])
            failures[target] += res["failures"]
            print(
                f"  round {r + 1} {target:15s} {res['rps']:9.0f} req/s  {cpu_us[target][-1]:6.1f} us CPU/request  "
                f"failures {res['failures']}",
                flush=True,
            )
    med = {t: median(v) for t, v in runs.items()}
    cpu = {t: median(v) for t, v in cpu_us.items()}
    return {
        "rps": runs,
        "median_rps": med,
        "cpu_us_per_request": cpu_us,
        "median_cpu_us_per_request": cpu,
        "cpu_ratio_https_liveswap_to_uvicorn": cpu["liveswap-https"] / cpu["uvicorn-https"],
        "failures": failures,
        "ratio_https_liveswap_to_uvicorn": med["liveswap-https"] / med["uvicorn-https"],
        "ratio_http_liveswap_to_uvicorn": med["liveswap-http"] / med["uvicorn-http"],
        "tls_cost_liveswap": 1 - med["liveswap-https"] / med["liveswap-http"],
        "tls_cost_uvicorn": 1 - med["uvicorn-https"] / med["uvicorn-http"],
    }


def wait_served(port: int, fingerprint: str, t0: float, limit: float = 20.0) -> float:
    while time.monotonic() - t0 < limit:
        if served(port, timeout=0.5) == fingerprint:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise BenchError(f"the new certificate was not served within {limit} s")


def change_latency(folder: Path, runtime: Path, issuer: Issuer, changes: int, restarts: int) -> dict[str, Any]:
    pairs = [issuer.pair() for _ in range(changes)]
    child = start("liveswap-https", folder, runtime, ("--watch-certs",))
    watched: list[float] = []
    reloads: list[float] = []  # "reload ok: generation N live in X ms": the reload's part of it
    try:
        deadline = time.monotonic() + 10  # the watch starts with the supervisor's loop and says so
        while "watching the certificate files" not in child.output():
            if time.monotonic() > deadline:
                raise BenchError(f"liveswap does not watch the certificate files: {child.output()}")
            time.sleep(0.02)
        for chain, key, fp in pairs:
            t0 = time.monotonic()
            install(folder, chain, key)
            watched.append(wait_served(child.port, fp, t0))
            generation = len(watched) + 1
            while not (m := re.search(rf"generation {generation} live in ([\d.]+) ms", child.output())):
                if time.monotonic() - t0 > 10:
                    raise BenchError(f"no 'reload ok' for generation {generation}: {child.output()}")
                time.sleep(0.01)
            reloads.append(float(m.group(1)) / 1000)
            print(
                f"  --watch-certs: new certificate served after {watched[-1] * 1000:.0f} ms "
                f"(the reload itself: {reloads[-1] * 1000:.0f} ms)",
                flush=True,
            )
    finally:
        child.stop()
    restarted: list[float] = []
    child = start("uvicorn-https", folder, runtime)
    try:
        for chain, key, fp in pairs[:restarts]:
            t0 = time.monotonic()
            install(folder, chain, key)
            child.stop()
            child = start("uvicorn-https", folder, runtime)
            restarted.append(wait_served(child.port, fp, t0))
            print(f"  uvicorn restart: new certificate served after {restarted[-1] * 1000:.0f} ms", flush=True)
    finally:
        child.stop()
    return {
        "watch_certs_s": watched,
        "watch_certs_median_s": median(watched),
        "reload_s": reloads,
        "reload_median_s": median(reloads),
        "uvicorn_restart_s": restarted,
        "uvicorn_restart_median_s": median(restarted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="liveswap-tlsbench-"))
    try:
        folder, runtime = tmp / "tls", tmp / "run"
        folder.mkdir()
        runtime.mkdir(mode=0o700)
        issuer = Issuer()
        install(folder, *issuer.pair()[:2])
        print("throughput (wrk -t1 -c16, keep-alive GET):", flush=True)
        tput = throughput(folder, runtime, args.rounds, args.duration)
        print("certificate change -> new certificate served:", flush=True)
        change = change_latency(folder, runtime, issuer, args.changes, args.restarts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = tput["median_rps"]
    print("\nsummary")
    for t in TARGETS:
        cpu = tput["median_cpu_us_per_request"][t]
        print(f"  {t:15s} median {med[t]:9.0f} req/s  {cpu:6.1f} us CPU/request  failures {tput['failures'][t]}")
    print(f"  HTTPS liveswap/uvicorn: {tput['ratio_https_liveswap_to_uvicorn']:.2f}x")
    print(f"  HTTP  liveswap/uvicorn: {tput['ratio_http_liveswap_to_uvicorn']:.2f}x")
    print(f"  HTTPS CPU per request, liveswap/uvicorn: {tput['cpu_ratio_https_liveswap_to_uvicorn']:.2f}x")
    print(f"  TLS costs liveswap {tput['tls_cost_liveswap']:.0%}, uvicorn {tput['tls_cost_uvicorn']:.0%} of throughput")
    print(
        f"  certificate change -> served: --watch-certs {change['watch_certs_median_s'] * 1000:.0f} ms median "
        f"({len(change['watch_certs_s'])} changes; the reload itself {change['reload_median_s'] * 1000:.0f} ms); "
        f"a uvicorn restart {change['uvicorn_restart_median_s'] * 1000:.0f} ms"
    )
    path = write_results(
        "tls",
        {"machine": machine_info(), "args": vars(args), "throughput": tput, "certificate_change": change},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
