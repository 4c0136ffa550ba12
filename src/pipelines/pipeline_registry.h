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
  static constexpr const char* kSingular = "pipeline";
  static constexpr const char* kPlural = "pipelines";
  static constexpr const char* kIdField = "pipeline_id";
  template <typename M>
  static const std::string& Id(const M& m) { return m.pipeline_id(); }
  template <typename M>
  static void SetId(M* m, const std::string& id) { m->set_pipeline_id(id); }
};

class PipelineRegistry {
 public:
  // Loads and compiles every stored version (without checking the references they make: they
  // were checked when submitted) and watches the store for other servers' writes. `store`,
  // `nodes`, the subsystems in `env`, env.options and `metrics` (may be null) must outlive the
  // registry. Counts reloads in kosh_pipeline_registry_reloads_total.
  static absl::StatusOr<std::unique_ptr<PipelineRegistry>> Open(storage::ConfigStore* store, const NodeRegistry* nodes,
                                                                NodeEnv env, base::MetricsRegistry* metrics);
  PipelineRegistry(const PipelineRegistry&) = delete;
  PipelineRegistry& operator=(const PipelineRegistry&) = delete;

  // Validates and compiles `req.config` (checking references); unless validate_only, stores it as
  // version latest+1 and publishes it. A config identical to the latest version stores nothing
  // (created = false). INVALID_ARGUMENT with the compiler's error, or when req.pipeline_id
  // disagrees with the config's; ABORTED when other servers kept winning the race for the next
  // version number. A rejected config changes nothing.
  absl::StatusOr<v1::PutPipelineResponse> Put(const v1::PutPipelineRequest& req) {
    return configs_->PutRequest<v1::PutPipelineResponse>(req);
  }

  // Version 0 = the latest. NOT_FOUND for an unknown pipeline or version.
  absl::StatusOr<v1::PipelineRecord> Get(const std::string& pipeline_id, uint32_t version) const {
    return configs_->Get(pipeline_id, version);
  }
  std::vector<v1::PipelineSummary> List() const { return configs_->Summaries<v1::PipelineSummary>(); }
  // The compiled pipeline to run. NOT_FOUND for an unknown pipeline or version;
  // FAILED_PRECONDITION if that version does not compile in this server.
  absl::StatusOr<std::shared_ptr<const CompiledPipeline>> Find(const std::string& pipeline_id, uint32_t version) const {
    return configs_->Find(pipeline_id, version);
  }

  // Re-reads and recompiles every stored version (the store's watch calls this).
  absl::Status Reload() { return configs_->Reload(); }

 private:
  PipelineRegistry() = default;

  std::unique_ptr<storage::VersionedConfigs<PipelineConfigTraits>> configs_;
};

// The storage key of (pipeline_id, version).
inline std::string PipelineKey(const std::string& pipeline_id, uint32_t version) {
  return storage::VersionedConfigKey(pipeline_id, version);
}

}  // namespace kosh::pipelines
