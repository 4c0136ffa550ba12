// Tests of the KServe v2 model client against real servers: each test talks to
// kosh_v2_test_server processes (tests/v2_test_server.cc) started on free ports, over gRPC and
// HTTP/JSON, and checks what the servers saw through their GET /stats.
#include "flows/model_client.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"

namespace kosh::flows {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Protocol = ModelEndpoint::Protocol;

// --- a v2 test server process ------------------------------------------------------------------

struct HttpResult {
  int status = 0;  // 0: no response (see error)
  std::string body;
  std::string error;
};

// One HTTP/1.1 request on a fresh connection, bounded by `timeout`.
HttpResult HttpRequest(int port, http::verb method, const std::string& target, const std::string& body = "",
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  HttpResult out;
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_after(timeout);
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!body.empty()) req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.keep_alive(false);
  req.prepare_payload();
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  stream.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)),
                       [&](beast::error_code ec) {
                         if (ec) {
                           out.error = "connect: " + ec.message();
                           return;
                         }
                         http::async_write(stream, req, [&](beast::error_code wec, size_t) {
                           if (wec) {
                             out.error = "write: " + wec.message();
                             return;
                           }
                           http::async_read(stream, buffer, res, [&](beast::error_code rec, size_t) {
                             if (rec) {
                               out.error = "read: " + rec.message();
                               return;
                             }
                             out.status = static_cast<int>(res.result_int());
                             out.body = res.body();
                           });
                         });
                       });
  ioc.run();  // bounded: the stream's expiry cancels every operation
  return out;
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A port on 127.0.0.1 that nothing listens on (bound, then released).
int UnusedPort() {
  asio::io_context ioc;
  tcp::acceptor a(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

struct ServerStats {
  int64_t infer_requests = -1;
  int64_t rows = -1;
  int64_t grpc_infer_requests = -1;
  int64_t http_infer_requests = -1;
  int64_t http_connections = -1;
};

// Runs kosh_v2_test_server with `flags`. The process is SIGKILLed and reaped by the destructor,
// and dies with the test process (PR_SET_PDEATHSIG; start servers from the main thread only).
class V2Server {
 public:
  explicit V2Server(std::vector<std::string> flags) : flags_(std::move(flags)) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/kosh-v2-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir_ = tmpl;
  }
  ~V2Server() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  V2Server(const V2Server&) = delete;
  V2Server& operator=(const V2Server&) = delete;

  // Spawns the server and waits (at most 10 s) for its port file and GET /v2/health/ready.
  ::testing::AssertionResult Start() {
    const std::string port_file = dir_ + "/ports.json";
    std::vector<std::string> argv = {V2_TEST_SERVER, "--port-file", port_file};
    argv.insert(argv.end(), flags_.begin(), flags_.end());
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    const std::string log = dir_ + "/log";
    const pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) return ::testing::AssertionFailure() << "fork failed";
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(126);
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    static const std::regex kPorts(R"re(\{"grpc":\s*(\d+),\s*"http":\s*(\d+)\})re");
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return ::testing::AssertionFailure() << "kosh_v2_test_server exited (status " << status
                                             << ") while starting; log:\n" << ReadFileText(log);
      }
      std::smatch m;
      std::string ports = ReadFileText(port_file);
      if (std::regex_search(ports, m, kPorts)) {
        grpc_port_ = std::stoi(m[1]);
        http_port_ = std::stoi(m[2]);
        if (HttpRequest(http_port_, http::verb::get, "/v2/health/ready").status == 200) {
          return ::testing::AssertionSuccess();
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Kill();
    return ::testing::AssertionFailure() << "kosh_v2_test_server not ready in 10 s; log:\n" << ReadFileText(log);
  }

  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  std::string grpc_address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }
  std::string http_address() const { return absl::StrCat("127.0.0.1:", http_port_); }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  ModelEndpoint Endpoint(Protocol p, uint32_t weight = 0) const {
    return ModelEndpoint{p == Protocol::kGrpc ? grpc_address() : http_address(), p, weight};
  }

  ServerStats Stats() const {
    ServerStats s;
    HttpResult r = HttpRequest(http_port_, http::verb::get, "/stats");
    if (r.status != 200) {
      ADD_FAILURE() << "GET /stats: " << r.status << " " << r.error;
      return s;
    }
    auto get = [&](const char* key) -> int64_t {
      std::smatch m;
      std::regex re(absl::StrCat("\"", key, "\":(\\d+)"));
      return std::regex_search(r.body, m, re) ? std::stoll(m[1]) : -1;
    };
    s.infer_requests = get("infer_requests");
    s.rows = get("rows");
    s.grpc_infer_requests = get("grpc_infer_requests");
    s.http_infer_requests = get("http_infer_requests");
    s.http_connections = get("http_connections");
    return s;
  }

 private:
  std::vector<std::string> flags_;
  std::string dir_;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int http_port_ = 0;
};

