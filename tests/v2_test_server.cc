// kosh_v2_test_server: a small model server speaking the KServe v2 / Triton inference protocol over
// gRPC (inference.GRPCInferenceService) and HTTP/JSON, for tests of Kosh's model client. It serves
// one FP32 model computing a linear function of each row:
//
//   input  INPUT0  FP32 [rows, k]     (k = number of weights)
//   output OUTPUT0 FP32 [rows, 1]     score = bias + sum_i weights[i] * x[i]   (in double, then float)
//
// Usage:
//   kosh_v2_test_server [--model NAME] [--version V] [--weights "0.5,1,-2"] [--bias 0.1]
//                       [--input NAME] [--output NAME] [--delay-ms N] [--fail] [--typed-output]
//                       [--short-output] [--port-file PATH] [--grpc-port P] [--http-port P]
//
//   --model, --version   the model's name (default "linear") and its only version (default "1");
//                        requests may name that version or none
//   --weights, --bias    the linear function (defaults "1" and 0)
//   --input, --output    tensor names (defaults INPUT0, OUTPUT0)
//   --delay-ms N         wait N ms before answering each infer request (to test deadlines)
//   --fail               answer every (valid) infer request with an error: gRPC INTERNAL, HTTP 500
//   --typed-output       gRPC answers carry contents.fp32_contents (default: raw_output_contents)
//   --short-output       answer one score fewer than there are rows (to test response checks)
//   --port-file PATH     once listening, write {"grpc": P, "http": Q} to PATH (atomically)
//   --grpc-port, --http-port   ports on 127.0.0.1 (default 0: chosen by the kernel)
//
// HTTP paths: GET /v2/health/live, GET /v2/health/ready, GET /v2 (server metadata),
// GET /v2/models/{name}[/versions/{v}] (model metadata), GET .../ready, POST .../infer, and
// GET /stats: {"infer_requests": N, "rows": M, "grpc_infer_requests": .., "http_infer_requests": ..,
// "http_connections": ..} counting every infer request that reached the model (valid ones,
// including those answered with --fail) and every HTTP connection accepted, for tests of batching,
// traffic split and keep-alive. Bad requests get v2 errors: gRPC INVALID_ARGUMENT / NOT_FOUND,
// HTTP 400 / 404 with {"error": "..."}.
//
// Runs until SIGTERM or SIGINT, then exits 0.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

struct Flags {
  std::string model = "linear";
  std::string version = "1";
  std::string input = "INPUT0";
  std::string output = "OUTPUT0";
  std::vector<double> weights = {1.0};
  double bias = 0;
  int delay_ms = 0;
  bool fail = false;
  bool typed_output = false;
  bool short_output = false;
  std::string port_file;
  int grpc_port = 0;
  int http_port = 0;
};

struct Stats {
  std::atomic<uint64_t> infer_requests{0};
  std::atomic<uint64_t> rows{0};
  std::atomic<uint64_t> grpc_infer_requests{0};
  std::atomic<uint64_t> http_infer_requests{0};
  std::atomic<uint64_t> http_connections{0};
};

// A protocol-neutral error: the gRPC code and the matching HTTP status.
struct Error {
  grpc::StatusCode code = grpc::OK;
  int http_status = 200;
  std::string message;
  bool ok() const { return code == grpc::OK; }
};
Error BadRequest(std::string m) { return {grpc::INVALID_ARGUMENT, 400, std::move(m)}; }
Error NotFound(std::string m) { return {grpc::NOT_FOUND, 404, std::move(m)}; }

// The model and the checks shared by both protocols.
class Model {
 public:
  Model(const Flags& f, Stats* stats) : f_(f), stats_(stats) {}
  const Flags& flags() const { return f_; }
  size_t cols() const { return f_.weights.size(); }

  Error CheckName(const std::string& name, const std::string& version) const {
    if (name != f_.model) return NotFound(absl::StrCat("unknown model \"", name, "\""));
    if (!version.empty() && version != f_.version) {
      return NotFound(absl::StrCat("model \"", name, "\" has no version \"", version, "\" (versions: ", f_.version, ")"));
    }
    return {};
  }

