"""The benchmark: Envoy alone, Envoy's native filters, Envoy -> authz (gRPC, HTTP),
and the service alone beside the framework floor, side by side in one run.

    bash bench/setup.sh                 # wrk, h2load (Debian), the bench extra
    .venv/bin/python bench/run.py       # ~6 minutes; writes bench/results/benchmark.{md,json}

Scenarios (all on 127.0.0.1; Envoy with one worker thread, answering with a
direct response so no upstream process is measured):

- A  envoy-direct   Envoy alone: the ceiling.
- B  envoy-native   Envoy with jwt_authn (same key, issuer, audience; verified-token
                    cache) + RBAC on the token's ``scope`` (orders:read) +
                    local_ratelimit (a bucket that never runs dry): the native reference.
- C  envoy-grpc     Envoy -> ``authz serve --grpc`` (the config ``authz envoy-config``
                    generates), the example policy, a cached token, a scope check.
- D  envoy-http     The same over the HTTP transport (``--transport http``, ``--http``).
- E  grpc-bare / grpc-engine: the service alone driven by h2load over gRPC: a
                    servicer that answers OK beside ``authz serve``, same load.
- F  http-bare / http-engine: the same over HTTP with wrk: a raw httptools
                    responder that answers 200 beside ``authz serve --http``.
- W  grpc-engine-2w / http-engine-2w: E and F with ``--workers 2``.

For each: requests/s, latency p50/p99/p99.9, and CPU time per request of the
service's processes (all workers) and of Envoy, from /proc. Each scenario runs
``--runs`` times; the tables show medians and ratios to A and B.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fixtures
from bench.common import (
    RESULTS,
    CpuMeter,
    Load,
    Proc,
    free_port,
    grpc_frame,
    h2load,
    http_ok,
    machine,
    median,
    need,
    running,
    wait_until,
    wrk,
)

SCENARIOS = {
    "A": "envoy-direct",
    "B": "envoy-native",
    "C": "envoy-grpc",
    "D": "envoy-http",
    "E1": "grpc-bare",
    "E2": "grpc-engine",
    "F1": "http-bare",
    "F2": "http-engine",
    "W1": "grpc-engine-2w",
    "W2": "http-engine-2w",
}
DESCRIPTIONS = {
    "A": "Envoy alone, direct response",
    "B": "Envoy + jwt_authn + RBAC scope + local_ratelimit",
    "C": "Envoy -> authz over gRPC",
    "D": "Envoy -> authz over HTTP",
    "E1": "gRPC servicer that returns OK (h2load)",
    "E2": "authz serve --grpc (h2load)",
    "F1": "raw HTTP responder that returns 200 (wrk)",
    "F2": "authz serve --http (wrk)",
    "W1": "authz serve --grpc --workers 2 (h2load)",
    "W2": "authz serve --http --workers 2 (wrk)",
}


@dataclass
class Settings:
    duration: float
    runs: int
    warmup: float
    connections: int  # wrk
    h2_clients: int
    h2_streams: int
    work: Path


# ----------------------------------------------------------------------------- Envoy configs


def _direct_route() -> dict[str, Any]:
    return {"status": 200, "body": {"inline_string": "ok"}}


def envoy_bootstrap(
    listen: int, admin: int, filters: list[dict[str, Any]], clusters: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """A minimal Envoy: one listener, one route answered directly, ``filters`` first."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "any",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": _direct_route()}],
                }
            ],
        },
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": list(clusters),
        },
    }


