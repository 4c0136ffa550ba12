#include "zookeeper.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace kosh::e2e {
namespace {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string DefaultClassPath() {
  const char* env = std::getenv("KOSH_ZOOKEEPER_CLASSPATH");
  if (env != nullptr && *env != '\0') return env;
  std::string cp = "/usr/share/java/zookeeper.jar";
  for (const char* binding : {"/usr/share/java/slf4j-simple.jar", "/usr/share/java/slf4j-nop.jar"}) {
    if (access(binding, R_OK) == 0) {
      cp += std::string(":") + binding;
      break;
    }
  }
  return cp;
}

// Sends "ruok" and expects "imok" within `timeout`.
bool Ruok(int port, Millis timeout) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && write(fd, "ruok", 4) == 4) {
    std::string got;
    auto deadline = Clock::now() + timeout;
    while (got.size() < 4 && Clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      int left = static_cast<int>(std::chrono::duration_cast<Millis>(deadline - Clock::now()).count());
      if (poll(&p, 1, std::max(left, 1)) <= 0) break;
      char buf[16];
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    ok = got == "imok";
  }
  close(fd);
  return ok;
}

}  // namespace

int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

ZooKeeperServer::ZooKeeperServer() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/kosh-zookeeper-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp(%s): %s\n", tmpl.c_str(), std::strerror(errno));
    std::abort();
  }
  dir_ = buf.data();
}

ZooKeeperServer::~ZooKeeperServer() {
  Kill();
  const char* keep = std::getenv("KOSH_E2E_KEEP");
  if (keep == nullptr || std::string(keep) != "1") {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string ZooKeeperServer::Log() const { return ReadWholeFile(dir_ + "/zookeeper.log"); }

::testing::AssertionResult ZooKeeperServer::Start(Millis timeout) {
  if (running()) return ::testing::AssertionFailure() << "ZooKeeper is already running";
  auto deadline = Clock::now() + timeout;
  const bool fixed_port = port_ != 0;  // a restart keeps its port: clients reconnect to it
  ::testing::AssertionResult last = ::testing::AssertionFailure();
  for (int attempt = 0; attempt < (fixed_port ? 1 : 3); ++attempt) {
    if (!fixed_port) port_ = FreeLoopbackPort();
    last = StartOnce(deadline);
    if (last || Clock::now() >= deadline) break;
    if (Log().find("Address already in use") == std::string::npos) break;  // not a port race
  }
  return last;
}

::testing::AssertionResult ZooKeeperServer::StartOnce(Clock::time_point deadline) {
  if (port_ == 0) return ::testing::AssertionFailure() << "no free port";
  std::filesystem::create_directories(dir_ + "/data");
  const std::string cfg = dir_ + "/zoo.cfg";
  {
    std::ofstream out(cfg, std::ios::trunc);
    out << "tickTime=200\n"
        << "minSessionTimeout=400\n"
        << "maxSessionTimeout=60000\n"
        << "dataDir=" << dir_ << "/data\n"
        << "clientPort=" << port_ << "\n"
        << "clientPortAddress=127.0.0.1\n"
        << "maxClientCnxns=0\n"
        << "admin.enableServer=false\n"
        << "4lw.commands.whitelist=ruok,srvr,stat\n";
    if (!out) return ::testing::AssertionFailure() << "cannot write " << cfg;
  }
  const char* java_env = std::getenv("JAVA");
  const std::string java = java_env != nullptr && *java_env != '\0' ? java_env : "java";
  std::vector<std::string> args = {java,
                                   "-Xmx128m",
                                   "-XX:+UseSerialGC",
                                   "-XX:TieredStopAtLevel=1",
                                   "-Dzookeeper.admin.enableServer=false",
                                   "-Dzookeeper.jmx.log4j.disable=true",
                                   "-Dzookeeper.forceSync=no",
                                   "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                                   "-cp",
                                   DefaultClassPath(),
                                   "org.apache.zookeeper.server.ZooKeeperServerMain",
                                   cfg};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = dir_ + "/zookeeper.log";
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return ::testing::AssertionFailure() << "fork: " << std::strerror(errno);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    execvp(argv[0], argv.data());
    std::fprintf(stderr, "exec %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  pid_ = pid;
  while (Clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ::testing::AssertionFailure()
             << "ZooKeeper exited during start-up (is zookeeperd installed? run scripts/setup.sh); log:\n"
             << Log();
    }
    if (Ruok(port_, Millis(500))) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(Millis(50));
  }
  Kill();
  return ::testing::AssertionFailure() << "ZooKeeper did not answer ruok on port " << port_ << " in time; log:\n"
                                       << Log();
}

void ZooKeeperServer::Stop(Millis grace) {
  if (!running()) return;
  kill(pid_, SIGTERM);
  auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(Millis(20));
  }
  Kill();
}

void ZooKeeperServer::Kill() {
  if (!running()) return;
  kill(pid_, SIGKILL);
  int status = 0;
  auto deadline = Clock::now() + Millis(10000);
  while (Clock::now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) break;
    std::this_thread::sleep_for(Millis(10));
  }
  pid_ = -1;
}

}  // namespace kosh::e2e
