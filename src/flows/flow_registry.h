// The versioned store of flows: storage::VersionedConfigs (see there: durable versions in a
// ConfigStore, namespace "flows", the embedded keyspace or ZooKeeper shared by several servers;
// served compiled from a snapshot swapped atomically on every change; a Put that races another
// server's retries with the next number) with flows compiled against the current feature schema.
//
// Hot reload across servers: the store's watch (a flow put on another server) and the feature
// registry's listener (a schema changed on another server) both reload every flow from the store,
// compiled against the current feature snapshot. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "features/registry.h"
#include "flows/flow.h"
#include "kosh/v1/flows.pb.h"
#include "storage/config_store.h"
#include "storage/versioned_configs.h"

namespace kosh::flows {

struct FlowConfigTraits {
  using Record = v1::FlowRecord;
  using Compiled = CompiledFlow;
  static constexpr const char* kSingular = "flow";
  static constexpr const char* kPlural = "flows";
  static constexpr const char* kIdField = "model_id";
  template <typename M>
  static const std::string& Id(const M& m) { return m.model_id(); }
  template <typename M>
  static void SetId(M* m, const std::string& id) { m->set_model_id(id); }
};

class FlowRegistry {
 public:
  // Loads and compiles every stored flow; watches `store` and `features` for changes made by other
  // servers. `store`, `features` and `metrics` (may be null) must outlive the registry.
  static absl::StatusOr<std::unique_ptr<FlowRegistry>> Open(storage::ConfigStore* store,
                                                           features::Registry* features, FlowsOptions options,
                                                           base::MetricsRegistry* metrics);
  FlowRegistry(const FlowRegistry&) = delete;
  FlowRegistry& operator=(const FlowRegistry&) = delete;

  // Re-reads every flow from the store and recompiles every version against the current feature
  // snapshot (a version that does not compile is kept with its error, as at Open). On error the
  // current flows stay. Thread-safe.
  absl::Status Reload() { return configs_->Reload(); }

  // Validates and compiles `req.config`; unless validate_only, stores it as version latest+1 and
  // publishes it. A config identical to the latest version stores nothing (created = false).
  // INVALID_ARGUMENT with the compiler's error for a bad config, or when req.model_id disagrees
  // with the config's model_id; ABORTED when other servers kept winning the race for the next
  // version number. A rejected config changes nothing.
  absl::StatusOr<v1::PutFlowResponse> Put(const v1::PutFlowRequest& req) {
    return configs_->PutRequest<v1::PutFlowResponse>(req);
  }

  // Version 0 = the latest. NOT_FOUND for an unknown model or version.
  absl::StatusOr<v1::FlowRecord> Get(const std::string& model_id, uint32_t version) const {
    return configs_->Get(model_id, version);
  }
  std::vector<v1::FlowSummary> List() const { return configs_->Summaries<v1::FlowSummary>(); }
  // The compiled flow to run. NOT_FOUND for an unknown model or version; FAILED_PRECONDITION if
  // the version no longer compiles against the schema.
  absl::StatusOr<std::shared_ptr<const CompiledFlow>> Find(const std::string& model_id, uint32_t version) const {
    return configs_->Find(model_id, version);
  }

 private:
  FlowRegistry() = default;

  std::unique_ptr<storage::VersionedConfigs<FlowConfigTraits>> configs_;
};

// The storage key of (model_id, version).
inline std::string FlowKey(const std::string& model_id, uint32_t version) {
  return storage::VersionedConfigKey(model_id, version);
}

}  // namespace kosh::flows
