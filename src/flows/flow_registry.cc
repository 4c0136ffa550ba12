#include "flows/flow_registry.h"

#include "base/status.h"

namespace kosh::flows {

absl::StatusOr<std::unique_ptr<FlowRegistry>> FlowRegistry::Open(storage::ConfigStore* store,
                                                                 features::Registry* features, FlowsOptions options,
                                                                 base::MetricsRegistry* metrics) {
  storage::VersionedConfigs<FlowConfigTraits>::Policy policy;
  policy.recompile_on_reload = true;
  policy.compile_context = " against the current feature schema";
  policy.not_compiling = "no longer compiles against the schema";
  policy.max_config_bytes = options.max_config_bytes;
  policy.max_config_bytes_option = "flows.max_config_bytes";
  // Every version compiles against the feature schema of the moment (stored ones as well: the
  // schema may have changed since they were put).
  auto compile = [features, options = std::move(options), metrics](const std::string& config, uint32_t version,
                                                                   bool) {
    return CompileFlow(config, version, *features->snapshot(), options, metrics);
  };
  std::unique_ptr<FlowRegistry> r(new FlowRegistry(store, std::move(compile), std::move(policy)));
  RETURN_IF_ERROR(r->Start());
  // After the feature registry reloaded a schema from another server: flows that referred to
  // features this server did not know yet compile now.
  features->AddListener(r->ReloadCallback("the feature schema changed on another server"));
  return r;
}

}  // namespace kosh::flows
