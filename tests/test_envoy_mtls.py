"""Downstream TLS and mTLS (SPIFFE) through a real Envoy, with real TLS clients.

Envoy runs the config ``authz envoy-config`` generates with ``--tls-cert/--tls-key/
--client-ca``; its authz cluster points at a recording ext_authz servicer (grpc.aio,
in a thread of this process) that answers OK, so the tests see exactly the
CheckRequest Envoy sends: the verified peer's SPIFFE ID in
``attributes.source.principal``, its URL-encoded PEM in ``attributes.source.certificate``,
and no client-sent ``x-forwarded-client-cert``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authz.envoyconf import EnvoyOptions, HostPort, TlsOptions, build_bootstrap, render_yaml
from authz.identity.mtls import read_svid
from authz.policy.config import PolicyConfig, RouteConfig
from tests.certs import EVIL, PROMETHEUS, CertFiles, MtlsPki, make_mtls_pki
from tests.test_envoy_config import envoy_binary, envoy_validate

POLICY = PolicyConfig(
    version="sha256:mtls-test",
    source="test.yaml",
    routes=(RouteConfig(name="probe", path="/probe/{id}", methods=("GET",)),),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- authz stub


class _Recorder(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[external_auth_pb2.CheckRequest] = []
        self.lock = threading.Lock()

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        with self.lock:
            self.requests.append(request)
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))


class RecordingAuthz:
    """A grpc.aio ext_authz server (Check answers OK) plus health, on its own loop/thread."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.recorder = _Recorder()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None

    def start(self) -> RecordingAuthz:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self.recorder, self._server)
        health_servicer = health.aio.HealthServicer()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def check_for(self, path: str) -> external_auth_pb2.CheckRequest | None:
        with self.recorder.lock:
            found = [r for r in self.recorder.requests if r.attributes.request.http.path == path]
        assert len(found) <= 1, found
        return found[0] if found else None


# ----------------------------------------------------------------------------- upstream


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ----------------------------------------------------------------------------- Envoy


class RunningEnvoy:
    def __init__(self, listen: int, admin: int, config: Path) -> None:
        self.listen, self.admin, self.config = listen, admin, config

    def admin_get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def stat(self, name: str) -> int:
        """A listener counter, e.g. ``ssl.fail_verify_no_cert``."""
        key = f"listener.127.0.0.1_{self.listen}.{name}"
        for line in self.admin_get(f"/stats?filter=^{key}$").splitlines():
            stat, _, value = line.partition(": ")
            if stat == key:
                return int(value)
        return 0


@contextlib.contextmanager
def running_envoy(
    tls: TlsOptions, authz: RecordingAuthz, upstream_port: int, workdir: Path
) -> Iterator[RunningEnvoy]:
    workdir.mkdir(parents=True, exist_ok=True)
    listen, admin = _free_port(), _free_port()
    options = EnvoyOptions(
        listen=HostPort("127.0.0.1", listen),
        upstream=HostPort("127.0.0.1", upstream_port),
        authz=HostPort("127.0.0.1", authz.port),
        admin=HostPort("127.0.0.1", admin),
        timeout=2.0,
        tls=tls,
    )
    config = workdir / "envoy.yaml"
    config.write_text(render_yaml(build_bootstrap(POLICY, options)))
    log_path = workdir / "envoy.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
         "--log-level", "warn", "--disable-hot-restart"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    envoy = RunningEnvoy(listen, admin, config)
    try:
        healthy = f"authz::127.0.0.1:{authz.port}::health_flags::healthy"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(OSError):
                if healthy in envoy.admin_get("/clusters"):
                    break
            assert time.monotonic() < deadline, "envoy not ready:\n" + log_path.read_text()
            time.sleep(0.1)
        yield envoy
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MtlsPki:
    return make_mtls_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def authz() -> Iterator[RecordingAuthz]:
    server = RecordingAuthz().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def mtls_envoy(
    pki: MtlsPki,
    authz: RecordingAuthz,
    upstream_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningEnvoy]:
    tls = TlsOptions(pki.server.cert, pki.server.key, client_ca=pki.ca.cert)
    assert tls.require_client_cert is True
    with running_envoy(
        tls, authz, upstream_port, tmp_path_factory.mktemp("envoy-required")
    ) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def optional_envoy(
    pki: MtlsPki,
    authz: RecordingAuthz,
    upstream_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningEnvoy]:
    tls = TlsOptions(
        pki.server.cert, pki.server.key, client_ca=pki.ca.cert, require_client_cert=False
    )
    with running_envoy(
        tls, authz, upstream_port, tmp_path_factory.mktemp("envoy-optional")
    ) as envoy:
        yield envoy


