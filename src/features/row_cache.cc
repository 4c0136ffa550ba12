#include "features/row_cache.h"

#include "absl/hash/hash.h"

namespace kosh::features {

RowCache::RowCache(uint64_t capacity_bytes, int shards)
    : capacity_(capacity_bytes), shard_capacity_(capacity_bytes / static_cast<uint64_t>(shards)) {
  for (int i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

RowCache::Shard& RowCache::ShardFor(absl::string_view key) {
  return *shards_[absl::HashOf(key) % shards_.size()];
}

bool RowCache::Lookup(absl::string_view key, std::string* value, Ticket* ticket) {
  if (capacity_ == 0) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  Shard& s = ShardFor(key);
  absl::MutexLock lock(&s.mu);
  auto it = s.index.find(key);
  if (it == s.index.end()) {
    ticket->epoch = s.epoch;
    misses_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  s.lru.splice(s.lru.begin(), s.lru, it->second);
  value->assign(it->second->value);
  hits_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void RowCache::Insert(absl::string_view key, absl::string_view value, Ticket ticket) {
  if (capacity_ == 0) return;
  Shard& s = ShardFor(key);
  absl::MutexLock lock(&s.mu);
  if (s.epoch != ticket.epoch) return;  // a write raced with the read that produced `value`
  auto it = s.index.find(key);
  if (it != s.index.end()) {  // another reader filled it first; both read the same state
    s.lru.splice(s.lru.begin(), s.lru, it->second);
    return;
  }
  s.lru.push_front(Entry{std::string(key), std::string(value)});
  s.index[s.lru.front().key] = s.lru.begin();
  s.bytes += Charge(s.lru.front());
  while (s.bytes > shard_capacity_ && !s.lru.empty()) {
    Entry& victim = s.lru.back();
    s.bytes -= Charge(victim);
    s.index.erase(victim.key);
    s.lru.pop_back();
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }
}

void RowCache::Invalidate(absl::string_view key) {
  if (capacity_ == 0) return;
  Shard& s = ShardFor(key);
  absl::MutexLock lock(&s.mu);
  ++s.epoch;
  auto it = s.index.find(key);
  if (it == s.index.end()) return;
  s.bytes -= Charge(*it->second);
  auto node = it->second;
  s.index.erase(it);
  s.lru.erase(node);
}

uint64_t RowCache::bytes() const {
  uint64_t total = 0;
  for (const auto& s : shards_) {
    absl::MutexLock lock(&s->mu);
    total += s->bytes;
  }
  return total;
}

uint64_t RowCache::entries() const {
  uint64_t total = 0;
  for (const auto& s : shards_) {
    absl::MutexLock lock(&s->mu);
    total += s->index.size();
  }
  return total;
}

}  // namespace kosh::features
