#!/usr/bin/env bash
# Runs a standalone ZooKeeper for trying the ZooKeeper registry backend by hand (docs/operations.md),
# from Debian's jars (scripts/setup.sh installs zookeeperd); the zookeeperd system service is not
# used. The tests do the same from C++ (tests/zookeeper.h).
#
#   scripts/zookeeper.sh start [PORT] [DIR]   start in the background (default 2181, ./zookeeper-data);
#                                             waits until it answers "ruok" (at most 30 s)
#   scripts/zookeeper.sh stop [DIR]           stop it (SIGTERM, then SIGKILL after 10 s)
#   scripts/zookeeper.sh status [DIR]         "running on port N (pid P)" or exit 1
#   scripts/zookeeper.sh run [PORT] [DIR]     in the foreground (Ctrl-C stops it)
#
# It listens on 127.0.0.1 only, with the admin server off. Data (and zookeeper.log) stay in DIR.
# Environment: JAVA (default: java), KOSH_ZOOKEEPER_CLASSPATH (default: Debian's zookeeper.jar,
# whose manifest names its dependencies, plus slf4j-simple).
set -euo pipefail

cmd=${1:-}
case "$cmd" in
  start|run) port=${2:-2181}; dir=${3:-./zookeeper-data} ;;
  stop|status) dir=${2:-./zookeeper-data} ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/zookeeper.pid"

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

ruok() {  # prints imok when the server is up
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf ruok >&3 && timeout 2 cat <&3) 2>/dev/null || true
}

write_config() {
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<EOF
tickTime=500
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxSessionTimeout=60000
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat
EOF
  echo "$port" >"$dir/zookeeper.port"
}

java_cmd() {
  local cp=${KOSH_ZOOKEEPER_CLASSPATH:-/usr/share/java/zookeeper.jar}
  if [ -z "${KOSH_ZOOKEEPER_CLASSPATH:-}" ] && [ -r /usr/share/java/slf4j-simple.jar ]; then
    cp="$cp:/usr/share/java/slf4j-simple.jar"
  fi
  if [ ! -r /usr/share/java/zookeeper.jar ] && [ -z "${KOSH_ZOOKEEPER_CLASSPATH:-}" ]; then
    echo "zookeeper.sh: /usr/share/java/zookeeper.jar is missing; run scripts/setup.sh" >&2
    exit 1
  fi
  echo "${JAVA:-java} -Xmx256m -Dzookeeper.admin.enableServer=false -Dzookeeper.jmx.log4j.disable=true" \
       "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp $cp" \
       "org.apache.zookeeper.server.ZooKeeperServerMain $dir/zoo.cfg"
}

case "$cmd" in
  run)
    write_config
    # shellcheck disable=SC2046
    exec $(java_cmd)
    ;;
  start)
    if pid=$(running_pid); then
      echo "zookeeper already running (pid $pid, port $(cat "$dir/zookeeper.port"))"
      exit 0
    fi
    write_config
    # shellcheck disable=SC2046
    nohup $(java_cmd) >>"$dir/zookeeper.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 300); do
      if [ "$(ruok "$port")" = imok ]; then
        echo "zookeeper running on 127.0.0.1:$port (pid $(cat "$pidfile"), data in $dir)"
        exit 0
      fi
      if ! running_pid >/dev/null; then
        echo "zookeeper exited during start-up; see $dir/zookeeper.log:" >&2
        tail -20 "$dir/zookeeper.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "zookeeper did not answer on port $port within 30 s; see $dir/zookeeper.log" >&2
    exit 1
    ;;
  stop)
    if ! pid=$(running_pid); then
      echo "zookeeper is not running"
      rm -f "$pidfile"
      exit 0
    fi
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "stopped"; exit 0; }
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "killed (did not stop within 10 s)"
    ;;
  status)
    if pid=$(running_pid); then
      echo "running on port $(cat "$dir/zookeeper.port") (pid $pid)"
    else
      echo "not running"
      exit 1
    fi
    ;;
esac