  // Checks an input tensor's name, datatype and shape; `*rows` is the row count.
  Error CheckInput(const std::string& name, const std::string& datatype, const std::vector<int64_t>& shape,
                   size_t* rows) const {
    if (name != f_.input) {
      return BadRequest(absl::StrCat("unexpected input \"", name, "\" (model \"", f_.model, "\" takes \"", f_.input, "\")"));
    }
    if (datatype != "FP32") {
      return BadRequest(absl::StrCat("input \"", name, "\": datatype \"", datatype, "\", the model takes FP32"));
    }
    if (shape.size() != 2 || shape[0] < 0 || shape[1] != static_cast<int64_t>(cols())) {
      std::string dims;
      for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&dims, i ? "," : "", shape[i]);
      return BadRequest(absl::StrCat("input \"", name, "\": shape [", dims, "], the model takes [-1,", cols(), "]"));
    }
    *rows = static_cast<size_t>(shape[0]);
    return {};
  }

  Error CheckOutputName(const std::string& name) const {
    if (name != f_.output) {
      return BadRequest(absl::StrCat("unknown output \"", name, "\" (model \"", f_.model, "\" has \"", f_.output, "\")"));
    }
    return {};
  }

  // Counts the request and computes the scores (or the --fail error).
  Error Run(const float* x, size_t rows, bool grpc_call, std::vector<float>* scores) const {
    stats_->infer_requests.fetch_add(1);
    stats_->rows.fetch_add(rows);
    (grpc_call ? stats_->grpc_infer_requests : stats_->http_infer_requests).fetch_add(1);
    if (f_.fail) return {grpc::INTERNAL, 500, absl::StrCat("model \"", f_.model, "\" failed (--fail)")};
    const size_t k = cols();
    scores->clear();
    for (size_t r = 0; r < rows; ++r) {
      double s = f_.bias;
      for (size_t i = 0; i < k; ++i) s += f_.weights[i] * static_cast<double>(x[r * k + i]);
      scores->push_back(static_cast<float>(s));
    }
    if (f_.short_output && !scores->empty()) scores->pop_back();
    return {};
  }

  void Delay() const {
    if (f_.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f_.delay_ms));
  }

  json Metadata() const {
    return json{{"name", f_.model},
                {"versions", {f_.version}},
                {"platform", "kosh_linear"},
                {"inputs", {{{"name", f_.input}, {"datatype", "FP32"}, {"shape", {-1, static_cast<int64_t>(cols())}}}}},
                {"outputs", {{{"name", f_.output}, {"datatype", "FP32"}, {"shape", {-1, 1}}}}}};
  }

 private:
  Flags f_;
  Stats* stats_;
};

// --- gRPC ---------------------------------------------------------------------------------------

class GrpcService final : public inference::GRPCInferenceService::Service {
 public:
  explicit GrpcService(const Model* model) : model_(model) {}