// --- the model and test data -------------------------------------------------------------------

// The linear model every test server computes: flags below and the same function here.
const std::vector<double> kWeights = {0.5, 1, -2};
constexpr double kBias = 0.1;
const std::vector<std::string> kLinearFlags = {"--weights", "0.5,1,-2", "--bias", "0.1"};
constexpr size_t kCols = 3;

std::vector<float> MakeRows(size_t rows) {
  std::vector<float> x(rows * kCols);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>((i * 7919) % 23) - 11) * 0.37f;
  return x;
}

// The exact scores: the server sums in double from the bias, then narrows to float.
std::vector<float> Expected(const std::vector<float>& x) {
  std::vector<float> out;
  for (size_t r = 0; r < x.size() / kCols; ++r) {
    double s = kBias;
    for (size_t i = 0; i < kCols; ++i) s += kWeights[i] * static_cast<double>(x[r * kCols + i]);
    out.push_back(static_cast<float>(s));
  }
  return out;
}

ModelCallOptions Options(std::vector<ModelEndpoint> endpoints, uint32_t batch_size = 64, int64_t timeout_ms = 3000) {
  ModelCallOptions o;
  o.model_name = "linear";
  o.batch_size = batch_size;
  o.timeout_ms = timeout_ms;
  o.endpoints = std::move(endpoints);
  return o;
}

std::unique_ptr<ModelClient> MustCreate(ModelCallOptions o, base::MetricsRegistry* metrics = nullptr) {
  auto c = ModelClient::Create(std::move(o), metrics);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

absl::Time Soon() { return absl::Now() + absl::Seconds(5); }

// --- the fixture: one long-lived linear model server shared by the tests ---------------------------

class ModelClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new V2Server(kLinearFlags);
    ASSERT_TRUE(server_->Start());
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static V2Server* server_;
};
V2Server* ModelClientTest::server_ = nullptr;

// --- configuration ------------------------------------------------------------------------------

TEST(ModelCallOptionsTest, ParsesTheYamlForm) {
  YAML::Node n = YAML::Load(R"(
kind: kserve
name: ctr
version: "3"
input: dense_input
output: probability
batch_size: 32
timeout: 20ms
max_idle_connections: 4
endpoints:
  - {address: 127.0.0.1:8001, protocol: grpc, weight: 90}
  - {address: "[::1]:8000", protocol: http, weight: 10}
)");
  auto o = ParseModelCallOptions(n, "components[3] (ctr).model");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_name, "ctr");
  EXPECT_EQ(o->model_version, "3");
  EXPECT_EQ(o->input_name, "dense_input");
  EXPECT_EQ(o->output_name, "probability");
  EXPECT_EQ(o->batch_size, 32u);
  EXPECT_EQ(o->timeout_ms, 20);
  EXPECT_EQ(o->max_idle_connections, 4u);
  ASSERT_EQ(o->endpoints.size(), 2u);
  EXPECT_EQ(o->endpoints[0].address, "127.0.0.1:8001");
  EXPECT_EQ(o->endpoints[0].protocol, Protocol::kGrpc);
  EXPECT_EQ(o->endpoints[0].weight_percent, 90u);
  EXPECT_EQ(o->endpoints[1].address, "[::1]:8000");
  EXPECT_EQ(o->endpoints[1].protocol, Protocol::kHttp);
  EXPECT_EQ(o->endpoints[1].weight_percent, 10u);
}

TEST(ModelCallOptionsTest, Defaults) {
  auto o = ParseModelCallOptions(YAML::Load("{name: ctr, endpoints: [{address: 'models:8001'}]}"), "model");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model_version, "");
  EXPECT_EQ(o->input_name, "INPUT0");
  EXPECT_EQ(o->output_name, "OUTPUT0");
  EXPECT_EQ(o->batch_size, 64u);
  EXPECT_EQ(o->timeout_ms, 100);
  ASSERT_EQ(o->endpoints.size(), 1u);
  EXPECT_EQ(o->endpoints[0].protocol, Protocol::kGrpc);
  EXPECT_EQ(o->endpoints[0].weight_percent, 0u);
}

