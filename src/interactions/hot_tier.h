// The hot tier: decoded-on-demand histories of active users in memory, under a byte budget.
//
// It is a cache of the cold tier, never the only copy of an event: writes reach the cold tier's
// write-ahead log first and are applied here afterwards, only for users who are already hot (or
// being loaded). A user is loaded on first read, kept while reads or writes keep touching it, and
// evicted after `inactivity_ms` without use (EvictIdle, called by the store's sweeper thread) or,
// least recently used first, when the budget is exceeded. Eviction writes nothing: the cold tier
// already holds every event, so there is nothing to flush and nothing can be lost.
//
// Loads race with writes and deletes; the protocol that keeps the tiers identical:
//  - Lookup of a cold user creates a *loading* entry and hands out a ticket. The caller reads the
//    cold tier, then calls FinishLoad.
//  - ApplyWrite runs after the write is durable in the cold tier. If the user's entry is loading,
//    the events are queued and FinishLoad merges them into what it read. A write that finds no
//    entry committed before the entry existed, so the loader's cold read sees it.
//  - Erase (delete) and Clear (type changes, trim) remove entries, loading ones included; a load
//    whose entry is gone (or replaced: tickets carry a generation) installs nothing.
// Merging is idempotent (duplicates are stored once), so an event applied twice is harmless.
//
// Thread-safe. Entries live in shards (one mutex each); readers copy a shared_ptr under the lock and
// decode outside it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "interactions/history.h"

namespace kosh::interactions {

// Merges operand blocks (type id, block) into a user record (InteractionStore::MergeRecord: the
// same MergeBlocks the cold tier uses). False on corruption.
using RecordMerger =
    std::function<bool(absl::string_view record, absl::Span<const RecordEntry> ops, std::string* out)>;

class HotTier {
 public:
  // `budget_bytes` 0 disables the tier (every Lookup is kBusy-like: read the cold tier directly).
  HotTier(uint64_t budget_bytes, int64_t inactivity_ms);
  ~HotTier();
  HotTier(const HotTier&) = delete;
  HotTier& operator=(const HotTier&) = delete;

  bool enabled() const { return budget_ > 0; }

  enum class Lookup {
    kHit,   // *record holds the user's record
    kLoad,  // the caller must load the user and call FinishLoad or AbortLoad with *ticket
    kCold,  // read the cold tier directly (tier disabled, or another load of this user in flight)
  };
  struct Ticket {
    uint64_t gen = 0;
  };
  Lookup Get(absl::string_view user, int64_t now_ms, std::shared_ptr<const std::string>* record, Ticket* ticket);

  // Completes a load: installs `record` (read from the cold tier) merged with the writes queued
  // meanwhile, unless the entry was erased or replaced. Returns the record to serve this read.
  // On merge failure (corruption) the entry is dropped and `record` is returned as read.
  std::shared_ptr<const std::string> FinishLoad(absl::string_view user, const Ticket& ticket, std::string record,
                                                const RecordMerger& merge, int64_t now_ms);
  // Abandons a load (the cold read failed).
  void AbortLoad(absl::string_view user, const Ticket& ticket);

  // Applies a durable write of `ops` if the user is hot (merging now) or loading (queued, copied).
  void ApplyWrite(absl::string_view user, absl::Span<const RecordEntry> ops, const RecordMerger& merge,
                  int64_t now_ms);

  // Removes the user (hot or loading). True if there was an entry.
  bool Erase(absl::string_view user);
  // Removes every entry.
  void Clear();
  // Evicts users not touched for inactivity_ms; at most `max_per_shard` per shard per call.
  size_t EvictIdle(int64_t now_ms, size_t max_per_shard = 100000);

  // Figures for metrics.
  uint64_t users() const { return users_.load(std::memory_order_relaxed); }
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  uint64_t budget_bytes() const { return budget_; }
  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }
  uint64_t loads() const { return loads_.load(std::memory_order_relaxed); }
  uint64_t evictions_idle() const { return evict_idle_.load(std::memory_order_relaxed); }
  uint64_t evictions_memory() const { return evict_memory_.load(std::memory_order_relaxed); }
  uint64_t evictions_other() const { return evict_other_.load(std::memory_order_relaxed); }

 private:
  struct Entry;
  struct Shard;
  Shard& ShardFor(absl::string_view user);
  // Removes `e` from its shard (lock held). Counts it under `counter` when not null.
  void Remove(Shard& s, Entry* e, std::atomic<uint64_t>* counter);
  // Installs a new record in a ready entry and updates the byte counts (lock held).
  void SetRecord(Shard& s, Entry* e, std::shared_ptr<const std::string> record);
  // Evicts least recently used entries while the shard is over its budget (lock held).
  void EnforceBudget(Shard& s);

  const uint64_t budget_;
  const int64_t inactivity_ms_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> next_gen_{1};
  std::atomic<uint64_t> users_{0}, bytes_{0};
  std::atomic<uint64_t> hits_{0}, misses_{0}, loads_{0};
  std::atomic<uint64_t> evict_idle_{0}, evict_memory_{0}, evict_other_{0};
};

}  // namespace kosh::interactions