  grpc::Status ServerLive(grpc::ServerContext*, const inference::ServerLiveRequest*,
                          inference::ServerLiveResponse* resp) override {
    resp->set_live(true);
    return grpc::Status::OK;
  }
  grpc::Status ServerReady(grpc::ServerContext*, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* resp) override {
    resp->set_ready(true);
    return grpc::Status::OK;
  }
  grpc::Status ServerMetadata(grpc::ServerContext*, const inference::ServerMetadataRequest*,
                              inference::ServerMetadataResponse* resp) override {
    resp->set_name("kosh_v2_test_server");
    resp->set_version("1");
    return grpc::Status::OK;
  }
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest* req,
                          inference::ModelReadyResponse* resp) override {
    Error e = model_->CheckName(req->name(), req->version());
    if (!e.ok()) return ToGrpc(e);
    resp->set_ready(true);
    return grpc::Status::OK;
  }
  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest* req,
                             inference::ModelMetadataResponse* resp) override {
    Error e = model_->CheckName(req->name(), req->version());
    if (!e.ok()) return ToGrpc(e);
    const Flags& f = model_->flags();
    resp->set_name(f.model);
    resp->add_versions(f.version);
    resp->set_platform("kosh_linear");
    auto* in = resp->add_inputs();
    in->set_name(f.input);
    in->set_datatype("FP32");
    in->add_shape(-1);
    in->add_shape(static_cast<int64_t>(model_->cols()));
    auto* out = resp->add_outputs();
    out->set_name(f.output);
    out->set_datatype("FP32");
    out->add_shape(-1);
    out->add_shape(1);
    return grpc::Status::OK;
  }

  grpc::Status ModelInfer(grpc::ServerContext*, const inference::ModelInferRequest* req,
                          inference::ModelInferResponse* resp) override {
    std::vector<float> x;
    size_t rows = 0;
    Error e = Decode(*req, &x, &rows);
    if (!e.ok()) return ToGrpc(e);
    model_->Delay();
    std::vector<float> scores;
    e = model_->Run(x.data(), rows, /*grpc_call=*/true, &scores);
    if (!e.ok()) return ToGrpc(e);
    const Flags& f = model_->flags();
    resp->set_model_name(f.model);
    resp->set_model_version(f.version);
    resp->set_id(req->id());
    auto* out = resp->add_outputs();
    out->set_name(f.output);
    out->set_datatype("FP32");
    out->add_shape(static_cast<int64_t>(scores.size()));
    out->add_shape(1);
    if (f.typed_output) {
      out->mutable_contents()->mutable_fp32_contents()->Add(scores.begin(), scores.end());
    } else {
      resp->add_raw_output_contents()->assign(reinterpret_cast<const char*>(scores.data()),
                                              scores.size() * sizeof(float));
    }
    return grpc::Status::OK;
  }

 private:
  static grpc::Status ToGrpc(const Error& e) { return grpc::Status(e.code, e.message); }

  Error Decode(const inference::ModelInferRequest& req, std::vector<float>* x, size_t* rows) const {
    if (Error e = model_->CheckName(req.model_name(), req.model_version()); !e.ok()) return e;
    if (req.inputs_size() != 1) return BadRequest(absl::StrCat("expected 1 input, got ", req.inputs_size()));
    const auto& in = req.inputs(0);
    std::vector<int64_t> shape(in.shape().begin(), in.shape().end());
    if (Error e = model_->CheckInput(in.name(), in.datatype(), shape, rows); !e.ok()) return e;
    for (const auto& o : req.outputs()) {
      if (Error e = model_->CheckOutputName(o.name()); !e.ok()) return e;
    }
    const size_t n = *rows * model_->cols();
    if (req.raw_input_contents_size() > 0) {
      if (in.has_contents()) return BadRequest("input has both contents and raw_input_contents");
      if (req.raw_input_contents_size() != 1) {
        return BadRequest(absl::StrCat("raw_input_contents has ", req.raw_input_contents_size(), " entries for 1 input"));
      }
      const std::string& raw = req.raw_input_contents(0);
      if (raw.size() != n * sizeof(float)) {
        return BadRequest(absl::StrCat("input \"", in.name(), "\": ", raw.size(), " raw bytes, shape needs ",
                                       n * sizeof(float)));
      }
      x->resize(n);
      if (n > 0) std::memcpy(x->data(), raw.data(), raw.size());
      return {};
    }
    const auto& v = in.contents().fp32_contents();
    if (static_cast<size_t>(v.size()) != n) {
      return BadRequest(absl::StrCat("input \"", in.name(), "\": ", v.size(), " fp32_contents values, shape needs ", n));
    }
    x->assign(v.begin(), v.end());
    return {};
  }

  const Model* model_;
};

// --- HTTP ---------------------------------------------------------------------------------------

void Flatten(const json& j, std::vector<float>* out, bool* ok) {
  if (j.is_array()) {
    for (const auto& e : j) Flatten(e, out, ok);
  } else if (j.is_number()) {
    out->push_back(static_cast<float>(j.get<double>()));
  } else {
    *ok = false;
  }
}

std::string FloatsJson(const std::vector<float>& v) {
  std::string s = "[";
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), static_cast<double>(v[i]));
    if (i) s.push_back(',');
    s.append(buf, end);
  }
  s.push_back(']');
  return s;
}

