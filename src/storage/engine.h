// The storage-engine interface: a few ordered key-value keyspaces with atomic batched writes.
//
// Everything above storage/ talks to this interface only; RocksDB headers stay inside storage/.
// Engines are thread-safe: any number of threads may read and write concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kosh::storage {

// Decides whether a stored value has expired at `now_unix_s`. The engine calls it during
// compaction to drop expired values physically. Must be thread-safe and fast.
using ExpiryFn = std::function<bool(absl::string_view value, int64_t now_unix_s)>;

// Combines the current value of a key (`existing`, nullptr when there is none) with merge operands
// in the order they were written, writing the result to *out. It must be associative: the engine
// may also call it with existing == nullptr on a run of operands to combine them early. Returning
// false marks the data as corrupt (the read fails with DATA_LOSS). Must be thread-safe.
using MergeFn = std::function<bool(absl::string_view key, const absl::string_view* existing,
                                   absl::Span<const absl::string_view> operands, std::string* out)>;

struct KeyspaceOptions {
  std::string name;
  ExpiryFn expired;  // optional
  MergeFn merge;     // optional; required for WriteBatch::Merge on this keyspace
};

// Handle of a keyspace: its index in the list passed to the engine when it was opened.
using Keyspace = int;

class WriteBatch {
 public:
  void Put(Keyspace ks, std::string key, std::string value) {
    ops_.push_back({ks, Op::kPut, std::move(key), std::move(value)});
  }
  void Delete(Keyspace ks, std::string key) { ops_.push_back({ks, Op::kDelete, std::move(key), {}}); }
  // Appends `operand` to the key's value through the keyspace's MergeFn, without reading it.
  void Merge(Keyspace ks, std::string key, std::string operand) {
    ops_.push_back({ks, Op::kMerge, std::move(key), std::move(operand)});
  }
  size_t size() const { return ops_.size(); }
  bool empty() const { return ops_.empty(); }

  struct Op {
    enum Kind : uint8_t { kPut, kDelete, kMerge };
    Keyspace ks;
    Kind kind;
    std::string key;
    std::string value;
  };
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // Applies every operation of `batch` or none. On OK the batch is durable: with `sync` it survives
  // a machine crash, without it a process crash (kill -9).
  virtual absl::Status Write(const WriteBatch& batch) = 0;

  // Looks up `keys` in `ks`. On OK, (*values)[i] holds the value of keys[i] or nullopt when absent.
  virtual absl::Status MultiGet(Keyspace ks, absl::Span<const absl::string_view> keys,
                                std::vector<std::optional<std::string>>* values) = 0;

  // Calls `fn` for each key with `prefix` in key order until it returns false.
  virtual absl::Status Scan(
      Keyspace ks, absl::string_view prefix,
      const std::function<bool(absl::string_view key, absl::string_view value)>& fn) = 0;

  // Forces a full compaction of `ks` (expired values are dropped). For tests and operators.
  virtual absl::Status CompactAll(Keyspace ks) = 0;

  // Engine figures for /metrics, as (name, value) pairs, e.g. ("estimate_num_keys", 1e6).
  virtual std::vector<std::pair<std::string, double>> Stats() = 0;

  // Flushes buffered state so that a restart does not need to replay logs.
  virtual absl::Status Flush() = 0;
};

struct RocksDbOptions {
  std::string path;
  bool sync_writes = true;          // fsync the WAL before acknowledging a write
  uint64_t block_cache_bytes = 256ull << 20;
  uint64_t write_buffer_bytes = 64ull << 20;
  int background_jobs = 2;
};

// Opens (creating when needed) a RocksDB database at options.path with the given keyspaces.
absl::StatusOr<std::unique_ptr<Engine>> OpenRocksDb(const RocksDbOptions& options,
                                                    std::vector<KeyspaceOptions> keyspaces);

// An in-memory engine for tests of the layers above storage. Not durable.
std::unique_ptr<Engine> NewMemoryEngine(std::vector<KeyspaceOptions> keyspaces);

}  // namespace kosh::storage
