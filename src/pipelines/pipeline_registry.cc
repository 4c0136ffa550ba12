#include "pipelines/pipeline_registry.h"

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace kosh::pipelines {

absl::StatusOr<std::unique_ptr<PipelineRegistry>> PipelineRegistry::Open(storage::ConfigStore* store,
                                                                         const NodeRegistry* nodes, NodeEnv env,
                                                                         base::MetricsRegistry* metrics) {
  if (env.options == nullptr) return absl::InternalError("PipelineRegistry: NodeEnv::options is not set");
  std::unique_ptr<PipelineRegistry> r(new PipelineRegistry(env));
  storage::VersionedConfigs<PipelineConfigTraits>::Policy policy;
  if (metrics != nullptr) {
    policy.reloads = metrics->GetCounter("kosh_pipeline_registry_reloads_total",
                                  "Reloads of the stored pipelines after another server changed them.");
  }
  // A submitted config has its references (flows, datasets, ...) checked; a stored one was
  // checked when it was submitted and compiles without them.
  auto compile = [nodes, env, metrics](const std::string& config, uint32_t version, bool submitted) {
    NodeEnv e = env;
    e.check_references = submitted;
    return CompilePipeline(config, version, *nodes, e, metrics);
  };
  ASSIGN_OR_RETURN(r->configs_,
                   storage::VersionedConfigs<PipelineConfigTraits>::Open(store, std::move(compile), std::move(policy)));
  return r;
}

absl::StatusOr<v1::PutPipelineResponse> PipelineRegistry::Put(const v1::PutPipelineRequest& req) {
  if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
  if (req.config().size() > env_.options->max_config_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("config: ", req.config().size(), " bytes exceeds the limit of ",
                                                     env_.options->max_config_bytes, " (pipelines.max_config_bytes)"));
  }
  ASSIGN_OR_RETURN(std::string id, ConfigPipelineId(req.config()));
  if (id.empty()) id = req.pipeline_id();
  if (!req.pipeline_id().empty() && req.pipeline_id() != id) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline_id: \"", req.pipeline_id(), "\" differs from the config's pipeline_id \"", id, "\""));
  }
  if (id.empty()) return absl::InvalidArgumentError("pipeline_id: required (in the config or the request)");
  ASSIGN_OR_RETURN(auto put, configs_->Put(id, req.config(), req.validate_only()));
  v1::PutPipelineResponse resp;
  resp.set_pipeline_id(id);
  *resp.mutable_plan() = put.compiled->plan;
  resp.mutable_plan()->set_version(put.version);
  resp.set_version(put.version);
  resp.set_created(put.created);
  return resp;
}

std::vector<v1::PipelineSummary> PipelineRegistry::List() const {
  std::vector<v1::PipelineSummary> out;
  for (const auto& [id, versions] : configs_->Ids()) {
    v1::PipelineSummary s;
    s.set_pipeline_id(id);
    s.set_latest_version(versions);
    s.set_num_versions(versions);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kosh::pipelines
