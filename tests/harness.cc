#include "harness.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/generic/generic_stub.h"

namespace kosh::e2e {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// --- files ----------------------------------------------------------------------------------------

std::string KoshBinary() { return KOSH_BIN; }
std::string SourcePath(const std::string& relative) { return std::string(KOSH_SOURCE_DIR) + "/" + relative; }

std::string MakeTempDir(const std::string& tag) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/kosh-e2e-" + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp(%s): %s\n", tmpl.c_str(), std::strerror(errno));
    std::abort();
  }
  return std::string(buf.data());
}

void RemoveTree(const std::string& path) {
  const char* keep = std::getenv("KOSH_E2E_KEEP");
  if (keep != nullptr && std::string(keep) == "1") return;
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

TempDir::~TempDir() { RemoveTree(path_); }

bool WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  out.close();
  return static_cast<bool>(out);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// --- HTTP -----------------------------------------------------------------------------------------

namespace {

// Connects, writes `bytes_or_request` and reads one response, all asynchronously on a private
// io_context that runs for at most `timeout`.
template <typename Writer>
HttpResponse Exchange(int port, Writer start_write, Millis timeout) {
  HttpResponse out;
  asio::io_context ioc;
  tcp::socket socket(ioc);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(256ull << 20);
  bool done = false;
  std::string write_error;
  tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port));
  socket.async_connect(ep, [&](beast::error_code ec) {
    if (ec) {
      out.error = "connect: " + ec.message();
      done = true;
      return;
    }
    http::async_read(socket, buffer, parser, [&](beast::error_code rec, size_t) {
      if (rec) {
        out.error = "read: " + rec.message();
        if (!write_error.empty()) out.error += " (write: " + write_error + ")";
      } else {
        const auto& res = parser.get();
        out.status = static_cast<int>(res.result_int());
        out.body = res.body();
        out.content_type = std::string(res[http::field::content_type]);
        out.allow = std::string(res[http::field::allow]);
      }
      done = true;
      beast::error_code ignored;
      socket.shutdown(tcp::socket::shutdown_both, ignored);
      socket.close(ignored);
    });
    start_write(socket, [&](beast::error_code wec, size_t) {
      if (wec) write_error = wec.message();
    });
  });
  ioc.run_for(timeout);
  if (!done) {
    out = HttpResponse();
    out.error = "timeout after " + std::to_string(timeout.count()) + " ms";
  }
  return out;
}

}  // namespace

HttpResponse HttpCall(int port, const std::string& method, const std::string& target, const std::string& body,
                      const Headers& headers, Millis timeout) {
  auto req = std::make_shared<http::request<http::string_body>>();
  req->method_string(method);
  req->target(target);
  req->version(11);
  req->set(http::field::host, "127.0.0.1:" + std::to_string(port));
  req->set(http::field::user_agent, "kosh-e2e");
  if (!body.empty()) req->set(http::field::content_type, "application/json");
  for (const auto& [k, v] : headers) req->set(k, v);
  req->keep_alive(false);
  req->body() = body;
  req->prepare_payload();
  return Exchange(
      port,
      [req](tcp::socket& s, auto handler) { http::async_write(s, *req, std::move(handler)); },
      timeout);
}

HttpResponse RawHttpCall(int port, const std::string& raw, Millis timeout) {
  auto data = std::make_shared<std::string>(raw);
  return Exchange(
      port,
      [data](tcp::socket& s, auto handler) { asio::async_write(s, asio::buffer(*data), std::move(handler)); },
      timeout);
}

// --- child processes ------------------------------------------------------------------------------

std::string ExitStatus::ToString() const {
  if (timed_out) return "still running (wait timed out)";
  if (exited) return "exited with code " + std::to_string(code);
  if (signal != 0) return "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
  return "unknown";
}

Child::~Child() { Kill(); }

