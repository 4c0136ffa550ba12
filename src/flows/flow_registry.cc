#include "flows/flow_registry.h"

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace kosh::flows {

absl::StatusOr<std::unique_ptr<FlowRegistry>> FlowRegistry::Open(storage::ConfigStore* store,
                                                                 features::Registry* features, FlowsOptions options,
                                                                 base::MetricsRegistry* metrics) {
  std::unique_ptr<FlowRegistry> r(new FlowRegistry());
  // Every version compiles against the feature schema of the moment (stored ones as well: the
  // schema may have changed since they were put).
  auto compile = [features, options = std::move(options), metrics](const std::string& config, uint32_t version,
                                                                   bool) {
    return CompileFlow(config, version, *features->snapshot(), options, metrics);
  };
  storage::VersionedConfigs<FlowConfigTraits>::Policy policy;
  policy.recompile_on_reload = true;
  policy.compile_context = " against the current feature schema";
  ASSIGN_OR_RETURN(r->configs_,
                   storage::VersionedConfigs<FlowConfigTraits>::Open(store, std::move(compile), std::move(policy)));
  // After the feature registry reloaded a schema from another server: flows that referred to
  // features this server did not know yet compile now.
  features->AddListener(r->configs_->ReloadCallback("the feature schema changed on another server"));
  return r;
}

absl::StatusOr<v1::PutFlowResponse> FlowRegistry::Put(const v1::PutFlowRequest& req) {
  if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
  ASSIGN_OR_RETURN(std::string model_id, ConfigModelId(req.config()));
  if (model_id.empty()) model_id = req.model_id();
  if (!req.model_id().empty() && req.model_id() != model_id) {
    return absl::InvalidArgumentError(absl::StrCat("model_id: \"", req.model_id(),
                                                   "\" differs from the config's model_id \"", model_id, "\""));
  }
  ASSIGN_OR_RETURN(auto put, configs_->Put(model_id, req.config(), req.validate_only()));
  v1::PutFlowResponse resp;
  resp.set_model_id(model_id);
  *resp.mutable_plan() = put.compiled->plan;
  resp.mutable_plan()->set_version(put.version);
  resp.set_version(put.version);
  resp.set_created(put.created);
  return resp;
}

std::vector<v1::FlowSummary> FlowRegistry::List() const {
  std::vector<v1::FlowSummary> out;
  for (const auto& [id, versions] : configs_->Ids()) {
    v1::FlowSummary s;
    s.set_model_id(id);
    s.set_latest_version(versions);
    s.set_num_versions(versions);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kosh::flows
