#!/usr/bin/env bash
# bench/datasets.sh: the datasets benchmark, the ad-server experiment at this machine's scale. In one
# run, against one `kosh serve`, with an open-loop reader sending MultiGet requests of 3 random keys
# at a fixed rate the whole time:
#   (a) the bulk path: `kosh dataset build` of the input (timed alone, before the server starts),
#       then load + swap of the built version several times while the reader runs;
#   (b) the online path: the same rows written through ordinary batched writes (FeatureStore.Persist,
#       50 rows per request, into a feature group with one BYTES feature holding each user's encoded
#       list) into the same live server, while the reader keeps reading.
#
#   bench/datasets.sh [--input-gb G] [--rate R] [--idle S] [--loads N] [--writers W]
#                     [--online-max-s S] [--build-dir DIR] [--work-dir DIR] [--keep]
#
#   --input-gb G       raw CSV input to generate (default 5): ~1.85M users per GB, 20-50 items each
#   --rate R           reader requests/s, 3 keys each (default 1000)
#   --idle S           seconds of reads before the loads and after them (default 30)
#   --loads N          load + swap cycles of the built version (default 5; each is a new version)
#   --writers W        online-path writers, one Persist in flight each (default 4)
#   --online-max-s S   stop the online path after S seconds and extrapolate its total from the rows
#                      written (default 900; 0 = write every row)
#   --build-dir DIR    CMake build directory (default $BUILD_DIR or ./build)
#   --work-dir DIR     where input, build output and server data go (default /tmp); needs about
#                      3.5 x G + 4 GB free, checked first
#   --keep             keep the work directory
#
# Smoke test of the script: bench/datasets.sh --input-gb 0.2 --idle 5 --loads 2 --online-max-s 20
# At the defaults it takes about 25-35 minutes on this 2-core machine (generation ~1 min, build
# ~1 min, reads and loads ~3 min, online path up to --online-max-s, analysis). Everything it
# starts is stopped and its files removed on exit. The measurement holds /tmp/kosh-bench.lock
# (flock) so it never overlaps another benchmark on this machine. It prints a table and, as its
# last line, one JSON object with the figures.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INPUT_GB=5
RATE=1000
IDLE=30
LOADS=5
WRITERS=4
ONLINE_MAX=900
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
WORK_PARENT=/tmp
KEEP=0

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --input-gb) INPUT_GB=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --loads) LOADS=$2; shift 2 ;;
    --writers) WRITERS=$2; shift 2 ;;
    --online-max-s) ONLINE_MAX=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --work-dir) WORK_PARENT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    *) echo "datasets.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ $INPUT_GB =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "datasets.sh: --input-gb must be a number" >&2; exit 2; }
for v in RATE IDLE LOADS WRITERS ONLINE_MAX; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "datasets.sh: --${v,,} must be a non-negative integer" >&2; exit 2; }
done
for tool in python3 cmake ninja flock curl df; do
  command -v "$tool" >/dev/null || { echo "datasets.sh: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done

# --- disk space ------------------------------------------------------------------------------------
mkdir -p "$WORK_PARENT"
NEED_KB=$(python3 -c "print(int(($INPUT_GB * 3.5 + 4) * 1e9 / 1024))")
AVAIL_KB=$(df -Pk "$WORK_PARENT" | awk 'NR==2 {print $4}')
if [ "$AVAIL_KB" -lt "$NEED_KB" ]; then
  echo "datasets.sh: $WORK_PARENT has $((AVAIL_KB / 1048576)) GiB free; a ${INPUT_GB} GB run needs about" \
       "$((NEED_KB / 1048576)) GiB (input, build output, the online store and its write-ahead log)." >&2
  echo "datasets.sh: free some space, choose --work-dir elsewhere, or run with a smaller --input-gb." >&2
  exit 1
fi

T_START=$(date +%s)
log() { printf '[%4ds] %s\n' $(( $(date +%s) - T_START )) "$*" >&2; }
now_ns() { date +%s%N; }

TMP=$(mktemp -d "$WORK_PARENT/kosh-ds-bench.XXXXXX")
KOSH_PID=""
READER_PID=""
stop_pid() {  # stop_pid PID SIGNAL: signal, wait up to 30 s, then KILL
  local pid=$1 sig=${2:-TERM}
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$READER_PID" INT
  stop_pid "$KOSH_PID" TERM
  if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build the tools ---------------------------------------------------------------------------------
log "building kosh and ds_bench in $BUILD_DIR"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$TMP/cmake.log" 2>&1 ||
    { cat "$TMP/cmake.log"; exit 1; }
fi
ninja -C "$BUILD_DIR" -j2 kosh ds_bench >"$TMP/ninja.log" 2>&1 || { tail -50 "$TMP/ninja.log"; exit 1; }
KOSH="$BUILD_DIR/src/cli/kosh"
DSB="$BUILD_DIR/bench/ds_bench"
CORES=$(nproc)

# --- measurement, under the machine-wide benchmark lock -----------------------------------------------
exec 9>/tmp/kosh-bench.lock
if ! flock -n 9; then
  log "another benchmark holds /tmp/kosh-bench.lock; waiting for it"
  flock 9
fi
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the run: $LOADAVG (on $CORES cores)"

log "generating ${INPUT_GB} GB of input"
mkdir -p "$TMP/input"
GEN=$("$DSB" gen --out "$TMP/input" --input-gb "$INPUT_GB" --files 8 --threads "$CORES")
USERS=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['users'])" "$GEN")
INPUT_BYTES=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['bytes'])" "$GEN")
log "input: $USERS users, $INPUT_BYTES bytes in 8 files"