TEST(ModelCallOptionsTest, BadConfigsNameTheField) {
  const std::string ep = "endpoints: [{address: '127.0.0.1:8001'}]";
  struct Case {
    std::string yaml;
    std::string field;  // must start the error message
  };
  const std::vector<Case> cases = {
      {"[1, 2]", "m: expected a mapping"},
      {"{endpoints: [{address: 'a:1'}]}", "m.name: required"},
      {"{name: 'bad/name', " + ep + "}", "m.name: \"bad/name\" is not a valid model name"},
      {"{name: ctr, version: 'v 1', " + ep + "}", "m.version:"},
      {"{name: ctr, kind: triton, " + ep + "}", "m.kind: \"triton\" is not a model server kind"},
      {"{name: ctr, colour: red, " + ep + "}", "m.colour: unknown option"},
      {"{name: ctr, batch_size: 0, " + ep + "}", "m.batch_size: must be 1 to 65536"},
      {"{name: ctr, batch_size: -3, " + ep + "}", "m.batch_size: expected a non-negative integer"},
      {"{name: ctr, batch_size: 1000000, " + ep + "}", "m.batch_size: must be 1 to 65536"},
      {"{name: ctr, timeout: soon, " + ep + "}", "m.timeout:"},
      {"{name: ctr, timeout: 0ms, " + ep + "}", "m.timeout: must be positive"},
      {"{name: ctr, input: '', " + ep + "}", "m.input: must be a tensor name"},
      {"{name: ctr, max_idle_connections: 5000, " + ep + "}", "m.max_idle_connections: must be 0 to 1024"},
      {"{name: ctr}", "m.endpoints: required"},
      {"{name: ctr, endpoints: []}", "m.endpoints: required: at least one endpoint"},
      {"{name: ctr, endpoints: 'a:1'}", "m.endpoints: expected a list"},
      {"{name: ctr, endpoints: ['a:1']}", "m.endpoints[0]: expected a mapping"},
      {"{name: ctr, endpoints: [{protocol: grpc}]}", "m.endpoints[0].address: required"},
      {"{name: ctr, endpoints: [{address: 'localhost'}]}", "m.endpoints[0].address: \"localhost\" is not host:port"},
      {"{name: ctr, endpoints: [{address: 'h:70000'}]}", "m.endpoints[0].address: \"h:70000\" is not host:port"},
      {"{name: ctr, endpoints: [{address: 'h:0'}]}", "m.endpoints[0].address:"},
      {"{name: ctr, endpoints: [{address: ':80'}]}", "m.endpoints[0].address:"},
      {"{name: ctr, endpoints: [{address: 'h:1', protocol: tcp}]}",
       "m.endpoints[0].protocol: \"tcp\" is not a protocol (known: grpc, http)"},
      {"{name: ctr, endpoints: [{address: 'h:1', weight: 101}]}", "m.endpoints[0].weight: must be a percentage"},
      {"{name: ctr, endpoints: [{address: 'h:1', weight: -1}]}", "m.endpoints[0].weight: expected a non-negative"},
      {"{name: ctr, endpoints: [{address: 'h:1', port: 2}]}", "m.endpoints[0].port: unknown option"},
      {"{name: ctr, endpoints: [{address: 'h:1', weight: 90}, {address: 'h:2', weight: 20}]}",
       "m.endpoints: weights sum to 110"},
      {"{name: ctr, endpoints: [{address: 'h:1', weight: 50}, {address: 'h:2'}]}", "m.endpoints: weights sum to 50"},
      {"{name: ctr, endpoints: [{address: 'h:1'}, {address: 'h:1'}]}",
       "m.endpoints[1].address: \"h:1\" is already endpoints[0]"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.yaml);
    auto o = ParseModelCallOptions(YAML::Load(c.yaml), "m");
    ASSERT_FALSE(o.ok());
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(o.status().message(), c.field)) << o.status();
  }
}

