# The authz service (and the demo's issuer and upstream, which run the same image).
#   docker build -t authz .
#   docker run --rm --read-only --tmpfs /tmp \
#     -v "$PWD/examples/policy.yaml:/policy/policy.yaml:ro" -p 9191:9191 \
#     authz serve /policy/policy.yaml --grpc 0.0.0.0:9191
# Runs as uid 10001 with a read-only root filesystem: it writes only to $TMPDIR
# (/tmp: the supervisor's worker sockets) and $XDG_RUNTIME_DIR (a loopback control
# plane's token), so mount a tmpfs or emptyDir there (deploy/kubernetes does).

# python:3.11-slim, pinned by digest (the multi-arch index). Update both together:
#   docker buildx imagetools inspect python:3.11-slim   (the "Digest:" line)
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# -- build: the package and its runtime dependencies into a venv ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package needs, so edits to tests or docs do not rebuild the image.
COPY pyproject.toml README.md ./
COPY authz ./authz
# `.`, not `.[test]`: runtime dependencies only
RUN python -m venv /opt/authz \
    && /opt/authz/bin/pip install . \
    # xds-protos ships an older opentelemetry/proto: put the real one back (OTLP export)
    && /opt/authz/bin/pip install --force-reinstall --no-deps opentelemetry-proto \
    # the installer is not needed at run time
    && /opt/authz/bin/pip uninstall -y pip

# -- run: the venv on the same base, nothing else -----------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/authz/bin:$PATH
COPY --from=build /opt/authz /opt/authz
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin authz \
    # The dev issuer's key directory (a named volume in docker-compose.yml takes its owner).
    && install -d -o authz -g authz -m 0700 /keys
WORKDIR /
USER 10001:10001
EXPOSE 9191 9192 9193
# grpc.health.v1 Check of the whole server on the default --grpc port (what Envoy and
# the Kubernetes gRPC probes ask): SERVING once the policy and its keys are loaded.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=10 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:9191')).Check(h.HealthCheckRequest(), timeout=2); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["authz"]
CMD ["--help"]
