#include "server/service.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "features/schema_yaml.h"
#include "kosh/v1/feature_store.pb.h"
#include "kosh/v1/registry.pb.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

constexpr storage::Keyspace kRegistryKs = 0;
constexpr storage::Keyspace kFeaturesKs = 1;

const MethodInfo kMethods[] = {
    {"Retrieve", "/v1/features/retrieve", Scope::kRead},
    {"RetrieveMatrix", "/v1/features/retrieve_matrix", Scope::kRead},
    {"Persist", "/v1/features/persist", Scope::kWrite},
    {"CreateEntity", "/v1/registry/create_entity", Scope::kAdmin},
    {"GetEntity", "/v1/registry/get_entity", Scope::kRead},
    {"ListEntities", "/v1/registry/list_entities", Scope::kRead},
    {"CreateFeatureGroup", "/v1/registry/create_feature_group", Scope::kAdmin},
    {"GetFeatureGroup", "/v1/registry/get_feature_group", Scope::kRead},
    {"ListFeatureGroups", "/v1/registry/list_feature_groups", Scope::kRead},
    {"AddFeatureGroupVersion", "/v1/registry/add_feature_group_version", Scope::kAdmin},
    {"ApplySchema", "/v1/registry/apply_schema", Scope::kAdmin},
};
static_assert(sizeof(kMethods) / sizeof(kMethods[0]) == static_cast<size_t>(Method::kCount));

template <typename T>
const T& As(const google::protobuf::Message& m) {
  return static_cast<const T&>(m);
}
template <typename T>
T* As(google::protobuf::Message* m) {
  return static_cast<T*>(m);
}

}  // namespace

const MethodInfo& Info(Method m) { return kMethods[static_cast<int>(m)]; }

std::unique_ptr<google::protobuf::Message> NewRequest(Method m) {
  switch (m) {
    case Method::kRetrieve:
    case Method::kRetrieveMatrix: return std::make_unique<v1::RetrieveRequest>();
    case Method::kPersist: return std::make_unique<v1::PersistRequest>();
    case Method::kCreateEntity: return std::make_unique<v1::Entity>();
    case Method::kGetEntity: return std::make_unique<v1::GetEntityRequest>();
    case Method::kListEntities: return std::make_unique<v1::ListEntitiesRequest>();
    case Method::kCreateFeatureGroup: return std::make_unique<v1::CreateFeatureGroupRequest>();
    case Method::kGetFeatureGroup: return std::make_unique<v1::GetFeatureGroupRequest>();
    case Method::kListFeatureGroups: return std::make_unique<v1::ListFeatureGroupsRequest>();
    case Method::kAddFeatureGroupVersion: return std::make_unique<v1::AddFeatureGroupVersionRequest>();
    case Method::kApplySchema: return std::make_unique<v1::ApplySchemaRequest>();
    case Method::kCount: break;
  }
  return nullptr;
}

std::unique_ptr<google::protobuf::Message> NewResponse(Method m) {
  switch (m) {
    case Method::kRetrieve: return std::make_unique<v1::RetrieveResponse>();
    case Method::kRetrieveMatrix: return std::make_unique<v1::RetrieveMatrixResponse>();
    case Method::kPersist: return std::make_unique<v1::PersistResponse>();
    case Method::kCreateEntity:
    case Method::kGetEntity: return std::make_unique<v1::Entity>();
    case Method::kListEntities: return std::make_unique<v1::ListEntitiesResponse>();
    case Method::kCreateFeatureGroup:
    case Method::kGetFeatureGroup:
    case Method::kAddFeatureGroupVersion: return std::make_unique<v1::FeatureGroup>();
    case Method::kListFeatureGroups: return std::make_unique<v1::ListFeatureGroupsResponse>();
    case Method::kApplySchema: return std::make_unique<v1::ApplySchemaResponse>();
    case Method::kCount: break;
  }
  return nullptr;
}

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