TEST(ModelCallOptionsTest, CreateValidatesToo) {
  ModelCallOptions o = Options({{"127.0.0.1:1", Protocol::kGrpc, 60}, {"127.0.0.1:2", Protocol::kHttp, 30}});
  auto c = ModelClient::Create(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(c.status().message(), "model.endpoints: weights sum to 90")) << c.status();
}

// --- scoring ------------------------------------------------------------------------------------

TEST_F(ModelClientTest, GrpcScoresAreTheLinearFunction) {
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kGrpc)}));
  ASSERT_NE(client, nullptr);
  const std::vector<float> x = MakeRows(10);
  auto s = client->Score(x.data(), 10, kCols, Soon());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, Expected(x));
  EXPECT_NE((*s)[0], (*s)[1]);  // the data is not degenerate
}

TEST_F(ModelClientTest, HttpScoresAreTheLinearFunction) {
  ModelCallOptions o = Options({server_->Endpoint(Protocol::kHttp)});
  for (const char* version : {"", "1"}) {  // /v2/models/linear/infer and .../versions/1/infer
    SCOPED_TRACE(absl::StrCat("version \"", version, "\""));
    o.model_version = version;
    auto client = MustCreate(o);
    ASSERT_NE(client, nullptr);
    const std::vector<float> x = MakeRows(10);
    auto s = client->Score(x.data(), 10, kCols, Soon());
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(*s, Expected(x));
  }
}

TEST_F(ModelClientTest, GrpcReadsTypedOutputContents) {
  V2Server typed([] {
    auto f = kLinearFlags;
    f.push_back("--typed-output");
    return f;
  }());
  ASSERT_TRUE(typed.Start());
  auto client = MustCreate(Options({typed.Endpoint(Protocol::kGrpc)}));
  const std::vector<float> x = MakeRows(7);
  auto s = client->Score(x.data(), 7, kCols, Soon());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, Expected(x));
}

TEST_F(ModelClientTest, ZeroRowsSendNothing) {
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kGrpc)}));
  const ServerStats before = server_->Stats();
  auto s = client->Score(nullptr, 0, kCols, Soon());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->empty());
  EXPECT_EQ(server_->Stats().infer_requests, before.infer_requests);
  auto bad = client->Score(nullptr, 0, 0, Soon());
  EXPECT_TRUE(bad.ok());  // no rows: nothing to check
  float one = 1;
  EXPECT_EQ(client->Score(&one, 1, 0, Soon()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelClientTest, RowsAreSentInBatchesOfBatchSize) {
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    auto client = MustCreate(Options({server_->Endpoint(p)}, /*batch_size=*/64));
    const std::vector<float> x = MakeRows(250);
    const ServerStats before = server_->Stats();
    auto s = client->Score(x.data(), 250, kCols, Soon());
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(*s, Expected(x));  // batches reassembled in row order
    const ServerStats after = server_->Stats();
    EXPECT_EQ(after.infer_requests - before.infer_requests, 4);  // 64 + 64 + 64 + 58
    EXPECT_EQ(after.rows - before.rows, 250);
    if (p == Protocol::kGrpc) {
      EXPECT_EQ(after.grpc_infer_requests - before.grpc_infer_requests, 4);
    } else {
      EXPECT_EQ(after.http_infer_requests - before.http_infer_requests, 4);
    }
    // Exactly one batch when the rows fit.
    auto one = client->Score(x.data(), 64, kCols, Soon());
    ASSERT_TRUE(one.ok()) << one.status();
    EXPECT_EQ(server_->Stats().infer_requests - after.infer_requests, 1);
  }
}

TEST_F(ModelClientTest, ConcurrentCallsFromManyThreads) {
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    auto client = MustCreate(Options({server_->Endpoint(p)}, /*batch_size=*/16));
    const ServerStats before = server_->Stats();
    std::vector<std::thread> threads;
    std::atomic<int> good{0};
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 10; ++i) {
          const size_t rows = 20 + t * 7 + i;  // 2 to 5 batches each
          const std::vector<float> x = MakeRows(rows);
          auto s = client->Score(x.data(), rows, kCols, Soon());
          if (s.ok() && *s == Expected(x)) good.fetch_add(1);
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(good.load(), 60);
    EXPECT_GT(server_->Stats().infer_requests - before.infer_requests, 120);
  }
}