log "build: kosh dataset build (all $CORES cores, 2 GiB memory budget)"
/usr/bin/time -f "%e %U %S" -o "$TMP/build.time" \
  "$KOSH" dataset build --dataset recs --kind recs --memory 2GiB --threads "$CORES" --label bench \
  --output "$TMP/build" "$TMP"/input/part-*.csv >"$TMP/build.json" 2>"$TMP/build.err" ||
  { cat "$TMP/build.err"; exit 1; }
read -r BUILD_S BUILD_USER BUILD_SYS <"$TMP/build.time"
log "built in $BUILD_S s (cpu $BUILD_USER user + $BUILD_SYS sys)"
# Write back the generated input and the build output now, so that the kernel's writeback of
# gigabytes of dirty pages does not land in the reader's idle window.
sync
sleep 5

# --- the server -----------------------------------------------------------------------------------------
cat >"$TMP/online_schema.yaml" <<'EOF'
entities:
  - {name: user, key_columns: [user_id]}
feature_groups:
  - entity: user
    name: recs
    features:
      - {name: recs, type: bytes}
EOF
"$KOSH" serve --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$TMP/data" \
  --schema "$TMP/online_schema.yaml" --port-file "$TMP/ports.json" >"$TMP/server.log" 2>&1 &
KOSH_PID=$!
for _ in $(seq 200); do [ -s "$TMP/ports.json" ] && break; sleep 0.05; done
GRPC_PORT=$(python3 -c "import json; print(json.load(open('$TMP/ports.json'))['grpc'])")
HTTP_PORT=$(python3 -c "import json; print(json.load(open('$TMP/ports.json'))['http'])")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.05; done
SERVER=127.0.0.1:$GRPC_PORT
log "kosh serving on gRPC $GRPC_PORT, HTTP $HTTP_PORT"

"$KOSH" dataset load --server "$SERVER" --dataset recs "$TMP/build" >"$TMP/load0.json"
log "first load: $(python3 -c "import json; print(round(json.load(open('$TMP/load0.json'))['total_seconds'], 3))") s"

PHASES=$TMP/phases.txt
: >"$PHASES"
"$DSB" reader --server "$SERVER" --dataset recs --keys "$USERS" --rate "$RATE" --connections 4 \
  --out "$TMP/reader.bin" 2>"$TMP/reader.err" &
READER_PID=$!
sleep 5  # warm-up, not measured
log "reader: $RATE MultiGet/s of 3 keys; idle for $IDLE s"
A=$(now_ns); sleep "$IDLE"; echo "idle $A $(now_ns)" >>"$PHASES"