bool Child::Spawn(const std::vector<std::string>& argv, const std::string& stdout_path,
                  const std::string& stderr_path, std::string* error) {
  if (pid_ > 0) {
    *error = "already running";
    return false;
  }
  // Everything the child needs is prepared before fork: between fork and exec only
  // async-signal-safe calls are allowed (the parent has gRPC threads).
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const char* out_path = stdout_path.c_str();
  const char* err_path = stderr_path.c_str();
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    int in = open("/dev/null", O_RDONLY);
    int out = open(out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int err = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || out < 0 || err < 0) _exit(125);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    execv(args[0], args.data());
    _exit(127);
  }
  pid_ = pid;
  return true;
}

void Child::Signal(int sig) {
  if (pid_ > 0) ::kill(pid_, sig);
}

ExitStatus Child::Wait(Millis timeout) {
  ExitStatus st;
  if (pid_ <= 0) {
    st.timed_out = false;
    return st;
  }
  auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) {
        st.exited = true;
        st.code = WEXITSTATUS(status);
      } else if (WIFSIGNALED(status)) {
        st.signal = WTERMSIG(status);
      }
      return st;
    }
    if (r < 0 && errno != EINTR) {  // not our child any more (should not happen)
      pid_ = -1;
      return st;
    }
    if (Clock::now() >= deadline) {
      st.timed_out = true;
      return st;
    }
    std::this_thread::sleep_for(Millis(5));
  }
}

ExitStatus Child::Kill() {
  if (pid_ <= 0) return ExitStatus();
  ::kill(pid_, SIGKILL);
  ExitStatus st = Wait(Millis(10000));
  if (st.timed_out) pid_ = -1;  // give up on it rather than hang the test
  return st;
}

CommandResult RunCommand(const std::vector<std::string>& argv, Millis timeout) {
  TempDir dir("cmd");
  CommandResult r;
  Child c;
  std::string error;
  if (!c.Spawn(argv, dir.File("out"), dir.File("err"), &error)) {
    r.err = error;
    return r;
  }
  r.status = c.Wait(timeout);
  if (r.status.timed_out) {
    c.Kill();
    r.status.timed_out = true;
  }
  r.out = ReadFile(dir.File("out"));
  r.err = ReadFile(dir.File("err"));
  return r;
}

// --- the server -----------------------------------------------------------------------------------

KoshServer::KoshServer(Options options) : options_(std::move(options)) {
  work_dir_ = MakeTempDir("server");
  data_dir_ = options_.data_dir.empty() ? work_dir_ + "/data" : options_.data_dir;
  port_file_ = work_dir_ + "/ports.json";
}

KoshServer::~KoshServer() {
  child_.Kill();
  RemoveTree(work_dir_);
}

std::string KoshServer::Log() const {
  return ReadFile(work_dir_ + "/stdout.log") + ReadFile(work_dir_ + "/stderr.log");
}

::testing::AssertionResult KoshServer::Start(Millis timeout) {
  if (child_.running()) return ::testing::AssertionFailure() << "server already running";
  std::remove(port_file_.c_str());
  grpc_port_ = http_port_ = 0;
  std::vector<std::string> argv = {KoshBinary(), "serve"};
  if (!options_.config_yaml.empty()) {
    std::string config = work_dir_ + "/kosh.yaml";
    if (!WriteFile(config, options_.config_yaml)) return ::testing::AssertionFailure() << "cannot write " << config;
    argv.insert(argv.end(), {"--config", config});
  }
  argv.insert(argv.end(), {"--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--data-dir",
                           data_dir_, "--port-file", port_file_});
  for (const auto& s : options_.schema_files) argv.insert(argv.end(), {"--schema", s});
  argv.insert(argv.end(), options_.extra_flags.begin(), options_.extra_flags.end());

  std::string error;
  if (!child_.Spawn(argv, work_dir_ + "/stdout.log", work_dir_ + "/stderr.log", &error)) {
    return ::testing::AssertionFailure() << "spawn: " << error;
  }
  const auto deadline = Clock::now() + timeout;
  static const std::regex kPorts(R"re(\{"grpc":\s*(\d+),\s*"http":\s*(\d+)\})re");
  std::string last;
  while (Clock::now() < deadline) {
    ExitStatus st = child_.Poll();
    if (!st.timed_out) {
      return ::testing::AssertionFailure() << "kosh serve " << st.ToString() << " while starting; log:\n" << Log();
    }
    if (grpc_port_ == 0) {
      std::smatch m;
      std::string ports = ReadFile(port_file_);
      if (std::regex_search(ports, m, kPorts)) {
        grpc_port_ = std::stoi(m[1]);
        http_port_ = std::stoi(m[2]);
      }
    }
    if (http_port_ != 0) {
      HttpResponse r = HttpCall(http_port_, "GET", "/readyz", "", {}, Millis(1000));
      if (r.status == 200) return ::testing::AssertionSuccess();
      last = r.ok() ? std::to_string(r.status) + " " + r.body : r.error;
    }
    std::this_thread::sleep_for(Millis(20));
  }
  child_.Kill();
  return ::testing::AssertionFailure() << "kosh serve not ready within " << timeout.count()
                                       << " ms (port file: \"" << ReadFile(port_file_) << "\", last /readyz: "
                                       << last << "); log:\n"
                                       << Log();
}

