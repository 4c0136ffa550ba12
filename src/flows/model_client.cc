#include "flows/model_client.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/config.h"
#include "base/status.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace kosh::flows {

static_assert(std::endian::native == std::endian::little,
              "raw tensor contents are little-endian; a big-endian build needs byte swaps");

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxResponseBytes = 64ull << 20;
constexpr uint32_t kMaxIdleConnections = 1024;
constexpr size_t kMaxNameBytes = 128;
constexpr size_t kMaxTensorNameBytes = 256;
constexpr int kNumStatusCodes = 17;  // absl::StatusCode values 0 (OK) to 16 (UNAUTHENTICATED)

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

bool IsPathSafeName(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '_' || c == '.' || c == '-'; });
}

// Splits "host:port" or "[v6]:port". False when the form or the port (1..65535) is wrong.
bool SplitHostPort(absl::string_view address, std::string* host, uint16_t* port) {
  absl::string_view h, p;
  if (!address.empty() && address.front() == '[') {
    size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() || address[close + 1] != ':') return false;
    h = address.substr(1, close - 1);
    p = address.substr(close + 2);
  } else {
    size_t colon = address.find(':');
    if (colon == absl::string_view::npos || address.find(':', colon + 1) != absl::string_view::npos) return false;
    h = address.substr(0, colon);
    p = address.substr(colon + 1);
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  for (char c : h) {
    if (absl::ascii_isspace(c) || c == '/' || c == '@' || static_cast<unsigned char>(c) < 0x20) return false;
  }
  uint32_t v = 0;
  if (!std::all_of(p.begin(), p.end(), [](char c) { return absl::ascii_isdigit(c); }) || !absl::SimpleAtoi(p, &v) ||
      v == 0 || v > 65535) {
    return false;
  }
  if (host != nullptr) *host = std::string(h);
  if (port != nullptr) *port = static_cast<uint16_t>(v);
  return true;
}

// The Score status for a gRPC status from the server (see the table in the header).
absl::StatusCode MapGrpcCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::DEADLINE_EXCEEDED: return absl::StatusCode::kDeadlineExceeded;
    case grpc::UNAVAILABLE: return absl::StatusCode::kUnavailable;
    case grpc::CANCELLED: return absl::StatusCode::kCancelled;
    case grpc::RESOURCE_EXHAUSTED: return absl::StatusCode::kResourceExhausted;
    case grpc::INVALID_ARGUMENT:
    case grpc::NOT_FOUND:
    case grpc::FAILED_PRECONDITION:
    case grpc::OUT_OF_RANGE:
    case grpc::UNIMPLEMENTED:
    case grpc::ALREADY_EXISTS:
    case grpc::PERMISSION_DENIED:
    case grpc::UNAUTHENTICATED: return absl::StatusCode::kFailedPrecondition;
    default: return absl::StatusCode::kInternal;
  }
}

absl::StatusCode MapHttpStatus(unsigned status) {
  if (status == 408 || status == 504) return absl::StatusCode::kDeadlineExceeded;
  if (status == 429) return absl::StatusCode::kResourceExhausted;
  if (status == 502 || status == 503) return absl::StatusCode::kUnavailable;
  if (status >= 400 && status < 500) return absl::StatusCode::kFailedPrecondition;
  return absl::StatusCode::kInternal;
}

std::string Truncate(absl::string_view s, size_t n = 300) {
  if (s.size() <= n) return std::string(s);
  return absl::StrCat(s.substr(0, n), "...");
}

// Checks the output tensor's shape against the row count: [rows] or [rows, 1].
absl::Status CheckOutputShape(const std::vector<int64_t>& shape, size_t rows, absl::string_view output) {
  bool ok = !shape.empty() && shape.size() <= 2 && shape[0] == static_cast<int64_t>(rows) &&
            (shape.size() == 1 || shape[1] == 1);
  if (ok) return absl::OkStatus();
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&dims, i ? "," : "", shape[i]);
  return absl::InternalError(absl::StrCat("output \"", output, "\" has shape [", dims, "], expected [", rows,
                                          "] or [", rows, ",1] (one score per row)"));
}

// Appends the numbers of `j`, a number or nested arrays of numbers, flattened in order (servers
// may answer [[s0], [s1], ...] as well as [s0, s1, ...]). False on anything else.
bool FlattenNumbers(const nlohmann::json& j, std::vector<float>* out) {
  if (j.is_array()) {
    for (const auto& e : j) {
      if (!FlattenNumbers(e, out)) return false;
    }
    return true;
  }
  if (!j.is_number()) return false;
  out->push_back(static_cast<float>(j.get<double>()));
  return true;
}

}  // namespace

const char* ModelProtocolName(ModelEndpoint::Protocol protocol) {
  return protocol == ModelEndpoint::Protocol::kHttp ? "http" : "grpc";
}

