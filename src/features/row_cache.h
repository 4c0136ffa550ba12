// The hot tier above the storage engine: encoded rows of recently read keys, bounded in bytes.
//
// A sharded cache keyed by storage key with second-chance (CLOCK-like) eviction: a hit only sets
// the entry's referenced bit, and eviction from the cold end of a shard's list moves a referenced
// entry back to the hot end once instead of evicting it. That approximates LRU without relinking
// list nodes on every hit, which cost a third of a 100-key read's CPU in a 1M-row cache. It caches negative results too (an absent key is stored as
// an empty value, which no encoded row can be). Writers call Invalidate after their write reached
// the engine; readers that missed call Insert with the epoch they took before reading the engine,
// and the insert is dropped if a write to the same shard happened in between, so a stale value is
// never cached. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace kosh::features {

class RowCache {
 public:
  // `capacity_bytes` 0 disables the cache (every Lookup misses, Insert does nothing).
  explicit RowCache(uint64_t capacity_bytes, int shards = 64);

  struct Ticket {
    uint64_t epoch = 0;
  };

  // On a hit copies the cached row (empty string = known absent) into *value and returns true.
  // On a miss returns false and sets *ticket for a later Insert.
  bool Lookup(absl::string_view key, std::string* value, Ticket* ticket);
  // Caches `value` (empty = absent) unless the key's shard was written since `ticket` was taken.
  void Insert(absl::string_view key, absl::string_view value, Ticket ticket);
  // Drops `key` and makes in-flight Inserts for its shard stale.
  void Invalidate(absl::string_view key);

  uint64_t capacity_bytes() const { return capacity_; }
  uint64_t bytes() const;
  uint64_t entries() const;
  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }
  uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    std::string key;
    std::string value;
    bool referenced = false;  // set by a hit since the entry last reached the cold end
  };
  struct Shard {
    absl::Mutex mu;
    std::list<Entry> lru;  // front = hot end (inserted or given a second chance most recently)
    absl::flat_hash_map<absl::string_view, std::list<Entry>::iterator> index;
    uint64_t bytes = 0;
    uint64_t epoch = 0;
  };
  static uint64_t Charge(const Entry& e) { return e.key.size() + e.value.size() + 96; }
  Shard& ShardFor(absl::string_view key);

  uint64_t capacity_;
  uint64_t shard_capacity_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, evictions_{0};
};

}  // namespace kosh::features
