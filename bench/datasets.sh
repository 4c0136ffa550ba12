#!/usr/bin/env bash
# bench/datasets.sh: the datasets benchmark, the ad-server experiment at this machine's scale. In one
# run, against one `kosh serve`, with an open-loop reader sending MultiGet requests of 3 random keys
# at a fixed rate the whole time:
#   (a) the bulk path: `kosh dataset build` of the input (timed alone, before the server starts),
#       then repeated load + swap cycles while the reader runs;
#   (b) the online path: the same rows written through ordinary batched writes (FeatureStore.Persist,
#       50 rows per request, into a feature group with one BYTES feature holding each user's encoded
#       list) into the same live server, while the reader keeps reading.
#
#   bench/datasets.sh [--input-gb G] [--rate R] [--rounds N] [--window S] [--writers W]
#                     [--online-max-s S] [--build-dir DIR] [--work-dir DIR] [--keep]
#
#   --input-gb G       raw CSV input to generate (default 5): ~1.85M users per GB, 20-50 items each
#   --rate R           reader requests/s, 3 keys each (default 1000)
#   --rounds N         measurement rounds (default 12); each is: idle window, load with the default
#                      verification (whole-file checksums checked after the swap), idle window,
#                      load with the checksums checked before the swap (--verify before-swap)
#   --window S         length of every measured window in seconds (default 3). A load window starts
#                      with the load and lasts max(S, the load, the end of its after-swap check);
#                      the idle window before it lasts as long, so both sides of a comparison hold
#                      the same number of requests.
#   --writers W        online-path writers, one Persist in flight each (default 4)
#   --online-max-s S   stop the online path after S seconds and extrapolate its total from the rows
#                      written (default 900; 0 = write every row)
#   --build-dir DIR    CMake build directory (default $BUILD_DIR or ./build)
#   --work-dir DIR     where input, build output and server data go (default /tmp); needs about
#                      4 x G + 4 GB free, checked first
#   --keep             keep the work directory
#   --server-config F  a configuration file for the server (e.g. datasets.check_rate_limit)
#
# Method, for a shared and noisy machine: idle and load windows alternate (idle, load, idle, load,
# ...), so that noise from other processes lands on both sides alike; every figure compared with
# another is the median over its windows of the per-window p99 (the output names how many windows
# each comes from), and the pooled p99 of all requests of a kind is printed beside it. The loads
# alternate between two copies of the build (distinct files, as two pushes would be), so a load
# never reads the files the current version is serving from. The online path is cut into windows of
# the same length. `uptime` is recorded at the start, between phases and at the end.
#
# Smoke test of the script: bench/datasets.sh --input-gb 0.2 --rounds 2 --online-max-s 20
# At --input-gb 1 it takes about 3 minutes here; at the defaults (5 GB) about 11 minutes (generation
# and build ~1 min, loads ~7 min: the paced after-swap check takes 13 s, online path up to
# --online-max-s). Everything it starts is stopped
# and its files removed on exit. The measurement holds /tmp/kosh-bench.lock (flock) so it never
# overlaps another benchmark on this machine. It prints a table and, as its last line, one JSON
# object with the figures.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INPUT_GB=5
RATE=1000
ROUNDS=12
WINDOW=3
WRITERS=4
ONLINE_MAX=900
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
WORK_PARENT=/tmp
KEEP=0
SERVER_CONFIG=""

usage() { sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --input-gb) INPUT_GB=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --window) WINDOW=$2; shift 2 ;;
    --writers) WRITERS=$2; shift 2 ;;
    --online-max-s) ONLINE_MAX=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --work-dir) WORK_PARENT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --server-config) SERVER_CONFIG=$(realpath "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "datasets.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ $INPUT_GB =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "datasets.sh: --input-gb must be a number" >&2; exit 2; }