TEST_F(ModelClientTest, HttpKeepsConnectionsAlive) {
  const std::vector<float> x = MakeRows(5);
  {
    auto client = MustCreate(Options({server_->Endpoint(Protocol::kHttp)}));
    const ServerStats before = server_->Stats();
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(client->Score(x.data(), 5, kCols, Soon()).ok());
    const ServerStats after = server_->Stats();
    EXPECT_EQ(after.http_infer_requests - before.http_infer_requests, 20);
    // One connection for the 20 calls, plus the one of this GET /stats.
    EXPECT_LE(after.http_connections - before.http_connections, 2);
  }
  {
    ModelCallOptions o = Options({server_->Endpoint(Protocol::kHttp)});
    o.max_idle_connections = 0;
    auto client = MustCreate(o);
    const ServerStats before = server_->Stats();
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(client->Score(x.data(), 5, kCols, Soon()).ok());
    EXPECT_GE(server_->Stats().http_connections - before.http_connections, 20);
  }
}

// --- traffic split ------------------------------------------------------------------------------

TEST_F(ModelClientTest, NinetyTenSplitSendsAboutTenPercentToTheCanary) {
  V2Server canary(kLinearFlags);
  ASSERT_TRUE(canary.Start());
  auto client = MustCreate(
      Options({server_->Endpoint(Protocol::kGrpc, 90), canary.Endpoint(Protocol::kHttp, 10)}));
  const std::vector<float> x = MakeRows(1);
  const ServerStats main_before = server_->Stats();
  constexpr int kCalls = 400;
  for (int i = 0; i < kCalls; ++i) {
    auto s = client->Score(x.data(), 1, kCols, Soon());
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(*s, Expected(x));
  }
  const int64_t to_main = server_->Stats().infer_requests - main_before.infer_requests;
  const int64_t to_canary = canary.Stats().infer_requests;
  EXPECT_EQ(to_main + to_canary, kCalls);
  // Binomial(400, 0.1): mean 40, standard deviation 6; this window is more than 4 deviations wide.
  EXPECT_GE(to_canary, 15);
  EXPECT_LE(to_canary, 70);
}

TEST_F(ModelClientTest, HundredZeroSplitSendsNothingToTheSecond) {
  V2Server parked(kLinearFlags);
  ASSERT_TRUE(parked.Start());
  auto client = MustCreate(
      Options({server_->Endpoint(Protocol::kGrpc, 100), parked.Endpoint(Protocol::kGrpc, 0)}));
  const std::vector<float> x = MakeRows(3);
  const ServerStats before = server_->Stats();
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(client->Score(x.data(), 3, kCols, Soon()).ok());
  EXPECT_EQ(server_->Stats().infer_requests - before.infer_requests, 200);
  EXPECT_EQ(parked.Stats().infer_requests, 0);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(client->PickEndpoint(), 0u);
}

TEST_F(ModelClientTest, AllZeroWeightsSplitEqually) {
  V2Server second(kLinearFlags);
  ASSERT_TRUE(second.Start());
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kGrpc), second.Endpoint(Protocol::kGrpc)}));
  const std::vector<float> x = MakeRows(1);
  const ServerStats before = server_->Stats();
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(client->Score(x.data(), 1, kCols, Soon()).ok());
  const int64_t first = server_->Stats().infer_requests - before.infer_requests;
  const int64_t other = second.Stats().infer_requests;
  EXPECT_EQ(first + other, 200);
  EXPECT_GE(other, 60);  // Binomial(200, 0.5): mean 100, standard deviation 7
  EXPECT_LE(other, 140);
}

TEST_F(ModelClientTest, ScoreOnUsesTheGivenEndpoint) {
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kGrpc, 100), server_->Endpoint(Protocol::kHttp, 0)}));
  const std::vector<float> x = MakeRows(2);
  const ServerStats before = server_->Stats();
  auto s = client->ScoreOn(1, x.data(), 2, kCols, Soon());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, Expected(x));
  EXPECT_EQ(server_->Stats().http_infer_requests - before.http_infer_requests, 1);
  EXPECT_EQ(client->ScoreOn(2, x.data(), 2, kCols, Soon()).status().code(), absl::StatusCode::kOutOfRange);
}

// --- failures -----------------------------------------------------------------------------------

