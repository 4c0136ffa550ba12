#include "server/flow_family.h"

#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "flows/executor.h"
#include "flows/flow_registry.h"
#include "kosh/v1/flows.grpc.pb.h"
#include "server/family_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

struct Ids {
  int put, get, list, infer, rank;
};

// A 100-row matrix is over a thousand Value messages: start with larger arena blocks.
using InferAllocator = ArenaMessageAllocator<v1::InferRequest, v1::InferResponse, 16384, 262144>;

class FlowsGrpc final : public v1::Flows::CallbackService {
 public:
  FlowsGrpc(server::Service* svc, const Ids* ids) : svc_(svc), ids_(ids) { SetMessageAllocatorFor_Infer(&infer_allocator_); }
  grpc::ServerUnaryReactor* PutFlow(grpc::CallbackServerContext* ctx, const v1::PutFlowRequest* req,
                                    v1::PutFlowResponse* resp) override {
    return RunUnary(svc_, ids_->put, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetFlow(grpc::CallbackServerContext* ctx, const v1::GetFlowRequest* req,
                                    v1::FlowRecord* resp) override {
    return RunUnary(svc_, ids_->get, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListFlows(grpc::CallbackServerContext* ctx, const v1::ListFlowsRequest* req,
                                      v1::ListFlowsResponse* resp) override {
    return RunUnary(svc_, ids_->list, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Infer(grpc::CallbackServerContext* ctx, const v1::InferRequest* req,
                                  v1::InferResponse* resp) override {
    return RunUnary(svc_, ids_->infer, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Rank(grpc::CallbackServerContext* ctx, const v1::RankRequest* req,
                                 v1::RankResponse* resp) override {
    return RunUnary(svc_, ids_->rank, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
  InferAllocator infer_allocator_;
};

class FlowFamily final : public Family {
 public:
  std::vector<storage::KeyspaceOptions> Keyspaces() const override { return {{"flows", nullptr, nullptr}}; }

  absl::Status Start(const FamilyContext& ctx) override {
    const Subsystems& shared = *ctx.shared;
    if (shared.feature_registry == nullptr || shared.feature_store == nullptr) {
      return absl::FailedPreconditionError("flows: the feature family must start before the flows family");
    }
    ASSIGN_OR_RETURN(flows::FlowsOptions opts, flows::ParseFlowsOptions(ctx.options->flows));
    ASSIGN_OR_RETURN(config_, ctx.OpenConfigStore("flows"));
    ASSIGN_OR_RETURN(registry_, flows::FlowRegistry::Open(config_.get(), shared.feature_registry, opts, ctx.metrics));
    for (const auto& path : opts.files) {
      ASSIGN_OR_RETURN(std::string text, base::ReadFile(path));
      v1::PutFlowRequest req;
      req.set_config(text);
      auto put = registry_->Put(req);
      if (!put.ok()) return absl::Status(put.status().code(), absl::StrCat(path, ": ", put.status().message()));
      spdlog::info("flow {}: model {} version {}{}", path, put->model_id(), put->version(),
                   put->created() ? "" : " (unchanged)");
    }
    executor_ = std::make_unique<flows::Executor>(
        flows::Sources{shared.feature_store, shared.interactions, shared.datasets}, opts);
    Service* s = ctx.service;
    flows::FlowRegistry* reg = registry_.get();
    flows::Executor* exec = executor_.get();
    ids_.put = s->Register(TypedMethod<v1::PutFlowRequest, v1::PutFlowResponse>(
        "PutFlow", "/v1/flows/put", Scope::kAdmin, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->Put(req));
          return absl::OkStatus();
        }));
    ids_.get = s->Register(TypedMethod<v1::GetFlowRequest, v1::FlowRecord>(
        "GetFlow", "/v1/flows/get", Scope::kRead, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->Get(req.model_id(), req.version()));
          return absl::OkStatus();
        }));
    ids_.list = s->Register(TypedMethod<v1::ListFlowsRequest, v1::ListFlowsResponse>(
        "ListFlows", "/v1/flows/list", Scope::kRead, [reg](const auto&, auto* resp) {
          for (auto& f : reg->List()) *resp->add_flows() = std::move(f);
          return absl::OkStatus();
        }));
    ids_.infer = s->Register(TypedMethod<v1::InferRequest, v1::InferResponse>(
        "Infer", "/v1/flows/infer", Scope::kRead, [reg, exec](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(auto flow, reg->Find(req.model_id(), req.version()));
          return exec->Run(*flow, req, resp);
        }));
    ids_.rank = s->Register(TypedMethod<v1::RankRequest, v1::RankResponse>(
        "Rank", "/v1/flows/rank", Scope::kRead, [reg, exec](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(auto flow, reg->Find(req.model_id(), req.version()));
          return exec->Rank(*flow, req, resp);
        }));
    grpc_ = std::make_unique<FlowsGrpc>(s, &ids_);
    ctx.shared->flow_registry = registry_.get();
    ctx.shared->flow_executor = executor_.get();
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {grpc_.get()}; }

 private:
  std::unique_ptr<storage::ConfigStore> config_;  // outlives registry_
  std::unique_ptr<flows::FlowRegistry> registry_;
  std::unique_ptr<flows::Executor> executor_;
  Ids ids_{};
  std::unique_ptr<FlowsGrpc> grpc_;
};

}  // namespace

std::unique_ptr<Family> NewFlowFamily() {
  return std::make_unique<FlowFamily>();
}

}  // namespace kosh::server
