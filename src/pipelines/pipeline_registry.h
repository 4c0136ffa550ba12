// The versioned store of pipelines. Every accepted config is kept durably in a ConfigStore
// (namespace "pipelines": key = pipeline_id, 0x00, version as 4 bytes big-endian; value = a
// serialized v1::PipelineRecord) and served from an immutable snapshot of compiled pipelines,
// swapped atomically on every change: a new version takes effect for the next request without a
// restart, and in-flight requests finish on the version they started with.
//
// With a shared store (ZooKeeper) several servers submit versions: a Put that raced another
// server's write (ABORTED from the store) re-reads the pipeline's versions and tries again with
// the next number, and the store's watch makes every server reload what others wrote.
//
// Thread-safe. Mutations (Put, reloads) are serialised by a mutex; reads take the snapshot.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/metrics.h"
#include "kosh/v1/pipelines.pb.h"
#include "pipelines/pipeline.h"
#include "storage/config_store.h"

namespace kosh::pipelines {

struct PipelineEntry {
  std::vector<v1::PipelineRecord> records;  // records[v-1] is version v
  // compiled[v-1]: null when that version no longer compiles (e.g. a node type this binary does
  // not have); the error is in compile_errors[v-1] and logged at load.
  std::vector<std::shared_ptr<const CompiledPipeline>> compiled;
  std::vector<std::string> compile_errors;
};

struct PipelineSnapshot {
  absl::flat_hash_map<std::string, std::shared_ptr<const PipelineEntry>> pipelines;
};

class PipelineRegistry {
 public:
  // Loads and compiles every stored version (without checking the references they make: they
  // were checked when submitted) and watches the store for other servers' writes. `store`,
  // `nodes`, the subsystems in `env`, env.options and `metrics` (may be null) must outlive the
  // registry.
  static absl::StatusOr<std::unique_ptr<PipelineRegistry>> Open(storage::ConfigStore* store, const NodeRegistry* nodes,
                                                                NodeEnv env, base::MetricsRegistry* metrics);
  ~PipelineRegistry();

  // Validates and compiles `req.config` (checking references); unless validate_only, stores it as
  // version latest+1 and publishes it. A config identical to the latest version stores nothing
  // (created = false). INVALID_ARGUMENT with the compiler's error, or when req.pipeline_id
  // disagrees with the config's; ABORTED when other servers kept winning the race for the next
  // version number. A rejected config changes nothing.
  absl::StatusOr<v1::PutPipelineResponse> Put(const v1::PutPipelineRequest& req);

  // Version 0 = the latest. NOT_FOUND for an unknown pipeline or version.
  absl::StatusOr<v1::PipelineRecord> Get(const std::string& pipeline_id, uint32_t version) const;
  std::vector<v1::PipelineSummary> List() const;
  // The compiled pipeline to run. NOT_FOUND for an unknown pipeline or version;
  // FAILED_PRECONDITION if that version does not compile in this server.
  absl::StatusOr<std::shared_ptr<const CompiledPipeline>> Find(const std::string& pipeline_id, uint32_t version) const;

  // Re-reads every stored version and publishes what changed (the store's watch calls this).
  absl::Status Reload();

  std::shared_ptr<const PipelineSnapshot> snapshot() const {
    return std::atomic_load_explicit(&snapshot_, std::memory_order_acquire);
  }

 private:
  struct WatchToken;
  PipelineRegistry(storage::ConfigStore* store, const NodeRegistry* nodes, NodeEnv env, base::MetricsRegistry* metrics);
  // Builds the entry of one pipeline from its stored records, reusing compiled versions of
  // `old` (may be null) whose config is unchanged.
  std::shared_ptr<const PipelineEntry> BuildEntry(std::vector<v1::PipelineRecord> records, const PipelineEntry* old);
  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(std::shared_ptr<const PipelineSnapshot> snap);

  storage::ConfigStore* store_;
  const NodeRegistry* nodes_;
  NodeEnv env_;
  base::MetricsRegistry* metrics_;
  base::Counter* reloads_ = nullptr;
  absl::Mutex mu_;  // serialises Put and reloads
  std::shared_ptr<const PipelineSnapshot> snapshot_;
  std::shared_ptr<WatchToken> watch_;
};

// The storage key of (pipeline_id, version).
std::string PipelineKey(const std::string& pipeline_id, uint32_t version);

}  // namespace kosh::pipelines