class HttpServer {
 public:
  HttpServer(const Model* model, Stats* stats) : model_(model), stats_(stats) {}

  // Binds 127.0.0.1:port and starts `threads` I/O threads; returns the bound port or -1.
  int Start(int port, int threads) {
    beast::error_code ec;
    tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port));
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      std::fprintf(stderr, "http listen on 127.0.0.1:%d: %s\n", port, ec.message().c_str());
      return -1;
    }
    const int bound = acceptor_.local_endpoint().port();
    Accept();
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { ioc_.run(); });
    return bound;
  }

  void Stop() {
    ioc_.stop();
    for (auto& t : workers_) t.join();
  }

 private:
  struct Reply {
    int status = 200;
    std::string body;
    bool delay = false;  // an infer request: wait --delay-ms before answering
  };

  static Reply ErrorReply(const Error& e) { return {e.http_status, json{{"error", e.message}}.dump() + "\n", false}; }

  Reply Handle(const http::request<http::string_body>& req) {
    std::string target(req.target());
    std::string path = target.substr(0, target.find('?'));
    const bool get = req.method() == http::verb::get;
    const bool post = req.method() == http::verb::post;
    auto method_error = [&](const char* allowed) {
      return Reply{405, json{{"error", absl::StrCat(path, " takes ", allowed)}}.dump() + "\n", false};
    };
    if (path == "/v2/health/live" || path == "/v2/health/ready") {
      if (!get) return method_error("GET");
      return {200, path == "/v2/health/live" ? "{\"live\":true}\n" : "{\"ready\":true}\n", false};
    }
    if (path == "/v2") {
      if (!get) return method_error("GET");
      return {200, json{{"name", "kosh_v2_test_server"}, {"version", "1"}, {"extensions", json::array()}}.dump() + "\n",
              false};
    }
    if (path == "/stats") {
      if (!get) return method_error("GET");
      return {200,
              json{{"infer_requests", stats_->infer_requests.load()},
                   {"rows", stats_->rows.load()},
                   {"grpc_infer_requests", stats_->grpc_infer_requests.load()},
                   {"http_infer_requests", stats_->http_infer_requests.load()},
                   {"http_connections", stats_->http_connections.load()}}
                      .dump() +
                  "\n",
              false};
    }
    // /v2/models/{name}[/versions/{v}][/ready|/infer]
    std::vector<std::string> parts = absl::StrSplit(path, '/');  // "", "v2", "models", name, ...
    if (parts.size() >= 4 && parts[1] == "v2" && parts[2] == "models" && !parts[3].empty()) {
      const std::string& name = parts[3];
      std::string version;
      size_t next = 4;
      if (parts.size() >= 6 && parts[4] == "versions") {
        version = parts[5];
        next = 6;
      }
      std::string action = next < parts.size() ? parts[next] : "";
      if (next + 1 < parts.size() || (!action.empty() && action != "ready" && action != "infer")) {
        return ErrorReply(NotFound(absl::StrCat("no such path: ", path)));
      }
      if (Error e = model_->CheckName(name, version); !e.ok()) return ErrorReply(e);
      if (action.empty()) {
        if (!get) return method_error("GET");
        return {200, model_->Metadata().dump() + "\n", false};
      }
      if (action == "ready") {
        if (!get) return method_error("GET");
        return {200, "{\"ready\":true}\n", false};
      }
      if (!post) return method_error("POST");
      return Infer(req.body());
    }
    return ErrorReply(NotFound(absl::StrCat("no such path: ", path)));
  }

  Reply Infer(const std::string& body) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return ErrorReply(BadRequest("body: not a JSON object"));
    auto inputs = j.find("inputs");
    if (inputs == j.end() || !inputs->is_array() || inputs->size() != 1) {
      return ErrorReply(BadRequest("inputs: expected a list of 1 input"));
    }
    const json& in = (*inputs)[0];
    if (!in.is_object()) return ErrorReply(BadRequest("inputs[0]: expected an object"));
    auto name = in.find("name");
    auto datatype = in.find("datatype");
    auto shape_j = in.find("shape");
    auto data = in.find("data");
    if (name == in.end() || !name->is_string()) return ErrorReply(BadRequest("inputs[0].name: required string"));
    if (datatype == in.end() || !datatype->is_string()) {
      return ErrorReply(BadRequest("inputs[0].datatype: required string"));
    }
    if (shape_j == in.end() || !shape_j->is_array()) return ErrorReply(BadRequest("inputs[0].shape: required list"));
    std::vector<int64_t> shape;
    for (const auto& d : *shape_j) {
      if (!d.is_number_integer()) return ErrorReply(BadRequest("inputs[0].shape: expected integers"));
      shape.push_back(d.get<int64_t>());
    }
    size_t rows = 0;
    if (Error e = model_->CheckInput(name->get<std::string>(), datatype->get<std::string>(), shape, &rows); !e.ok()) {
      return ErrorReply(e);
    }
    auto outputs = j.find("outputs");
    if (outputs != j.end()) {
      if (!outputs->is_array()) return ErrorReply(BadRequest("outputs: expected a list"));
      for (const auto& o : *outputs) {
        auto on = o.is_object() ? o.find("name") : o.end();
        if (!o.is_object() || on == o.end() || !on->is_string()) {
          return ErrorReply(BadRequest("outputs: each entry needs a name"));
        }
        if (Error e = model_->CheckOutputName(on->get<std::string>()); !e.ok()) return ErrorReply(e);
      }
    }
    std::vector<float> x;
    bool ok = data != in.end();
    if (ok) Flatten(*data, &x, &ok);
    if (!ok) return ErrorReply(BadRequest("inputs[0].data: expected a list of numbers"));
    if (x.size() != rows * model_->cols()) {
      return ErrorReply(BadRequest(absl::StrCat("inputs[0].data: ", x.size(), " values, shape needs ",
                                                rows * model_->cols())));
    }
    std::vector<float> scores;
    if (Error e = model_->Run(x.data(), rows, /*grpc_call=*/false, &scores); !e.ok()) {
      Reply r = ErrorReply(e);
      r.delay = true;
      return r;
    }
    const Flags& f = model_->flags();
    std::string out = absl::StrCat("{\"model_name\":", json(f.model).dump(), ",\"model_version\":", json(f.version).dump());
    if (auto id = j.find("id"); id != j.end() && id->is_string()) absl::StrAppend(&out, ",\"id\":", id->dump());
    absl::StrAppend(&out, ",\"outputs\":[{\"name\":", json(f.output).dump(), ",\"datatype\":\"FP32\",\"shape\":[",
                    scores.size(), ",1],\"data\":", FloatsJson(scores), "}]}\n");
    return {200, std::move(out), true};
  }

  struct Session : std::enable_shared_from_this<Session> {
    HttpServer* server;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> res;
    asio::steady_timer timer;

    Session(HttpServer* s, tcp::socket sock)
        : server(s), stream(std::move(sock)), timer(stream.get_executor()) {}

    void Read() {
      parser.emplace();
      parser->body_limit(64ull << 20);
      stream.expires_after(std::chrono::seconds(60));
      http::async_read(stream, buffer, *parser,
                       [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
    }

    void OnRead(beast::error_code ec) {
      if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
          ec == asio::error::connection_reset) {
        return Close();
      }
      res = {};
      bool keep_alive = false;
      Reply r;
      if (ec) {
        r = ErrorReply(BadRequest(absl::StrCat("malformed HTTP request: ", ec.message())));
      } else {
        const auto& req = parser->get();
        r = server->Handle(req);
        keep_alive = req.keep_alive();
        res.version(req.version());
      }
      res.result(r.status);
      res.set(http::field::server, "kosh_v2_test_server");
      res.set(http::field::content_type, "application/json");
      res.body() = std::move(r.body);
      res.keep_alive(keep_alive);
      res.prepare_payload();
      const int delay = r.delay ? server->model_->flags().delay_ms : 0;
      if (delay > 0) {
        timer.expires_after(std::chrono::milliseconds(delay));
        timer.async_wait([self = shared_from_this(), keep_alive](beast::error_code) { self->Write(keep_alive); });
      } else {
        Write(keep_alive);
      }
    }

    void Write(bool keep_alive) {
      http::async_write(stream, res, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
        if (ec || !keep_alive) return self->Close();
        self->Read();
      });
    }

    void Close() {
      beast::error_code ec;
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
  };

  void Accept() {
    acceptor_.async_accept(asio::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
      if (!ec) {
        stats_->http_connections.fetch_add(1);
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        std::make_shared<Session>(this, std::move(socket))->Read();
      }
      if (acceptor_.is_open()) Accept();
    });
  }

  const Model* model_;
  Stats* stats_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_{ioc_};
  std::vector<std::thread> workers_;
};

