#include "server/service.h"

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "spdlog/spdlog.h"

namespace kosh::server {

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted: return 413;
    case absl::StatusCode::kCancelled: return 499;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kDeadlineExceeded: return 504;
    default: return 500;
  }
}

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::string_view GrpcAuthorization(grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

namespace {
// The context of the long-running gRPC call running on this thread (RunUnary), for CallCancelled.
thread_local grpc::CallbackServerContext* tls_long_running_call = nullptr;
}  // namespace

std::function<bool()> CallCancelled() {
  grpc::CallbackServerContext* ctx = tls_long_running_call;
  if (ctx == nullptr) return [] { return false; };
  return [ctx] { return ctx->IsCancelled(); };
}

grpc::ServerUnaryReactor* RunUnary(Service* service, int id, grpc::CallbackServerContext* ctx,
                                   const google::protobuf::Message* req, google::protobuf::Message* resp) {
  auto* reactor = ctx->DefaultReactor();
  auto run = [service, id, ctx, req, resp, reactor] {
    absl::Status st = service->Call(Protocol::kGrpc, id, GrpcAuthorization(ctx), *req, resp);
    if (!st.ok()) resp->Clear();
    reactor->Finish(ToGrpcStatus(st));
  };
  if (!service->method(id).long_running) {
    run();
    return reactor;
  }
  const bool spawned = service->SpawnLongRunning([run, ctx] {
    tls_long_running_call = ctx;
    run();
    tls_long_running_call = nullptr;
  });
  if (!spawned) reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "cannot start a thread for the call"));
  return reactor;
}

