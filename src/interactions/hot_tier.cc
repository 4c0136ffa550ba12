#include "interactions/hot_tier.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "base/intrusive_list.h"

namespace kosh::interactions {

struct HotTier::Entry {
  std::string user;
  std::shared_ptr<const std::string> record;  // ready entries only
  // Loading entries: writes to merge on FinishLoad, as (type id, operand block).
  std::vector<std::pair<uint32_t, std::string>> pending;
  Entry* prev = nullptr;  // in Shard::lru (ready entries)
  Entry* next = nullptr;
  int64_t last_ms = 0;
  uint64_t gen = 0;
  uint64_t bytes = 0;  // accounted bytes (ready entries)
  bool loading = true;
};

struct HotTier::Shard {
  absl::Mutex mu;
  // Keys view Entry::user, which lives as long as the entry.
  absl::flat_hash_map<absl::string_view, std::unique_ptr<Entry>> map ABSL_GUARDED_BY(mu);
  base::IntrusiveList<Entry> lru ABSL_GUARDED_BY(mu);  // ready entries, most recent first
  uint64_t bytes ABSL_GUARDED_BY(mu) = 0;
  uint64_t budget = 0;
};

namespace {

// What one ready entry costs: the entry and the user id (heap-allocated past 15 bytes), its map
// slot (at the map's 7/8 maximum load), the record's shared_ptr control block and string header
// (one allocation, make_shared) and the record's bytes, with 16 bytes of allocator overhead per
// allocation.
template <typename Entry>
uint64_t EntryBytes(const std::string& user, const std::string* record) {
  constexpr uint64_t kMalloc = 16;
  constexpr uint64_t kSlot = (sizeof(absl::string_view) + sizeof(void*) + 1) * 8 / 7;
  uint64_t b = sizeof(Entry) + kMalloc + kSlot + (user.size() > 15 ? user.capacity() + 1 + kMalloc : 0);
  if (record != nullptr) {
    b += 16 + sizeof(std::string) + kMalloc + (record->size() > 15 ? record->capacity() + 1 + kMalloc : 0);
  }
  return b;
}

}  // namespace

HotTier::HotTier(uint64_t budget_bytes, int64_t inactivity_ms)
    : budget_(budget_bytes), inactivity_ms_(inactivity_ms) {
  if (budget_ == 0) return;
  // Small budgets get one shard so that LRU order (and the budget) is exact; large ones spread
  // lock contention over up to 64 shards of at least 4 MiB each.
  size_t n = static_cast<size_t>(std::clamp<uint64_t>(budget_ / (4ull << 20), 1, 64));
  for (size_t i = 0; i < n; ++i) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->budget = budget_ / n;
  }
}

HotTier::~HotTier() = default;

HotTier::Shard& HotTier::ShardFor(absl::string_view user) {
  // The map inside the shard uses the low bits of the same hash; shard by the high ones.
  uint64_t h = absl::HashOf(user);
  return *shards_[(h >> 40) % shards_.size()];
}

void HotTier::Remove(Shard& s, Entry* e, std::atomic<uint64_t>* counter) {
  if (!e->loading) {
    s.lru.Remove(e);
    s.bytes -= e->bytes;
    bytes_.fetch_sub(e->bytes, std::memory_order_relaxed);
    users_.fetch_sub(1, std::memory_order_relaxed);
    if (counter != nullptr) counter->fetch_add(1, std::memory_order_relaxed);
  }
  auto it = s.map.find(absl::string_view(e->user));
  s.map.erase(it);  // destroys e
}

void HotTier::SetRecord(Shard& s, Entry* e, std::shared_ptr<const std::string> record) {
  uint64_t b = EntryBytes<Entry>(e->user, record.get());
  s.bytes = s.bytes - e->bytes + b;
  bytes_.fetch_add(b - e->bytes, std::memory_order_relaxed);  // wraps correctly when b < e->bytes
  e->bytes = b;
  e->record = std::move(record);
}

void HotTier::EnforceBudget(Shard& s) {
  while (s.bytes > s.budget && !s.lru.empty()) Remove(s, s.lru.back(), &evict_memory_);
}