TEST_F(ModelClientTest, SlowServerGivesDeadlineExceeded) {
  V2Server slow([] {
    auto f = kLinearFlags;
    f.insert(f.end(), {"--delay-ms", "2000"});
    return f;
  }());
  ASSERT_TRUE(slow.Start());
  const std::vector<float> x = MakeRows(100);
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    // The client's own timeout...
    auto client = MustCreate(Options({slow.Endpoint(p)}, /*batch_size=*/64, /*timeout_ms=*/100));
    auto start = Clock::now();
    auto s = client->Score(x.data(), 100, kCols, Soon());
    auto took = Clock::now() - start;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), slow.Endpoint(p).address)) << s.status();
    EXPECT_GE(took, std::chrono::milliseconds(90));
    EXPECT_LT(took, std::chrono::milliseconds(1000));
    // ... and the caller's deadline, when it is earlier.
    auto patient = MustCreate(Options({slow.Endpoint(p)}, 64, /*timeout_ms=*/10000));
    start = Clock::now();
    s = patient->Score(x.data(), 100, kCols, absl::Now() + absl::Milliseconds(80));
    took = Clock::now() - start;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded) << s.status();
    EXPECT_LT(took, std::chrono::milliseconds(1000));
    // A deadline already past sends nothing.
    s = patient->Score(x.data(), 100, kCols, absl::Now() - absl::Milliseconds(1));
    EXPECT_EQ(s.status().code(), absl::StatusCode::kDeadlineExceeded) << s.status();
    // Destroying the clients now waits for the abandoned requests only up to their deadlines.
    start = Clock::now();
    client.reset();
    patient.reset();
    EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1000));
  }
}

TEST_F(ModelClientTest, UnreachableEndpointGivesUnavailable) {
  const std::string address = absl::StrCat("127.0.0.1:", UnusedPort());
  const std::vector<float> x = MakeRows(3);
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    auto client = MustCreate(Options({{address, p, 0}}, 64, /*timeout_ms=*/2000));
    auto start = Clock::now();
    auto s = client->Score(x.data(), 3, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), absl::StrCat(address, " (", ModelProtocolName(p), ")")))
        << s.status();
    EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1500));  // refused at once, not a timeout
  }
}

TEST_F(ModelClientTest, ModelServerRestartIsTransparent) {
  auto first = std::make_unique<V2Server>(kLinearFlags);
  ASSERT_TRUE(first->Start());
  const int grpc_port = first->grpc_port();
  const int http_port = first->http_port();
  auto client =
      MustCreate(Options({first->Endpoint(Protocol::kGrpc, 50), first->Endpoint(Protocol::kHttp, 50)}));
  const std::vector<float> x = MakeRows(5);
  ASSERT_TRUE(client->ScoreOn(0, x.data(), 5, kCols, Soon()).ok());
  ASSERT_TRUE(client->ScoreOn(1, x.data(), 5, kCols, Soon()).ok());  // leaves a kept-alive connection
  first.reset();  // SIGKILL: the server's side of every connection closes under the client

  V2Server second([&] {
    auto f = kLinearFlags;
    f.insert(f.end(), {"--grpc-port", std::to_string(grpc_port), "--http-port", std::to_string(http_port)});
    return f;
  }());
  ASSERT_TRUE(second.Start());
  // HTTP: the idle connection is stale; the client notices on use and retries once on a new one.
  auto s = client->ScoreOn(1, x.data(), 5, kCols, Soon());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, Expected(x));
  EXPECT_EQ(second.Stats().http_infer_requests, 1);
  // gRPC: the channel reconnects (its reconnect backoff is at most 2 s; a fresh disconnect needs none).
  const auto until = Clock::now() + std::chrono::seconds(3);
  do {
    s = client->ScoreOn(0, x.data(), 5, kCols, Soon());
    if (s.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (Clock::now() < until);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, Expected(x));
  EXPECT_GE(second.Stats().grpc_infer_requests, 1);
}

TEST_F(ModelClientTest, ServerErrorNamesTheEndpoint) {
  V2Server failing([] {
    auto f = kLinearFlags;
    f.push_back("--fail");
    return f;
  }());
  ASSERT_TRUE(failing.Start());
  const std::vector<float> x = MakeRows(3);
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    auto client = MustCreate(Options({failing.Endpoint(p)}));
    auto s = client->Score(x.data(), 3, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInternal) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), failing.Endpoint(p).address)) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "model \"linear\" failed (--fail)")) << s.status();
  }
  EXPECT_EQ(failing.Stats().infer_requests, 2);
}