for v in RATE ROUNDS WINDOW WRITERS ONLINE_MAX; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "datasets.sh: --${v,,} must be a non-negative integer" >&2; exit 2; }
done
for tool in python3 cmake ninja flock curl df; do
  command -v "$tool" >/dev/null || { echo "datasets.sh: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done

# --- disk space ------------------------------------------------------------------------------------
mkdir -p "$WORK_PARENT"
NEED_KB=$(python3 -c "print(int(($INPUT_GB * 4 + 4) * 1e9 / 1024))")
AVAIL_KB=$(df -Pk "$WORK_PARENT" | awk 'NR==2 {print $4}')
if [ "$AVAIL_KB" -lt "$NEED_KB" ]; then
  echo "datasets.sh: $WORK_PARENT has $((AVAIL_KB / 1048576)) GiB free; a ${INPUT_GB} GB run needs about" \
       "$((NEED_KB / 1048576)) GiB (input, build output, the online store and its write-ahead log)." >&2
  echo "datasets.sh: free some space, choose --work-dir elsewhere, or run with a smaller --input-gb." >&2
  exit 1
fi

T_START=$(date +%s)
# (printf's %(...)T, not date: a process started while a window is measured is a disturbance of
# its own on this VM; 50 process starts a second raised readers' p99 2.5x.)
log() { local now; printf -v now '%(%s)T' -1; printf '[%4ds] %s\n' $(( now - T_START )) "$*" >&2; }
now_ns() { date +%s%N; }

TMP=$(mktemp -d "$WORK_PARENT/kosh-ds-bench.XXXXXX")
KOSH_PID=""
READER_PID=""
LOADS_PID=""
stop_pid() {  # stop_pid PID SIGNAL: signal, wait up to 30 s, then KILL
  local pid=$1 sig=${2:-TERM}
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$LOADS_PID" TERM
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
export DSB
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
# A second copy of the build (distinct files, like a second push), so that the loads alternate
# between two builds and none reads the files the current version serves from.
cp -a "$TMP/build" "$TMP/build-b"
# Write back the generated input and the build outputs now, so that the kernel's writeback of
# gigabytes of dirty pages does not land in a measured window.
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
  --schema "$TMP/online_schema.yaml" --port-file "$TMP/ports.json" ${SERVER_CONFIG:+--config "$SERVER_CONFIG"} \
  >"$TMP/server.log" 2>&1 &
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
UPTIMES=$TMP/uptime.txt
: >"$PHASES"
: >"$UPTIMES"
note_uptime() { echo "$1 $(uptime | sed 's/.*load average: //')" >>"$UPTIMES"; }
note_uptime "start"
"$DSB" reader --server "$SERVER" --dataset recs --keys "$USERS" --rate "$RATE" --connections 4 \
  --out "$TMP/reader.bin" 2>"$TMP/reader.err" &
READER_PID=$!
sleep 5  # warm-up, not measured
log "reader: $RATE MultiGet/s of 3 keys; $ROUNDS rounds of (idle, load (check after the swap), idle, load --verify before-swap), windows of at least ${WINDOW} s"

# The loads run from one long-lived process (ds_bench loads, at nice 10 as a batch-side client would
# be), so that no process start lands in a measured window.
nice -n 10 "$DSB" loads --server "$SERVER" --dataset recs --builds "$TMP/build-b,$TMP/build" \
  --rounds "$ROUNDS" --window "$WINDOW" --phases "$PHASES" --out-dir "$TMP" 2>"$TMP/loads.err" &
LOADS_PID=$!
# Progress, one line per load, while the rounds run.
tail -n +1 -f "$TMP/loads.err" --pid "$LOADS_PID" 2>/dev/null | while read -r line; do log "$line"; done &
wait "$LOADS_PID" || { cat "$TMP/loads.err"; exit 1; }
LOADS_PID=""
note_uptime "loads"
BULK_FILES=$(find "$TMP/build" -name '*.sst' | wc -l)

log "online path: the same rows through FeatureStore.Persist, 50 rows per request, $WRITERS writers (cap ${ONLINE_MAX} s)"
INPUTS=$(ls "$TMP"/input/part-*.csv | paste -sd, -)
A=$(now_ns)
"$DSB" online --server "$SERVER" --inputs "$INPUTS" --batch 50 --writers "$WRITERS" \
  --max-seconds "$ONLINE_MAX" >"$TMP/online.json" 2>"$TMP/online.err" || { cat "$TMP/online.err"; exit 1; }
B=$(now_ns)
# The online path in windows of the same length as the others.
python3 -c "
import sys
a, b, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) * 10**9
k = 0
while a + w <= b:
    print(f'online.{k} {a} {a + w}'); a += w; k += 1
" "$A" "$B" "$WINDOW" >>"$PHASES"
note_uptime "online"
FILES_AFTER_ONLINE=$(find "$TMP/data" -path "$TMP/data/datasets" -prune -o -name '*.sst' -print | wc -l)
PENDING=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" |
  awk '/^kosh_storage\{figure="pending_compaction_bytes",keyspace="features"\}/ {print $2}')
