// The online feature store: typed reads of feature groups by entity key and atomic batched writes.
//
// Reads go through the RowCache (the hot tier) and fall back to one engine MultiGet per group.
// Writes validate every row before anything is written, write one engine batch (atomic, durable
// when acknowledged) and then invalidate the written keys in the cache. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "base/metrics.h"
#include "features/codec.h"
#include "features/registry.h"
#include "features/row_cache.h"
#include "kosh/v1/feature_store.pb.h"
#include "storage/engine.h"

namespace kosh::features {

struct FeatureStoreOptions {
  uint32_t max_keys_per_request = 1000;
  uint32_t max_rows_per_write = 10000;
  uint32_t max_key_part_bytes = 1024;
  uint64_t cache_bytes = 1ull << 30;
  CodecOptions codec;
};

// Seconds since the Unix epoch; injectable so tests control TTLs.
using Clock = std::function<int64_t()>;
int64_t SystemNowSeconds();

class FeatureStore {
 public:
  // `engine`, `registry` and `metrics` must outlive the store. `ks` is the features keyspace.
  FeatureStore(storage::Engine* engine, storage::Keyspace ks, Registry* registry,
               FeatureStoreOptions options, base::MetricsRegistry* metrics,
               Clock clock = SystemNowSeconds);

  // Per key a row of typed values with statuses. INVALID_ARGUMENT names the offending field
  // (entity, keys[i], features[j]); RESOURCE_EXHAUSTED for too many keys.
  absl::Status Retrieve(const v1::RetrieveRequest& req, v1::RetrieveResponse* resp);
  // The same for an in-process caller whose keys are text views (the flows executor): req.keys is
  // ignored; key i is parts[i * n, (i + 1) * n), n = the entity's key columns. The views need only
  // last for the call.
  absl::Status Retrieve(const v1::RetrieveRequest& req, absl::Span<const absl::string_view> parts,
                        v1::RetrieveResponse* resp);
  // The dense float32 form. Requested features must be numeric.
  absl::Status RetrieveMatrix(const v1::RetrieveRequest& req, v1::RetrieveMatrixResponse* resp);
  // Writes all rows or none.
  absl::Status Persist(const v1::PersistRequest& req, v1::PersistResponse* resp);

  // The function the storage engine's compaction filter uses to drop expired rows.
  static bool RowExpired(absl::string_view value, int64_t now_unix_s);

  const RowCache& cache() const { return cache_; }

 private:
  struct Plan;
  class KeyList;
  // Resolves the entity and features of `req` and checks `keys` against the entity (cutting views
  // into keys of the entity's key columns).
  absl::Status MakePlan(const v1::RetrieveRequest& req, KeyList* keys, Plan* plan);
  absl::Status RetrieveKeys(const v1::RetrieveRequest& req, KeyList keys, v1::RetrieveResponse* resp);
  // Parses the encoded row `enc` of key index `k` (empty = absent): MISSING, EXPIRED or PRESENT
  // with its view and the layout of its version. DATA_LOSS (counted) if it cannot be decoded.
  absl::Status ResolveRow(const GroupInfo& g, absl::string_view enc, int k, int64_t now, std::string* scratch,
                          v1::ValueStatus* status, RowView* view, const Layout** layout);

  storage::Engine* engine_;
  storage::Keyspace ks_;
  Registry* registry_;
  FeatureStoreOptions options_;
  Clock clock_;
  RowCache cache_;
  base::Counter* values_by_status_[5];
  base::Counter* corrupt_rows_;
};

// The storage key of (group id, entity key): 4 bytes big-endian group id, then each key part as a
// varint length and its bytes.
std::string StorageKey(uint32_t group_id, const v1::EntityKey& key);

}  // namespace kosh::features
