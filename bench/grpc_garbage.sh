#!/bin/bash
# Garbage on the gRPC port, driven directly with h2load: how much log does a flood of
# messages that are not CheckRequests cost? Starts `authz serve` on a free loopback
# port, sends CALLS gRPC calls whose message is 64 bytes of 0xff, and prints the
# log volume (bytes, lines, tracebacks) the service wrote.
#
#   bash bench/grpc_garbage.sh [CALLS]                        # this checkout
#   PYTHONPATH=/path/to/other/checkout bash bench/grpc_garbage.sh   # another version
set -eu
CALLS=${1:-960}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
printf 'routes:\n  - {name: h, path: /h, methods: [GET], public: true}\n' > "$D/policy.yaml"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$D" && exec "$PY" -m authz serve --grpc "127.0.0.1:$PORT" --decision-log off policy.yaml) \
  > "$D/out.log" 2> "$D/err.log" &
PID=$!
for _ in $(seq 100); do
  "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
  sleep 0.1
done
sleep 0.3
# one gRPC frame: flag 0, 4-byte big-endian length, the message
"$PY" -c 'import struct, sys; m = b"\xff" * 64; sys.stdout.buffer.write(b"\0" + struct.pack(">I", len(m)) + m)' > "$D/frame"
h2load -n "$CALLS" -c 4 -m 8 -d "$D/frame" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://127.0.0.1:$PORT/envoy.service.auth.v3.Authorization/Check" > "$D/h2load.txt" 2>&1 || true
sleep 0.5
kill "$PID"; wait "$PID" 2>/dev/null || true
echo "h2load: $(grep -E '^requests:' "$D/h2load.txt")"
cat "$D/out.log" "$D/err.log" > "$D/all.log"
echo "log: $(wc -c < "$D/all.log") bytes, $(wc -l < "$D/all.log") lines, $(grep -c Traceback "$D/all.log" || true) tracebacks for $CALLS calls"
grep -m3 "CheckRequest" "$D/all.log" | cut -c1-200 || true
