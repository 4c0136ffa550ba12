#include "server/dataset_family.h"

#include <functional>

#include "base/status.h"
#include "base/thread_group.h"
#include "datasets/dataset_manager.h"
#include "kosh/v1/datasets.grpc.pb.h"
#include "server/family_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

struct Ids {
  int get, multi_get, load, list, rollback, remove;
};

// The cancellation test of the LoadVersion call running on this thread, if it came over gRPC.
// The method table's handlers see only messages; this is how a load learns that its caller gave
// up. Set only around Service::Call on a load thread.
thread_local const std::function<bool()>* tls_load_cancelled = nullptr;

class DatasetFamily;

class DatasetsGrpc final : public v1::Datasets::CallbackService {
 public:
  DatasetsGrpc(server::Service* svc, const Ids* ids, DatasetFamily* family) : svc_(svc), ids_(ids), family_(family) {}

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::DatasetGetRequest* req,
                                v1::DatasetGetResponse* resp) override {
    return RunUnary(svc_, ids_->get, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* MultiGet(grpc::CallbackServerContext* ctx, const v1::DatasetMultiGetRequest* req,
                                     v1::DatasetMultiGetResponse* resp) override {
    return RunUnary(svc_, ids_->multi_get, ctx, req, resp);
  }
  // A load takes seconds to minutes: it runs on a thread of its own so that it never holds one of
  // gRPC's callback threads (which serve the reads), and it stops if the caller cancels.
  grpc::ServerUnaryReactor* LoadVersion(grpc::CallbackServerContext* ctx, const v1::LoadVersionRequest* req,
                                        v1::LoadVersionResponse* resp) override;
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
  DatasetFamily* family_;
};

class DatasetFamily final : public Family {
 public:
  // Loads in flight see the drain (readiness false) and stop; load_threads_ waits for them.
  ~DatasetFamily() override = default;

  std::vector<storage::KeyspaceOptions> Keyspaces() const override { return {}; }

  absl::Status Start(const FamilyContext& ctx) override {
    auto options = datasets::ParseDatasetsOptions(ctx.options->datasets, ctx.options->storage.path);
    if (!options.ok()) return options.status();
    ASSIGN_OR_RETURN(manager_, datasets::DatasetManager::Open(std::move(*options), ctx.metrics));
    service_ = ctx.service;
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
          const std::function<bool()>* grpc_cancelled = tls_load_cancelled;
          return m->Load(req, [s, grpc_cancelled] { return !s->ready() || (grpc_cancelled && (*grpc_cancelled)()); },
                         resp);
        });
    load.long_running = true;  // HTTP: off the I/O threads (gRPC: see DatasetsGrpc::LoadVersion)
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
    grpc_ = std::make_unique<DatasetsGrpc>(s, &ids_, this);
    spdlog::info("datasets: root {}, {} backup(s) kept", manager_->options().root, manager_->options().backups);
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {grpc_.get()}; }

  // Runs `fn` on a new thread that the destructor waits for; false if no thread could be started.
  bool Spawn(std::function<void()> fn) { return load_threads_.Spawn(std::move(fn)); }

  Service* service() const { return service_; }
  const Ids& ids() const { return ids_; }

 private:
  std::unique_ptr<datasets::DatasetManager> manager_;
  Service* service_ = nullptr;
  Ids ids_{};
  std::unique_ptr<DatasetsGrpc> grpc_;
  base::ThreadGroup load_threads_;  // last: waited for before anything the loads use goes
};

grpc::ServerUnaryReactor* DatasetsGrpc::LoadVersion(grpc::CallbackServerContext* ctx,
                                                    const v1::LoadVersionRequest* req, v1::LoadVersionResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  server::Service* svc = svc_;
  const int id = ids_->load;
  const bool spawned = family_->Spawn([svc, id, ctx, req, resp, reactor] {
    const std::function<bool()> cancelled = [ctx] { return ctx->IsCancelled(); };
    tls_load_cancelled = &cancelled;
    absl::Status st = svc->Call(Protocol::kGrpc, id, GrpcAuthorization(ctx), *req, resp);
    tls_load_cancelled = nullptr;
    if (!st.ok()) resp->Clear();
    reactor->Finish(ToGrpcStatus(st));
  });
  if (!spawned) reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "cannot start a thread for the load"));
  return reactor;
}

}  // namespace

std::unique_ptr<Family> NewDatasetFamily() { return std::make_unique<DatasetFamily>(); }

}  // namespace kosh::server
