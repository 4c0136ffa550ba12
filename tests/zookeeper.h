// A real, throw-away ZooKeeper server for tests: Debian's zookeeper jars (package zookeeperd /
// libzookeeper-java, installed by scripts/setup.sh) run standalone with a generated zoo.cfg in a
// temporary directory, on a free 127.0.0.1 port, admin server off. The system's zookeeperd service
// is neither needed nor touched.
//
// Contracts:
//  - Every wait is bounded; Start fails (with the server's log) rather than hang.
//  - The server process is killed and reaped by Stop/Kill and by the destructor, and it gets
//    PR_SET_PDEATHSIG(SIGKILL), so it dies with the test process even if that crashes. Linux sends
//    that signal when the *thread* that forked exits: start servers from the test's main thread.
//  - The data directory survives Kill/Stop, so a restart (Start again) keeps the data and the
//    port; it is removed by the destructor unless KOSH_E2E_KEEP=1.
//  - KOSH_ZOOKEEPER_CLASSPATH overrides the class path (default: /usr/share/java/zookeeper.jar,
//    whose manifest names its dependencies, plus slf4j-simple for warnings in the log); JAVA the
//    java binary (default: java on PATH).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "gtest/gtest.h"

namespace kosh::e2e {

class ZooKeeperServer {
 public:
  ZooKeeperServer();
  ~ZooKeeperServer();
  ZooKeeperServer(const ZooKeeperServer&) = delete;
  ZooKeeperServer& operator=(const ZooKeeperServer&) = delete;

  // Starts the server (again, on the same port and data, after Stop/Kill) and waits until it
  // answers "ruok" with "imok". The first start picks a free port (retrying another if it was
  // taken meanwhile).
  ::testing::AssertionResult Start(std::chrono::milliseconds timeout = std::chrono::milliseconds(30000));
  // SIGTERM, then SIGKILL after `grace`; reaps. No-op when not running.
  void Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
  // SIGKILL now and reap (a crash of the ensemble).
  void Kill();

  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  // The connect string for clients: "127.0.0.1:<port>".
  std::string hosts() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& dir() const { return dir_; }
  // The server's output so far.
  std::string Log() const;

 private:
  ::testing::AssertionResult StartOnce(std::chrono::steady_clock::time_point deadline);

  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A port on 127.0.0.1 that nothing listened on a moment ago (bind to port 0, close).
int FreeLoopbackPort();

}  // namespace kosh::e2e