absl::StatusOr<std::unique_ptr<Service>> Service::Open(const ServerOptions& options) {
  std::unique_ptr<Service> s(new Service(options));
  ASSIGN_OR_RETURN(s->engine_, storage::OpenRocksDb(options.storage,
                                                    {{"registry", nullptr},
                                                     {"features", features::FeatureStore::RowExpired}}));
  ASSIGN_OR_RETURN(s->registry_, features::Registry::Open(s->engine_.get(), kRegistryKs, options.registry));
  s->store_ = std::make_unique<features::FeatureStore>(s->engine_.get(), kFeaturesKs, s->registry_.get(),
                                                       options.features, &s->metrics_);
  for (const auto& path : options.schema_files) {
    ASSIGN_OR_RETURN(YAML::Node doc, base::LoadYamlFile(path));
    ASSIGN_OR_RETURN(v1::ApplySchemaRequest req, features::ParseSchemaYaml(doc, path));
    auto applied = s->registry_->Apply(req);
    if (!applied.ok()) {
      return absl::Status(applied.status().code(), absl::StrCat(path, ": ", applied.status().message()));
    }
    spdlog::info("schema {}: {} entities created, {} groups created, {} versions added", path,
                 applied->entities_created(), applied->groups_created(), applied->versions_added());
  }

  const char* protocols[] = {"grpc", "http"};
  for (int p = 0; p < static_cast<int>(Protocol::kCount); ++p) {
    for (int m = 0; m < static_cast<int>(Method::kCount); ++m) {
      auto& mm = s->method_metrics_[p][m];
      base::Labels labels = {{"protocol", protocols[p]}, {"method", kMethods[m].name}};
      mm.latency = s->metrics_.GetHistogram("kosh_request_duration_seconds",
                                            "Request latency by protocol and method.", labels);
      for (int c = 0; c < 17; ++c) {
        base::Labels with_code = labels;
        with_code.push_back({"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c))});
        mm.by_code[c] = s->metrics_.GetCounter("kosh_requests_total",
                                               "Requests by protocol, method and status code.", with_code);
      }
    }
  }
  storage::Engine* engine = s->engine_.get();
  s->metrics_.AddGauge("kosh_storage", "Storage engine figures (RocksDB properties and tickers).", [engine] {
    std::vector<std::pair<base::Labels, double>> out;
    for (auto& [name, v] : engine->Stats()) {
      // Names may carry a label set: "estimate_num_keys{keyspace=\"features\"}".
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

Service::~Service() = default;

absl::Status Service::Authorize(Method m, absl::string_view authorization) const {
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
  uint8_t need = static_cast<uint8_t>(Info(m).scope);
  // admin implies write and read; write does not imply read.
  bool allowed = (caller->scopes & need) != 0 || (caller->scopes & static_cast<uint8_t>(Scope::kAdmin)) != 0;
  if (!allowed) {
    const char* scope = need == static_cast<uint8_t>(Scope::kRead)    ? "read"
                        : need == static_cast<uint8_t>(Scope::kWrite) ? "write"
                                                                      : "admin";
    return absl::PermissionDeniedError(
        absl::StrCat("caller \"", caller->name, "\" lacks the ", scope, " scope needed by ", Info(m).name));
  }
  return absl::OkStatus();
}

absl::Status Service::Handle(Method m, const google::protobuf::Message& req, google::protobuf::Message* resp) {
  switch (m) {
    case Method::kRetrieve:
      return store_->Retrieve(As<v1::RetrieveRequest>(req), As<v1::RetrieveResponse>(resp));
    case Method::kRetrieveMatrix:
      return store_->RetrieveMatrix(As<v1::RetrieveRequest>(req), As<v1::RetrieveMatrixResponse>(resp));
    case Method::kPersist:
      return store_->Persist(As<v1::PersistRequest>(req), As<v1::PersistResponse>(resp));
    case Method::kCreateEntity: {
      ASSIGN_OR_RETURN(*As<v1::Entity>(resp), registry_->CreateEntity(As<v1::Entity>(req)));
      return absl::OkStatus();
    }
    case Method::kGetEntity: {
      ASSIGN_OR_RETURN(*As<v1::Entity>(resp), registry_->GetEntity(As<v1::GetEntityRequest>(req).name()));
      return absl::OkStatus();
    }
    case Method::kListEntities: {
      for (auto& e : registry_->ListEntities()) *As<v1::ListEntitiesResponse>(resp)->add_entities() = std::move(e);
      return absl::OkStatus();
    }
    case Method::kCreateFeatureGroup: {
      ASSIGN_OR_RETURN(*As<v1::FeatureGroup>(resp),
                       registry_->CreateFeatureGroup(As<v1::CreateFeatureGroupRequest>(req)));
      return absl::OkStatus();
    }
    case Method::kGetFeatureGroup: {
      const auto& r = As<v1::GetFeatureGroupRequest>(req);
      ASSIGN_OR_RETURN(*As<v1::FeatureGroup>(resp), registry_->GetFeatureGroup(r.entity(), r.name()));
      return absl::OkStatus();
    }
    case Method::kListFeatureGroups: {
      ASSIGN_OR_RETURN(auto groups, registry_->ListFeatureGroups(As<v1::ListFeatureGroupsRequest>(req).entity()));
      for (auto& g : groups) *As<v1::ListFeatureGroupsResponse>(resp)->add_groups() = std::move(g);
      return absl::OkStatus();
    }
    case Method::kAddFeatureGroupVersion: {
      ASSIGN_OR_RETURN(*As<v1::FeatureGroup>(resp),
                       registry_->AddVersion(As<v1::AddFeatureGroupVersionRequest>(req)));
      return absl::OkStatus();
    }
    case Method::kApplySchema: {
      ASSIGN_OR_RETURN(*As<v1::ApplySchemaResponse>(resp), registry_->Apply(As<v1::ApplySchemaRequest>(req)));
      return absl::OkStatus();
    }
    case Method::kCount: break;
  }
  return absl::UnimplementedError("unknown method");
}

void Service::Record(Protocol p, Method m, absl::StatusCode code, double seconds) {
  auto& mm = method_metrics_[static_cast<int>(p)][static_cast<int>(m)];
  mm.latency->Observe(seconds);
  int c = static_cast<int>(code);
  if (c >= 0 && c < 17) mm.by_code[c]->Inc();
}

}  // namespace kosh::server
