#include "server/feature_family.h"

#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "features/feature_store.h"
#include "features/registry.h"
#include "features/schema_yaml.h"
#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/registry.grpc.pb.h"
#include "server/family_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

// Method ids, in registration order.
struct Ids {
  int retrieve, retrieve_matrix, persist;
  int create_entity, get_entity, list_entities, create_group, get_group, list_groups, add_version, apply;
};

class FeatureStoreGrpc final : public v1::FeatureStore::CallbackService {
 public:
  FeatureStoreGrpc(server::Service* svc, const Ids* ids) : svc_(svc), ids_(ids) {
    SetMessageAllocatorFor_Retrieve(&retrieve_allocator_);
    SetMessageAllocatorFor_RetrieveMatrix(&retrieve_matrix_allocator_);
  }
  grpc::ServerUnaryReactor* Retrieve(grpc::CallbackServerContext* ctx, const v1::RetrieveRequest* req,
                                     v1::RetrieveResponse* resp) override {
    return RunUnary(svc_, ids_->retrieve, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* RetrieveMatrix(grpc::CallbackServerContext* ctx, const v1::RetrieveRequest* req,
                                           v1::RetrieveMatrixResponse* resp) override {
    return RunUnary(svc_, ids_->retrieve_matrix, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Persist(grpc::CallbackServerContext* ctx, const v1::PersistRequest* req,
                                    v1::PersistResponse* resp) override {
    return RunUnary(svc_, ids_->persist, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
  ArenaMessageAllocator<v1::RetrieveRequest, v1::RetrieveResponse> retrieve_allocator_;
  ArenaMessageAllocator<v1::RetrieveRequest, v1::RetrieveMatrixResponse> retrieve_matrix_allocator_;
};

class RegistryGrpc final : public v1::Registry::CallbackService {
 public:
  RegistryGrpc(server::Service* svc, const Ids* ids) : svc_(svc), ids_(ids) {}
  grpc::ServerUnaryReactor* CreateEntity(grpc::CallbackServerContext* ctx, const v1::Entity* req,
                                         v1::Entity* resp) override {
    return RunUnary(svc_, ids_->create_entity, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetEntity(grpc::CallbackServerContext* ctx, const v1::GetEntityRequest* req,
                                      v1::Entity* resp) override {
    return RunUnary(svc_, ids_->get_entity, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListEntities(grpc::CallbackServerContext* ctx, const v1::ListEntitiesRequest* req,
                                         v1::ListEntitiesResponse* resp) override {
    return RunUnary(svc_, ids_->list_entities, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* CreateFeatureGroup(grpc::CallbackServerContext* ctx,
                                               const v1::CreateFeatureGroupRequest* req,
                                               v1::FeatureGroup* resp) override {
    return RunUnary(svc_, ids_->create_group, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetFeatureGroup(grpc::CallbackServerContext* ctx,
                                            const v1::GetFeatureGroupRequest* req,
                                            v1::FeatureGroup* resp) override {
    return RunUnary(svc_, ids_->get_group, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListFeatureGroups(grpc::CallbackServerContext* ctx,
                                              const v1::ListFeatureGroupsRequest* req,
                                              v1::ListFeatureGroupsResponse* resp) override {
    return RunUnary(svc_, ids_->list_groups, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* AddFeatureGroupVersion(grpc::CallbackServerContext* ctx,
                                                   const v1::AddFeatureGroupVersionRequest* req,
                                                   v1::FeatureGroup* resp) override {
    return RunUnary(svc_, ids_->add_version, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ApplySchema(grpc::CallbackServerContext* ctx, const v1::ApplySchemaRequest* req,
                                        v1::ApplySchemaResponse* resp) override {
    return RunUnary(svc_, ids_->apply, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
};

class FeatureFamily final : public Family {
 public:

  std::vector<storage::KeyspaceOptions> Keyspaces() const override {
    return {{"registry", nullptr, nullptr}, {"features", features::FeatureStore::RowExpired, nullptr}};
  }

  absl::Status Start(const FamilyContext& ctx) override {
    const ServerOptions& o = *ctx.options;
    // The "registry" keyspace, or the ZooKeeper namespace "registry" (options registry.backend).
    ASSIGN_OR_RETURN(config_, ctx.OpenConfigStore("registry"));
    ASSIGN_OR_RETURN(registry_, features::Registry::Open(config_.get(), o.registry));
    for (const auto& path : o.schema_files) {
      ASSIGN_OR_RETURN(YAML::Node doc, base::LoadYamlFile(path));
      ASSIGN_OR_RETURN(v1::ApplySchemaRequest req, features::ParseSchemaYaml(doc, path));
      auto applied = registry_->Apply(req);
      if (!applied.ok()) {
        return absl::Status(applied.status().code(), absl::StrCat(path, ": ", applied.status().message()));
      }
      spdlog::info("schema {}: {} entities created, {} groups created, {} versions added", path,
                   applied->entities_created(), applied->groups_created(), applied->versions_added());
    }
    store_ = std::make_unique<features::FeatureStore>(ctx.engine, ctx.keyspaces[1], registry_.get(), o.features,
                                                      ctx.metrics);
    Service* s = ctx.service;
    features::FeatureStore* store = store_.get();
    features::Registry* reg = registry_.get();
    ids_.retrieve = s->Register(TypedMethod<v1::RetrieveRequest, v1::RetrieveResponse>(
        "Retrieve", "/v1/features/retrieve", Scope::kRead,
        [store](const auto& req, auto* resp) { return store->Retrieve(req, resp); }));
    ids_.retrieve_matrix = s->Register(TypedMethod<v1::RetrieveRequest, v1::RetrieveMatrixResponse>(
        "RetrieveMatrix", "/v1/features/retrieve_matrix", Scope::kRead,
        [store](const auto& req, auto* resp) { return store->RetrieveMatrix(req, resp); }));
    ids_.persist = s->Register(TypedMethod<v1::PersistRequest, v1::PersistResponse>(
        "Persist", "/v1/features/persist", Scope::kWrite,
        [store](const auto& req, auto* resp) { return store->Persist(req, resp); }));
    ids_.create_entity = s->Register(TypedMethod<v1::Entity, v1::Entity>(
        "CreateEntity", "/v1/registry/create_entity", Scope::kAdmin, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->CreateEntity(req));
          return absl::OkStatus();
        }));
    ids_.get_entity = s->Register(TypedMethod<v1::GetEntityRequest, v1::Entity>(
        "GetEntity", "/v1/registry/get_entity", Scope::kRead, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->GetEntity(req.name()));
          return absl::OkStatus();
        }));
    ids_.list_entities = s->Register(TypedMethod<v1::ListEntitiesRequest, v1::ListEntitiesResponse>(
        "ListEntities", "/v1/registry/list_entities", Scope::kRead, [reg](const auto&, auto* resp) {
          for (auto& e : reg->ListEntities()) *resp->add_entities() = std::move(e);
          return absl::OkStatus();
        }));
    ids_.create_group = s->Register(TypedMethod<v1::CreateFeatureGroupRequest, v1::FeatureGroup>(
        "CreateFeatureGroup", "/v1/registry/create_feature_group", Scope::kAdmin,
        [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->CreateFeatureGroup(req));
          return absl::OkStatus();
        }));
    ids_.get_group = s->Register(TypedMethod<v1::GetFeatureGroupRequest, v1::FeatureGroup>(
        "GetFeatureGroup", "/v1/registry/get_feature_group", Scope::kRead, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->GetFeatureGroup(req.entity(), req.name()));
          return absl::OkStatus();
        }));
    ids_.list_groups = s->Register(TypedMethod<v1::ListFeatureGroupsRequest, v1::ListFeatureGroupsResponse>(
        "ListFeatureGroups", "/v1/registry/list_feature_groups", Scope::kRead, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(auto groups, reg->ListFeatureGroups(req.entity()));
          for (auto& g : groups) *resp->add_groups() = std::move(g);
          return absl::OkStatus();
        }));
    ids_.add_version = s->Register(TypedMethod<v1::AddFeatureGroupVersionRequest, v1::FeatureGroup>(
        "AddFeatureGroupVersion", "/v1/registry/add_feature_group_version", Scope::kAdmin,
        [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->AddVersion(req));
          return absl::OkStatus();
        }));
    ids_.apply = s->Register(TypedMethod<v1::ApplySchemaRequest, v1::ApplySchemaResponse>(
        "ApplySchema", "/v1/registry/apply_schema", Scope::kAdmin, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->Apply(req));
          return absl::OkStatus();
        }));
    feature_store_grpc_ = std::make_unique<FeatureStoreGrpc>(s, &ids_);
    registry_grpc_ = std::make_unique<RegistryGrpc>(s, &ids_);
    ctx.shared->feature_registry = registry_.get();
    ctx.shared->feature_store = store_.get();
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override {
    return {feature_store_grpc_.get(), registry_grpc_.get()};
  }

 private:
  std::unique_ptr<storage::ConfigStore> config_;  // outlives registry_
  std::unique_ptr<features::Registry> registry_;
  std::unique_ptr<features::FeatureStore> store_;
  Ids ids_{};
  std::unique_ptr<FeatureStoreGrpc> feature_store_grpc_;
  std::unique_ptr<RegistryGrpc> registry_grpc_;
};

}  // namespace

std::unique_ptr<Family> NewFeatureFamily() {
  return std::make_unique<FeatureFamily>();
}

}  // namespace kosh::server