def native_filters(fx: fixtures.Fixture) -> list[dict[str, Any]]:
    """jwt_authn + RBAC on the scope claim + local_ratelimit: the policy's get-order
    route as far as Envoy's own filters can say it."""
    jwt = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "dev": {
                "issuer": fixtures.ISSUER,
                "audiences": [fixtures.AUDIENCE],
                "local_jwks": {"inline_string": fx.jwks_json},
                "forward": True,
                "payload_in_metadata": "jwt_payload",
                "jwt_cache_config": {"jwt_cache_size": 10000},
            }
        },
        "rules": [{"match": {"prefix": "/v1/orders"}, "requires": {"provider_name": "dev"}}],
    }
    rbac = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "orders-read": {
                    "permissions": [{"any": True}],
                    "principals": [
                        {
                            "metadata": {
                                "filter": "envoy.filters.http.jwt_authn",
                                "path": [{"key": "jwt_payload"}, {"key": "scope"}],
                                "value": {
                                    "string_match": {
                                        "safe_regex": {"regex": "(.* )?orders:read( .*)?"}
                                    }
                                },
                            }
                        }
                    ],
                }
            },
        },
    }
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    ratelimit = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http."
        "local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rl",
        "token_bucket": {
            "max_tokens": 10_000_000,
            "tokens_per_fill": 10_000_000,
            "fill_interval": "1s",
        },
        "filter_enabled": {"runtime_key": "rl_enabled", "default_value": percent},
        "filter_enforced": {"runtime_key": "rl_enforced", "default_value": percent},
    }
    return [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt},
        {"name": "envoy.filters.http.rbac", "typed_config": rbac},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": ratelimit},
    ]


def authz_envoy(fx: fixtures.Fixture, listen: int, admin: int, authz: int, transport: str) -> Any:
    """The config ``authz envoy-config`` generates, every route answered directly
    (no upstream to measure) and without the access log (A and B have none)."""
    from authz.envoyconf import EnvoyOptions, HostPort, build_bootstrap
    from authz.policy.loader import load_policy

    options = EnvoyOptions(
        listen=HostPort("127.0.0.1", listen),
        upstream=HostPort("127.0.0.1", 9),
        authz=HostPort("127.0.0.1", authz),
        admin=HostPort("127.0.0.1", admin),
        timeout=2.0,
        transport=transport,
    )
    config = copy.deepcopy(build_bootstrap(load_policy(fx.policy), options))
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                hcm.pop("access_log", None)
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    for route in vhost["routes"]:
                        route.pop("route", None)
                        route["direct_response"] = _direct_route()
    return config


# ----------------------------------------------------------------------------- processes


def envoy_proc(config: dict[str, Any], name: str, s: Settings, admin: int) -> Proc:
    path = s.work / f"{name}.envoy.json"
    path.write_text(json.dumps(config))
    return Proc(
        f"envoy-{name}",
        [
            need("envoy"),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--base-id",
            str(admin),
        ],
        s.work / f"{name}.envoy.log",
    )


def authz_proc(
    fx: fixtures.Fixture, name: str, s: Settings, *, grpc: int = 0, http: int = 0, workers: int = 1
) -> Proc:
    argv = [sys.executable, "-m", "authz", "serve", str(fx.policy)]
    if grpc:
        argv += ["--grpc", f"127.0.0.1:{grpc}"]
    if http:
        argv += ["--http", f"127.0.0.1:{http}"]
    argv += [
        "--workers",
        str(workers),
        "--decision-log",
        str(s.work / f"{name}.decisions.log"),
        "--reload-interval",
        "0",
        "--log-level",
        "warning",
        "--control",
        "off",  # the data plane alone (the control plane costs nothing per request)
    ]
    return Proc(f"authz-{name}", argv, s.work / f"{name}.authz.log")


def grpc_ready(port: int) -> bool:
    from authz.demo.stack import grpc_serving

    return grpc_serving(f"127.0.0.1:{port}")


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Setup:
    """What a scenario starts and how it is driven."""

    procs: list[Proc]
    ready: list[tuple[str, Callable[[], bool], Proc]]
    drive: Callable[[float], Load]
    service: list[Proc]  # whose CPU counts as "the service"
    envoy: Proc | None
    check: Callable[[], None] | None = None


def _wrk_driver(url: str, s: Settings, headers: dict[str, str]) -> Callable[[float], Load]:
    return lambda d: wrk(url, duration=d, connections=s.connections, headers=headers)


def _h2_driver(port: int, s: Settings, body: bytes, clients: int) -> Callable[[float], Load]:
    url = f"http://127.0.0.1:{port}/envoy.service.auth.v3.Authorization/Check"
    return lambda d: h2load(url, body=body, duration=d, clients=clients, streams=s.h2_streams)


