#include "features/row_cache.h"

#include "absl/hash/hash.h"

namespace kosh::features {

RowCache::RowCache(uint64_t capacity_bytes, int shards)
    : capacity_(capacity_bytes), shard_capacity_(capacity_bytes / static_cast<uint64_t>(shards)) {
  for (int i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

RowCache::Shard& RowCache::ShardFor(absl::string_view key) {
  // The shard comes from the hash's high bits: each shard's flat_hash_map probes with the same
  // hash, and its control bytes hold the low 7 bits, so sharding on the low bits would leave a
  // shard's keys with near-identical control bytes and turn every find into a string-compare scan.
  return *shards_[(absl::HashOf(key) >> 32) % shards_.size()];
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
  it->second->referenced = true;
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
    it->second->referenced = true;
    return;
  }
  s.lru.push_front(Entry{std::string(key), std::string(value)});
  s.index[s.lru.front().key] = s.lru.begin();
  s.bytes += Charge(s.lru.front());
  const Entry* inserted = &s.lru.front();
  while (s.bytes > shard_capacity_ && !s.lru.empty()) {
    Entry& victim = s.lru.back();
    // Second chance: a referenced entry loses its bit and moves to the hot end. The entry being
    // inserted is only evicted when it is alone (it does not fit at all).
    if (victim.referenced || (&victim == inserted && s.lru.size() > 1)) {
      victim.referenced = false;
      s.lru.splice(s.lru.begin(), s.lru, std::prev(s.lru.end()));
      continue;
    }
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
