#include "pipelines/pipeline_registry.h"

#include "base/status.h"

namespace kosh::pipelines {

absl::StatusOr<std::unique_ptr<PipelineRegistry>> PipelineRegistry::Open(storage::ConfigStore* store,
                                                                         const NodeRegistry* nodes, NodeEnv env,
                                                                         base::MetricsRegistry* metrics) {
  if (env.options == nullptr) return absl::InternalError("PipelineRegistry: NodeEnv::options is not set");
  storage::VersionedConfigs<PipelineConfigTraits>::Policy policy;
  policy.not_compiling = "does not compile in this server";
  policy.max_config_bytes = env.options->max_config_bytes;
  policy.max_config_bytes_option = "pipelines.max_config_bytes";
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
  std::unique_ptr<PipelineRegistry> r(new PipelineRegistry(store, std::move(compile), std::move(policy)));
  RETURN_IF_ERROR(r->Start());
  return r;
}

}  // namespace kosh::pipelines