absl::Status ValidateModelCallOptions(const ModelCallOptions& o, absl::string_view path) {
  auto at = [&](absl::string_view field) { return path.empty() ? std::string(field) : absl::StrCat(path, ".", field); };
  if (o.model_name.empty()) return Invalid(at("name"), "required (the model's name on the server)");
  if (o.model_name.size() > kMaxNameBytes || !IsPathSafeName(o.model_name)) {
    return Invalid(at("name"), absl::StrCat("\"", Truncate(o.model_name, 64),
                                            "\" is not a valid model name ([A-Za-z0-9_.-], at most 128 bytes)"));
  }
  if (o.model_version.size() > kMaxNameBytes || !IsPathSafeName(o.model_version)) {
    return Invalid(at("version"), absl::StrCat("\"", Truncate(o.model_version, 64),
                                               "\" is not a valid version ([A-Za-z0-9_.-], at most 128 bytes)"));
  }
  if (o.input_name.empty() || o.input_name.size() > kMaxTensorNameBytes) {
    return Invalid(at("input"), "must be a tensor name of 1 to 256 bytes");
  }
  if (o.output_name.empty() || o.output_name.size() > kMaxTensorNameBytes) {
    return Invalid(at("output"), "must be a tensor name of 1 to 256 bytes");
  }
  if (o.batch_size == 0 || o.batch_size > kMaxModelBatchSize) {
    return Invalid(at("batch_size"), absl::StrCat("must be 1 to ", kMaxModelBatchSize));
  }
  if (o.timeout_ms <= 0 || o.timeout_ms > kMaxModelTimeoutMs) {
    return Invalid(at("timeout"), absl::StrCat("must be positive and at most ", kMaxModelTimeoutMs / 1000, "s"));
  }
  if (o.max_idle_connections > kMaxIdleConnections) {
    return Invalid(at("max_idle_connections"), absl::StrCat("must be 0 to ", kMaxIdleConnections));
  }
  if (o.endpoints.empty()) return Invalid(at("endpoints"), "required: at least one endpoint");
  if (o.endpoints.size() > kMaxModelEndpoints) {
    return Invalid(at("endpoints"), absl::StrCat(o.endpoints.size(), " endpoints exceeds the limit of ",
                                                 kMaxModelEndpoints));
  }
  uint32_t sum = 0;
  for (size_t i = 0; i < o.endpoints.size(); ++i) {
    const ModelEndpoint& e = o.endpoints[i];
    std::string where = at(absl::StrCat("endpoints[", i, "]"));
    if (!SplitHostPort(e.address, nullptr, nullptr)) {
      return Invalid(absl::StrCat(where, ".address"),
                     absl::StrCat("\"", Truncate(e.address, 64), "\" is not host:port (port 1 to 65535)"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (o.endpoints[j].address == e.address) {
        return Invalid(absl::StrCat(where, ".address"),
                       absl::StrCat("\"", e.address, "\" is already endpoints[", j, "]"));
      }
    }
    if (e.weight_percent > 100) return Invalid(absl::StrCat(where, ".weight"), "must be a percentage, 0 to 100");
    sum += e.weight_percent;
  }
  if (sum != 0 && sum != 100) {
    return Invalid(at("endpoints"), absl::StrCat("weights sum to ", sum,
                                                 "; they are percentages and must sum to 100 (or all be 0 for an "
                                                 "equal split)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelCallOptions> ParseModelCallOptions(const YAML::Node& node, absl::string_view path_view) {
  const std::string path(path_view);
  auto at = [&](absl::string_view field) { return path.empty() ? std::string(field) : absl::StrCat(path, ".", field); };
  if (!node.IsDefined() || !node.IsMap()) {
    return Invalid(path.empty() ? "model" : path, "expected a mapping with name and endpoints");
  }
  ModelCallOptions o;
  try {
    base::YamlReader r(node, path);
    RETURN_IF_ERROR(r.CheckKeys({"kind", "name", "version", "input", "output", "batch_size", "timeout",
                                 "max_idle_connections", "endpoints"}));
    if (r.Has("kind")) {
      std::string kind;
      RETURN_IF_ERROR(r.GetString("kind", &kind));
      if (kind != "kserve") {
        return Invalid(at("kind"), absl::StrCat("\"", Truncate(kind, 64), "\" is not a model server kind (known: kserve)"));
      }
    }
    RETURN_IF_ERROR(r.GetString("name", &o.model_name));
    RETURN_IF_ERROR(r.GetString("version", &o.model_version));
    RETURN_IF_ERROR(r.GetString("input", &o.input_name));
    RETURN_IF_ERROR(r.GetString("output", &o.output_name));
    uint64_t v = o.batch_size;
    RETURN_IF_ERROR(r.GetUint("batch_size", &v));
    if (v == 0 || v > kMaxModelBatchSize) return Invalid(at("batch_size"), absl::StrCat("must be 1 to ", kMaxModelBatchSize));
    o.batch_size = static_cast<uint32_t>(v);
    RETURN_IF_ERROR(r.GetDurationMs("timeout", &o.timeout_ms));
    v = o.max_idle_connections;
    RETURN_IF_ERROR(r.GetUint("max_idle_connections", &v));
    if (v > kMaxIdleConnections) {
      return Invalid(at("max_idle_connections"), absl::StrCat("must be 0 to ", kMaxIdleConnections));
    }
    o.max_idle_connections = static_cast<uint32_t>(v);

    const YAML::Node eps = node["endpoints"];
    if (!eps.IsDefined() || eps.IsNull()) return Invalid(at("endpoints"), "required: a list of {address, protocol, weight}");
    if (!eps.IsSequence()) return Invalid(at("endpoints"), "expected a list of {address, protocol, weight}");
    if (eps.size() > kMaxModelEndpoints) {
      return Invalid(at("endpoints"), absl::StrCat(eps.size(), " endpoints exceeds the limit of ", kMaxModelEndpoints));
    }
    for (size_t i = 0; i < eps.size(); ++i) {
      std::string where = at(absl::StrCat("endpoints[", i, "]"));
      if (!eps[i].IsMap()) return Invalid(where, "expected a mapping {address, protocol, weight}");
      base::YamlReader er(eps[i], where);
      RETURN_IF_ERROR(er.CheckKeys({"address", "protocol", "weight"}));
      ModelEndpoint e;
      if (!er.Has("address")) return Invalid(absl::StrCat(where, ".address"), "required (host:port)");
      RETURN_IF_ERROR(er.GetString("address", &e.address));
      std::string protocol = "grpc";
      RETURN_IF_ERROR(er.GetString("protocol", &protocol));
      if (protocol == "grpc") {
        e.protocol = ModelEndpoint::Protocol::kGrpc;
      } else if (protocol == "http") {
        e.protocol = ModelEndpoint::Protocol::kHttp;
      } else {
        return Invalid(absl::StrCat(where, ".protocol"),
                       absl::StrCat("\"", Truncate(protocol, 64), "\" is not a protocol (known: grpc, http)"));
      }
      uint64_t w = 0;
      RETURN_IF_ERROR(er.GetUint("weight", &w));
      if (w > 100) return Invalid(absl::StrCat(where, ".weight"), "must be a percentage, 0 to 100");
      e.weight_percent = static_cast<uint32_t>(w);
      o.endpoints.push_back(std::move(e));
    }
  } catch (const YAML::Exception& e) {
    // yaml-cpp throws on conversions of malformed nodes (e.g. a mapping key that is a list).
    return Invalid(path.empty() ? "model" : path, e.msg);
  }
  RETURN_IF_ERROR(ValidateModelCallOptions(o, path));
  return o;
}

// --- the client -------------------------------------------------------------------------------

namespace {

// Counts the requests in flight so that the client's destructor can wait for them. Shared with
// the requests, so the one that brings the count to zero may still be unlocking the mutex while
// the client is destroyed.
struct InflightTracker {
  absl::Mutex mu;
  int64_t count ABSL_GUARDED_BY(mu) = 0;
  void Add() {
    absl::MutexLock l(&mu);
    ++count;
  }
  void Done() {
    absl::MutexLock l(&mu);
    --count;
  }
  void WaitIdle() {
    absl::MutexLock l(&mu);
    mu.Await(absl::Condition(
        +[](int64_t* c) { return *c == 0; }, &count));
  }
};

// One Score call: its batches report here; Score waits until all have, one failed, or the
// deadline passed. Shared with the batches, which may outlive an abandoned Score call.
struct ScoreState {
  absl::Mutex mu;
  size_t pending ABSL_GUARDED_BY(mu) = 0;
  absl::Status error ABSL_GUARDED_BY(mu);
  std::vector<std::vector<float>> results ABSL_GUARDED_BY(mu);  // by batch

  bool Finished() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return pending == 0 || !error.ok(); }

  void Deliver(size_t batch, absl::Status st, std::vector<float> scores) {
    absl::MutexLock l(&mu);
    if (st.ok()) {
      results[batch] = std::move(scores);
    } else if (error.ok()) {
      error = std::move(st);
    }
    --pending;
  }
};

}  // namespace

struct ModelClient::Impl {
  struct Endpoint {
    ModelEndpoint config;
    std::string label;  // "127.0.0.1:8001 (grpc)"
    std::string host;
    std::string port;
    // gRPC
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
    // HTTP: the infer path and the idle kept-alive connections (touched only on the I/O thread).
    std::string http_target;
    std::vector<tcp::socket> idle;
    // Metrics (null without a registry); counters are created on first use of each code.
    base::Histogram* latency = nullptr;
    std::atomic<base::Counter*> by_code[kNumStatusCodes] = {};
  };

  ModelCallOptions options;
  base::MetricsRegistry* metrics = nullptr;
  uint32_t total_weight = 0;  // 0 = equal split
  std::shared_ptr<InflightTracker> inflight = std::make_shared<InflightTracker>();
  // HTTP endpoints only. Declared before `endpoints` so idle sockets are closed first.
  std::unique_ptr<asio::io_context> ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread io_thread;
  std::vector<std::unique_ptr<Endpoint>> endpoints;

  ~Impl() {
    inflight->WaitIdle();
    if (ioc) {
      work.reset();
      ioc->stop();
      if (io_thread.joinable()) io_thread.join();
      for (auto& e : endpoints) e->idle.clear();
    }
  }

  std::string Prefix(const Endpoint& e) const {
    return absl::StrCat("model \"", options.model_name, "\" at ", e.label, ": ");
  }
  absl::Status Error(const Endpoint& e, absl::StatusCode code, absl::string_view what) const {
    return absl::Status(code, absl::StrCat(Prefix(e), what));
  }

  void Record(Endpoint* e, absl::StatusCode code, Clock::time_point start) {
    if (metrics == nullptr) return;
    e->latency->Observe(std::chrono::duration<double>(Clock::now() - start).count());
    const int c = static_cast<int>(code);
    if (c < 0 || c >= kNumStatusCodes) return;
    base::Counter* counter = e->by_code[c].load(std::memory_order_acquire);
    if (counter == nullptr) {
      counter = metrics->GetCounter(
          "kosh_model_requests_total", "Infer requests to external model servers, by endpoint and status code.",
          {{"model", options.model_name},
           {"endpoint", e->config.address},
           {"protocol", ModelProtocolName(e->config.protocol)},
           {"code", absl::StatusCodeToString(code)}});
      e->by_code[c].store(counter, std::memory_order_release);
    }
    counter->Inc();
  }

  // --- gRPC ---------------------------------------------------------------------------------

  // Leaves the in-flight count when destroyed.
  struct InflightToken {
    std::shared_ptr<InflightTracker> tracker;
    explicit InflightToken(std::shared_ptr<InflightTracker> t) : tracker(std::move(t)) { tracker->Add(); }
    ~InflightToken() { tracker->Done(); }
    InflightToken(const InflightToken&) = delete;
    InflightToken& operator=(const InflightToken&) = delete;
  };

  // One gRPC infer request. It counts as in flight until destroyed, not just until its callback
  // ran: its ClientContext holds a reference to the channel, and the client's destructor must drop
  // the last one. (Were the last channel reference dropped on the callback thread, gRPC 1.51 would
  // shut down its callback completion queue from one of that queue's own threads: a double free.)
  struct GrpcCall {
    explicit GrpcCall(std::shared_ptr<InflightTracker> t) : token(std::move(t)) {}
    InflightToken token;  // first member: destroyed last, after the context
    grpc::ClientContext ctx;
    inference::ModelInferRequest request;
    inference::ModelInferResponse response;
  };

  absl::StatusOr<std::vector<float>> DecodeGrpc(const Endpoint& e, const inference::ModelInferResponse& resp,
                                                size_t rows) const {
    int index = -1;
    for (int i = 0; i < resp.outputs_size(); ++i) {
      if (resp.outputs(i).name() == options.output_name) {
        index = i;
        break;
      }
    }
    if (index < 0) {
      std::string names;
      for (const auto& o : resp.outputs()) absl::StrAppend(&names, names.empty() ? "" : ", ", o.name());
      return Error(e, absl::StatusCode::kInternal,
                   absl::StrCat("malformed response: no output \"", options.output_name, "\" (outputs: ",
                                names.empty() ? "none" : Truncate(names), ")"));
    }
    const auto& out = resp.outputs(index);
    if (out.datatype() != "FP32") {
      return Error(e, absl::StatusCode::kInternal,
                   absl::StrCat("malformed response: output \"", out.name(), "\" has datatype \"", Truncate(out.datatype(), 32),
                                "\", expected FP32"));
    }
    std::vector<int64_t> shape(out.shape().begin(), out.shape().end());
    if (auto st = CheckOutputShape(shape, rows, out.name()); !st.ok()) {
      return Error(e, absl::StatusCode::kInternal, absl::StrCat("malformed response: ", st.message()));
    }
    std::vector<float> scores(rows);
    if (resp.raw_output_contents_size() > 0) {
      if (index >= resp.raw_output_contents_size()) {
        return Error(e, absl::StatusCode::kInternal,
                     absl::StrCat("malformed response: raw_output_contents has ", resp.raw_output_contents_size(),
                                  " entries, output \"", out.name(), "\" is number ", index + 1));
      }
      const std::string& raw = resp.raw_output_contents(index);
      if (raw.size() != rows * sizeof(float)) {
        return Error(e, absl::StatusCode::kInternal,
                     absl::StrCat("malformed response: output \"", out.name(), "\" has ", raw.size(),
                                  " raw bytes, expected ", rows * sizeof(float), " (", rows, " FP32 scores)"));
      }
      if (rows > 0) std::memcpy(scores.data(), raw.data(), raw.size());
      return scores;
    }
    const auto& fp32 = out.contents().fp32_contents();
    if (static_cast<size_t>(fp32.size()) != rows) {
      return Error(e, absl::StatusCode::kInternal,
                   absl::StrCat("malformed response: output \"", out.name(), "\" has ", fp32.size(),
                                " fp32_contents values, expected ", rows, " (one score per row)"));
    }
    std::copy(fp32.begin(), fp32.end(), scores.begin());
    return scores;
  }

  void StartGrpc(Endpoint* e, const std::shared_ptr<ScoreState>& state, size_t batch, const float* rows,
                 size_t num_rows, size_t num_cols, absl::Time deadline,
                 std::vector<std::shared_ptr<GrpcCall>>* calls) {
    auto call = std::make_shared<GrpcCall>(inflight);
    call->ctx.set_deadline(absl::ToChronoTime(deadline));
    auto& req = call->request;
    req.set_model_name(options.model_name);
    req.set_model_version(options.model_version);
    auto* in = req.add_inputs();
    in->set_name(options.input_name);
    in->set_datatype("FP32");
    in->add_shape(static_cast<int64_t>(num_rows));
    in->add_shape(static_cast<int64_t>(num_cols));
    req.add_raw_input_contents()->assign(reinterpret_cast<const char*>(rows), num_rows * num_cols * sizeof(float));
    req.add_outputs()->set_name(options.output_name);
    calls->push_back(call);
    const auto start = Clock::now();
    e->stub->async()->ModelInfer(
        &call->ctx, &call->request, &call->response,
        [this, e, call, state, batch, num_rows, start](grpc::Status s) {
          absl::StatusOr<std::vector<float>> r;
          if (s.ok()) {
            r = DecodeGrpc(*e, call->response, num_rows);
          } else {
            absl::StatusCode code = MapGrpcCode(s.error_code());
            std::string what;
            switch (code) {
              case absl::StatusCode::kDeadlineExceeded: what = "no answer before the deadline"; break;
              case absl::StatusCode::kUnavailable: what = absl::StrCat("unreachable: ", s.error_message()); break;
              case absl::StatusCode::kCancelled: what = "cancelled"; break;
              default:
                what = absl::StrCat("server error ", absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())),
                                    ": ", Truncate(s.error_message()));
            }
            r = Error(*e, code, what);
          }
          Record(e, r.status().code(), start);
          if (r.ok()) {
            state->Deliver(batch, absl::OkStatus(), std::move(*r));
          } else {
            state->Deliver(batch, r.status(), {});
          }
        });
  }

  // --- HTTP ---------------------------------------------------------------------------------

  // One HTTP infer request. Runs on the I/O thread only; delivers exactly once.
  struct HttpCall : std::enable_shared_from_this<HttpCall> {
    Impl* impl;
    Endpoint* e;
    std::shared_ptr<ScoreState> state;
    std::shared_ptr<InflightTracker> tracker;
    size_t batch = 0;
    size_t rows = 0;
    Clock::time_point start;
    tcp::socket socket;
    tcp::resolver resolver;
    asio::steady_timer timer;
    bool reused = false;
    bool retried = false;
    bool finished = false;
    http::request<http::string_body> request;
    beast::flat_buffer buffer;
    std::optional<http::response_parser<http::string_body>> parser;

    HttpCall(Impl* i, Endpoint* ep, asio::io_context& ioc)
        : impl(i), e(ep), socket(ioc), resolver(ioc), timer(ioc) {}

    void Start(Clock::time_point deadline) {
      timer.expires_at(deadline);
      timer.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (ec || self->finished) return;  // cancelled or finished already
        self->Finish(self->impl->Error(*self->e, absl::StatusCode::kDeadlineExceeded, "no answer before the deadline"),
                     {});
      });
      if (!e->idle.empty()) {
        socket = std::move(e->idle.back());
        e->idle.pop_back();
        reused = true;
        Send();
      } else {
        Connect();
      }
    }

    void Connect() {
      reused = false;
      resolver.async_resolve(e->host, e->port, [self = shared_from_this()](beast::error_code ec,
                                                                          tcp::resolver::results_type results) {
        if (self->finished) return;
        if (ec) {
          return self->Finish(self->impl->Error(*self->e, absl::StatusCode::kUnavailable,
                                                absl::StrCat("unreachable: resolve: ", ec.message())),
                              {});
        }
        asio::async_connect(self->socket, results, [self](beast::error_code cec, const tcp::endpoint&) {
          if (self->finished) return;
          if (cec) {
            return self->Finish(self->impl->Error(*self->e, absl::StatusCode::kUnavailable,
                                                  absl::StrCat("unreachable: connect: ", cec.message())),
                                {});
          }
          beast::error_code ignored;
          self->socket.set_option(tcp::no_delay(true), ignored);
          self->Send();
        });
      });
    }

    void Send() {
      buffer.clear();
      parser.emplace();
      parser->body_limit(kMaxResponseBytes);
      http::async_write(socket, request, [self = shared_from_this()](beast::error_code ec, size_t) {
        if (self->finished) return;
        if (ec) return self->Failed(ec, "write");
        http::async_read(self->socket, self->buffer, *self->parser, [self](beast::error_code rec, size_t) {
          if (self->finished) return;
          if (rec) return self->Failed(rec, "read");
          self->OnResponse();
        });
      });
    }

    // A kept-alive connection the server has closed meanwhile fails at once; try a fresh one.
    void Failed(beast::error_code ec, const char* step) {
      const bool stale = ec == http::error::end_of_stream || ec == asio::error::eof ||
                         ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
      beast::error_code ignored;
      socket.close(ignored);
      if (reused && !retried && stale) {
        retried = true;
        socket = tcp::socket(impl->ioc->get_executor());
        return Connect();
      }
      Finish(impl->Error(*e, absl::StatusCode::kUnavailable, absl::StrCat("unreachable: ", step, ": ", ec.message())),
             {});
    }

    void OnResponse() {
      const auto& res = parser->get();
      const bool keep = res.keep_alive();
      absl::StatusOr<std::vector<float>> r = impl->DecodeHttp(*e, res.result_int(), res.body(), rows);
      if (keep && parser->is_done() && e->idle.size() < impl->options.max_idle_connections) {
        e->idle.push_back(std::move(socket));
      }
      if (r.ok()) {
        Finish(absl::OkStatus(), std::move(*r));
      } else {
        Finish(r.status(), {});
      }
    }

    void Finish(absl::Status st, std::vector<float> scores) {
      if (finished) return;
      finished = true;
      timer.cancel();
      resolver.cancel();
      beast::error_code ignored;
      if (socket.is_open()) socket.close(ignored);
      impl->Record(e, st.code(), start);
      state->Deliver(batch, std::move(st), std::move(scores));
      tracker->Done();  // last touch of the client
    }
  };

  absl::StatusOr<std::vector<float>> DecodeHttp(const Endpoint& e, unsigned status, const std::string& body,
                                                size_t rows) const {
    auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (status != 200) {
      std::string detail;
      if (!j.is_discarded() && j.is_object() && j.contains("error") && j["error"].is_string()) {
        detail = j["error"].get<std::string>();
      } else {
        detail = body;
      }
      absl::StatusCode code = MapHttpStatus(status);
      const char* kind = code == absl::StatusCode::kFailedPrecondition ? "server rejected the request" : "server error";
      return Error(e, code, absl::StrCat(kind, " (HTTP ", status, "): ", Truncate(absl::StripAsciiWhitespace(detail))));
    }
    auto malformed = [&](absl::string_view what) {
      return Error(e, absl::StatusCode::kInternal, absl::StrCat("malformed response: ", what));
    };
    if (j.is_discarded() || !j.is_object()) return malformed("the body is not a JSON object");
    auto outs = j.find("outputs");
    if (outs == j.end() || !outs->is_array()) return malformed("no \"outputs\" list");
    const nlohmann::json* out = nullptr;
    std::string names;
    for (const auto& o : *outs) {
      if (!o.is_object()) return malformed("an entry of \"outputs\" is not an object");
      auto n = o.find("name");
      if (n == o.end() || !n->is_string()) return malformed("an entry of \"outputs\" has no name");
      if (n->get_ref<const std::string&>() == options.output_name) {
        out = &o;
        break;
      }
      absl::StrAppend(&names, names.empty() ? "" : ", ", n->get_ref<const std::string&>());
    }
    if (out == nullptr) {
      return malformed(absl::StrCat("no output \"", options.output_name, "\" (outputs: ",
                                    names.empty() ? "none" : Truncate(names), ")"));
    }
    auto dt = out->find("datatype");
    if (dt == out->end() || !dt->is_string() || dt->get_ref<const std::string&>() != "FP32") {
      return malformed(absl::StrCat("output \"", options.output_name, "\" has datatype ",
                                    dt == out->end() ? "(none)" : Truncate(dt->dump(), 32), ", expected FP32"));
    }
    auto sh = out->find("shape");
    if (sh == out->end() || !sh->is_array()) return malformed(absl::StrCat("output \"", options.output_name, "\" has no shape"));
    std::vector<int64_t> shape;
    for (const auto& d : *sh) {
      if (!d.is_number_integer()) return malformed(absl::StrCat("output \"", options.output_name, "\": shape is not a list of integers"));
      shape.push_back(d.get<int64_t>());
    }
    if (auto st = CheckOutputShape(shape, rows, options.output_name); !st.ok()) return malformed(st.message());
    auto data = out->find("data");
    std::vector<float> scores;
    scores.reserve(rows);
    if (data == out->end() || !FlattenNumbers(*data, &scores)) {
      return malformed(absl::StrCat("output \"", options.output_name, "\": data is not a list of numbers"));
    }
    if (scores.size() != rows) {
      return malformed(absl::StrCat("output \"", options.output_name, "\" has ", scores.size(), " values, expected ",
                                    rows, " (one score per row)"));
    }
    return scores;
  }

  // The JSON infer request body. INVALID_ARGUMENT for NaN or Inf, which JSON cannot carry.
  absl::StatusOr<std::string> HttpBody(const float* rows, size_t num_rows, size_t num_cols, size_t first_row) const {
    std::string body = absl::StrCat("{\"inputs\":[{\"name\":", nlohmann::json(options.input_name).dump(),
                                    ",\"shape\":[", num_rows, ",", num_cols, "],\"datatype\":\"FP32\",\"data\":[");
    body.reserve(body.size() + num_rows * num_cols * 12 + 64);
    char buf[32];
    const size_t n = num_rows * num_cols;
    for (size_t i = 0; i < n; ++i) {
      const float v = rows[i];
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat("model \"", options.model_name, "\": rows[", first_row + i / num_cols,
                                                       "][", i % num_cols, "] is ", v,
                                                       "; the HTTP/JSON protocol cannot carry NaN or Inf"));
      }
      // The shortest text of the value as a double: a server reading doubles and narrowing to
      // float gets exactly `v` back (the shortest float text could round twice).
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), static_cast<double>(v));
      if (i) body.push_back(',');
      body.append(buf, end);
    }
    absl::StrAppend(&body, "]}],\"outputs\":[{\"name\":", nlohmann::json(options.output_name).dump(), "}]}");
    return body;
  }

  void StartHttp(Endpoint* e, const std::shared_ptr<ScoreState>& state, size_t batch, std::string body,
                 size_t num_rows, absl::Time deadline) {
    auto call = std::make_shared<HttpCall>(this, e, *ioc);
    call->state = state;
    call->tracker = inflight;
    call->batch = batch;
    call->rows = num_rows;
    call->start = Clock::now();
    auto& req = call->request;
    req.method(http::verb::post);
    req.target(e->http_target);
    req.version(11);
    req.set(http::field::host, e->config.address);
    req.set(http::field::user_agent, "kosh-model-client");
    req.set(http::field::content_type, "application/json");
    req.keep_alive(options.max_idle_connections > 0);
    req.body() = std::move(body);
    req.prepare_payload();
    // absl::Time -> steady clock: the remaining budget from now.
    const Clock::time_point steady_deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(absl::ToChronoNanoseconds(
                           std::max(deadline - absl::Now(), absl::ZeroDuration())));
    inflight->Add();
    asio::post(*ioc, [call, steady_deadline] { call->Start(steady_deadline); });
  }

  // --- Score --------------------------------------------------------------------------------

  size_t Pick() const {
    if (endpoints.size() == 1) return 0;
    thread_local std::minstd_rand rng(std::random_device{}());
    const uint32_t total = total_weight == 0 ? static_cast<uint32_t>(endpoints.size()) : total_weight;
    const uint32_t r = std::uniform_int_distribution<uint32_t>(0, total - 1)(rng);
    if (total_weight == 0) return r;
    uint32_t acc = 0;
    for (size_t i = 0; i < endpoints.size(); ++i) {
      acc += endpoints[i]->config.weight_percent;
      if (r < acc) return i;
    }
    return endpoints.size() - 1;  // unreachable: the weights sum to total_weight
  }

  absl::StatusOr<std::vector<float>> Run(size_t ei, const float* rows, size_t num_rows, size_t num_cols,
                                         absl::Time deadline) {
    if (num_rows == 0) return std::vector<float>();
    if (num_cols == 0) {
      return absl::InvalidArgumentError(absl::StrCat("model \"", options.model_name, "\": num_cols must be positive"));
    }
    if (rows == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("model \"", options.model_name, "\": rows is null"));
    }
    Endpoint* e = endpoints[ei].get();
    const absl::Time now = absl::Now();
    deadline = std::min(deadline, now + absl::Milliseconds(options.timeout_ms));
    if (deadline <= now) {
      return Error(*e, absl::StatusCode::kDeadlineExceeded, "the deadline passed before the request was sent");
    }
    const size_t batches = (num_rows + options.batch_size - 1) / options.batch_size;
    auto state = std::make_shared<ScoreState>();
    {
      absl::MutexLock l(&state->mu);
      state->pending = batches;
      state->results.resize(batches);
    }
    // Build every HTTP body first, so a bad input sends nothing.
    std::vector<std::string> bodies;
    if (e->config.protocol == ModelEndpoint::Protocol::kHttp) {
      bodies.reserve(batches);
      for (size_t b = 0; b < batches; ++b) {
        const size_t first = b * options.batch_size;
        const size_t n = std::min<size_t>(options.batch_size, num_rows - first);
        ASSIGN_OR_RETURN(std::string body, HttpBody(rows + first * num_cols, n, num_cols, first));
        bodies.push_back(std::move(body));
      }
    }
    std::vector<std::shared_ptr<GrpcCall>> calls;
    for (size_t b = 0; b < batches; ++b) {
      const size_t first = b * options.batch_size;
      const size_t n = std::min<size_t>(options.batch_size, num_rows - first);
      if (e->config.protocol == ModelEndpoint::Protocol::kGrpc) {
        StartGrpc(e, state, b, rows + first * num_cols, n, num_cols, deadline, &calls);
      } else {
        StartHttp(e, state, b, std::move(bodies[b]), n, deadline);
      }
    }
    // Outstanding gRPC calls are cancelled outside the lock: a cancellation may run the call's
    // callback on this thread, and the callback takes the lock.
    absl::Status error;
    std::vector<float> out;
    {
      absl::MutexLock l(&state->mu);
      state->mu.AwaitWithDeadline(absl::Condition(state.get(), &ScoreState::Finished), deadline);
      if (!state->Finished()) {
        error = Error(*e, absl::StatusCode::kDeadlineExceeded,
                      absl::StrCat("no answer within ", absl::FormatDuration(deadline - now), " (",
                                   state->pending, " of ", batches, " requests outstanding)"));
      } else if (!state->error.ok()) {
        error = state->error;
      } else {
        out.reserve(num_rows);
        for (auto& r : state->results) out.insert(out.end(), r.begin(), r.end());
      }
    }
    if (!error.ok()) {
      for (auto& c : calls) c->ctx.TryCancel();
      return error;
    }
    return out;
  }
};