def _expect(url: str, headers: dict[str, str], status: int) -> Callable[[], None]:
    def check() -> None:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as reply:
                got = reply.status
        except urllib.error.HTTPError as err:
            got = err.code
        if got != status:
            raise RuntimeError(f"{url}: expected {status}, got {got}")

    return check


def check_request_body(fx: fixtures.Fixture) -> bytes:
    from authz.transport.envoy_grpc import build_check_request

    message = build_check_request(
        method="GET",
        path=fixtures.PATH,
        host=fixtures.HOST,
        headers={
            "authorization": f"Bearer {fx.token}",
            "user-agent": "wrk",
            "x-forwarded-proto": "http",
            "x-request-id": "5b0c3c5e-9f0e-4b39-8d7b-1f3a8c1d2e4f",
            ":authority": fixtures.HOST,
            ":method": "GET",
            ":path": fixtures.PATH,
        },
        request_id="5b0c3c5e-9f0e-4b39-8d7b-1f3a8c1d2e4f",
    )
    return grpc_frame(message.SerializeToString())


def setup(key: str, fx: fixtures.Fixture, s: Settings) -> Setup:
    bearer = {"authorization": f"Bearer {fx.token}", "host": fixtures.HOST}
    name = SCENARIOS[key]
    if key in ("A", "B", "C", "D"):
        listen, admin = free_port(), free_port()
        url = f"http://127.0.0.1:{listen}{fixtures.PATH}"
        ready_url = f"http://127.0.0.1:{admin}/ready"
        service: list[Proc] = []
        if key == "A":
            config = envoy_bootstrap(listen, admin, [])
        elif key == "B":
            config = envoy_bootstrap(listen, admin, native_filters(fx))
        else:
            port = free_port()
            transport = "grpc" if key == "C" else "http"
            config = authz_envoy(fx, listen, admin, port, transport)
            svc = authz_proc(fx, name, s, **{transport: port})  # type: ignore[arg-type]
            service.append(svc)
        envoy = envoy_proc(config, name, s, admin)
        ready = [(f"{name} envoy", lambda: http_ok(ready_url), envoy)]
        if service:
            svc = service[0]
            probe: Callable[[], bool] = (
                (lambda: grpc_ready(port)) if key == "C" else
                (lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
            )  # fmt: skip
            ready.insert(0, (f"{name} authz", probe, svc))

        def check() -> None:
            _expect(url, bearer, 200)()
            if key != "A":  # the policy is enforced: no token, no entry
                _expect(url, {"host": fixtures.HOST}, 401)()

        return Setup(
            procs=[*service, envoy],
            ready=ready,
            drive=_wrk_driver(url, s, bearer),
            service=service or [envoy],
            envoy=envoy,
            check=check,
        )
    port = free_port()
    workers = 2 if key.startswith("W") else 1
    if key in ("E1", "E2", "W1"):
        body = check_request_body(fx)
        if key == "E1":
            svc = Proc(
                name,
                [sys.executable, str(Path(__file__).with_name("bare_servicer.py")), str(port)],
                s.work / f"{name}.log",
            )
        else:
            svc = authz_proc(fx, name, s, grpc=port, workers=workers)
        clients = s.h2_clients * workers
        return Setup(
            procs=[svc],
            ready=[(name, lambda: grpc_ready(port), svc)],
            drive=_h2_driver(port, s, body, clients),
            service=[svc],
            envoy=None,
        )
    if key == "F1":
        from bench import http_stacks

        svc = Proc(
            name,
            [sys.executable, http_stacks.__file__, "serve", "httptools-uvloop", str(port)],
            s.work / f"{name}.log",
        )
        url = f"http://127.0.0.1:{port}/check{fixtures.PATH}"
        ready_probe: Callable[[], bool] = lambda: http_ok(url)  # noqa: E731
    else:
        svc = authz_proc(fx, name, s, http=port, workers=workers)
        url = f"http://127.0.0.1:{port}/check{fixtures.PATH}"
        ready_probe = lambda: http_ok(f"http://127.0.0.1:{port}/healthz")  # noqa: E731
    return Setup(
        procs=[svc],
        ready=[(name, ready_probe, svc)],
        drive=_wrk_driver(url, s, bearer),
        service=[svc],
        envoy=None,
        check=_expect(url, bearer, 200) if key != "F1" else None,
    )


def run_scenario(key: str, fx: fixtures.Fixture, s: Settings) -> dict[str, Any]:
    st = setup(key, fx, s)
    samples = []
    with running(*st.procs):
        for what, probe, proc in st.ready:
            wait_until(what, probe, 30, proc)
        if st.check is not None:
            st.check()
        if key.startswith("W"):
            time.sleep(2)  # both workers up (health answers once one is)
        if s.warmup > 0:
            st.drive(s.warmup)
        for _ in range(s.runs):
            service = CpuMeter([p.pid for p in st.service])
            envoy = CpuMeter([st.envoy.pid]) if st.envoy is not None else None
            service.start()
            if envoy is not None:
                envoy.start()
            load = st.drive(s.duration)
            cpu = service.stop()
            envoy_cpu = envoy.stop() if envoy is not None else 0.0
            n = max(1, load.requests)
            samples.append(
                {
                    "rps": load.rps,
                    "requests": load.requests,
                    "errors": load.errors,
                    "p50_us": load.p50_us,
                    "p99_us": load.p99_us,
                    "p999_us": load.p999_us,
                    "service_cpu_us": cpu / n * 1e6,
                    "envoy_cpu_us": envoy_cpu / n * 1e6,
                }
            )
    row: dict[str, Any] = {
        "key": key,
        "scenario": SCENARIOS[key],
        "what": DESCRIPTIONS[key],
        "runs": samples,
    }
    for field in ("rps", "p50_us", "p99_us", "p999_us", "service_cpu_us", "envoy_cpu_us"):
        row[field] = median(x[field] for x in samples)
    row["errors"] = sum(x["errors"] for x in samples)
    return row


# ----------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    a = rows.get("A", {}).get("rps", 0.0)
    b = rows.get("B", {}).get("rps", 0.0)
    out = [
        "# authz benchmark",
        "",
        f"Measured {meta['date']} with `{meta['command']}`.",
        f"{meta['runs']} runs of {meta['duration']:g} s per scenario (after a "
        f"{meta['warmup']:g} s warm-up); medians. wrk: 1 thread, {meta['connections']} "
        f"connections; h2load: {meta['h2_clients']} connection(s) x {meta['h2_streams']} "
        "streams per worker. Envoy: 1 worker thread, direct response.",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory']}; Linux "
        f"{meta['kernel']}, Python {meta['python']}, Envoy {meta['envoy']}. "
        f"Load average at start {meta['loadavg_at_start'][0]:.2f}, at end "
        f"{meta['loadavg_at_end'][0]:.2f} (the machine is shared; the load generator, "
        "Envoy and the service share its cores, so compare ratios from one run).",
        "",
        "| | scenario | req/s | p50 ms | p99 ms | p99.9 ms | service CPU µs/req | "
        "Envoy CPU µs/req | vs A | vs B | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, row in rows.items():
        service_cpu = f"{row['service_cpu_us']:.1f}" if key not in ("A", "B") else "-"
        envoy_cpu = f"{row['envoy_cpu_us']:.1f}" if row["envoy_cpu_us"] else "-"
        via_envoy = key in ("A", "B", "C", "D")
        out.append(
            f"| {key} | {row['what']} | {row['rps']:,.0f} | {row['p50_us'] / 1000:.2f} | "
            f"{row['p99_us'] / 1000:.2f} | {row['p999_us'] / 1000:.2f} | {service_cpu} | "
            f"{envoy_cpu} | {_ratio(row['rps'], a) if via_envoy else '-'} | "
            f"{_ratio(row['rps'], b) if via_envoy else '-'} | {row['errors']} |"
        )
    out += ["", "## Targets", ""]
    out += targets(rows)
    out += [
        "",
        "Service CPU is user + system time of every process of the service (all workers,",
        "all threads, the decision-log writer included) per request served, read from",
        "/proc/PID/stat before and after each run. Envoy's is its own. The load generator's",
        "CPU is not counted anywhere but competes for the same two cores.",
        "",
    ]
    return "\n".join(out)


def targets(rows: dict[str, dict[str, Any]]) -> list[str]:
    def get(key: str, field: str) -> float:
        return float(rows.get(key, {}).get(field, 0.0))

    lines = []
    bare, engine = get("E1", "service_cpu_us"), get("E2", "service_cpu_us")
    if bare and engine:
        extra = (engine - bare) / bare * 100
        lines.append(
            f"- Engine cost over the bare gRPC servicer (E2 vs E1, CPU per call): "
            f"{engine:.0f} vs {bare:.0f} µs, +{extra:.0f}% (target: within 10%) — "
            f"{'met' if extra <= 10 else 'missed'}."
        )
    c, d = get("C", "rps"), get("D", "rps")
    if c and d:
        lines.append(
            f"- HTTP vs gRPC transport through Envoy (D/C req/s): {d / c:.2f}x "
            f"(target: at least 3x) — {'met' if d / c >= 3 else 'missed'}."
        )
    for key, limit, name in (("C", 300, "gRPC"), ("D", 50, "HTTP")):
        cpu = get(key, "service_cpu_us")
        if cpu:
            lines.append(
                f"- CPU per decision, {name} transport through Envoy ({key}): {cpu:.0f} µs "
                f"(target: under {limit} µs) — {'met' if cpu < limit else 'missed'}."
            )
    for key in ("E2", "F2"):
        cpu = get(key, "service_cpu_us")
        if cpu:
            lines.append(f"- CPU per decision, service alone ({key}): {cpu:.0f} µs.")
    b = get("B", "rps")
    if b:
        lines.append(
            f"- Through Envoy, relative to its native filters (B): C {c / b:.2f}, "
            f"D {d / b:.2f} of B's requests/s."
        )
    for one, two, name in (("E2", "W1", "gRPC"), ("F2", "W2", "HTTP")):
        if get(one, "rps") and get(two, "rps"):
            lines.append(
                f"- {name}, 2 workers vs 1 (service alone): "
                f"{get(two, 'rps') / get(one, 'rps'):.2f}x req/s "
                f"({get(one, 'rps'):,.0f} -> {get(two, 'rps'):,.0f})."
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the authz benchmark (see the module docstring)."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--h2-clients", type=int, default=2, help="h2load connections per worker")
    parser.add_argument("--h2-streams", type=int, default=32, help="h2load streams per connection")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario keys (default: all), e.g. A,C,D"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", default="benchmark", help="results file name (without suffix)")
    args = parser.parse_args(argv)
    for tool in ("wrk", "h2load", "envoy"):
        need(tool)
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(SCENARIOS)
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.runs < 1 or args.duration <= 0:
        parser.error("--runs must be >= 1 and --duration > 0")
    work = Path(tempfile.mkdtemp(prefix="authz-bench-"))
    settings = Settings(
        duration=args.duration,
        runs=args.runs,
        warmup=args.warmup,
        connections=args.connections,
        h2_clients=args.h2_clients,
        h2_streams=args.h2_streams,
        work=work,
    )
    fx = fixtures.make(work / "fixture")
    meta: dict[str, Any] = {
        **machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "duration": args.duration,
        "runs": args.runs,
        "warmup": args.warmup,
        "connections": args.connections,
        "h2_clients": args.h2_clients,
        "h2_streams": args.h2_streams,
        "event_loop": os.environ.get("AUTHZ_EVENT_LOOP", "uvloop"),
    }
    rows: dict[str, dict[str, Any]] = {}
    for key in keys:
        print(f"== {key} {SCENARIOS[key]}: {DESCRIPTIONS[key]}", flush=True)
        rows[key] = row = run_scenario(key, fx, settings)
        print(
            f"   {row['rps']:>10,.0f} req/s  p50 {row['p50_us'] / 1000:.2f} ms  "
            f"p99 {row['p99_us'] / 1000:.2f} ms  service {row['service_cpu_us']:.1f} µs/req  "
            f"envoy {row['envoy_cpu_us']:.1f} µs/req  errors {row['errors']}",
            flush=True,
        )
    meta["loadavg_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(
        json.dumps({"machine": meta, "results": list(rows.values())}, indent=2) + "\n"
    )
    text = report(rows, meta)
    (args.out / f"{args.name}.md").write_text(text)
    print()
    print(text)
    print(f"written to {args.out}/{args.name}.md and .json (work files in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