TEST_F(ModelClientTest, ShortOutputIsAMalformedResponse) {
  V2Server shorter([] {
    auto f = kLinearFlags;
    f.push_back("--short-output");
    return f;
  }());
  ASSERT_TRUE(shorter.Start());
  const std::vector<float> x = MakeRows(10);
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    auto client = MustCreate(Options({shorter.Endpoint(p)}));
    auto s = client->Score(x.data(), 10, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInternal) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), shorter.Endpoint(p).address)) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "malformed response: output \"OUTPUT0\" has shape [9,1], "
                                                        "expected [10] or [10,1]"))
        << s.status();
  }
}

TEST_F(ModelClientTest, RequestsTheModelRejectsAreFailedPrecondition) {
  const std::vector<float> x = MakeRows(4);
  for (Protocol p : {Protocol::kGrpc, Protocol::kHttp}) {
    SCOPED_TRACE(ModelProtocolName(p));
    ModelCallOptions o = Options({server_->Endpoint(p)});
    o.model_name = "nosuch";
    auto s = MustCreate(o)->Score(x.data(), 4, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "unknown model \"nosuch\"")) << s.status();

    o = Options({server_->Endpoint(p)});
    o.model_version = "7";
    s = MustCreate(o)->Score(x.data(), 4, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "no version \"7\"")) << s.status();

    // Two columns for a model of three.
    s = MustCreate(Options({server_->Endpoint(p)}))->Score(x.data(), 4, 2, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "shape [4,2], the model takes [-1,3]")) << s.status();

    o = Options({server_->Endpoint(p)});
    o.output_name = "SCORES";
    s = MustCreate(o)->Score(x.data(), 4, kCols, Soon());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
    EXPECT_TRUE(absl::StrContains(s.status().message(), "unknown output \"SCORES\"")) << s.status();
  }
}

TEST_F(ModelClientTest, HttpRejectsNonFiniteInputsBeforeSending) {
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kHttp)}));
  std::vector<float> x = MakeRows(3);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  const ServerStats before = server_->Stats();
  auto s = client->Score(x.data(), 3, kCols, Soon());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "rows[1][2]")) << s.status();
  EXPECT_EQ(server_->Stats().infer_requests, before.infer_requests);
}

TEST_F(ModelClientTest, MetricsCountRequestsByEndpointAndCode) {
  base::MetricsRegistry metrics;
  const std::string down = absl::StrCat("127.0.0.1:", UnusedPort());
  auto client = MustCreate(Options({server_->Endpoint(Protocol::kGrpc, 100), {down, Protocol::kHttp, 0}}, 64), &metrics);
  const std::vector<float> x = MakeRows(100);  // 2 batches per call
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client->Score(x.data(), 100, kCols, Soon()).ok());
  EXPECT_FALSE(client->ScoreOn(1, x.data(), 10, kCols, Soon()).ok());
  const std::string text = metrics.RenderPrometheus();
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("kosh_model_requests_total{model=\"linear\",endpoint=\"",
                                                   server_->grpc_address(), "\",protocol=\"grpc\",code=\"OK\"} 6")))
      << text;
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("kosh_model_requests_total{model=\"linear\",endpoint=\"", down,
                                                   "\",protocol=\"http\",code=\"UNAVAILABLE\"} 1")))
      << text;
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("kosh_model_request_seconds_count{model=\"linear\",endpoint=\"",
                                                   server_->grpc_address(), "\",protocol=\"grpc\"} 6")))
      << text;
}

// --- the test server's own protocol handling ---------------------------------------------------------