# ----------------------------------------------------------------------------- clients


def client_context(
    pki: MtlsPki, cert: CertFiles | None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client that verifies Envoy against the test CA and presents ``cert``, if any."""
    ctx = ssl.create_default_context(cafile=pki.ca.cert)
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def get(
    envoy: RunningEnvoy, ctx: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[str, int, dict[str, Any]]:
    """GET a fresh /probe/<id> over TLS; (path, status, what the upstream saw)."""
    path = f"/probe/{uuid.uuid4().hex}"
    conn = http.client.HTTPSConnection("127.0.0.1", envoy.listen, context=ctx, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    echoed: dict[str, Any] = json.loads(body) if resp.status == 200 else {}
    return path, resp.status, echoed


def refused(envoy: RunningEnvoy, ctx: ssl.SSLContext) -> ssl.SSLError:
    """Open a TLS connection that Envoy must refuse; the SSLError (the alert) the client got.

    TLS 1.2 fails in the handshake. With TLS 1.3 the client's side of the handshake
    completes before the server has checked the client's certificate, so the server's
    alert arrives on the first read (nothing is written: the refusal must not depend
    on a request).
    """
    with socket.create_connection(("127.0.0.1", envoy.listen), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                data = tls.recv(1)
        except ssl.SSLError as exc:
            return exc
    raise AssertionError(f"the TLS connection was not refused (read {data!r})")


def wait_for_stat(envoy: RunningEnvoy, name: str, at_least: int) -> int:
    deadline = time.monotonic() + 5
    while (value := envoy.stat(name)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


# ----------------------------------------------------------------------------- tests


def test_envoy_validates_the_tls_configs(pki: MtlsPki, tmp_path: Path) -> None:
    variants = {
        "required": TlsOptions(pki.server.cert, pki.server.key, client_ca=pki.ca.cert),
        "optional": TlsOptions(
            pki.server.cert, pki.server.key, client_ca=pki.ca.cert, require_client_cert=False
        ),
        "server-only": TlsOptions(pki.server.cert, pki.server.key),
    }
    for name, tls in variants.items():
        out = tmp_path / f"{name}.yaml"
        out.write_text(render_yaml(build_bootstrap(POLICY, EnvoyOptions(tls=tls))))
        envoy_validate(out)


@pytest.mark.parametrize("spiffe_id", [PROMETHEUS, EVIL])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_verified_spiffe_id_reaches_the_check_request(
    mtls_envoy: RunningEnvoy,
    authz: RecordingAuthz,
    pki: MtlsPki,
    spiffe_id: str,
    version: ssl.TLSVersion,
) -> None:
    client = pki.clients[spiffe_id]
    path, status, echoed = get(mtls_envoy, client_context(pki, client, max_version=version))
    assert status == 200
    check = authz.check_for(path)
    assert check is not None
    source = check.attributes.source
    # Envoy's own verification decides the principal; the policy decides what it may do
    # (evil.example is verified here too: same CA, and Envoy does no SAN matching).
    assert source.principal == spiffe_id
    certificate = source.certificate
    assert "\n" not in certificate and "%0A" in certificate  # URL-encoded
    assert unquote(certificate) == client.pem
    assert read_svid(certificate).spiffe_id == spiffe_id  # what the service reads
    assert check.attributes.request.http.scheme == "https"
    assert "x-forwarded-client-cert" not in echoed["headers"]


def test_client_without_certificate_is_refused_in_the_handshake(
    mtls_envoy: RunningEnvoy, authz: RecordingAuthz, pki: MtlsPki
) -> None:
    before = mtls_envoy.stat("ssl.fail_verify_no_cert")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        error = refused(mtls_envoy, client_context(pki, None, max_version=version))
        assert error.reason in {
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",  # TLS 1.3
            "SSLV3_ALERT_HANDSHAKE_FAILURE",  # TLS 1.2
        }, error
    assert wait_for_stat(mtls_envoy, "ssl.fail_verify_no_cert", before + 2) == before + 2


def test_certificate_from_another_ca_is_refused(
    mtls_envoy: RunningEnvoy, authz: RecordingAuthz, pki: MtlsPki
) -> None:
    before = mtls_envoy.stat("ssl.fail_verify_error")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki, pki.stranger, max_version=version)
        error = refused(mtls_envoy, ctx)
        assert error.reason == "TLSV1_ALERT_UNKNOWN_CA", error
    assert wait_for_stat(mtls_envoy, "ssl.fail_verify_error", before + 2) == before + 2


def test_client_sent_xfcc_is_not_passed_on(
    mtls_envoy: RunningEnvoy, authz: RecordingAuthz, pki: MtlsPki
) -> None:
    forged = f"By=spiffe://demo.local/ns/orders/sa/api;URI={PROMETHEUS}"
    ctx = client_context(pki, pki.clients[EVIL])
    path, status, echoed = get(mtls_envoy, ctx, {"X-Forwarded-Client-Cert": forged})
    assert status == 200
    check = authz.check_for(path)
    assert check is not None
    headers = dict(check.attributes.request.http.headers)
    assert "x-forwarded-client-cert" not in headers, headers
    assert forged not in headers.values()
    assert check.attributes.source.principal == EVIL  # the verified one, not the forged one
    assert "x-forwarded-client-cert" not in {k.lower() for k in echoed["headers"]}


def test_alpn_offers_http2(mtls_envoy: RunningEnvoy, pki: MtlsPki) -> None:
    ctx = client_context(pki, pki.clients[PROMETHEUS])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", mtls_envoy.listen), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused(mtls_envoy: RunningEnvoy, pki: MtlsPki) -> None:
    ctx = client_context(pki, pki.clients[PROMETHEUS], max_version=ssl.TLSVersion.TLSv1_1)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    # Envoy's refusal (an alert from the server), not the client's own
    assert refused(mtls_envoy, ctx).reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_optional_client_certificate(
    optional_envoy: RunningEnvoy, authz: RecordingAuthz, pki: MtlsPki
) -> None:
    # no certificate: through, with no peer identity for the policy to find
    path, status, _ = get(optional_envoy, client_context(pki, None))
    assert status == 200
    check = authz.check_for(path)
    assert check is not None
    assert check.attributes.source.principal == ""
    assert check.attributes.source.certificate == ""
    # a certificate that verifies: its SPIFFE ID
    path, status, _ = get(optional_envoy, client_context(pki, pki.clients[PROMETHEUS]))
    assert status == 200
    check = authz.check_for(path)
    assert check is not None
    assert check.attributes.source.principal == PROMETHEUS
    # a certificate that does not verify is still refused
    before = optional_envoy.stat("ssl.fail_verify_error")
    error = refused(optional_envoy, client_context(pki, pki.stranger))
    assert error.reason == "TLSV1_ALERT_UNKNOWN_CA", error
    assert wait_for_stat(optional_envoy, "ssl.fail_verify_error", before + 1) == before + 1


def test_tls_without_client_ca_asks_for_no_certificate(
    pki: MtlsPki, authz: RecordingAuthz, upstream_port: int, tmp_path: Path
) -> None:
    tls = TlsOptions(pki.server.cert, pki.server.key)
    assert tls.require_client_cert is False
    with running_envoy(tls, authz, upstream_port, tmp_path) as envoy:
        # A client certificate on offer is not requested, so never reaches the service
        # as an identity (not even the one from the untrusted CA).
        for cert in (None, pki.clients[PROMETHEUS], pki.stranger):
            path, status, _ = get(envoy, client_context(pki, cert))
            assert status == 200
            check = authz.check_for(path)
            assert check is not None
            assert check.attributes.source.principal == ""
            assert check.attributes.source.certificate == ""
        # and plaintext HTTP on the TLS port gets nowhere
        conn = http.client.HTTPConnection("127.0.0.1", envoy.listen, timeout=5)
        try:
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                conn.request("GET", "/probe/plain")
                conn.getresponse()
        finally:
            conn.close()
        assert authz.check_for("/probe/plain") is None
