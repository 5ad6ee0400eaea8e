# Sourced by scripts/demo and scripts/test: make .venv with the given extra installed.
# usage: ensure_venv EXTRA
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUTHZ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $*" >&2; return 1; fi
}

apt_install() {
  # install Debian packages that are missing (only when apt-get exists)
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { echo "please install: ${missing[*]}" >&2; return 1; }
  echo "== installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
  local extra="$1"
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      "$PY" -m venv "$VENV"
    fi
  fi
  echo "== installing authz[$extra] into $VENV"
  # (the grep hides this machine's pip warnings about absent local mirrors)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
    2> >(grep -v "is neither a file nor a directory" >&2) >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extra]" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  # xds-protos (Envoy's API, for the ext_authz messages) ships an older copy of
  # opentelemetry/proto: whichever of it and opentelemetry-proto pip installs last
  # wins. Put the real one back when the older copy won.
  if ! "$VENV/bin/python" -c \
    'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope' 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall \
      --no-deps opentelemetry-proto 2> >(grep -v "is neither a file nor a directory" >&2)
  fi
}