for i in $(seq "$LOADS"); do
  A=$(now_ns)
  # The CLI runs at nice 10: in production it runs on the batch side, not on the serving node.
  nice -n 10 "$KOSH" dataset load --server "$SERVER" --dataset recs "$TMP/build" >"$TMP/load$i.json"
  echo "load $A $(now_ns)" >>"$PHASES"
  log "load+swap $i: $(python3 -c "import json; d=json.load(open('$TMP/load$i.json')); print(round(d['total_seconds'],3), 's (verify', round(d.get('verify_seconds',0),3), 'ingest', round(d.get('ingest_seconds',0),3), 'swap', round(d.get('swap_seconds',0),4), ')')")"
  A=$(now_ns); sleep 5; echo "between $A $(now_ns)" >>"$PHASES"
done
A=$(now_ns)
nice -n 10 "$KOSH" dataset load --server "$SERVER" --dataset recs --no-verify "$TMP/build" >"$TMP/load_noverify.json"
echo "load_noverify $A $(now_ns)" >>"$PHASES"
log "load+swap without whole-file checksums: $(python3 -c "import json; print(round(json.load(open('$TMP/load_noverify.json'))['total_seconds'], 3))") s"
sleep 5
A=$(now_ns); sleep "$IDLE"; echo "after $A $(now_ns)" >>"$PHASES"
BULK_FILES=$(find "$TMP/build" -name '*.sst' | wc -l)

log "online path: the same rows through FeatureStore.Persist, 50 rows per request, $WRITERS writers (cap ${ONLINE_MAX} s)"
INPUTS=$(ls "$TMP"/input/part-*.csv | paste -sd, -)
A=$(now_ns)
"$DSB" online --server "$SERVER" --inputs "$INPUTS" --batch 50 --writers "$WRITERS" \
  --max-seconds "$ONLINE_MAX" >"$TMP/online.json" 2>"$TMP/online.err" || { cat "$TMP/online.err"; exit 1; }
echo "online $A $(now_ns)" >>"$PHASES"
FILES_AFTER_ONLINE=$(find "$TMP/data" -path "$TMP/data/datasets" -prune -o -name '*.sst' -print | wc -l)
PENDING=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" |
  awk '/^kosh_storage\{figure="pending_compaction_bytes",keyspace="features"\}/ {print $2}')
log "online: $(cat "$TMP/online.json"); $FILES_AFTER_ONLINE storage files right after, ${PENDING:-0} bytes of compaction pending"
A=$(now_ns); sleep 10; echo "after_online $A $(now_ns)" >>"$PHASES"

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pid "$READER_PID" INT
READER_PID=""
ANALYSIS=$("$DSB" analyze --records "$TMP/reader.bin" --phases "$PHASES")
stop_pid "$KOSH_PID" TERM
KOSH_PID=""
flock -u 9

# --- report -------------------------------------------------------------------------------------------
python3 - "$TMP" "$INPUT_GB" "$INPUT_BYTES" "$USERS" "$CORES" "$BUILD_S" "$BUILD_USER" "$BUILD_SYS" \
  "$LOADS" "$RATE" "$BULK_FILES" "$FILES_AFTER_ONLINE" "${PENDING:-0}" "$LOADAVG" "$ANALYSIS" "$LOADAVG_END" <<'PY'
import json, statistics, sys
(tmp, input_gb, input_bytes, users, cores, build_s, build_user, build_sys, loads, rate, bulk_files,
 files_after_online, pending, loadavg, analysis, loadavg_end) = sys.argv[1:]
input_bytes, users, cores, loads = int(input_bytes), int(users), int(cores), int(loads)
build_s, build_cpu = float(build_s), float(build_user) + float(build_sys)
ph = json.loads(analysis)
build = json.load(open(f"{tmp}/build.json"))
runs = [json.load(open(f"{tmp}/load{i}.json")) for i in range(1, loads + 1)]
nover = json.load(open(f"{tmp}/load_noverify.json"))
online = json.load(open(f"{tmp}/online.json"))
total = [r["total_seconds"] for r in runs]
load_swap = statistics.median(total)
mb = input_bytes / 1e6
online_total = online["seconds"] * users / online["rows"] if online["rows"] else float("inf")
def p(name, key):
    return ph.get(name, {}).get(key, 0.0)
