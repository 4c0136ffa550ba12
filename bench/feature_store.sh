#!/usr/bin/env bash
# bench/feature_store.sh: the feature-store read benchmark, Kosh against the design it replaces,
# in one run on this machine.
#
#   bench/feature_store.sh [--keys N] [--duration S] [--rounds R] [--connections C] [--threads T]
#                          [--doc auto|yes|no] [--build-dir DIR]
#
#   --keys N         keys loaded into each system (default 1000000)
#   --duration S     measured seconds of each run (default 10; each run has 2 s of warm-up first)
#   --rounds R       rounds of the interleaved runs (default 3): peaks are the best round,
#                    fixed-rate latencies the median round
#   --connections C  client connections, the same for every system (default 8)
#   --threads T      client threads (Redis epoll loops, Kosh open-loop senders), the same for both
#                    (default 2)
#   --doc MODE       rewrite the generated section of docs/benchmarks.md: yes, no, or auto (only
#                    for a full-size run: --keys >= 1000000 and --duration >= 5). Default auto.
#   --build-dir DIR  CMake build directory (default $BUILD_DIR or ./build)
#   --nice N         CPU priority of the run against other sessions on this shared machine
#                    (default -10; 0 = none). The run gets its own session, so the servers and
#                    the load generator share one scheduler group (Linux autogroup) whose nice
#                    value is N: all three get the same priority, above other sessions' builds.
#
# Smoke check of the script itself: bench/feature_store.sh --keys 20000 --duration 2 --rounds 1
#
# What it does: builds kosh and bench/fs_load if needed; starts redis-server (Debian's, no
# persistence) and `kosh serve` (defaults: 1 GiB row cache, synced writes) on free loopback ports
# with temporary data directories; loads N keys of one group of 50 float32 features into both;
# reads every key once from Kosh (its row cache then holds the working set, as in steady state;
# Redis holds everything in memory anyway); measures the in-process RocksDB MultiGet ceiling while
# the servers are idle; then, in R rounds with the systems interleaved, the closed-loop peak of
# Kosh RetrieveMatrix, Kosh Retrieve (row form) and Redis MGET+parse, and p50/p99/p99.9 in open
# loop at half of Redis' peak (all three) and at half of Kosh's peak (Kosh). Every read asks for
# 100 random keys. It prints a table and, as its last line, one JSON object with the figures.
# Servers are stopped and temporary files removed on exit. Takes about 6 minutes at the defaults.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYS=1000000
DURATION=10
ROUNDS=3
CONNS=8
THREADS=2
DOC=auto
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
KPR=100
NICE=-10
ARGS_GIVEN="$*"
ORIG_ARGS=("$@")

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --doc) DOC=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --nice) NICE=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "feature_store.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in KEYS DURATION ROUNDS CONNS THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "feature_store.sh: --${v,,} must be a positive integer" >&2; exit 2; }
done
case "$DOC" in auto|yes|no) ;; *) echo "feature_store.sh: --doc auto|yes|no" >&2; exit 2 ;; esac
[[ $NICE =~ ^-?[0-9]+$ ]] && [ "$NICE" -ge -20 ] && [ "$NICE" -le 19 ] ||
  { echo "feature_store.sh: --nice takes -20..19" >&2; exit 2; }

# Own session (so the servers and the load generator form one autogroup, apart from the shell
# that started us), forwarding INT/TERM so that Ctrl-C still stops the run and its servers.
if [ -z "${KOSH_BENCH_CHILD:-}" ] && [ "$NICE" != 0 ] && command -v setsid >/dev/null; then
  KOSH_BENCH_CHILD=1 setsid bash "$0" "${ORIG_ARGS[@]}" &
  child=$!
  trap 'kill -TERM $child 2>/dev/null' INT TERM
  rc=0
  wait $child || rc=$?
  while kill -0 $child 2>/dev/null; do wait $child || rc=$?; done
  exit $rc
fi
PRIORITY="normal (nice 0)"
if [ "$NICE" != 0 ]; then
  if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] &&
     echo "$NICE" 2>/dev/null >/proc/self/autogroup; then
    PRIORITY="own session, autogroup nice $NICE"
  elif renice -n "$NICE" -p $$ >/dev/null 2>&1; then
    PRIORITY="nice $NICE"
  else
    PRIORITY="normal (raising the priority to $NICE was not permitted)"
  fi
