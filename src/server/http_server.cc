#include "server/http_server.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/thread_group.h"
#include "absl/strings/string_view.h"
#include "boost/asio.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "google/protobuf/util/json_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string JsonEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out;
}

std::string ErrorJson(const absl::Status& s) {
  return absl::StrCat("{\"code\":\"", absl::StatusCodeToString(s.code()), "\",\"message\":\"",
                      JsonEscape(s.message()), "\"}\n");
}

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  Service* service;
  int threads;
  uint64_t body_limit;
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> workers;
  std::atomic<bool> draining{false};
  std::atomic<int> in_flight{0};
  std::atomic<bool> stopped{false};
  // Threads running long-running methods (MethodDef::long_running); ~HttpServer waits for them.
  base::ThreadGroup background;

  static absl::string_view PathOf(const http::request<http::string_body>& req) {
    absl::string_view target(req.target().data(), req.target().size());
    return target.substr(0, target.find('?'));
  }
  // The API method a request names; -1 for none (a built-in path such as /healthz, or unknown).
  int MethodOf(const http::request<http::string_body>& req) const { return service->FindHttpPath(PathOf(req)); }

  Impl(Service* s, int t, uint64_t limit) : service(s), threads(t), body_limit(limit) {}

  void Accept() {
    acceptor.async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec) {
        if (ec != asio::error::operation_aborted) spdlog::warn("http accept: {}", ec.message());
        if (!acceptor.is_open()) return;
      } else {
        socket.set_option(tcp::no_delay(true), ec);
        std::make_shared<Session>(this, std::move(socket))->Read();
      }
      if (acceptor.is_open()) Accept();
    });
  }

  // Produces the response to one request; `m` is MethodOf(req).
  void Handle(const http::request<http::string_body>& req, int m, http::response<http::string_body>* res) {
    res->version(req.version());
    res->set(http::field::server, "kosh");
    absl::string_view path = PathOf(req);
    auto text = [&](int status, std::string body, const char* type) {
      res->result(status);
      res->set(http::field::content_type, type);
      res->body() = std::move(body);
    };
    if (path == "/healthz") return text(200, "ok\n", "text/plain");
    if (path == "/readyz") {
      return service->ready() && !draining ? text(200, "ready\n", "text/plain")
                                           : text(503, "not ready\n", "text/plain");
    }
    if (path == "/metrics") {
      return text(200, service->metrics()->RenderPrometheus(), "text/plain; version=0.0.4");
    }
    if (m < 0) {
      return text(404, ErrorJson(absl::NotFoundError(absl::StrCat("no such path: ", path))), "application/json");
    }
    // POST for everything; GET (with the request, if any, as the body) for read-scope methods.
    const bool read_only = service->method(m).scope == Scope::kRead;
    if (req.method() != http::verb::post && !(read_only && req.method() == http::verb::get)) {
      res->set(http::field::allow, read_only ? "GET, POST" : "POST");
      return text(405, ErrorJson(absl::InvalidArgumentError(absl::StrCat(path, " takes ", read_only ? "GET or POST" : "POST"))),
                  "application/json");
    }
    auto start = std::chrono::steady_clock::now();
    const MethodDef& def = service->method(m);
    auto auth_header = req[http::field::authorization];
    absl::string_view auth(auth_header.data(), auth_header.size());
    absl::Status st = draining ? absl::UnavailableError("server is draining")
                               : service->Authorize(def.scope, def.name, auth);
    std::unique_ptr<google::protobuf::Message> request(def.request_prototype->New());
    std::unique_ptr<google::protobuf::Message> response(def.response_prototype->New());
    if (st.ok() && !req.body().empty()) {
      google::protobuf::util::JsonParseOptions opts;
      opts.ignore_unknown_fields = false;
      auto parsed = google::protobuf::util::JsonStringToMessage(req.body(), request.get(), opts);
      if (!parsed.ok()) {
        st = absl::InvalidArgumentError(absl::StrCat("body: invalid JSON for ", request->GetTypeName(), ": ",
                                                     std::string(parsed.message())));
      }
    }
    if (st.ok()) {
      st = service->Call(Protocol::kHttp, m, auth, *request, response.get());
    } else {
      service->Record(Protocol::kHttp, m, st.code(),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::string body;
    if (st.ok()) {
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      opts.always_print_primitive_fields = true;
      auto printed = google::protobuf::util::MessageToJsonString(*response, &body, opts);
      if (!printed.ok()) st = absl::InternalError(std::string(printed.message()));
      body.push_back('\n');
    }
    if (!st.ok()) return text(HttpStatusFor(st.code()), ErrorJson(st), "application/json");
    text(200, std::move(body), "application/json");
  }

  struct Session : std::enable_shared_from_this<Session> {
    Impl* impl;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> res;

    Session(Impl* i, tcp::socket s) : impl(i), stream(std::move(s)) {}

    void Read() {
      parser.emplace();
      parser->body_limit(impl->body_limit);
      parser->header_limit(64 * 1024);
      stream.expires_after(std::chrono::seconds(60));
      http::async_read(stream, buffer, *parser,
                       [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
    }

    void OnRead(beast::error_code ec) {
      if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
          ec == asio::error::operation_aborted || ec == asio::error::connection_reset) {
        return Close();
      }
      res = {};
      bool keep_alive = false;
      if (ec == http::error::body_limit) {
        res.result(413);
        res.set(http::field::content_type, "application/json");
        res.body() = ErrorJson(absl::ResourceExhaustedError(
            absl::StrCat("body: larger than the limit of ", impl->body_limit, " bytes")));
      } else if (ec) {
        res.result(400);
        res.set(http::field::content_type, "application/json");
        res.body() = ErrorJson(absl::InvalidArgumentError(absl::StrCat("malformed HTTP request: ", ec.message())));
      } else if (const int m = impl->MethodOf(parser->get()); m >= 0 && impl->service->method(m).long_running) {
        // On a thread of its own; the response is written back on this connection's strand. The
        // connection's timer is off meanwhile (a load may take minutes); Write() restarts it.
        stream.expires_never();
        impl->in_flight.fetch_add(1);
        const bool spawned = impl->background.Spawn([self = shared_from_this(), m] {
          Impl* impl = self->impl;
          impl->Handle(self->parser->get(), m, &self->res);
          const bool keep_alive = self->parser->get().keep_alive() && !impl->draining;
          impl->in_flight.fetch_sub(1);
          asio::post(self->stream.get_executor(), [self, keep_alive] { self->Write(keep_alive); });
        });
        if (spawned) return;
        impl->in_flight.fetch_sub(1);  // no thread to be had: answer 503 here
        res.result(503);
        res.set(http::field::content_type, "application/json");
        res.body() = ErrorJson(absl::UnavailableError("cannot start a thread for the call"));
      } else {
        impl->in_flight.fetch_add(1);
        const auto& req = parser->get();
        impl->Handle(req, m, &res);  // m: from the condition above
        keep_alive = req.keep_alive() && !impl->draining;
        impl->in_flight.fetch_sub(1);
      }
      Write(keep_alive);
    }

    void Write(bool keep_alive) {
      stream.expires_after(std::chrono::seconds(60));
      res.keep_alive(keep_alive);
      res.prepare_payload();
      http::async_write(stream, res, [self = shared_from_this(), keep_alive](beast::error_code wec, size_t) {
        if (wec || !keep_alive) return self->Close();
        self->Read();
      });
    }

    void Close() {
      beast::error_code ec;
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    }
  };
};

HttpServer::HttpServer(Service* service, int threads, uint64_t body_limit)
    : impl_(std::make_unique<Impl>(service, threads, body_limit)) {}

HttpServer::~HttpServer() {
  Shutdown(absl::Now());
  // Before the io_context goes: long-running calls post their responses to it. They stop early
  // once the service is no longer ready (a dataset load checks).
  impl_->background.Wait();
}

absl::StatusOr<int> HttpServer::Start(const std::string& address) {
  size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  int port = std::stoi(address.substr(colon + 1));
  beast::error_code ec;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("http address ", address, ": ", ec.message()));
  tcp::endpoint ep(ip, static_cast<uint16_t>(port));
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", ec.message()));
  int bound = impl_->acceptor.local_endpoint().port();
  impl_->Accept();
  for (int i = 0; i < impl_->threads; ++i) {
    impl_->workers.emplace_back([this] { impl_->ioc.run(); });
  }
  return bound;
}

void HttpServer::Shutdown(absl::Time deadline) {
  if (impl_->stopped.exchange(true)) return;
  impl_->draining = true;
  // Let requests whose bytes already arrived reach their in-flight count before it is read.
  absl::SleepFor(absl::Milliseconds(20));
  asio::post(impl_->ioc, [this] {
    beast::error_code ec;
    impl_->acceptor.close(ec);
  });
  while (impl_->in_flight.load() > 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  if (impl_->in_flight.load() > 0) {
    spdlog::warn("http: grace period over with {} requests in flight", impl_->in_flight.load());
  }
  impl_->ioc.stop();
  for (auto& t : impl_->workers) {
    if (t.joinable()) t.join();
  }
}

}  // namespace kosh::server