log "online: $(cat "$TMP/online.json"); $FILES_AFTER_ONLINE storage files right after, ${PENDING:-0} bytes of compaction pending"
for i in 1 2 3; do
  A=$(now_ns); sleep "$WINDOW"; echo "after_online.$i $A $(now_ns)" >>"$PHASES"
done
note_uptime "end"

LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
stop_pid "$READER_PID" INT
READER_PID=""
ANALYSIS=$("$DSB" analyze --records "$TMP/reader.bin" --phases "$PHASES")
stop_pid "$KOSH_PID" TERM
KOSH_PID=""
flock -u 9

# --- report -------------------------------------------------------------------------------------------
python3 - "$TMP" "$INPUT_BYTES" "$USERS" "$CORES" "$BUILD_S" "$BUILD_USER" "$BUILD_SYS" \
  "$ROUNDS" "$RATE" "$BULK_FILES" "$FILES_AFTER_ONLINE" "${PENDING:-0}" "$LOADAVG" "$ANALYSIS" "$LOADAVG_END" \
  "$WINDOW" <<'PY'
import json, statistics, sys
(tmp, input_bytes, users, cores, build_s, build_user, build_sys, rounds, rate, bulk_files,
 files_after_online, pending, loadavg, analysis, loadavg_end, window) = sys.argv[1:]
input_bytes, users, cores, rounds = int(input_bytes), int(users), int(cores), int(rounds)
build_s, build_cpu = float(build_s), float(build_user) + float(build_sys)
windows = json.loads(analysis)                      # per window: requests, p50/p99/p99.9, errors
build = json.load(open(f"{tmp}/build.json"))
loads = [json.load(open(f"{tmp}/load.{i}.json")) for i in range(1, rounds + 1)]
checks = [json.load(open(f"{tmp}/load.{i}.check.json")) for i in range(1, rounds + 1)]
before = [json.load(open(f"{tmp}/before.{i}.json")) for i in range(1, rounds + 1)]
online = json.load(open(f"{tmp}/online.json"))
uptimes = [l.split(None, 1) for l in open(f"{tmp}/uptime.txt")]

def kind(name):
    k = name.split(".")[0]
    return {"idle": "idle", "load": "load", "check": "load_until_checked", "before": "load_before_swap",
            "swapped": "before_swap_first_0_3s_after_swap", "online": "online",
            "after_online": "after_online"}[k]
groups = {}
for name, w in windows.items():
    groups.setdefault(kind(name), []).append(w)
def med(k, field="p99_ms"):
    ws = groups.get(k, [])
    return round(statistics.median(w[field] for w in ws), 3) if ws else 0.0
def nwin(k):
    return len(groups.get(k, []))
# Pooled percentiles of all requests of a kind (the analyzer pools windows that share a name).
pooled = {}
for k in groups:
    pooled[k] = None
import subprocess, os
with open(f"{tmp}/pooled_phases.txt", "w") as f:
    for line in open(f"{tmp}/phases.txt"):
        name, a, b = line.split()
        f.write(f"{kind(name)} {a} {b}\n")