out = {
    "input_gb": round(input_bytes / 1e9, 3), "users": users, "cores": cores, "load_average_at_start": loadavg, "load_average_at_end": loadavg_end,
    "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu, 2),
    "build_mb_s_per_core": round(mb / build_s / cores, 1), "build_mb_per_cpu_s": round(mb / build_cpu, 1),
    "build_output_gb": round(build["output_bytes"] / 1e9, 3), "build_files": int(bulk_files),
    "load_swap_s": round(load_swap, 3), "load_swap_s_max": round(max(total), 3),
    "load_verify_s": round(statistics.median(r.get("verify_seconds", 0) for r in runs), 3),
    "load_ingest_s": round(statistics.median(r.get("ingest_seconds", 0) for r in runs), 3),
    "swap_ms": round(1000 * statistics.median(r.get("swap_seconds", 0) for r in runs), 2),
    "load_swap_s_noverify": round(nover["total_seconds"], 3),
    "reader_rate": int(rate),
    "reader_p50_ms_idle": p("idle", "p50_ms"), "reader_p99_ms_idle": p("idle", "p99_ms"),
    "reader_p999_ms_idle": p("idle", "p999_ms"),
    "reader_p50_ms_during_load": p("load", "p50_ms"), "reader_p99_ms_during_load": p("load", "p99_ms"),
    "reader_p999_ms_during_load": p("load", "p999_ms"), "reader_requests_during_load": p("load", "requests"),
    "reader_p50_ms_after": p("after", "p50_ms"), "reader_p99_ms_after": p("after", "p99_ms"),
    "reader_p999_ms_after": p("after", "p999_ms"),
    "reader_p99_ms_during_load_noverify": p("load_noverify", "p99_ms"),
    "reader_errors": sum(v.get("errors", 0) + v.get("missing", 0) for v in ph.values()),
    "bulk_total_s": round(build_s + load_swap, 2),
    "online_rows": online["rows"], "online_capped": online["capped"],
    "online_total_s": round(online_total, 1), "online_rows_per_s": online["rows_per_s"],
    "reader_p50_ms_during_online": p("online", "p50_ms"), "reader_p99_ms_during_online": p("online", "p99_ms"),
    "reader_p999_ms_during_online": p("online", "p999_ms"),
    "files_after_online": int(files_after_online), "pending_compaction_bytes_after_online": int(float(pending)),
}
out["p99_during_load_over_idle"] = round(out["reader_p99_ms_during_load"] / out["reader_p99_ms_idle"], 2) if out["reader_p99_ms_idle"] else None
out["online_over_bulk"] = round(online_total / out["bulk_total_s"], 1)
out["targets"] = {
    "load_swap_under_1s": out["load_swap_s"] < 1.0,
    "p99_during_load_within_1_2x_idle": (out["p99_during_load_over_idle"] or 99) <= 1.2,
    "bulk_5x_faster_than_online": out["online_over_bulk"] >= 5,
    "build_100_mb_s_per_core": out["build_mb_s_per_core"] >= 100,
}
print()
print(f"input            {out['input_gb']} GB, {users} users, {cores} cores (load average at start {loadavg})")
print(f"build            {out['build_s']} s wall, {out['build_cpu_s']} s cpu: {out['build_mb_s_per_core']} MB/s per core "
      f"({out['build_mb_per_cpu_s']} MB per cpu-second); {out['build_output_gb']} GB in {out['build_files']} files")
print(f"load+swap        median {out['load_swap_s']} s (max {out['load_swap_s_max']}; verify {out['load_verify_s']}, "
      f"ingest {out['load_ingest_s']}, swap {out['swap_ms']} ms); without whole-file checksums {out['load_swap_s_noverify']} s")
print(f"bulk total       {out['bulk_total_s']} s (build + load+swap)")
print(f"online           {online['rows']} rows in {online['seconds']} s ({online['rows_per_s']} rows/s)"
      f"{' capped, total extrapolated' if online['capped'] else ''}: {out['online_total_s']} s; "
      f"{out['files_after_online']} storage files after, {out['pending_compaction_bytes_after_online']} bytes of compaction pending")
print(f"{'reader (ms)':16} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'rate':>8} {'errors':>7}")
for name in ["idle", "load", "between", "load_noverify", "after", "online", "after_online"]:
    if name in ph:
        v = ph[name]
        print(f"{name:16} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} {v['p999_ms']:8.3f} {v['max_ms']:8.3f} {v['rate']:8.1f} {v['errors'] + v['missing']:7d}")
print(f"targets          {out['targets']}")
print(json.dumps(out))
PY
