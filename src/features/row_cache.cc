#include "features/row_cache.h"

#include <cstring>
#include <new>


namespace kosh::features {

RowCache::RowCache(uint64_t capacity_bytes, int shards)
    : capacity_(capacity_bytes), shard_capacity_(capacity_bytes / static_cast<uint64_t>(shards)) {
  for (int i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

RowCache::~RowCache() {
  for (auto& s : shards_) {
    for (Node* n = s->order.front(); n != nullptr;) {
      Node* next = n->next;
      FreeNode(n);
      n = next;
    }
  }
}

RowCache::Node* RowCache::NewNode(absl::string_view key, absl::string_view value) {
  void* mem = ::operator new(sizeof(Node) + key.size() + value.size());
  Node* n = new (mem) Node{nullptr, nullptr, static_cast<uint32_t>(key.size()), static_cast<uint32_t>(value.size()),
                           false};
  if (!key.empty()) std::memcpy(n->data(), key.data(), key.size());
  if (!value.empty()) std::memcpy(n->data() + key.size(), value.data(), value.size());
  return n;
}

void RowCache::FreeNode(Node* n) {
  n->~Node();
  ::operator delete(n);
}

// The shard comes from the hash's high bits (ShardOf): each shard's index probes with the same
// hash, and its control bytes hold the low 7 bits, so sharding on the low bits would leave a
// shard's keys with near-identical control bytes and turn every find into a string-compare scan.

bool RowCache::Lookup(absl::string_view key, std::string* value, Ticket* ticket) {
  if (capacity_ == 0) {
    ticket->epoch = 0;
    disabled_misses_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const size_t h = KeyHash{}(key);
  Shard& s = ShardOf(h);
  absl::MutexLock lock(&s.mu);
  auto it = s.index.find(key, h);
  if (it == s.index.end()) {
    ticket->epoch = s.epoch;
    ++s.misses;
    return false;
  }
  Node* n = *it;
  n->referenced = true;
  value->assign(n->value().data(), n->value_size);
  ++s.hits;
  return true;
}

void RowCache::Insert(absl::string_view key, absl::string_view value, Ticket ticket) {
  if (capacity_ == 0) return;
  // An entry that cannot fit in its shard is not cached (it would evict the whole shard first).
  if (key.size() + value.size() + kEntryOverhead > shard_capacity_ || value.size() > UINT32_MAX) return;
  const size_t h = KeyHash{}(key);
  Shard& s = ShardOf(h);
  absl::MutexLock lock(&s.mu);
  if (s.epoch != ticket.epoch) return;  // a write raced with the read that produced `value`
  auto it = s.index.find(key, h);
  if (it != s.index.end()) {  // another reader filled it first; both read the same state
    (*it)->referenced = true;
    return;
  }
  Node* inserted = NewNode(key, value);
  s.index.insert(inserted);
  s.order.PushFront(inserted);
  s.bytes += Charge(*inserted);
  while (s.bytes > shard_capacity_ && !s.order.empty()) {
    Node* victim = s.order.back();
    // Second chance: a referenced entry loses its bit and moves to the hot end. The entry being
    // inserted is only evicted when it is alone (it does not fit at all).
    if (victim->referenced || (victim == inserted && s.order.front() != victim)) {
      victim->referenced = false;
      s.order.MoveToFront(victim);
      continue;
    }
    s.bytes -= Charge(*victim);
    s.index.erase(victim);
    s.order.Remove(victim);
    FreeNode(victim);
    ++s.evictions;
  }
}

void RowCache::Invalidate(absl::string_view key) {
  if (capacity_ == 0) return;
  const size_t h = KeyHash{}(key);
  Shard& s = ShardOf(h);
  absl::MutexLock lock(&s.mu);
  ++s.epoch;
  auto it = s.index.find(key, h);
  if (it == s.index.end()) return;
  Node* n = *it;
  s.index.erase(it);
  s.bytes -= Charge(*n);
  s.order.Remove(n);
  FreeNode(n);
}

namespace {

template <typename Shards, typename F>
uint64_t Sum(const Shards& shards, F field) {
  uint64_t total = 0;
  for (const auto& s : shards) {
    absl::MutexLock lock(&s->mu);
    total += field(*s);
  }
  return total;
}

}  // namespace

uint64_t RowCache::bytes() const {
  return Sum(shards_, [](const Shard& s) { return s.bytes; });
}
uint64_t RowCache::entries() const {
  return Sum(shards_, [](const Shard& s) { return static_cast<uint64_t>(s.index.size()); });
}
uint64_t RowCache::hits() const {
  return Sum(shards_, [](const Shard& s) { return s.hits; });
}
uint64_t RowCache::misses() const {
  return disabled_misses_.load(std::memory_order_relaxed) + Sum(shards_, [](const Shard& s) { return s.misses; });
}
uint64_t RowCache::evictions() const {
  return Sum(shards_, [](const Shard& s) { return s.evictions; });
}

}  // namespace kosh::features