pooled = json.loads(subprocess.check_output([os.environ["DSB"], "analyze", "--records", f"{tmp}/reader.bin",
                                             "--phases", f"{tmp}/pooled_phases.txt"]))

mb = input_bytes / 1e6
total = [r["total_seconds"] for r in loads]
total_bs = [r["total_seconds"] for r in before]
load_swap = statistics.median(total)
online_total = online["seconds"] * users / online["rows"] if online["rows"] else float("inf")
out = {
    "input_gb": round(input_bytes / 1e9, 3), "users": users, "cores": cores,
    "load_average_at_start": loadavg, "load_average_at_end": loadavg_end,
    "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu, 2),
    "build_mb_s_per_core": round(mb / build_s / cores, 1), "build_mb_per_cpu_s": round(mb / build_cpu, 1),
    "build_output_gb": round(build["output_bytes"] / 1e9, 3), "build_files": int(bulk_files),
    "loads": len(total), "load_swap_s": round(load_swap, 3), "load_swap_s_max": round(max(total), 3),
    "load_ingest_s": round(statistics.median(r.get("ingest_seconds", 0) for r in loads), 3),
    "swap_ms": round(1000 * statistics.median(r.get("swap_seconds", 0) for r in loads), 2),
    "checks_after_swap": [c["checksums"] for c in checks],
    "check_after_swap_s": round(statistics.median(c["checksum_seconds"] for c in checks), 3),
    "check_after_swap_s_max": round(max(c["checksum_seconds"] for c in checks), 3),
    "load_to_checked_s": round(statistics.median(c["check_end_s"] for c in checks), 3),
    "load_swap_s_before_swap": round(statistics.median(total_bs), 3),
    "load_swap_s_before_swap_max": round(max(total_bs), 3),
    "load_verify_s_before_swap": round(statistics.median(r.get("verify_seconds", 0) for r in before), 3),
    "reader_rate": int(rate), "window_s": int(window),
    "reader_p99_ms_idle": med("idle"), "reader_p99_ms_idle_windows": nwin("idle"),
    "reader_p50_ms_idle": med("idle", "p50_ms"), "reader_p999_ms_idle": med("idle", "p999_ms"),
    "reader_p99_ms_during_load": med("load"), "reader_p99_ms_during_load_windows": nwin("load"),
    "reader_p50_ms_during_load": med("load", "p50_ms"), "reader_p999_ms_during_load": med("load", "p999_ms"),
    "reader_p99_ms_until_checked": med("load_until_checked"),
    "reader_p99_ms_until_checked_pooled": pooled.get("load_until_checked", {}).get("p99_ms", 0.0),
    "reader_p99_ms_before_swap_first_0_3s_after_swap": med("before_swap_first_0_3s_after_swap"),
    "reader_p99_ms_during_load_before_swap": med("load_before_swap"),
    "reader_p99_ms_during_load_before_swap_windows": nwin("load_before_swap"),
    "reader_p99_ms_idle_pooled": pooled.get("idle", {}).get("p99_ms", 0.0),
    "reader_p99_ms_during_load_pooled": pooled.get("load", {}).get("p99_ms", 0.0),
    "reader_p99_ms_during_load_before_swap_pooled": pooled.get("load_before_swap", {}).get("p99_ms", 0.0),
    "reader_errors": sum(w.get("errors", 0) + w.get("missing", 0) for n, w in windows.items()
                         if not n.startswith(("check.", "swapped."))),  # (these lie inside load windows)
    "bulk_total_s": round(build_s + load_swap, 2),
    "online_rows": online["rows"], "online_capped": online["capped"],
    "online_total_s": round(online_total, 1), "online_rows_per_s": online["rows_per_s"],
    "reader_p99_ms_during_online": med("online"), "reader_p99_ms_during_online_windows": nwin("online"),
    "reader_p50_ms_during_online": med("online", "p50_ms"),
    "reader_p99_ms_during_online_pooled": pooled.get("online", {}).get("p99_ms", 0.0),
    "files_after_online": int(files_after_online), "pending_compaction_bytes_after_online": int(float(pending)),
    "uptime": {k: v.strip() for k, v in uptimes},
}
ratio = lambda a, b: round(a / b, 2) if b else None
out["p99_during_load_over_idle"] = ratio(out["reader_p99_ms_during_load"], out["reader_p99_ms_idle"])
out["p99_during_load_before_swap_over_idle"] = ratio(out["reader_p99_ms_during_load_before_swap"], out["reader_p99_ms_idle"])
out["online_over_bulk"] = round(online_total / out["bulk_total_s"], 1)
out["targets"] = {
    "load_swap_under_1s": out["load_swap_s"] < 1.0,
    "every_after_swap_check_verified": all(c == "CHECKSUMS_VERIFIED" for c in out["checks_after_swap"]),
    "p99_during_load_within_1_2x_idle": (out["p99_during_load_over_idle"] or 99) <= 1.2,
    "bulk_5x_faster_than_online": out["online_over_bulk"] >= 5,
    "build_100_mb_s_per_core": out["build_mb_s_per_core"] >= 100,
}
print()
print(f"input            {out['input_gb']} GB, {users} users, {cores} cores")
print(f"machine          load average (1/5/15 min): " + "; ".join(f"{k} {v.strip()}" for k, v in uptimes))
print(f"build            {out['build_s']} s wall, {out['build_cpu_s']} s cpu: {out['build_mb_s_per_core']} MB/s per core "
      f"({out['build_mb_per_cpu_s']} MB per cpu-second); {out['build_output_gb']} GB in {out['build_files']} files")