fi
if [ "$DOC" = auto ]; then
  if [ "$KEYS" -ge 1000000 ] && [ "$DURATION" -ge 5 ]; then DOC=yes; else DOC=no; fi
fi
for tool in redis-server redis-cli python3 cmake ninja setsid timeout; do
  command -v "$tool" >/dev/null || { echo "feature_store.sh: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done

T_START=$(date +%s)
log() { printf '[%4ds] %s\n' $(( $(date +%s) - T_START )) "$*"; }

TMP=$(mktemp -d /tmp/kosh-bench.XXXXXX)
REDIS_PID=""
KOSH_PID=""
stop_pid() {  # stop_pid PID: TERM, wait up to 15 s, then KILL
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$KOSH_PID"
  stop_pid "$REDIS_PID"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build -----------------------------------------------------------------------------------------
log "priority: $PRIORITY; load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "building kosh and fs_load in $BUILD_DIR"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$TMP/cmake.log" 2>&1 ||
    { cat "$TMP/cmake.log"; exit 1; }
fi
ninja -C "$BUILD_DIR" -j2 kosh fs_load >"$TMP/ninja.log" 2>&1 || { tail -50 "$TMP/ninja.log"; exit 1; }
KOSH="$BUILD_DIR/src/cli/kosh"
FS="$BUILD_DIR/bench/fs_load"
BUILD_TYPE=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}  # the top-level CMakeLists.txt's default

# --- helpers ---------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
free_port() {  # a port the kernel just handed out; redis-server's start is retried if it was taken
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits until process $1 uses less than 5% of a core over a second (background compactions done).
wait_idle() {
  local pid=$1 a b
  for _ in $(seq 120); do
    a=$(cpu_ticks "$pid"); sleep 1; b=$(cpu_ticks "$pid")
    [ $(( (b - a) * 100 )) -lt $(( 5 * CLK_TCK )) ] && return 0
  done
  log "warning: process $pid still busy after 120 s"
}

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
# measure NAME ROUND SERVER_PID fs_load-args...: runs fs_load, meters the server's CPU over the
# run, prints fs_load's summary and appends {"name", "round", "server_cpu_cores", "run": {...}}.
measure() {
  local name=$1 round=$2 spid=$3; shift 3
  local a b t0 t1 out rc=0
  a=$(cpu_ticks "$spid"); t0=$(date +%s.%N)
  out=$(timeout $(( DURATION + 90 )) "$FS" "$@" 2>&1) || rc=$?
  t1=$(date +%s.%N); b=$(cpu_ticks "$spid")
  printf '%s\n' "$out" | sed '$d' | sed "s/^/         /"
  local json; json=$(printf '%s\n' "$out" | tail -1)
  if [ $rc -ne 0 ] && ! [[ $json == \{* ]]; then
    log "fs_load failed ($name): $out"; exit 1
  fi
  python3 - "$name" "$round" "$a" "$b" "$t0" "$t1" "$CLK_TCK" "$json" >>"$RESULTS" <<'EOF'
import json, sys
name, rnd, a, b, t0, t1, tck, run = sys.argv[1:]
cores = (float(b) - float(a)) / float(tck) / max(1e-9, float(t1) - float(t0))
print(json.dumps({"name": name, "round": int(rnd), "server_cpu_cores": round(cores, 3), "run": json.loads(run)}))
EOF
}
# best NAME FIELD: the largest FIELD of runs named NAME so far.
best() {
  python3 - "$RESULTS" "$1" "$2" <<'EOF'
import json, sys
path, name, field = sys.argv[1:]
vals = [json.loads(l)["run"][field] for l in open(path) if json.loads(l)["name"] == name]
print(int(max(vals)) if vals else 0)
EOF
}

# --- servers ---------------------------------------------------------------------------------------
mkdir -p "$TMP/redis" "$TMP/kosh"
for _ in 1 2 3 4 5; do
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$TMP/redis" \
    --logfile "$TMP/redis.log" >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break 2
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  stop_pid "$REDIS_PID"; REDIS_PID=""
done
[ -n "$REDIS_PID" ] || { log "cannot start redis-server"; cat "$TMP/redis.log" 2>/dev/null; exit 1; }
REDIS_VERSION=$(redis-server --version | sed 's/ sha=.*//')
log "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT (--save \"\" --appendonly no): $REDIS_VERSION"

"$KOSH" serve --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$TMP/kosh/data" \
  --port-file "$TMP/kosh/ports.json" --log-level warn >"$TMP/kosh.log" 2>&1 &
KOSH_PID=$!
for _ in $(seq 100); do
  [ -s "$TMP/kosh/ports.json" ] && break
  kill -0 "$KOSH_PID" 2>/dev/null || { cat "$TMP/kosh.log"; exit 1; }
  sleep 0.1
done
[ -s "$TMP/kosh/ports.json" ] || { log "kosh did not start"; cat "$TMP/kosh.log"; exit 1; }
KOSH_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc"])' "$TMP/kosh/ports.json")
log "kosh serve pid $KOSH_PID on 127.0.0.1:$KOSH_PORT (default options: 1 GiB row cache, synced writes)"

# --- load ------------------------------------------------------------------------------------------
log "loading $KEYS keys into Kosh (Persist, 1000 rows per request) and Redis (pipelined SET), in parallel"
timeout 900 "$FS" --mode load-kosh --server "127.0.0.1:$KOSH_PORT" --keys "$KEYS" >"$TMP/load-kosh.txt" 2>&1 &
LK=$!
timeout 900 "$FS" --mode load-redis --redis "127.0.0.1:$REDIS_PORT" --keys "$KEYS" >"$TMP/load-redis.txt" 2>&1 &
LR=$!
wait $LK || { cat "$TMP/load-kosh.txt"; exit 1; }
wait $LR || { cat "$TMP/load-redis.txt"; exit 1; }
sed '$d' "$TMP/load-kosh.txt" "$TMP/load-redis.txt" | sed 's/^/         /'
tail -1 "$TMP/load-kosh.txt" >"$TMP/load-kosh.json"
tail -1 "$TMP/load-redis.txt" >"$TMP/load-redis.json"
log "waiting for Kosh's background flushes and compactions to finish"
wait_idle "$KOSH_PID"
log "reading every key once from Kosh (fills its row cache)"
timeout 900 "$FS" --mode warm-kosh --server "127.0.0.1:$KOSH_PORT" --keys "$KEYS" --connections "$CONNS" \
  >"$TMP/warm.txt" 2>&1 || { cat "$TMP/warm.txt"; exit 1; }
sed '$d' "$TMP/warm.txt" | sed 's/^/         /'
REDIS_MEM=$(redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory_human:\(.*\)\r*$/\1/p' | tr -d '\r')
KOSH_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$KOSH_PID/status")

# --- in-process RocksDB ceiling (servers idle) ------------------------------------------------------
log "in-process RocksDB MultiGet ceiling ($THREADS threads, servers idle)"
timeout $(( DURATION + 900 )) "$FS" --mode rocksdb-inproc --db "$TMP/rocksdb" --keys "$KEYS" \
  --threads 2 --duration "$DURATION" >"$TMP/rocks.txt" 2>&1 || { cat "$TMP/rocks.txt"; exit 1; }
sed '$d' "$TMP/rocks.txt" | sed 's/^/         /'
tail -1 "$TMP/rocks.txt" >"$TMP/rocks.json"

COMMON=(--keys "$KEYS" --keys-per-request "$KPR" --duration "$DURATION" --warmup 2
        --connections "$CONNS" --threads "$THREADS")
KOSH_ARGS=(--mode run --target kosh --server "127.0.0.1:$KOSH_PORT" "${COMMON[@]}")
REDIS_ARGS=(--mode run --target redis --redis "127.0.0.1:$REDIS_PORT" "${COMMON[@]}")

# --- closed-loop peaks ------------------------------------------------------------------------------
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: closed-loop peaks ($CONNS connections, 1 request outstanding each)"
  measure kosh_matrix_peak "$r" "$KOSH_PID" "${KOSH_ARGS[@]}" --method matrix --rate 0 --seed "$r"
  measure redis_peak "$r" "$REDIS_PID" "${REDIS_ARGS[@]}" --rate 0 --seed "$r"
  measure kosh_rows_peak "$r" "$KOSH_PID" "${KOSH_ARGS[@]}" --method rows --rate 0 --seed "$r"
done
REDIS_PEAK=$(best redis_peak achieved_rps)
KOSH_PEAK=$(best kosh_matrix_peak achieved_rps)
ROWS_PEAK=$(best kosh_rows_peak achieved_rps)
HALF_REDIS=$(( REDIS_PEAK / 2 ))
HALF_KOSH=$(( KOSH_PEAK / 2 ))
[ "$HALF_REDIS" -gt 0 ] && [ "$HALF_KOSH" -gt 0 ] || { log "a peak was zero; giving up"; exit 1; }

# --- open-loop latency at fixed offered rates --------------------------------------------------------
for r in $(seq "$ROUNDS"); do
  log "round $r/$ROUNDS: open loop at $HALF_REDIS req/s (half the Redis peak) and $HALF_KOSH req/s (half the Kosh peak)"
  measure kosh_matrix_at_half_redis "$r" "$KOSH_PID" "${KOSH_ARGS[@]}" --method matrix --rate "$HALF_REDIS" --seed "$r"
  measure redis_at_half_redis "$r" "$REDIS_PID" "${REDIS_ARGS[@]}" --rate "$HALF_REDIS" --seed "$r"
  if [ "$ROWS_PEAK" -gt "$HALF_REDIS" ]; then
    measure kosh_rows_at_half_redis "$r" "$KOSH_PID" "${KOSH_ARGS[@]}" --method rows --rate "$HALF_REDIS" --seed "$r"
  fi
  measure kosh_matrix_at_half_kosh "$r" "$KOSH_PID" "${KOSH_ARGS[@]}" --method matrix --rate "$HALF_KOSH" --seed "$r"
done
LOADAVG_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------------------
export ROOT KEYS DURATION ROUNDS CONNS THREADS KPR DOC REDIS_VERSION REDIS_MEM KOSH_RSS_KB BUILD_TYPE
export LOADAVG_BEFORE LOADAVG_AFTER ARGS_GIVEN HALF_REDIS HALF_KOSH PRIORITY
export TOTAL_S=$(( $(date +%s) - T_START ))
python3 - "$RESULTS" "$TMP/rocks.json" "$TMP/load-kosh.json" "$TMP/load-redis.json" <<'EOF'
import datetime, json, os, platform, re, statistics, subprocess, sys

results_path, rocks_path, lk_path, lr_path = sys.argv[1:]
rows = [json.loads(l) for l in open(results_path)]
rocks = json.loads(open(rocks_path).read())
load_kosh = json.loads(open(lk_path).read())
load_redis = json.loads(open(lr_path).read())
E = os.environ

def runs(name):
    return [r for r in rows if r["name"] == name]

def best(name):  # the round with the highest achieved rate
    rs = runs(name)
    return max(rs, key=lambda r: r["run"]["achieved_rps"]) if rs else None

def median_round(name):  # the round with the median p99
    rs = sorted(runs(name), key=lambda r: r["run"]["p99_ms"])
    return rs[(len(rs) - 1) // 2] if rs else None

peak_k, peak_r, peak_rows = best("kosh_matrix_peak"), best("redis_peak"), best("kosh_rows_peak")
hk, hr, hrows = median_round("kosh_matrix_at_half_redis"), median_round("redis_at_half_redis"), median_round("kosh_rows_at_half_redis")
hkk = median_round("kosh_matrix_at_half_kosh")

def f(x, nd=2):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))

table = []
def line(label, r, offered):
    if r is None:
        table.append((label, offered, "-", "-", "-", "-", "-", "-", "not run (peak below this rate)"))
        return
    x = r["run"]
    notes = []
    if not x.get("ok", True):
        notes.append(f"errors {int(x['errors'])}, unfinished {int(x['unfinished'])}")
    if x["offered_rps"] > 0 and x["achieved_rps"] < 0.98 * x["offered_rps"]:
        notes.append("overloaded: achieved < offered, latency is queueing")
    note = "; ".join(notes)
    table.append((label, offered, f"{x['achieved_rps']:.0f}", f"{x['p50_ms']:.3f}", f"{x['p99_ms']:.3f}",
                  f"{x['p999_ms']:.3f}", f"{r['server_cpu_cores']:.2f}", f"{x['client_cpu_cores']:.2f}", note))

line("Kosh RetrieveMatrix", peak_k, "closed loop (peak)")
line("Kosh Retrieve (rows)", peak_rows, "closed loop (peak)")
line("Redis MGET + parse", peak_r, "closed loop (peak)")
half_r, half_k = int(E["HALF_REDIS"]), int(E["HALF_KOSH"])
line("Kosh RetrieveMatrix", hk, f"{half_r} req/s (1/2 Redis peak)")
line("Kosh Retrieve (rows)", hrows, f"{half_r} req/s (1/2 Redis peak)")
line("Redis MGET + parse", hr, f"{half_r} req/s (1/2 Redis peak)")
line("Kosh RetrieveMatrix", hkk, f"{half_k} req/s (1/2 Kosh peak)")

head = ("system", "offered load", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "server cores", "client cores", "note")
widths = [max(len(str(row[i])) for row in table + [head]) for i in range(len(head))]
def fmt(row):
    return "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)).rstrip()
print()
print(fmt(head))
for row in table:
    print(fmt(row))
rocks_lps = rocks["lookups_per_s"]
print(f"\nin-process RocksDB MultiGet ceiling: {rocks_lps:,.0f} lookups/s "
      f"({rocks['multiget_calls_per_s']:,.0f} MultiGet calls of {E['KPR']} keys/s, 2 threads, servers idle)")

kp, rp = peak_k["run"]["achieved_rps"], peak_r["run"]["achieved_rps"]
ratio = kp / rp if rp else 0.0
p99k, p99r = hk["run"]["p99_ms"], hr["run"]["p99_ms"]
p99kk = hkk["run"]["p99_ms"]
met_ratio = ratio >= 1.5
met_p99 = p99k <= p99r
met_tp = met_ratio and met_p99
met_lat = p99kk < 2.0
word = lambda ok: "met" if ok else "MISSED"
print(f"Kosh/Redis peak: {ratio:.2f}x (target >= 1.5x: {word(met_ratio)}); p99 at {half_r} req/s: Kosh "
      f"{p99k:.3f} ms vs Redis {p99r:.3f} ms (target Kosh no higher: {word(met_p99)}); Kosh p99 at half "
      f"its peak: {p99kk:.3f} ms (target < 2 ms: {word(met_lat)})")

all_ok = all(r["run"].get("ok", True) for r in rows) and rocks.get("ok", True)
summary = {
    "kosh_peak_rps": round(kp, 1),
    "redis_peak_rps": round(rp, 1),
    "kosh_vs_redis_peak_ratio": round(ratio, 3),
    "rocksdb_inproc_lookups_per_s": round(rocks_lps, 1),
    "rocksdb_inproc_multiget_calls_per_s": round(rocks["multiget_calls_per_s"], 1),
    "fixed_rate_rps": half_r,
    "p50_ms_kosh": round(hk["run"]["p50_ms"], 3), "p99_ms_kosh": round(p99k, 3),
    "p999_ms_kosh": round(hk["run"]["p999_ms"], 3),
    "p50_ms_redis": round(hr["run"]["p50_ms"], 3), "p99_ms_redis": round(p99r, 3),
    "p999_ms_redis": round(hr["run"]["p999_ms"], 3),
    "kosh_half_peak_rps": half_k,
    "kosh_p50_ms_at_half_peak": round(hkk["run"]["p50_ms"], 3),
    "kosh_p99_ms_at_half_peak": round(p99kk, 3),
    "kosh_p999_ms_at_half_peak": round(hkk["run"]["p999_ms"], 3),
    "kosh_rows_peak_rps": round(peak_rows["run"]["achieved_rps"], 1),
    "kosh_rows_vs_redis_peak_ratio": round(peak_rows["run"]["achieved_rps"] / rp, 3) if rp else 0,
    "p99_ms_kosh_rows": round(hrows["run"]["p99_ms"], 3) if hrows else None,
    "p50_ms_kosh_rows": round(hrows["run"]["p50_ms"], 3) if hrows else None,
    "target_throughput_met": met_tp,
    "target_peak_ratio_met": met_ratio,
    "target_p99_vs_redis_met": met_p99,
    "target_latency_met": met_lat,
    "keys": int(E["KEYS"]), "keys_per_request": int(E["KPR"]), "features": 50,
    "duration_s": int(E["DURATION"]), "rounds": int(E["ROUNDS"]),
    "connections": int(E["CONNS"]), "client_threads": int(E["THREADS"]),
    "all_requests_ok": all_ok,
}

if E["DOC"] == "yes":
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=E["ROOT"]).stdout.strip()
        except Exception:
            return ""
    commit = sh("git rev-parse --short HEAD") + (" (with uncommitted changes)" if sh("git status --porcelain -- src bench proto") else "")
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem_gib = int(sh("awk '/MemTotal/ {print $2}' /proc/meminfo") or 0) / 1048576
    grpc_v = sh("pkg-config --modversion grpc++")
    rocks_v = ".".join(sh(f"sed -n 's/^#define ROCKSDB_{p} //p' /usr/include/rocksdb/version.h") for p in ("MAJOR", "MINOR", "PATCH"))
    cmd = "bench/feature_store.sh" + (" " + E["ARGS_GIVEN"] if E["ARGS_GIVEN"] else "")
    md = []
    md.append("<!-- BEGIN bench/feature_store.sh: generated; edit the script, not this section -->")
    md.append("## Feature reads: Kosh vs Redis (bench/feature_store.sh)")
    md.append("")
    md.append(f"Last run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} at commit {commit}, {E['TOTAL_S']} s in all:")
    md.append("")
    md.append("```")
    md.append(cmd)
    md.append("```")
    md.append("")
    md.append(f"Workload: {int(E['KEYS']):,} keys of entity `user`, one group of 50 FLOAT32 features; each read asks "
              f"for {E['KPR']} random keys and ends with {E['KPR']} x 50 floats in the client's memory. "
              f"Kosh is read with RetrieveMatrix (dense float32) and, separately, Retrieve (typed rows); "
              f"Redis (the design Kosh replaces) holds one string per key+group with 50 comma-separated "
              f"floats (shortest round-trip text, {load_redis.get('mean_value_bytes', 0):.0f} bytes on average), "
              f"read with MGET of the {E['KPR']} keys and parsed with `std::from_chars`. "
              f"Every 16th response is checked value by value.")
    md.append("")
    md.append("| system | offered load | req/s | p50 ms | p99 ms | p99.9 ms | server cores | client cores |")
    md.append("|---|---|---|---|---|---|---|---|")
    for row in table:
        label = row[0] + (f" ({row[8]})" if row[8] else "")
        md.append("| " + " | ".join([label] + list(row[1:8])) + " |")
    md.append("")
    md.append(f"- Kosh / Redis peak: **{ratio:.2f}x** (target >= 1.5x: {word(met_ratio)}).")
    md.append(f"- p99 at {half_r} req/s (half the Redis peak): Kosh **{p99k:.3f} ms**, Redis **{p99r:.3f} ms** "
              f"(target Kosh no higher: {word(met_p99)}).")
    md.append(f"- Kosh p99 at half its own peak ({half_k} req/s): **{p99kk:.3f} ms** (target < 2 ms: "
              f"{word(met_lat)}).")
    md.append(f"- In-process RocksDB MultiGet ceiling (same keys, same encoded rows and table options as "
              f"Kosh's engine, 2 threads, no network, servers idle): **{rocks_lps:,.0f} lookups/s** = "
              f"{rocks['multiget_calls_per_s']:,.0f} calls of {E['KPR']} keys/s.")
    md.append(f"- Load: Kosh {load_kosh['rows_per_s']:,.0f} rows/s (Persist, 1000 rows per request, 2 in flight, "
              f"synced writes); Redis {load_redis['rows_per_s']:,.0f} keys/s (pipelined SET). After loading, "
              f"Redis used {E['REDIS_MEM']}; the Kosh process {int(E['KOSH_RSS_KB'])/1024:,.0f} MiB resident.")
    md.append("")
    md.append("How it is measured:")
    md.append("")
    md.append(f"- One client program (`bench/fs_load`, flags documented at its top), {E['CONNS']} connections "
              f"to either system (each gRPC channel its own TCP connection), {E['THREADS']} client threads "
              f"(Redis: epoll loops that send, receive and parse; Kosh: completion-queue threads that "
              f"receive, parse and, in closed loop, send, plus as many sender threads in open loop). Peaks are closed loop with one request outstanding per connection, best "
              f"of {E['ROUNDS']} rounds. Fixed-rate figures are open loop: each connection has its own "
              f"schedule of send times, requests go out on schedule whether or not earlier ones returned "
              f"(gRPC multiplexes, Redis pipelines), latency counts from the scheduled time (no coordinated "
              f"omission); the median of {E['ROUNDS']} rounds by p99. Each run: 2 s warm-up on fresh connections, {E['DURATION']} s "
              f"measured. Kosh and Redis runs are interleaved within every round.")
    md.append(f"- Servers: `kosh serve` with its defaults (1 GiB row cache, RocksDB with synced writes, "
              f"{E['BUILD_TYPE']} build); all keys were read once after loading, so Kosh serves from its row "
              f"cache as in steady state (Redis keeps everything in memory anyway). {E['REDIS_VERSION']} with "
              f"`--save \"\" --appendonly no`, one I/O thread (the default).")
    md.append(f"- Machine: {os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, Linux {platform.release()}; "
              f"gRPC {grpc_v}, RocksDB {rocks_v}. Server cores and client cores are CPU time over wall "
              f"time of each run (server: /proc of the server process, including the warm-up).")
    md.append("")
    md.append("What limits the result:")
    md.append("")
    sk, ck = peak_k["server_cpu_cores"], peak_k["run"]["client_cpu_cores"]
    sr, cr = peak_r["server_cpu_cores"], peak_r["run"]["client_cpu_cores"]
    md.append(f"- The load generator and the server share the same {os.cpu_count()} cores; nothing is pinned. At "
              f"peak, Kosh's server used {sk:.2f} cores and the client {ck:.2f} "
              f"({1e6 * (sk + ck) / kp:.0f} us of CPU per request in all); Redis used {sr:.2f} cores (it is "
              f"single-threaded, so one core is its ceiling) and its client {cr:.2f} "
              f"({1e6 * (sr + cr) / rp:.0f} us per request, mostly parsing text into floats). Where the two "
              f"add up to less than {os.cpu_count()} cores, the rest went to other work on this shared machine.")
    md.append(f"- The machine is shared and noisy: load average {E['LOADAVG_BEFORE']} before the measured runs and "
              f"{E['LOADAVG_AFTER']} after; the run's priority: {E['PRIORITY']}. Compare ratios from one run, "
              f"not absolute figures across runs.")
    md.append("- Everything is on loopback: there is no network latency or bandwidth limit, which favours "
              "whichever system moves more bytes (Redis' text values are ~2.6x the size of Kosh's floats).")
    md.append("- The working set fits in Kosh's row cache and Redis' memory; the RocksDB ceiling reads from "
              "RocksDB's block cache. A working set larger than memory would be limited by the disk.")
    md.append("<!-- END bench/feature_store.sh -->")
    section = "\n".join(md) + "\n"
    path = os.path.join(E["ROOT"], "docs", "benchmarks.md")
    text = open(path).read() if os.path.exists(path) else (
        "# Benchmarks\n\nFigures from the benchmark scripts in `bench/`. Each script rewrites its own section; "
        "notes outside the generated sections are kept.\n\n")
    m = re.search(r"<!-- BEGIN bench/feature_store\.sh.*?<!-- END bench/feature_store\.sh -->\n?", text, re.S)
    text = text[:m.start()] + section + text[m.end():] if m else text.rstrip("\n") + "\n\n" + section
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)
    print(f"wrote {os.path.relpath(path, E['ROOT'])}")
else:
    print("docs/benchmarks.md not rewritten (smoke-sized run; pass --doc yes to force)")

print(json.dumps(summary))
EOF
