"""Real Redis deployments for tests: a three-node Redis Cluster and a primary, a
replica and one Sentinel, started and stopped by the test (Debian's redis-server and
redis-cli; no persistence, in a temporary directory).

The Sentinel is quick on purpose (``down-after-milliseconds`` 500, a short
``failover-timeout``) so a test can kill the primary and see the replica promoted
within a few seconds.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.demo.stack import free_port
from tests.certs import MtlsPki
from tests.redis_server import RedisServer, redis_binary


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """One redis-cli command against 127.0.0.1:port; its output."""
    found = shutil.which("redis-cli")
    assert found, "no redis-cli (Debian's redis-tools)"
    done = subprocess.run(
        [found, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout + done.stderr


def wait_for(what: str, test: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout}s for {what}")


class ClusterNodeServer(RedisServer):
    def start(self, timeout: float = 10.0) -> ClusterNodeServer:
        self.extra = {
            "cluster-enabled": "yes",
            "cluster-config-file": str(self.workdir / f"nodes-{self.port}.conf"),
            "cluster-node-timeout": "1000",
            "cluster-port": str(free_port()),  # not port + 10000: free ports are high
        }
        super().start(timeout)
        return self


class RedisClusterTopology:
    """Three primaries, no replicas, every slot covered."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [ClusterNodeServer(workdir / f"node{i}") for i in range(3)]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def start(self) -> RedisClusterTopology:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *self.addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        for node in self.nodes:
            wait_for(
                f"cluster_state:ok on {node.port}",
                lambda n=node: "cluster_state:ok" in cli(n.port, "cluster", "info"),
            )
        return self

    def node_of(self, key: str) -> int:
        """The port of the node that holds ``key``'s slot."""
        for node in self.nodes:
            if "MOVED" not in cli(node.port, "get", key):
                return node.port
        raise AssertionError(f"no node holds {key!r}")

    def keys(self) -> dict[int, list[str]]:
        """Every node's keys (port -> keys)."""
        return {n.port: cli(n.port, "--scan").split() for n in self.nodes}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelTopology:
    """A primary, its replica and one Sentinel watching them (quorum 1); with
    ``sentinel_password`` the Sentinel itself asks its clients for it (``requirepass``
    in sentinel.conf)."""

    service = "mymaster"

    def __init__(
        self,
        workdir: Path,
        sentinel_password: str | None = None,
        sentinel_pki: MtlsPki | None = None,
    ) -> None:
        self.workdir = workdir
        self.sentinel_password = sentinel_password
        #: with a PKI the Sentinel speaks only TLS (its server certificate, clients'
        #: certificates signed by the CA); it still reaches the nodes in plain text
        self.sentinel_pki = sentinel_pki
        self.primary = RedisServer(workdir / "primary")
        self.replica = RedisServer(workdir / "replica")
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{self.sentinel_port}"]

    def start(self) -> SentinelTopology:
        self.primary.start()
        self.replica.extra = {"replicaof": f"127.0.0.1 {self.primary.port}"}
        self.replica.start()
        wait_for(
            "the replica in sync",
            lambda: "master_link_status:up" in cli(self.replica.port, "info", "replication"),
        )
        conf = self.workdir / "sentinel.conf"
        auth = f"requirepass {self.sentinel_password}\n" if self.sentinel_password else ""
        pki = self.sentinel_pki
        listen = (
            f"port 0\ntls-port {self.sentinel_port}\ntls-cert-file {pki.server.cert}\n"
            f"tls-key-file {pki.server.key}\ntls-ca-cert-file {pki.ca.cert}\n"
            "tls-auth-clients yes\n"
            if pki is not None
            else f"port {self.sentinel_port}\n"
        )
        conf.write_text(
            listen + "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 500\n"
            f"sentinel failover-timeout {self.service} 3000\n"
            f"sentinel parallel-syncs {self.service} 1\n" + auth
        )
        log = open(self.workdir / "sentinel.log", "ab")  # noqa: SIM115
        self.sentinel = subprocess.Popen(
            [redis_binary(), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(
            "the sentinel to see the replica",
            lambda: (
                str(self.replica.port) in self.ask_sentinel("sentinel", "replicas", self.service)
            ),
        )
        return self

    def ask_sentinel(self, *args: str) -> str:
        """One redis-cli command to the Sentinel (with its password, if it has one)."""
        auth = ("--no-auth-warning", "-a", self.sentinel_password) if self.sentinel_password else ()
        tls: tuple[str, ...] = ()
        if self.sentinel_pki is not None:
            client = next(iter(self.sentinel_pki.clients.values()))
            tls = ("--tls", "--cacert", self.sentinel_pki.ca.cert)
            tls += ("--cert", client.cert, "--key", client.key)
        return cli(self.sentinel_port, *tls, *auth, *args)

    def primary_port(self) -> int | None:
        """The port the Sentinel names as primary now."""
        out = self.ask_sentinel("sentinel", "get-master-addr-by-name", self.service)
        lines = out.split()
        return int(lines[1]) if len(lines) == 2 and lines[1].isdigit() else None

    def kill_primary(self) -> None:
        assert self.primary.proc is not None
        self.primary.proc.kill()
        self.primary.proc.wait()
        self.primary.proc = None

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            self.sentinel.wait(timeout=10)
        self.sentinel = None
        self.replica.stop()
        self.primary.stop()


@pytest.fixture()
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterTopology]:
    topology = RedisClusterTopology(tmp_path / "cluster")
    try:
        yield topology.start()
    finally:
        topology.stop()


@pytest.fixture()
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelTopology]:
    topology = SentinelTopology(tmp_path / "sentinel")
    try:
        yield topology.start()
    finally:
        topology.stop()


class TlsRedisServer(RedisServer):
    """A redis-server that speaks only TLS, asks for a client certificate signed by
    ``ca`` and a password (``requirepass``)."""

    def __init__(self, workdir: Path, pki: MtlsPki, password: str) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.password = password
        self.extra = {
            "port": "0",  # no plain-text port at all
            "tls-port": str(self.port),
            "tls-cert-file": pki.server.cert,
            "tls-key-file": pki.server.key,
            "tls-ca-cert-file": pki.ca.cert,
            "tls-auth-clients": "yes",
            "requirepass": password,
        }

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        context = ssl.create_default_context(cafile=self.pki.ca.cert)
        client = next(iter(self.pki.clients.values()))
        context.load_cert_chain(client.cert, client.key)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False