print(f"load+swap        median of {len(total)} {out['load_swap_s']} s (max {out['load_swap_s_max']}; "
      f"ingest {out['load_ingest_s']}, swap {out['swap_ms']} ms); checksums checked after the swap in "
      f"{out['check_after_swap_s']} s (max {out['check_after_swap_s_max']}), all checked {out['load_to_checked_s']} s "
      f"after the call; results {sorted(set(out['checks_after_swap']))}")
print(f"  before-swap    median of {len(total_bs)} {out['load_swap_s_before_swap']} s (max "
      f"{out['load_swap_s_before_swap_max']}; checksum pass {out['load_verify_s_before_swap']} s)")
print(f"bulk total       {out['bulk_total_s']} s (build + load+swap)")
print(f"online           {online['rows']} rows in {online['seconds']} s ({online['rows_per_s']} rows/s)"
      f"{' capped, total extrapolated' if online['capped'] else ''}: {out['online_total_s']} s; "
      f"{out['files_after_online']} storage files after, {out['pending_compaction_bytes_after_online']} bytes of compaction pending")
print(f"reader, ms: median over the windows of each window's percentile; pooled p99 of all their requests")
print(f"{'windows':24} {'n':>3} {'p50':>8} {'p99':>8} {'p99.9':>8} {'pooled p99':>11} {'requests':>9} {'errors':>7}")
for k, label in [("idle", "idle"), ("load", "load + check after"), ("load_until_checked", "  until checked"),
                 ("load_before_swap", "load, check before"), ("before_swap_first_0_3s_after_swap", "  0.3 s after swap"),
                 ("online", "online path"), ("after_online", "after online")]:
    ws = groups.get(k, [])
    if not ws:
        continue
    print(f"{label:24} {len(ws):3d} {med(k, 'p50_ms'):8.3f} {med(k):8.3f} {med(k, 'p999_ms'):8.3f} "
          f"{pooled.get(k, {}).get('p99_ms', 0.0):11.3f} {sum(w['requests'] for w in ws):9d} "
          f"{sum(w['errors'] + w['missing'] for w in ws):7d}")
print("per-window p99 (ms), in order:")
for k in ["idle", "load", "load_until_checked", "load_before_swap", "before_swap_first_0_3s_after_swap"]:
    print(f"  {k:14} " + " ".join(f"{w['p99_ms']:.1f}" for w in groups.get(k, [])))
print(f"targets          {out['targets']}")
print(json.dumps(out))
PY
