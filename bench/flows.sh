#!/usr/bin/env bash
# bench/flows.sh: a flow (examples/flows/ranker.yaml: user features; product features; product ->
# category -> user x category; the user's click count in the last hour from the interaction store;
# a derived column; the built-in logistic scorer; sort) for one user and 100 products, against a
# client doing the same lookups itself as sequential calls to Kosh, in one run. Also reports the
# executor's own overhead (Infer time minus its slowest chain of lookups, from the server's
# per-component timings), the same flow through Rank (scores only, no matrix), and the overhead
# in-process without gRPC (flows_executor_bench).
#
#   bench/flows.sh [--iterations N] [--rows N] [--build-dir DIR] [--no-build] [--no-rank]
#
# Starts `kosh serve` on free loopback ports with examples/schema.yaml and the example flow, loads
# 1000 users, 10000 products in 50 categories, every (user, category) affinity and 0-19 recent
# clicks per user, then, holding /tmp/kosh-bench.lock so no other benchmark runs at the same time,
# runs bench/flows_load (closed loop, one client; load generator and server share the 2 cores; the
# flow and the client variants in alternating blocks of 200 requests), the flow again interleaved
# request by request with the client variant (--block 1: every flow request runs with CPU caches
# cold from ~150 client calls; `interleaved_*` in the JSON), and bench/flows_executor_bench.
# Last line: one JSON object (flows_load's, plus the interleaved and in-process figures).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ITER=2000
COLD_ITER=500
ROWS=100
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BUILD=1
RANK=yes
while [[ $# -gt 0 ]]; do
  case $1 in
    --iterations) ITER=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-rank) RANK=no; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
if [[ $BUILD == 1 ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja >/dev/null
  ninja -C "$BUILD_DIR" -j2 kosh flows_load flows_executor_bench >/dev/null
fi
KOSH=$BUILD_DIR/src/cli/kosh
LOAD=$BUILD_DIR/bench/flows_load
WORK=$(mktemp -d /tmp/kosh-bench-flows-XXXXXX)
cleanup() { [[ -n ${PID:-} ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cat >"$WORK/kosh.yaml" <<YAML
flows:
  files: [$ROOT/examples/flows/ranker.yaml]
interactions:
  event_type_files: [$ROOT/examples/event_types.yaml]
log:
  level: warn
YAML
"$KOSH" serve --config "$WORK/kosh.yaml" --schema "$ROOT/examples/schema.yaml" --data-dir "$WORK/data" \
  --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0 --port-file "$WORK/ports.json" >"$WORK/kosh.log" 2>&1 &
PID=$!
for _ in $(seq 1 200); do [[ -s $WORK/ports.json ]] && break; sleep 0.05; done
GRPC=$(sed -E 's/.*"grpc": ([0-9]+).*/\1/' "$WORK/ports.json")
echo "kosh $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') on 127.0.0.1:$GRPC; loading data" >&2
"$LOAD" --target "127.0.0.1:$GRPC" --iterations 1 --rows "$ROWS" >/dev/null
flock /tmp/kosh-bench.lock "$LOAD" --target "127.0.0.1:$GRPC" --load no --iterations "$ITER" --rows "$ROWS" --rank "$RANK" \
  | tee "$WORK/load.out" | sed '$d'
echo "the same, flow and client interleaved request by request (cold caches for every flow request):" >&2
flock /tmp/kosh-bench.lock "$LOAD" --target "127.0.0.1:$GRPC" --load no --iterations "$COLD_ITER" --rows "$ROWS" --rank no \
  --block 1 | tee "$WORK/cold.out" | sed '$d' | grep -E "^variant|^flow|^executor"
kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
PID=
echo "in-process executor (no gRPC, memory engine, one thread):" >&2
flock /tmp/kosh-bench.lock "$BUILD_DIR/bench/flows_executor_bench" --iterations $((ITER * 5)) --rows "$ROWS" \
  | tee "$WORK/inproc.out" | sed '$d'
# One JSON object: flows_load's, plus the in-process figures.
field() { sed -E "s/.*\"$1\": ([0-9.]+).*/\1/" <<<"$2"; }
LOAD_JSON=$(tail -1 "$WORK/load.out")
IN_JSON=$(tail -1 "$WORK/inproc.out")
COLD_JSON=$(tail -1 "$WORK/cold.out")
echo "${LOAD_JSON%\}}, \"interleaved_executor_overhead_us_p50\": $(field executor_overhead_us_p50 "$COLD_JSON"), \"interleaved_flow_p99_ms\": $(field flow_p99_ms "$COLD_JSON"), \"inprocess_overhead_us_p50\": $(field executor_overhead_us_p50 "$IN_JSON"), \"inprocess_infer_us_p50\": $(field infer_us_p50 "$IN_JSON"), \"inprocess_partial\": $(field partial "$IN_JSON")}"
