#!/usr/bin/env bash
# Starts Kosh in the foreground on the embedded RocksDB store with examples/kosh.yaml (which
# applies examples/schema.yaml) and loads examples/data/*.json once the server is ready.
# Ctrl-C (SIGINT) or SIGTERM drains and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
KOSH=${KOSH:-build/src/cli/kosh}
export KOSH_DATA_DIR=${KOSH_DATA_DIR:-./data}
GRPC=${KOSH_GRPC_ADDRESS:-0.0.0.0:7070}
HTTP=${KOSH_HTTP_ADDRESS:-0.0.0.0:7080}
export KOSH_GRPC_ADDRESS=$GRPC KOSH_HTTP_ADDRESS=$HTTP

"$KOSH" serve --config examples/kosh.yaml &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid' INT TERM

http_port=${HTTP##*:}
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:${http_port}/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "run.sh: kosh exited during start-up" >&2; wait $pid; exit 1; fi
  sleep 0.1
done
for f in examples/data/*.json; do
  "$KOSH" put --server "127.0.0.1:${GRPC##*:}" --file "$f" >/dev/null
done
cat <<MSG

Kosh is serving the example data: gRPC on :${GRPC##*:}, HTTP on :${http_port}. Try:
  curl -s localhost:${http_port}/v1/features/retrieve -d '{"entity":"user","keys":[{"parts":["u1"]}],"features":["user_profile.*"]}'
  $KOSH get --entity user --key u1 --key u3 --features user_profile.age,user_profile.orders_30d --matrix
Ctrl-C stops it.
MSG
wait $pid
