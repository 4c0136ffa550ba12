// The versioned store of flows. Every accepted config is kept durably (keyspace "flows": key =
// model_id, 0x00, version as 4 bytes big-endian; value = a serialized v1::FlowRecord) and served
// from an immutable Snapshot of compiled flows that is swapped atomically on every change, so a
// new version takes effect for the next request without a restart and in-flight requests finish
// on the version they started with. Mutations are serialised by a mutex. Thread-safe.
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
#include "storage/engine.h"

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
  // Loads and compiles every stored flow. `engine`, `features` and `metrics` (may be null) must
  // outlive the registry.
  static absl::StatusOr<std::unique_ptr<FlowRegistry>> Open(storage::Engine* engine, storage::Keyspace ks,
                                                           features::Registry* features, FlowsOptions options,
                                                           base::MetricsRegistry* metrics);

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
  FlowRegistry(storage::Engine* engine, storage::Keyspace ks, features::Registry* features, FlowsOptions options,
               base::MetricsRegistry* metrics)
      : engine_(engine), ks_(ks), features_(features), options_(std::move(options)), metrics_(metrics),
        snapshot_(std::make_shared<FlowSnapshot>()) {}

  storage::Engine* engine_;
  storage::Keyspace ks_;
  features::Registry* features_;
  FlowsOptions options_;
  base::MetricsRegistry* metrics_;
  absl::Mutex mu_;  // serialises Put
  std::shared_ptr<const FlowSnapshot> snapshot_;
};

// The storage key of (model_id, version).
std::string FlowKey(const std::string& model_id, uint32_t version);

}  // namespace kosh::flows
