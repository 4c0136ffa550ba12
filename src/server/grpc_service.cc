#include "server/grpc_service.h"

#include <chrono>

#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/registry.grpc.pb.h"

namespace kosh::server {

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

namespace {

absl::string_view Authorization(grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

grpc::ServerUnaryReactor* Run(Service* svc, Method m, grpc::CallbackServerContext* ctx,
                              const google::protobuf::Message* req, google::protobuf::Message* resp) {
  auto start = std::chrono::steady_clock::now();
  absl::Status st = svc->Authorize(m, Authorization(ctx));
  if (st.ok()) st = svc->Handle(m, *req, resp);
  if (!st.ok()) resp->Clear();
  svc->Record(Protocol::kGrpc, m, st.code(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

class FeatureStoreImpl final : public v1::FeatureStore::CallbackService {
 public:
  explicit FeatureStoreImpl(server::Service* svc) : svc_(svc) {}
  grpc::ServerUnaryReactor* Retrieve(grpc::CallbackServerContext* ctx, const v1::RetrieveRequest* req,
                                     v1::RetrieveResponse* resp) override {
    return Run(svc_, Method::kRetrieve, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* RetrieveMatrix(grpc::CallbackServerContext* ctx, const v1::RetrieveRequest* req,
                                           v1::RetrieveMatrixResponse* resp) override {
    return Run(svc_, Method::kRetrieveMatrix, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Persist(grpc::CallbackServerContext* ctx, const v1::PersistRequest* req,
                                    v1::PersistResponse* resp) override {
    return Run(svc_, Method::kPersist, ctx, req, resp);
  }

 private:
  server::Service* svc_;
};

class RegistryImpl final : public v1::Registry::CallbackService {
 public:
  explicit RegistryImpl(server::Service* svc) : svc_(svc) {}
  grpc::ServerUnaryReactor* CreateEntity(grpc::CallbackServerContext* ctx, const v1::Entity* req,
                                         v1::Entity* resp) override {
    return Run(svc_, Method::kCreateEntity, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetEntity(grpc::CallbackServerContext* ctx, const v1::GetEntityRequest* req,
                                      v1::Entity* resp) override {
    return Run(svc_, Method::kGetEntity, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListEntities(grpc::CallbackServerContext* ctx, const v1::ListEntitiesRequest* req,
                                         v1::ListEntitiesResponse* resp) override {
    return Run(svc_, Method::kListEntities, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* CreateFeatureGroup(grpc::CallbackServerContext* ctx,
                                               const v1::CreateFeatureGroupRequest* req,
                                               v1::FeatureGroup* resp) override {
    return Run(svc_, Method::kCreateFeatureGroup, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetFeatureGroup(grpc::CallbackServerContext* ctx,
                                            const v1::GetFeatureGroupRequest* req,
                                            v1::FeatureGroup* resp) override {
    return Run(svc_, Method::kGetFeatureGroup, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListFeatureGroups(grpc::CallbackServerContext* ctx,
                                              const v1::ListFeatureGroupsRequest* req,
                                              v1::ListFeatureGroupsResponse* resp) override {
    return Run(svc_, Method::kListFeatureGroups, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* AddFeatureGroupVersion(grpc::CallbackServerContext* ctx,
                                                   const v1::AddFeatureGroupVersionRequest* req,
                                                   v1::FeatureGroup* resp) override {
    return Run(svc_, Method::kAddFeatureGroupVersion, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ApplySchema(grpc::CallbackServerContext* ctx, const v1::ApplySchemaRequest* req,
                                        v1::ApplySchemaResponse* resp) override {
    return Run(svc_, Method::kApplySchema, ctx, req, resp);
  }

 private:
  server::Service* svc_;
};

}  // namespace

std::unique_ptr<grpc::Service> NewFeatureStoreGrpc(Service* service) {
  return std::make_unique<FeatureStoreImpl>(service);
}
std::unique_ptr<grpc::Service> NewRegistryGrpc(Service* service) {
  return std::make_unique<RegistryImpl>(service);
}

}  // namespace kosh::server
