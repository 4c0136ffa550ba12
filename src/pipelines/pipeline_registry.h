// The versioned store of pipelines: storage::VersionedConfigs (see there: durable versions in a
// ConfigStore, namespace "pipelines", the embedded keyspace or ZooKeeper shared by several
// servers; served compiled from a snapshot swapped atomically on every change; a Put that races
// another server's retries with the next number; the store's watch reloads what others wrote).
// Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "kosh/v1/pipelines.pb.h"
#include "pipelines/pipeline.h"
#include "storage/config_store.h"
#include "storage/versioned_configs.h"

namespace kosh::pipelines {

struct PipelineConfigTraits {
  using Record = v1::PipelineRecord;
  using Compiled = CompiledPipeline;
  using PutRequest = v1::PutPipelineRequest;
  using PutResponse = v1::PutPipelineResponse;
  using Summary = v1::PipelineSummary;
  static constexpr const char* kSingular = "pipeline";
  static constexpr const char* kPlural = "pipelines";
  static constexpr const char* kIdField = "pipeline_id";
  template <typename M>
  static const std::string& Id(const M& m) { return m.pipeline_id(); }
  template <typename M>
  static void SetId(M* m, const std::string& id) { m->set_pipeline_id(id); }
};

// Put (which checks the references a config makes), Get, List, Find (FAILED_PRECONDITION: "does
// not compile in this server") and Reload are storage::VersionedConfigs'.
class PipelineRegistry : public storage::VersionedConfigs<PipelineConfigTraits> {
 public:
  // Loads and compiles every stored version (without checking the references they make: they
  // were checked when submitted) and watches the store for other servers' writes. `store`,
  // `nodes`, the subsystems in `env`, env.options and `metrics` (may be null) must outlive the
  // registry. Counts reloads in kosh_pipeline_registry_reloads_total.
  static absl::StatusOr<std::unique_ptr<PipelineRegistry>> Open(storage::ConfigStore* store, const NodeRegistry* nodes,
                                                                NodeEnv env, base::MetricsRegistry* metrics);

 private:
  using VersionedConfigs::VersionedConfigs;
};

// The storage key of (pipeline_id, version).
inline std::string PipelineKey(const std::string& pipeline_id, uint32_t version) {
  return storage::VersionedConfigKey(pipeline_id, version);
}

}  // namespace kosh::pipelines