absl::StatusOr<std::unique_ptr<storage::ConfigStore>> FamilyContext::OpenConfigStore(const std::string& ns) const {
  const RegistryStoreOptions& rs = options->registry_store;
  if (rs.backend == RegistryStoreOptions::Backend::kEmbedded) {
    for (size_t i = 0; i < keyspace_names.size() && i < keyspaces.size(); ++i) {
      if (keyspace_names[i] == ns) return storage::NewEngineConfigStore(engine, keyspaces[i]);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("config store \"", ns, "\": the family declares no keyspace of that name"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<storage::ConfigStore> store, storage::NewZooKeeperConfigStore(rs.zookeeper, ns));
  storage::ConfigStore* raw = store.get();
  metrics->AddGauge("kosh_registry_zookeeper_connected",
                    "1 while the ZooKeeper session of a registry namespace is connected, else 0 (the server "
                    "keeps serving the definitions it last read).",
                    [raw, ns] {
                      return std::vector<std::pair<base::Labels, double>>{
                          {{{"namespace", ns}}, raw->Connected() ? 1.0 : 0.0}};
                    });
  return store;
}

absl::StatusOr<std::unique_ptr<Service>> Service::Open(const ServerOptions& options,
                                                       std::vector<std::unique_ptr<Family>> families) {
  std::unique_ptr<Service> s(new Service(options));
  std::vector<storage::KeyspaceOptions> all;
  std::vector<std::vector<storage::Keyspace>> owned(families.size());
  std::vector<std::vector<std::string>> owned_names(families.size());
  for (size_t f = 0; f < families.size(); ++f) {
    for (auto& ks : families[f]->Keyspaces()) {
      owned[f].push_back(static_cast<storage::Keyspace>(all.size()));
      owned_names[f].push_back(ks.name);
      all.push_back(std::move(ks));
    }
  }
  ASSIGN_OR_RETURN(s->engine_, storage::OpenRocksDb(options.storage, std::move(all)));
  s->families_ = std::move(families);
  for (size_t f = 0; f < s->families_.size(); ++f) {
    FamilyContext ctx{&s->options_, s->engine_.get(), owned[f], &s->metrics_, s.get(), &s->shared_, owned_names[f]};
    RETURN_IF_ERROR(s->families_[f]->Start(ctx));
  }

  storage::Engine* engine = s->engine_.get();
  s->metrics_.AddGauge("kosh_storage", "Storage engine figures (RocksDB properties and tickers).", [engine] {
    std::vector<std::pair<base::Labels, double>> out;
    for (auto& [name, v] : engine->Stats()) {
      // Names may carry a keyspace: "estimate_num_keys{keyspace=\"features\"}".
      base::Labels labels;
      std::string metric = name;
      size_t brace = name.find('{');
      if (brace != std::string::npos) {
        metric = name.substr(0, brace);
        size_t q1 = name.find('"', brace), q2 = name.rfind('"');
        labels.push_back({"keyspace", name.substr(q1 + 1, q2 - q1 - 1)});
      }
      labels.insert(labels.begin(), {"figure", metric});
      out.push_back({labels, v});
    }
    return out;
  });
  Service* raw = s.get();
  s->metrics_.AddGauge("kosh_ready", "1 when serving, 0 while starting or draining.", [raw] {
    return std::vector<std::pair<base::Labels, double>>{{{}, raw->ready() ? 1.0 : 0.0}};
  });
  s->ready_.store(true);
  return s;
}

Service::~Service() {
  // Long-running calls (loads) see readiness false and stop; they use family state.
  long_running_.Wait();
  // Family state references the engine, and later families may use earlier ones (flows read
  // through the feature store), so destroy them in reverse order of start.
  while (!families_.empty()) families_.pop_back();
}

int Service::Register(MethodDef def) {
  auto m = std::make_unique<Method>();
  const char* protocols[] = {"grpc", "http"};
  for (int p = 0; p < static_cast<int>(Protocol::kCount); ++p) {
    base::Labels labels = {{"protocol", protocols[p]}, {"method", def.name}};
    m->latency[p] = metrics_.GetHistogram("kosh_request_duration_seconds",
                                          "Request latency by protocol and method.", labels);
    for (int c = 0; c < 17; ++c) {
      base::Labels with_code = labels;
      with_code.push_back({"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c))});
      m->by_code[p][c] =
          metrics_.GetCounter("kosh_requests_total", "Requests by protocol, method and status code.", with_code);
    }
  }
  int id = static_cast<int>(methods_.size());
  if (!def.http_path.empty()) http_paths_[def.http_path] = id;
  m->def = std::move(def);
  methods_.push_back(std::move(m));
  return id;
}

int Service::FindHttpPath(absl::string_view path) const {
  auto it = http_paths_.find(path);
  return it == http_paths_.end() ? -1 : it->second;
}

std::vector<grpc::Service*> Service::GrpcServices() {
  std::vector<grpc::Service*> out;
  for (auto& f : families_) {
    for (auto* s : f->GrpcServices()) out.push_back(s);
  }
  return out;
}

absl::Status Service::Authorize(Scope scope, absl::string_view method_name,
                                absl::string_view authorization) const {
  if (!options_.auth.enabled) return absl::OkStatus();
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing credentials: send \"authorization: Bearer <token>\"");
  }
  if (!absl::StartsWith(authorization, "Bearer ")) {
    return absl::UnauthenticatedError("authorization must be \"Bearer <token>\"");
  }
  absl::string_view token = authorization.substr(7);
  const Caller* caller = nullptr;
  for (const auto& [t, c] : options_.auth.tokens) {
    // Compare every byte so that timing does not reveal a token prefix.
    if (t.size() == token.size()) {
      unsigned char diff = 0;
      for (size_t i = 0; i < t.size(); ++i) diff |= static_cast<unsigned char>(t[i] ^ token[i]);
      if (diff == 0) caller = &c;
    }
  }
  if (caller == nullptr) return absl::UnauthenticatedError("unknown token");
  uint8_t need = static_cast<uint8_t>(scope);
  // admin implies write and read; write does not imply read.
  bool allowed = (caller->scopes & need) != 0 || (caller->scopes & static_cast<uint8_t>(Scope::kAdmin)) != 0;
  if (!allowed) {
    const char* name = scope == Scope::kRead ? "read" : scope == Scope::kWrite ? "write" : "admin";
    return absl::PermissionDeniedError(
        absl::StrCat("caller \"", caller->name, "\" lacks the ", name, " scope needed by ", method_name));
  }
  return absl::OkStatus();
}

absl::Status Service::Call(Protocol p, int id, absl::string_view authorization,
                           const google::protobuf::Message& req, google::protobuf::Message* resp) {
  auto start = std::chrono::steady_clock::now();
  Method& m = *methods_[id];
  absl::Status st = Authorize(m.def.scope, m.def.name, authorization);
  if (st.ok()) st = m.def.handler(req, resp);
  Record(p, id, st.code(), std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return st;
}

void Service::Record(Protocol p, int id, absl::StatusCode code, double seconds) {
  Method& m = *methods_[id];
  int pi = static_cast<int>(p);
  m.latency[pi]->Observe(seconds);
  int c = static_cast<int>(code);
  if (c >= 0 && c < 17) m.by_code[pi][c]->Inc();
}

}  // namespace kosh::server