HotTier::Lookup HotTier::Get(absl::string_view user, int64_t now_ms, std::shared_ptr<const std::string>* record,
                             Ticket* ticket) {
  if (!enabled()) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return Lookup::kCold;
  }
  Shard& s = ShardFor(user);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(user);
  if (it != s.map.end()) {
    Entry* e = it->second.get();
    if (e->loading) {
      misses_.fetch_add(1, std::memory_order_relaxed);
      return Lookup::kCold;
    }
    hits_.fetch_add(1, std::memory_order_relaxed);
    e->last_ms = now_ms;
    s.lru.MoveToFront(e);
    *record = e->record;
    return Lookup::kHit;
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  auto e = std::make_unique<Entry>();
  e->user = std::string(user);
  e->gen = next_gen_.fetch_add(1, std::memory_order_relaxed);
  ticket->gen = e->gen;
  absl::string_view key = e->user;
  s.map.emplace(key, std::move(e));
  return Lookup::kLoad;
}

std::shared_ptr<const std::string> HotTier::FinishLoad(absl::string_view user, const Ticket& ticket,
                                                       std::string record, const RecordMerger& merge,
                                                       int64_t now_ms) {
  Shard& s = ShardFor(user);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(user);
  if (it == s.map.end() || it->second->gen != ticket.gen || !it->second->loading) {
    return std::make_shared<const std::string>(std::move(record));
  }
  Entry* e = it->second.get();
  if (!e->pending.empty()) {
    std::vector<RecordEntry> ops;
    ops.reserve(e->pending.size());
    for (const auto& [id, block] : e->pending) ops.push_back({id, block});
    std::string merged;
    if (!merge(record, ops, &merged)) {
      Remove(s, e, nullptr);
      return std::make_shared<const std::string>(std::move(record));
    }
    record = std::move(merged);
    e->pending.clear();
    e->pending.shrink_to_fit();
  }
  auto rec = std::make_shared<const std::string>(std::move(record));
  e->loading = false;
  e->last_ms = now_ms;
  users_.fetch_add(1, std::memory_order_relaxed);
  loads_.fetch_add(1, std::memory_order_relaxed);
  SetRecord(s, e, rec);
  s.lru.PushFront(e);
  EnforceBudget(s);  // may evict this very entry if it alone exceeds the budget
  return rec;
}

void HotTier::AbortLoad(absl::string_view user, const Ticket& ticket) {
  Shard& s = ShardFor(user);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(user);
  if (it != s.map.end() && it->second->gen == ticket.gen && it->second->loading) {
    Remove(s, it->second.get(), nullptr);
  }
}

void HotTier::ApplyWrite(absl::string_view user, absl::Span<const RecordEntry> ops, const RecordMerger& merge,
                         int64_t now_ms) {
  if (!enabled()) return;
  Shard& s = ShardFor(user);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(user);
  if (it == s.map.end()) return;
  Entry* e = it->second.get();
  if (e->loading) {
    for (const RecordEntry& op : ops) e->pending.emplace_back(op.type_id, std::string(op.block));
    return;
  }
  std::string merged;
  if (!merge(*e->record, ops, &merged)) {
    Remove(s, e, &evict_other_);
    return;
  }
  SetRecord(s, e, std::make_shared<const std::string>(std::move(merged)));
  e->last_ms = now_ms;
  s.lru.MoveToFront(e);
  EnforceBudget(s);
}

bool HotTier::Erase(absl::string_view user) {
  if (!enabled()) return false;
  Shard& s = ShardFor(user);
  absl::MutexLock lock(&s.mu);
  auto it = s.map.find(user);
  if (it == s.map.end()) return false;
  Remove(s, it->second.get(), &evict_other_);
  return true;
}

void HotTier::Clear() {
  for (auto& sp : shards_) {
    Shard& s = *sp;
    absl::MutexLock lock(&s.mu);
    while (!s.lru.empty()) Remove(s, s.lru.back(), &evict_other_);
    s.map.clear();  // loading entries: their loads will find no entry and install nothing
  }
}

size_t HotTier::EvictIdle(int64_t now_ms, size_t max_per_shard) {
  size_t evicted = 0;
  const int64_t before = now_ms - inactivity_ms_;
  for (auto& sp : shards_) {
    Shard& s = *sp;
    absl::MutexLock lock(&s.mu);
    for (size_t n = 0; n < max_per_shard && !s.lru.empty() && s.lru.back()->last_ms < before; ++n) {
      Remove(s, s.lru.back(), &evict_idle_);
      ++evicted;
    }
  }
  return evicted;
}

}  // namespace kosh::interactions