TEST_F(ModelClientTest, TestServerSpeaksV2OverGrpc) {
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials()));
  auto ctx = [] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    return c;
  };
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub->ServerLive(ctx().get(), {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(stub->ServerReady(ctx().get(), {}, &ready).ok());
  EXPECT_TRUE(ready.ready());

  inference::ModelReadyRequest mr;
  mr.set_name("linear");
  inference::ModelReadyResponse mready;
  ASSERT_TRUE(stub->ModelReady(ctx().get(), mr, &mready).ok());
  EXPECT_TRUE(mready.ready());
  mr.set_name("nosuch");
  EXPECT_EQ(stub->ModelReady(ctx().get(), mr, &mready).error_code(), grpc::NOT_FOUND);

  inference::ModelMetadataRequest mm;
  mm.set_name("linear");
  inference::ModelMetadataResponse meta;
  ASSERT_TRUE(stub->ModelMetadata(ctx().get(), mm, &meta).ok());
  ASSERT_EQ(meta.inputs_size(), 1);
  EXPECT_EQ(meta.inputs(0).name(), "INPUT0");
  EXPECT_EQ(meta.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(meta.inputs(0).shape().begin(), meta.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 3}));

  // Typed input contents are accepted as well as raw ones.
  inference::ModelInferRequest req;
  req.set_model_name("linear");
  req.set_id("req-1");
  auto* in = req.add_inputs();
  in->set_name("INPUT0");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(3);
  for (float v : {1.0f, 2.0f, 3.0f}) in->mutable_contents()->add_fp32_contents(v);
  inference::ModelInferResponse resp;
  grpc::Status st = stub->ModelInfer(ctx().get(), req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.id(), "req-1");
  ASSERT_EQ(resp.raw_output_contents_size(), 1);
  float score = 0;
  ASSERT_EQ(resp.raw_output_contents(0).size(), sizeof(float));
  std::memcpy(&score, resp.raw_output_contents(0).data(), sizeof(float));
  EXPECT_EQ(score, static_cast<float>(0.1 + 0.5 * 1 + 1 * 2 - 2 * 3));

  // Wrong datatype, shape and element count are INVALID_ARGUMENT.
  inference::ModelInferRequest bad = req;
  bad.mutable_inputs(0)->set_datatype("INT64");
  st = stub->ModelInfer(ctx().get(), bad, &resp);
  EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(st.error_message(), "datatype \"INT64\"")) << st.error_message();
  bad = req;
  bad.mutable_inputs(0)->set_shape(1, 4);
  EXPECT_EQ(stub->ModelInfer(ctx().get(), bad, &resp).error_code(), grpc::INVALID_ARGUMENT);
  bad = req;
  bad.mutable_inputs(0)->mutable_contents()->add_fp32_contents(4);
  EXPECT_EQ(stub->ModelInfer(ctx().get(), bad, &resp).error_code(), grpc::INVALID_ARGUMENT);
  bad = req;
  bad.set_model_name("nosuch");
  EXPECT_EQ(stub->ModelInfer(ctx().get(), bad, &resp).error_code(), grpc::NOT_FOUND);
}

TEST_F(ModelClientTest, TestServerSpeaksV2OverHttp) {
  const int port = server_->http_port();
  EXPECT_EQ(HttpRequest(port, http::verb::get, "/v2/health/live").status, 200);
  HttpResult meta = HttpRequest(port, http::verb::get, "/v2/models/linear");
  EXPECT_EQ(meta.status, 200);
  EXPECT_TRUE(absl::StrContains(meta.body, "\"shape\":[-1,3]")) << meta.body;
  HttpResult r = HttpRequest(port, http::verb::get, "/v2/models/nosuch");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(absl::StrContains(r.body, "{\"error\":\"unknown model \\\"nosuch\\\"\"}")) << r.body;

  r = HttpRequest(port, http::verb::post, "/v2/models/linear/versions/1/infer",
                  R"({"id":"a","inputs":[{"name":"INPUT0","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[0,0,0]]}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "\"id\":\"a\"")) << r.body;
  EXPECT_TRUE(absl::StrContains(r.body, "\"shape\":[2,1]")) << r.body;

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"BYTES","data":[1,2,3]}]})", "datatype \\\"BYTES\\\""},
      {R"({"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[1,2]}]})", "2 values, shape needs 3"},
      {R"({"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1,2]}]})", "shape [1,2]"},
      {R"({"inputs":[{"name":"X","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]})", "unexpected input \\\"X\\\""},
      {R"({"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":["a",2,3]}]})", "list of numbers"},
      {"{not json", "not a JSON object"},
  };
  for (const auto& [body, message] : bad) {
    SCOPED_TRACE(body);
    r = HttpRequest(port, http::verb::post, "/v2/models/linear/infer", body);
    EXPECT_EQ(r.status, 400);
    EXPECT_TRUE(absl::StrContains(r.body, "\"error\":")) << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, message)) << r.body;
  }
  EXPECT_EQ(HttpRequest(port, http::verb::get, "/v2/models/linear/infer").status, 405);
  EXPECT_EQ(HttpRequest(port, http::verb::get, "/nowhere").status, 404);
}

}  // namespace
}  // namespace kosh::flows
