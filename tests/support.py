"""Helpers for the integration and end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from authz.demo.stack import free_port, grpc_serving


class ServiceProcess:
    """`authz serve` as a child process on a free port."""

    def __init__(self, policy: Path, log_dir: Path, *extra: str) -> None:
        self.policy = policy
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        #: the control plane (unless ``extra`` names one); its token lives in ``runtime``
        self.control = f"127.0.0.1:{free_port()}"
        self.runtime = log_dir / "run"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "AUTHZ_RUNTIME_DIR": str(self.runtime)}
        control = [] if "--control" in extra else ["--control", self.control]
        self.decision_log = log_dir / f"decisions-{self.port}.log"
        self.stderr_path = log_dir / f"serve-{self.port}.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "authz",
                "serve",
                str(policy),
                "--grpc",
                self.address,
                "--decision-log",
                str(self.decision_log),
                "--reload-interval",
                "0.2",
                *control,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=self.env,
        )

    def wait_serving(self, timeout: float = 20.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"authz serve exited {self.proc.returncode}: {self.log()}")
            try:
                if grpc_serving(self.address, timeout=0.5):
                    return self
            except Exception:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"authz serve not SERVING: {self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._stderr.close()


def jwt_policy(issuer_url: str, extra_routes: str = "", **provider: str) -> str:
    """A policy with one JWT provider (discovery from issuer_url) and a few routes."""
    settings = "".join(f"    {k}: {v}\n" for k, v in provider.items())
    return f"""\
mode: enforce
realm: orders
providers:
  dev:
    type: jwt
    issuer: {issuer_url}
    audiences: [orders]
    algorithms: [ES256]
{settings}routes:
  - {{name: health, path: /healthz, methods: [GET], public: true}}
  - {{name: get-order, path: "/v1/orders/{{id}}", methods: [GET], providers: [dev], scopes: [orders:read]}}
  - {{name: create-order, path: /v1/orders, methods: [POST], providers: [dev], scopes: [orders:write]}}
{extra_routes}"""


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")
