#include "server/pipeline_family.h"

#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "kosh/v1/pipelines.grpc.pb.h"
#include "pipelines/executor.h"
#include "pipelines/pipeline_registry.h"
#include "server/family_util.h"
#include "spdlog/spdlog.h"

namespace kosh::server {
namespace {

struct Ids {
  int put, get, list, run;
};

// A response of a few hundred candidates with their columns is thousands of small messages.
using RunAllocator = ArenaMessageAllocator<v1::RunPipelineRequest, v1::RunPipelineResponse, 16384, 262144>;

class PipelinesGrpc final : public v1::Pipelines::CallbackService {
 public:
  PipelinesGrpc(server::Service* svc, const Ids* ids) : svc_(svc), ids_(ids) {
    SetMessageAllocatorFor_RunPipeline(&run_allocator_);
  }
  grpc::ServerUnaryReactor* PutPipeline(grpc::CallbackServerContext* ctx, const v1::PutPipelineRequest* req,
                                        v1::PutPipelineResponse* resp) override {
    return RunUnary(svc_, ids_->put, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* GetPipeline(grpc::CallbackServerContext* ctx, const v1::GetPipelineRequest* req,
                                        v1::PipelineRecord* resp) override {
    return RunUnary(svc_, ids_->get, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListPipelines(grpc::CallbackServerContext* ctx, const v1::ListPipelinesRequest* req,
                                          v1::ListPipelinesResponse* resp) override {
    return RunUnary(svc_, ids_->list, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* RunPipeline(grpc::CallbackServerContext* ctx, const v1::RunPipelineRequest* req,
                                        v1::RunPipelineResponse* resp) override {
    return RunUnary(svc_, ids_->run, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
  RunAllocator run_allocator_;
};

class PipelineFamily final : public Family {
 public:
  std::vector<storage::KeyspaceOptions> Keyspaces() const override { return {{"pipelines", nullptr, nullptr}}; }

  absl::Status Start(const FamilyContext& ctx) override {
    ASSIGN_OR_RETURN(options_, pipelines::ParsePipelinesOptions(ctx.options->pipelines));
    RETURN_IF_ERROR(pipelines::RegisterBuiltinNodes(&nodes_));
    const Subsystems& shared = *ctx.shared;
    pipelines::NodeEnv env;
    env.datasets = shared.datasets;
    env.interactions = shared.interactions;
    env.flow_registry = shared.flow_registry;
    env.flow_executor = shared.flow_executor;
    env.options = &options_;
    ASSIGN_OR_RETURN(config_, ctx.OpenConfigStore("pipelines"));
    ASSIGN_OR_RETURN(registry_, pipelines::PipelineRegistry::Open(config_.get(), &nodes_, env, ctx.metrics));
    for (const auto& path : options_.files) {
      ASSIGN_OR_RETURN(std::string text, base::ReadFile(path));
      v1::PutPipelineRequest req;
      req.set_config(text);
      auto put = registry_->Put(req);
      if (!put.ok()) return absl::Status(put.status().code(), absl::StrCat(path, ": ", put.status().message()));
      spdlog::info("pipeline {}: {} version {}{}", path, put->pipeline_id(), put->version(),
                   put->created() ? "" : " (unchanged)");
    }
    executor_ = std::make_unique<pipelines::PipelineExecutor>(options_);
    Service* s = ctx.service;
    pipelines::PipelineRegistry* reg = registry_.get();
    pipelines::PipelineExecutor* exec = executor_.get();
    ids_.put = s->Register(TypedMethod<v1::PutPipelineRequest, v1::PutPipelineResponse>(
        "PutPipeline", "/v1/pipelines/put", Scope::kAdmin, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->Put(req));
          return absl::OkStatus();
        }));
    ids_.get = s->Register(TypedMethod<v1::GetPipelineRequest, v1::PipelineRecord>(
        "GetPipeline", "/v1/pipelines/get", Scope::kRead, [reg](const auto& req, auto* resp) {
          ASSIGN_OR_RETURN(*resp, reg->Get(req.pipeline_id(), req.version()));
          return absl::OkStatus();
        }));
    ids_.list = s->Register(TypedMethod<v1::ListPipelinesRequest, v1::ListPipelinesResponse>(
        "ListPipelines", "/v1/pipelines/list", Scope::kRead, [reg](const auto&, auto* resp) {
          for (auto& p : reg->List()) *resp->add_pipelines() = std::move(p);
          return absl::OkStatus();
        }));
    ids_.run = s->Register(TypedMethod<v1::RunPipelineRequest, v1::RunPipelineResponse>(
        "RunPipeline", "/v1/pipelines/run", Scope::kRead, [reg, exec](const auto& req, auto* resp) {
          if (req.pipeline_id().empty()) return absl::InvalidArgumentError("pipeline_id: required");
          ASSIGN_OR_RETURN(auto pipeline, reg->Find(req.pipeline_id(), req.version()));
          return exec->Run(std::move(pipeline), req, resp);
        }));
    grpc_ = std::make_unique<PipelinesGrpc>(s, &ids_);
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {grpc_.get()}; }

 private:
  // Destroyed bottom-up: the gRPC service, then the executor (joining its pool: abandoned node
  // attempts finish while everything they use is still alive), the registry (stops reacting to
  // the store's watch), the store, and last the node types compiled pipelines point to.
  pipelines::PipelinesOptions options_;
  pipelines::NodeRegistry nodes_;
  std::unique_ptr<storage::ConfigStore> config_;
  std::unique_ptr<pipelines::PipelineRegistry> registry_;
  std::unique_ptr<pipelines::PipelineExecutor> executor_;
  Ids ids_{};
  std::unique_ptr<PipelinesGrpc> grpc_;
};

}  // namespace

std::unique_ptr<Family> NewPipelineFamily() { return std::make_unique<PipelineFamily>(); }

}  // namespace kosh::server
