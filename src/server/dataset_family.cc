#include "server/dataset_family.h"

#include <functional>

#include "base/status.h"
#include "datasets/dataset_manager.h"
#include "kosh/v1/datasets.grpc.pb.h"
#include "server/family_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

struct Ids {
  int get, multi_get, load, list, rollback, remove;
};

class DatasetsGrpc final : public v1::Datasets::CallbackService {
 public:
  DatasetsGrpc(server::Service* svc, const Ids* ids) : svc_(svc), ids_(ids) {}

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::DatasetGetRequest* req,
                                v1::DatasetGetResponse* resp) override {
    return RunUnary(svc_, ids_->get, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* MultiGet(grpc::CallbackServerContext* ctx, const v1::DatasetMultiGetRequest* req,
                                     v1::DatasetMultiGetResponse* resp) override {
    return RunUnary(svc_, ids_->multi_get, ctx, req, resp);
  }
  // A long-running method: RunUnary gives it a thread of its own.
  grpc::ServerUnaryReactor* LoadVersion(grpc::CallbackServerContext* ctx, const v1::LoadVersionRequest* req,
                                        v1::LoadVersionResponse* resp) override {
    return RunUnary(svc_, ids_->load, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListVersions(grpc::CallbackServerContext* ctx, const v1::ListVersionsRequest* req,
                                         v1::ListVersionsResponse* resp) override {
    return RunUnary(svc_, ids_->list, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Rollback(grpc::CallbackServerContext* ctx, const v1::RollbackRequest* req,
                                     v1::RollbackResponse* resp) override {
    return RunUnary(svc_, ids_->rollback, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* ctx, const v1::DeleteVersionRequest* req,
                                          v1::DeleteVersionResponse* resp) override {
    return RunUnary(svc_, ids_->remove, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
};

class DatasetFamily final : public Family {
 public:
  std::vector<storage::KeyspaceOptions> Keyspaces() const override { return {}; }

  absl::Status Start(const FamilyContext& ctx) override {
    auto options = datasets::ParseDatasetsOptions(ctx.options->datasets, ctx.options->storage.path);
    if (!options.ok()) return options.status();
    ASSIGN_OR_RETURN(manager_, datasets::DatasetManager::Open(std::move(*options), ctx.metrics));
    ctx.shared->datasets = manager_.get();
    Service* s = ctx.service;
    datasets::DatasetManager* m = manager_.get();
    ids_.get = s->Register(TypedMethod<v1::DatasetGetRequest, v1::DatasetGetResponse>(
        "DatasetGet", "/v1/datasets/get", Scope::kRead,
        [m](const auto& req, auto* resp) { return m->Get(req, resp); }));
    ids_.multi_get = s->Register(TypedMethod<v1::DatasetMultiGetRequest, v1::DatasetMultiGetResponse>(
        "DatasetMultiGet", "/v1/datasets/multi_get", Scope::kRead,
        [m](const auto& req, auto* resp) { return m->MultiGet(req, resp); }));
    MethodDef load = TypedMethod<v1::LoadVersionRequest, v1::LoadVersionResponse>(
        "LoadVersion", "/v1/datasets/load_version", Scope::kWrite, [m, s](const auto& req, auto* resp) {
          // A load stops when the server drains or its gRPC caller cancels.
          return m->Load(req, [s, cancelled = CallCancelled()] { return !s->ready() || cancelled(); }, resp);
        });
    load.long_running = true;  // a thread of its own over gRPC and HTTP
    ids_.load = s->Register(std::move(load));
    ids_.list = s->Register(TypedMethod<v1::ListVersionsRequest, v1::ListVersionsResponse>(
        "ListVersions", "/v1/datasets/list_versions", Scope::kRead,
        [m](const auto& req, auto* resp) { return m->ListVersions(req, resp); }));
    ids_.rollback = s->Register(TypedMethod<v1::RollbackRequest, v1::RollbackResponse>(
        "Rollback", "/v1/datasets/rollback", Scope::kAdmin,
        [m](const auto& req, auto* resp) { return m->Rollback(req, resp); }));
    ids_.remove = s->Register(TypedMethod<v1::DeleteVersionRequest, v1::DeleteVersionResponse>(
        "DeleteVersion", "/v1/datasets/delete_version", Scope::kAdmin,
        [m](const auto& req, auto* resp) { return m->DeleteVersion(req, resp); }));
    grpc_ = std::make_unique<DatasetsGrpc>(s, &ids_);
    spdlog::info("datasets: root {}, {} backup(s) kept", manager_->options().root, manager_->options().backups);
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {grpc_.get()}; }

 private:
  std::unique_ptr<datasets::DatasetManager> manager_;
  Ids ids_{};
  std::unique_ptr<DatasetsGrpc> grpc_;
};

}  // namespace

std::unique_ptr<Family> NewDatasetFamily() { return std::make_unique<DatasetFamily>(); }

}  // namespace kosh::server
