#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of Kosh from Debian 12 packages.
# Idempotent: re-running it installs nothing that is already present.
set -euo pipefail

# zookeeperd brings the ZooKeeper server jars (and a Java runtime). Kosh's tests run their own
# throw-away ZooKeeper from those jars (tests/zookeeper.h, scripts/zookeeper.sh) on a free port:
# the zookeeperd system service need not run, and is left as the distribution configures it.
PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  librocksdb-dev libzstd-dev liblz4-dev libsnappy-dev libbz2-dev zlib1g-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libboost-dev libboost-system-dev libyaml-cpp-dev libspdlog-dev libfmt-dev
  nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libhiredis-dev redis-server redis-tools
  libzookeeper-mt-dev zookeeperd
  python3 procps psmisc
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