ModelClient::ModelClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelClient::~ModelClient() = default;

absl::StatusOr<std::unique_ptr<ModelClient>> ModelClient::Create(ModelCallOptions options,
                                                                 base::MetricsRegistry* metrics) {
  RETURN_IF_ERROR(ValidateModelCallOptions(options, "model"));
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->metrics = metrics;
  bool any_http = false;
  for (const ModelEndpoint& cfg : impl->options.endpoints) {
    auto e = std::make_unique<Impl::Endpoint>();
    e->config = cfg;
    e->label = absl::StrCat(cfg.address, " (", ModelProtocolName(cfg.protocol), ")");
    uint16_t port = 0;
    SplitHostPort(cfg.address, &e->host, &port);  // validated above
    e->port = std::to_string(port);
    impl->total_weight += cfg.weight_percent;
    if (cfg.protocol == ModelEndpoint::Protocol::kGrpc) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(static_cast<int>(kMaxResponseBytes));
      // Come back quickly after a model server restarts (the default backoff starts at 1 s and
      // grows to 120 s, failing every call meanwhile).
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
      e->channel = grpc::CreateCustomChannel(cfg.address, grpc::InsecureChannelCredentials(), args);
      e->stub = inference::GRPCInferenceService::NewStub(e->channel);
    } else {
      any_http = true;
      const auto& o = impl->options;
      e->http_target = absl::StrCat("/v2/models/", o.model_name,
                                    o.model_version.empty() ? "" : absl::StrCat("/versions/", o.model_version), "/infer");
    }
    if (metrics != nullptr) {
      e->latency = metrics->GetHistogram("kosh_model_request_seconds",
                                         "Time of one infer request to an external model server, send to answer.",
                                         {{"model", impl->options.model_name},
                                          {"endpoint", cfg.address},
                                          {"protocol", ModelProtocolName(cfg.protocol)}});
    }
    impl->endpoints.push_back(std::move(e));
  }
  if (any_http) {
    impl->ioc = std::make_unique<asio::io_context>(1);
    impl->work.emplace(asio::make_work_guard(*impl->ioc));
    impl->io_thread = std::thread([ioc = impl->ioc.get()] { ioc->run(); });
  }
  return std::unique_ptr<ModelClient>(new ModelClient(std::move(impl)));
}

absl::StatusOr<std::vector<float>> ModelClient::Score(const float* rows, size_t num_rows, size_t num_cols,
                                                      absl::Time deadline) const {
  return impl_->Run(impl_->Pick(), rows, num_rows, num_cols, deadline);
}

absl::StatusOr<std::vector<float>> ModelClient::ScoreOn(size_t endpoint, const float* rows, size_t num_rows,
                                                        size_t num_cols, absl::Time deadline) const {
  if (endpoint >= impl_->endpoints.size()) {
    return absl::OutOfRangeError(absl::StrCat("model \"", impl_->options.model_name, "\": endpoint ", endpoint,
                                              " of ", impl_->endpoints.size()));
  }
  return impl_->Run(endpoint, rows, num_rows, num_cols, deadline);
}

size_t ModelClient::PickEndpoint() const { return impl_->Pick(); }

const ModelCallOptions& ModelClient::options() const { return impl_->options; }

}  // namespace kosh::flows
