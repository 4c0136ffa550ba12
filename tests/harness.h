// The end-to-end test harness: starts the real `kosh` binary as a child process on free ports and
// talks to it through real clients (gRPC stubs and a small blocking HTTP/1.1 client).
//
// Contracts shared by every helper here:
//  - Every wait is bounded by an explicit timeout; nothing blocks forever.
//  - A KoshServer (and a Child) kills its process with SIGKILL and reaps it in its destructor, so a
//    failing assertion never leaks a server. Children also get PR_SET_PDEATHSIG(SIGKILL), so they
//    die with the test process even if it crashes. Because Linux delivers that signal when the
//    *thread* that forked exits, start processes from the test's main thread only.
//  - Paths are absolute; temporary directories live under $TMPDIR (default /tmp) and are removed
//    by their owner unless KOSH_E2E_KEEP=1 is set (handy to inspect a failing run).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/registry.grpc.pb.h"

namespace kosh::e2e {

using Millis = std::chrono::milliseconds;

// --- files ----------------------------------------------------------------------------------------

// Path of the kosh binary under test and of the source tree (for examples/).
std::string KoshBinary();
std::string SourcePath(const std::string& relative);

// Creates a fresh directory "$TMPDIR/kosh-e2e-<tag>-XXXXXX" and returns its path; aborts the test
// program if that is impossible (nothing meaningful can run without it).
std::string MakeTempDir(const std::string& tag);
// Removes `path` recursively (best effort).
void RemoveTree(const std::string& path);
// A directory removed on destruction (kept when KOSH_E2E_KEEP=1).
class TempDir {
 public:
  explicit TempDir(const std::string& tag) : path_(MakeTempDir(tag)) {}
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

bool WriteFile(const std::string& path, const std::string& content);
// The file's contents, or "" when it cannot be read.
std::string ReadFile(const std::string& path);

// --- HTTP -----------------------------------------------------------------------------------------

struct HttpResponse {
  int status = 0;          // 0 when no response was received (see error)
  std::string body;
  std::string content_type;
  std::string allow;       // the Allow header, if any
  std::string error;       // transport error ("connect: Connection refused", "timeout", ...)
  bool ok() const { return error.empty() && status != 0; }
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// One HTTP/1.1 request to 127.0.0.1:port on a fresh connection ("Connection: close"). Reads the
// response while the request is still being written, so a server that answers early (413) is
// seen even if it stops reading the body. Never throws; bounded by `timeout`.
HttpResponse HttpCall(int port, const std::string& method, const std::string& target,
                      const std::string& body = "", const Headers& headers = {}, Millis timeout = Millis(5000));
// Sends `raw` bytes as they are and parses whatever HTTP response comes back.
HttpResponse RawHttpCall(int port, const std::string& raw, Millis timeout = Millis(5000));

// --- child processes ------------------------------------------------------------------------------

struct ExitStatus {
  bool exited = false;     // exited normally with `code`
  int code = -1;
  int signal = 0;          // killed by this signal
  bool timed_out = false;  // still running when the wait ended
  std::string ToString() const;
};

// A child process with stdout and stderr appended to files.
class Child {
 public:
  Child() = default;
  ~Child();  // SIGKILL + reap if still running
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // fork + exec of argv[0] (an absolute path). False (with `error`) if fork fails; an exec failure
  // shows up as exit code 127.
  bool Spawn(const std::vector<std::string>& argv, const std::string& stdout_path,
             const std::string& stderr_path, std::string* error);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // Sends `sig` if running.
  void Signal(int sig);
  // Waits up to `timeout` for the exit; a timed-out wait leaves the child running.
  ExitStatus Wait(Millis timeout);
  // Non-blocking: the exit status if the child has exited (and reaps it), else timed_out=true.
  ExitStatus Poll() { return Wait(Millis(0)); }
  // SIGKILL and reap (bounded; a process that survives SIGKILL for 10 s is reported, not waited on).
  ExitStatus Kill();

