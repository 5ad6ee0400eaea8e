# The authz service (and the demo's issuer and upstream, which run the same image).
#   docker build -t authz .
#   docker run --rm -v "$PWD/examples/policy.yaml:/policy/policy.yaml:ro" -p 9191:9191 \
#     authz serve /policy/policy.yaml --grpc 0.0.0.0:9191
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs, so edits to tests or docs do not rebuild the image.
COPY pyproject.toml README.md ./
COPY authz ./authz
RUN pip install . \
    # xds-protos ships an older opentelemetry/proto: put the real one back (OTLP export)
    && pip install --force-reinstall --no-deps opentelemetry-proto \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin authz \
    # The dev issuer's key directory (a named volume in docker-compose.yml takes its owner).
    && install -d -o authz -g authz -m 0700 /keys

WORKDIR /
USER 10001:10001
ENTRYPOINT ["authz"]
CMD ["--help"]