ExitStatus KoshServer::Stop(int sig, Millis timeout) {
  if (!child_.running()) return ExitStatus();
  child_.Signal(sig);
  ExitStatus st = child_.Wait(timeout);
  if (st.timed_out) {
    child_.Kill();
    st.timed_out = true;
  }
  return st;
}

ExitStatus KoshServer::Kill() { return child_.Kill(); }

std::shared_ptr<grpc::Channel> KoshServer::NewChannel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // A fresh subchannel per channel object, so channels made after a restart never share state.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(grpc_target(), grpc::InsecureChannelCredentials(), args);
}

std::unique_ptr<v1::FeatureStore::Stub> KoshServer::FeatureStore() const {
  return v1::FeatureStore::NewStub(NewChannel());
}
std::unique_ptr<v1::Registry::Stub> KoshServer::Registry() const { return v1::Registry::NewStub(NewChannel()); }

// --- gRPC and protobuf helpers ----------------------------------------------------------------

RawGrpcResult CallRaw(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request_bytes, const std::string& token, Millis timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  RawGrpcResult r;
  // The deadline bounds the call; the extra margin only guards against a lost callback.
  auto fut = done.get_future();
  if (fut.wait_for(timeout + Millis(5000)) != std::future_status::ready) {
    ctx.TryCancel();
    r.status = fut.get();
    return r;
  }
  r.status = fut.get();
  std::vector<grpc::Slice> slices;
  if (r.status.ok() && response.Dump(&slices).ok()) {
    for (const auto& s : slices) r.response.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return r;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

::testing::AssertionResult ParseJson(const std::string& json, google::protobuf::Message* m) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  m->Clear();
  auto st = google::protobuf::util::JsonStringToMessage(json, m, opts);
  if (!st.ok()) {
    return ::testing::AssertionFailure() << "not a valid " << m->GetTypeName() << " in proto3 JSON: "
                                         << std::string(st.message()) << "\njson: " << json;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult ProtoEqual(const google::protobuf::Message& expected,
                                      const google::protobuf::Message& actual) {
  google::protobuf::util::MessageDifferencer diff;
  std::string report;
  diff.ReportDifferencesToString(&report);
  if (diff.Compare(expected, actual)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "messages differ:\n"
                                       << report << "expected: " << ToJson(expected)
                                       << "\nactual:   " << ToJson(actual);
}

ErrorBody ParseErrorBody(const std::string& body) {
  ErrorBody e;
  google::protobuf::Struct s;
  if (!google::protobuf::util::JsonStringToMessage(body, &s).ok()) return e;
  const auto& f = s.fields();
  if (auto it = f.find("code"); it != f.end()) e.code = it->second.string_value();
  if (auto it = f.find("message"); it != f.end()) e.message = it->second.string_value();
  return e;
}

double MetricValue(const std::string& text, const std::string& series, bool* found) {
  *found = false;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      *found = true;
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return -1;
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "?";
  }
}

}  // namespace kosh::e2e