 private:
  pid_t pid_ = -1;
};

struct CommandResult {
  ExitStatus status;
  std::string out;
  std::string err;
};
// Runs a command to completion (killed after `timeout`) and captures its output.
CommandResult RunCommand(const std::vector<std::string>& argv, Millis timeout = Millis(20000));

// --- the server -----------------------------------------------------------------------------------

class KoshServer {
 public:
  struct Options {
    // Data directory; empty means a fresh one inside the server's own work directory. A given
    // directory is not removed by the server (the caller may restart another server on it).
    std::string data_dir;
    std::vector<std::string> schema_files;  // each passed as --schema
    std::string config_yaml;                // when non-empty, written to a file and passed as --config
    std::vector<std::string> extra_flags;   // appended to the command line
  };

  explicit KoshServer(Options options = {});
  ~KoshServer();  // SIGKILL if running; removes the work directory
  KoshServer(const KoshServer&) = delete;
  KoshServer& operator=(const KoshServer&) = delete;

  // Spawns `kosh serve` on 127.0.0.1 port 0 for both protocols, then waits (bounded by `timeout`)
  // until the port file appears and /readyz answers 200. On failure the process is killed and the
  // result carries the server's log.
  ::testing::AssertionResult Start(Millis timeout = Millis(10000));
  // Sends `sig` and waits for the exit, SIGKILLing after `timeout` (then timed_out is set).
  ExitStatus Stop(int sig = SIGTERM, Millis timeout = Millis(15000));
  // SIGKILL now (the crash test's kill -9) and reap.
  ExitStatus Kill();
  // Signal without waiting; use WaitExit afterwards.
  void Signal(int sig) { child_.Signal(sig); }
  ExitStatus WaitExit(Millis timeout) { return child_.Wait(timeout); }

  bool running() const { return child_.running(); }
  pid_t pid() const { return child_.pid(); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  std::string grpc_target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& work_dir() const { return work_dir_; }
  // Everything the server printed so far (all runs, stdout then stderr).
  std::string Log() const;

  // A new channel to the current gRPC port (connect again after a restart).
  std::shared_ptr<grpc::Channel> NewChannel() const;
  std::unique_ptr<v1::FeatureStore::Stub> FeatureStore() const;
  std::unique_ptr<v1::Registry::Stub> Registry() const;

  HttpResponse Get(const std::string& target, Millis timeout = Millis(5000)) const {
    return HttpCall(http_port_, "GET", target, "", {}, timeout);
  }
  HttpResponse Post(const std::string& target, const std::string& body, const Headers& headers = {},
                    Millis timeout = Millis(5000)) const {
    return HttpCall(http_port_, "POST", target, body, headers, timeout);
  }

 private:
  Options options_;
  std::string work_dir_;
  std::string data_dir_;
  std::string port_file_;
  Child child_;
  int grpc_port_ = 0;
  int http_port_ = 0;
};

// --- gRPC and protobuf helpers ----------------------------------------------------------------

// A typed unary call with a deadline and an optional bearer token.
template <typename Stub, typename Req, typename Resp>
grpc::Status Invoke(Stub* stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp, const std::string& token = "", Millis timeout = Millis(5000)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  return (stub->*method)(&ctx, req, resp);
}

// A unary call by method path ("/kosh.v1.FeatureStore/Persist") with raw request bytes.
struct RawGrpcResult {
  grpc::Status status;
  std::string response;  // serialized response bytes
};
RawGrpcResult CallRaw(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request_bytes, const std::string& token = "",
                      Millis timeout = Millis(5000));

// Proto3 JSON mapping (protobuf's own). ParseJson fails on unknown fields.
std::string ToJson(const google::protobuf::Message& m);
::testing::AssertionResult ParseJson(const std::string& json, google::protobuf::Message* m);
// Field-by-field equality with a readable diff on failure.
::testing::AssertionResult ProtoEqual(const google::protobuf::Message& expected,
                                      const google::protobuf::Message& actual);

// An HTTP error body {"code": "...", "message": "..."}; empty strings if it is not one.
struct ErrorBody {
  std::string code;
  std::string message;
};
ErrorBody ParseErrorBody(const std::string& body);

// The value of the Prometheus sample whose name-and-labels text is exactly `series`, e.g.
// `kosh_requests_total{protocol="grpc",method="Retrieve",code="OK"}`; nullopt-like: -1 with
// *found=false when absent.
double MetricValue(const std::string& metrics_text, const std::string& series, bool* found);

const char* CodeName(grpc::StatusCode code);

}  // namespace kosh::e2e