// --- main ---------------------------------------------------------------------------------------

[[noreturn]] void Usage(const std::string& problem) {
  std::fprintf(stderr,
               "kosh_v2_test_server: %s\nusage: kosh_v2_test_server [--model NAME] [--version V] "
               "[--weights \"0.5,1,-2\"] [--bias B] [--input NAME] [--output NAME] [--delay-ms N] [--fail] "
               "[--typed-output] [--short-output] [--port-file PATH] [--grpc-port P] [--http-port P]\n",
               problem.c_str());
  std::exit(2);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    auto int_value = [&](int lo, int hi) {
      std::string v = value();
      int n = 0;
      if (!absl::SimpleAtoi(v, &n) || n < lo || n > hi) Usage(absl::StrCat(a, ": \"", v, "\" is not ", lo, " to ", hi));
      return n;
    };
    if (a == "--model") {
      f.model = value();
    } else if (a == "--version") {
      f.version = value();
    } else if (a == "--input") {
      f.input = value();
    } else if (a == "--output") {
      f.output = value();
    } else if (a == "--weights") {
      f.weights.clear();
      std::string v = value();
      for (absl::string_view w : absl::StrSplit(v, ',')) {
        double d = 0;
        if (!absl::SimpleAtod(w, &d)) Usage(absl::StrCat("--weights: \"", w, "\" is not a number"));
        f.weights.push_back(d);
      }
    } else if (a == "--bias") {
      std::string v = value();
      if (!absl::SimpleAtod(v, &f.bias)) Usage(absl::StrCat("--bias: \"", v, "\" is not a number"));
    } else if (a == "--delay-ms") {
      f.delay_ms = int_value(0, 600000);
    } else if (a == "--fail") {
      f.fail = true;
    } else if (a == "--typed-output") {
      f.typed_output = true;
    } else if (a == "--short-output") {
      f.short_output = true;
    } else if (a == "--port-file") {
      f.port_file = value();
    } else if (a == "--grpc-port") {
      f.grpc_port = int_value(0, 65535);
    } else if (a == "--http-port") {
      f.http_port = int_value(0, 65535);
    } else {
      Usage("unknown flag " + a);
    }
  }
  return f;
}

