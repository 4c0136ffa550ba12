// The hot tier above the storage engine: encoded rows of recently read keys, bounded in bytes.
//
// A sharded cache keyed by storage key with second-chance (CLOCK-like) eviction: a hit only sets
// the entry's referenced bit, and eviction from the cold end of a shard's list moves a referenced
// entry back to the hot end once instead of evicting it. That approximates LRU without relinking
// list nodes on every hit. It caches negative results too (an absent key is stored as an empty
// value, which no encoded row can be). Writers call Invalidate after their write reached the
// engine; readers that missed call Insert with the epoch they took before reading the engine, and
// the insert is dropped if a write to the same shard happened in between, so a stale value is never
// cached. Thread-safe.
//
// Memory layout, because a large cache is read from RAM, not from the CPU caches: an entry is one
// allocation (list links, sizes, key bytes, value bytes), and a shard's index holds pointers to
// entries, so a hit reads the index's control bytes, its slot and the entry. Hit, miss and
// eviction counts live in the shards, under their locks, not in atomics every reader would write.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "base/intrusive_list.h"

namespace kosh::features {

class RowCache {
 public:
  // `capacity_bytes` 0 disables the cache (every Lookup misses, Insert does nothing).
  explicit RowCache(uint64_t capacity_bytes, int shards = 64);
  ~RowCache();
  RowCache(const RowCache&) = delete;
  RowCache& operator=(const RowCache&) = delete;

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
  uint64_t hits() const;
  uint64_t misses() const;
  uint64_t evictions() const;

 private:
  // One entry in one allocation: this header, then the key bytes, then the value bytes.
  struct Node {
    Node* prev;  // in Shard::order, towards the hot end
    Node* next;  // towards the cold end
    uint32_t key_size;
    uint32_t value_size;
    bool referenced;  // set by a hit since the entry last reached the cold end
    const char* data() const { return reinterpret_cast<const char*>(this + 1); }
    char* data() { return reinterpret_cast<char*>(this + 1); }
    absl::string_view key() const { return absl::string_view(data(), key_size); }
    absl::string_view value() const { return absl::string_view(data() + key_size, value_size); }
  };
  // The index hashes and compares entries by their key, and looks them up by a key's text.
  struct KeyHash {
    using is_transparent = void;
    size_t operator()(absl::string_view k) const { return absl::Hash<absl::string_view>{}(k); }
    size_t operator()(const Node* n) const { return (*this)(n->key()); }
  };
  struct KeyEq {
    using is_transparent = void;
    static absl::string_view K(absl::string_view k) { return k; }
    static absl::string_view K(const Node* n) { return n->key(); }
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      return K(a) == K(b);
    }
  };
  struct alignas(64) Shard {
    absl::Mutex mu;
    absl::flat_hash_set<Node*, KeyHash, KeyEq> index;
    // front: most recently inserted or given a second chance; back: the next eviction candidate
    base::IntrusiveList<Node> order;
    uint64_t bytes = 0;
    uint64_t epoch = 0;       // writes (Invalidate): an Insert with an older ticket is dropped
    uint64_t hits = 0, misses = 0, evictions = 0;
  };
  // Charged per entry on top of its key and value: the node header, the allocator's and the index's.
  static constexpr uint64_t kEntryOverhead = 96;
  static uint64_t Charge(const Node& n) { return uint64_t{n.key_size} + n.value_size + kEntryOverhead; }
  static Node* NewNode(absl::string_view key, absl::string_view value);
  static void FreeNode(Node* n);
  Shard& ShardOf(size_t hash) { return *shards_[(hash >> 32) % shards_.size()]; }

  uint64_t capacity_;
  uint64_t shard_capacity_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<uint64_t> disabled_misses_{0};  // lookups while the cache is disabled (capacity 0)
};

}  // namespace kosh::features
