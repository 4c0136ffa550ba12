// The versioned store of flows. Every accepted config is kept durably in a storage::ConfigStore
// (namespace "flows": the embedded keyspace, or ZooKeeper shared by several servers; key =
// model_id, 0x00, version as 4 bytes big-endian; value = a serialized v1::FlowRecord) and served
// from an immutable Snapshot of compiled flows that is swapped atomically on every change, so a
// new version takes effect for the next request without a restart and in-flight requests finish
// on the version they started with. Mutations are serialised by a mutex. Thread-safe.
//
// Hot reload across servers: the store's watch (a flow put on another server) and the feature
// registry's listener (a schema changed on another server) both rebuild the Snapshot from the
// store, compiled against the current feature snapshot. A Put that meets a concurrent Put from
// another server (the store's ABORTED) reloads and retries, so both versions are kept.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/metrics.h"
#include "features/registry.h"
#include "flows/flow.h"
#include "kosh/v1/flows.pb.h"
#include "storage/config_store.h"

namespace kosh::flows {

struct FlowEntry {
  std::vector<v1::FlowRecord> records;  // records[v-1] is version v
  // compiled[v-1]: null when that version no longer compiles against the current schema (it was
  // valid when stored; a later schema change broke it). Logged at load.
  std::vector<std::shared_ptr<const CompiledFlow>> compiled;
  std::vector<std::string> compile_errors;  // parallel to compiled
};

struct FlowSnapshot {
  absl::flat_hash_map<std::string, std::shared_ptr<const FlowEntry>> flows;
};

class FlowRegistry {
 public:
  // How often a Put is retried after another server's concurrent write (ABORTED).
  static constexpr int kPutAttempts = 5;

  // Loads and compiles every stored flow; watches `store` and `features` for changes made by other
  // servers. `store`, `features` and `metrics` (may be null) must outlive the registry.
  static absl::StatusOr<std::unique_ptr<FlowRegistry>> Open(storage::ConfigStore* store,
                                                           features::Registry* features, FlowsOptions options,
                                                           base::MetricsRegistry* metrics);
  ~FlowRegistry();
  FlowRegistry(const FlowRegistry&) = delete;
  FlowRegistry& operator=(const FlowRegistry&) = delete;

  // Re-reads every flow from the store and recompiles every version against the current feature
  // snapshot (a version that does not compile is kept with its error, as at Open). On error the
  // current Snapshot stays. Thread-safe.
  absl::Status Reload();

  // Validates and compiles `req.config`; unless validate_only, stores it as version latest+1 and
  // publishes it. A config identical to the latest version stores nothing (created = false).
  // INVALID_ARGUMENT with the compiler's error for a bad config, or when req.model_id disagrees
  // with the config's model_id. A rejected config changes nothing.
  absl::StatusOr<v1::PutFlowResponse> Put(const v1::PutFlowRequest& req);

  // Version 0 = the latest. NOT_FOUND for an unknown model or version.
  absl::StatusOr<v1::FlowRecord> Get(const std::string& model_id, uint32_t version) const;
  std::vector<v1::FlowSummary> List() const;
  // The compiled flow to run. NOT_FOUND for an unknown model or version; FAILED_PRECONDITION if
  // the version no longer compiles against the schema.
  absl::StatusOr<std::shared_ptr<const CompiledFlow>> Find(const std::string& model_id, uint32_t version) const;

  std::shared_ptr<const FlowSnapshot> snapshot() const {
    return std::atomic_load_explicit(&snapshot_, std::memory_order_acquire);
  }

 private:
  FlowRegistry(storage::ConfigStore* store, features::Registry* features, FlowsOptions options,
               base::MetricsRegistry* metrics)
      : store_(store), features_(features), options_(std::move(options)), metrics_(metrics),
        snapshot_(std::make_shared<FlowSnapshot>()) {}

  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Shared with the callbacks given to the store and the feature registry, which may run on their
  // threads until they are destroyed: the destructor clears `self`, waiting for one in progress.
  struct WatchGuard {
    absl::Mutex mu;
    FlowRegistry* self ABSL_GUARDED_BY(mu) = nullptr;
  };

  storage::ConfigStore* store_;
  features::Registry* features_;
  FlowsOptions options_;
  base::MetricsRegistry* metrics_;
  absl::Mutex mu_;  // serialises Put and reloads
  std::shared_ptr<const FlowSnapshot> snapshot_;
  std::shared_ptr<WatchGuard> guard_ = std::make_shared<WatchGuard>();
};

// The storage key of (model_id, version).
std::string FlowKey(const std::string& model_id, uint32_t version);

}  // namespace kosh::flows