bool WritePortFile(const std::string& path, int grpc_port, int http_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "{\"grpc\": " << grpc_port << ", \"http\": " << http_port << "}\n";
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags = ParseFlags(argc, argv);
  // SIGTERM and SIGINT are taken with sigwait on the main thread; block them before any thread
  // starts so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Stats stats;
  Model model(flags, &stats);
  GrpcService service(&model);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", flags.grpc_port), grpc::InsecureServerCredentials(), &grpc_port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || grpc_port == 0) {
    std::fprintf(stderr, "kosh_v2_test_server: cannot listen for gRPC on 127.0.0.1:%d\n", flags.grpc_port);
    return 1;
  }
  HttpServer http_server(&model, &stats);
  const int http_port = http_server.Start(flags.http_port, 2);
  if (http_port < 0) return 1;
  if (!flags.port_file.empty() && !WritePortFile(flags.port_file, grpc_port, http_port)) {
    std::fprintf(stderr, "kosh_v2_test_server: cannot write %s\n", flags.port_file.c_str());
    return 1;
  }
  std::fprintf(stderr, "kosh_v2_test_server: model %s (%zu inputs) on grpc 127.0.0.1:%d, http 127.0.0.1:%d\n",
               flags.model.c_str(), flags.weights.size(), grpc_port, http_port);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  http_server.Stop();
  return 0;
}
