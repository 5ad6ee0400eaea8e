"""What ``authz serve`` runs with: one frozen value, built by :mod:`authz.cli.serve`
and read by :mod:`authz.server` (one process) and :mod:`authz.supervisor` (workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.control.options import CONTROL_OFF, ControlOptions
from authz.telemetry.options import TELEMETRY_OFF, TelemetryOptions
from authz.transport.http_wire import HttpLimits
from authz.transport.tls import TlsFiles


@dataclass(frozen=True, slots=True)
class ServeOptions:
    policy: str
    grpc: str | None = "0.0.0.0:9191"  # None: no gRPC transport
    http: str | None = None  # HOST:PORT of the HTTP ext_authz transport
    # the HTTP transport's bounds, timeouts and connection cap
    http_limits: HttpLimits = field(default_factory=HttpLimits)
    http_secret_file: str | None = None  # checks must carry this file's secret
    http_trust_network: bool = False  # no secret, yet bind beyond loopback
    workers: int = 1
    decision_log: str = "-"  # "-" stdout, "off", or a file path
    reload_interval: float = 1.0  # seconds between policy file checks; 0 disables
    #: A changed policy is loaded once two reads this many seconds apart agree.
    reload_settle: float = 0.5
    ready_timeout: float = 10.0  # how long a reload waits for its providers
    policy_history: int = 5  # policy versions kept for rollbacks (authz.policy.history)
    drain_timeout: float = 10.0
    #: After SIGTERM, keep answering (health NOT_SERVING) until no call has arrived for
    #: authz.server.DRAIN_QUIET seconds or this long has passed; within drain_timeout.
    drain_delay: float = 1.0
    reuse_port: bool = False
    #: the control plane (authz.control); off unless given (the CLI's default is on)
    control: ControlOptions = CONTROL_OFF
    #: Envoy's gRPC access log (authz.transport.als_server): HOST:PORT, or None (off)
    access_log_grpc: str | None = None
    access_log_secret_file: str | None = None  # streams must carry this file's secret
    access_log_trust_network: bool = False  # no secret, yet bind beyond loopback
    #: --metrics and OpenTelemetry export (authz.telemetry)
    telemetry: TelemetryOptions = TELEMETRY_OFF
    #: TLS on the gRPC and HTTP transports (authz.transport.tls); None: plaintext
    tls: TlsFiles | None = None
