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
  using PutRequest = v1::PutFlowRequest;
  using PutResponse = v1::PutFlowResponse;
  using Summary = v1::FlowSummary;
  static constexpr const char* kSingular = "flow";
  static constexpr const char* kPlural = "flows";
  static constexpr const char* kIdField = "model_id";
  template <typename M>
  static const std::string& Id(const M& m) { return m.model_id(); }
  template <typename M>
  static void SetId(M* m, const std::string& id) { m->set_model_id(id); }
};

// Put, Get, List, Find (FAILED_PRECONDITION: "no longer compiles against the schema") and Reload
// (re-reads every flow and recompiles every version against the current feature snapshot) are
// storage::VersionedConfigs'.
class FlowRegistry : public storage::VersionedConfigs<FlowConfigTraits> {
 public:
  // Loads and compiles every stored flow; watches `store` and `features` for changes made by other
  // servers. `store`, `features` and `metrics` (may be null) must outlive the registry.
  static absl::StatusOr<std::unique_ptr<FlowRegistry>> Open(storage::ConfigStore* store,
                                                           features::Registry* features, FlowsOptions options,
                                                           base::MetricsRegistry* metrics);

 private:
  using VersionedConfigs::VersionedConfigs;
};

// The storage key of (model_id, version).
inline std::string FlowKey(const std::string& model_id, uint32_t version) {
  return storage::VersionedConfigKey(model_id, version);
}

}  // namespace kosh::flows
