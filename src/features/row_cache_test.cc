#include "features/row_cache.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kosh::features {
namespace {

// The per-entry overhead the cache charges on top of key and value bytes (see RowCache::Charge).
constexpr uint64_t kOverhead = 96;

uint64_t Charge(const std::string& key, const std::string& value) {
  return key.size() + value.size() + kOverhead;
}

// Looks `key` up and, on a miss, inserts `value` with the ticket of that miss.
void Fill(RowCache& cache, const std::string& key, const std::string& value) {
  std::string got;
  RowCache::Ticket t;
  ASSERT_FALSE(cache.Lookup(key, &got, &t)) << key << " already cached";
  cache.Insert(key, value, t);
}

bool Has(RowCache& cache, const std::string& key, std::string* value = nullptr) {
  std::string got;
  RowCache::Ticket t;
  bool hit = cache.Lookup(key, &got, &t);
  if (value != nullptr) *value = got;
  return hit;
}

TEST(RowCacheTest, MissThenHit) {
  RowCache cache(1 << 20, 1);
  std::string value = "stale";
  RowCache::Ticket t;
  EXPECT_FALSE(cache.Lookup("k1", &value, &t));
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_EQ(cache.hits(), 0u);
  cache.Insert("k1", "row-1", t);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), Charge("k1", "row-1"));

  std::string got;
  RowCache::Ticket t2;
  EXPECT_TRUE(cache.Lookup("k1", &got, &t2));
  EXPECT_EQ(got, "row-1");
  EXPECT_TRUE(cache.Lookup("k1", &got, &t2));
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(cache.misses(), 1u);
  EXPECT_FALSE(cache.Lookup("k2", &got, &t2));
  EXPECT_EQ(cache.misses(), 2u);
  EXPECT_EQ(cache.capacity_bytes(), 1u << 20);
}

TEST(RowCacheTest, NegativeEntries) {
  RowCache cache(1 << 20, 1);
  Fill(cache, "absent", "");
  std::string got = "junk";
  RowCache::Ticket t;
  ASSERT_TRUE(cache.Lookup("absent", &got, &t)) << "an absent key is cached as a hit";
  EXPECT_EQ(got, "");
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), Charge("absent", ""));
  EXPECT_EQ(cache.hits(), 1u);
}

TEST(RowCacheTest, BinaryKeysAndValues) {
  RowCache cache(1 << 20, 4);
  std::string k1("\x00\x00\x00\x01\x01a", 6), k2("\x00\x00\x00\x01\x01b", 6);
  std::string v1("\x10\x00\xff", 3);
  Fill(cache, k1, v1);
  std::string got;
  ASSERT_TRUE(Has(cache, k1, &got));
  EXPECT_EQ(got, v1);
  EXPECT_FALSE(Has(cache, k2));
}

TEST(RowCacheTest, SecondChanceEviction) {
  // Four entries of 100 bytes each fit in 400; the fifth evicts the oldest entry not hit since it
  // was inserted (or since its last second chance).
  const std::string value(2, 'v');  // keys are 2 bytes too: charge = 2 + 2 + 96 = 100
  const uint64_t per_entry = Charge("k0", value);
  ASSERT_EQ(per_entry, 100u);
  RowCache cache(4 * per_entry, 1);
  for (int i = 0; i < 4; ++i) Fill(cache, absl::StrCat("k", i), value);
  EXPECT_EQ(cache.entries(), 4u);
  EXPECT_EQ(cache.bytes(), 4 * per_entry);
  EXPECT_EQ(cache.evictions(), 0u);

  // k0 is the oldest but was hit: it gets a second chance and k1 goes instead.
  EXPECT_TRUE(Has(cache, "k0"));
  Fill(cache, "k4", value);
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_EQ(cache.entries(), 4u);
  EXPECT_LE(cache.bytes(), cache.capacity_bytes());

  // k0 used its second chance; nothing was hit since, so the next insert evicts the oldest
  // remaining entry, k2 (order from the hot end: k0 k4 k3 k2).
  Fill(cache, "k5", value);
  EXPECT_EQ(cache.evictions(), 2u);
  EXPECT_FALSE(Has(cache, "k1"));
  EXPECT_FALSE(Has(cache, "k2"));
  EXPECT_TRUE(Has(cache, "k0"));
  EXPECT_TRUE(Has(cache, "k3"));
  EXPECT_TRUE(Has(cache, "k4"));
  EXPECT_TRUE(Has(cache, "k5"));

  // Every entry is now referenced: a large entry needs two slots; the scan clears every bit once,
  // then evicts from the cold end until it fits, and never exceeds the capacity.
  const std::string big(2 * per_entry - Charge("kb", ""), 'b');
  Fill(cache, "kb", big);
  EXPECT_LE(cache.bytes(), cache.capacity_bytes());
  EXPECT_EQ(cache.evictions(), 4u);
  EXPECT_TRUE(Has(cache, "kb"));
  EXPECT_EQ(cache.entries(), 3u);
}

TEST(RowCacheTest, EntryLargerThanCapacityIsNotKept) {
  RowCache cache(200, 1);
  Fill(cache, "small", "s");
  Fill(cache, "huge", std::string(500, 'h'));
  EXPECT_FALSE(Has(cache, "huge"));
  // It did not push out what was there to make room it could never have.
  EXPECT_TRUE(Has(cache, "small"));
  EXPECT_EQ(cache.evictions(), 0u);
  EXPECT_EQ(cache.bytes(), Charge("small", "s"));
}

TEST(RowCacheTest, CapacityIsSplitOverShards) {
  // 64 shards of a 6400-byte cache hold 100 bytes each: at most one 100-byte entry per shard.
  RowCache cache(6400, 64);
  for (int i = 0; i < 1000; ++i) {
    std::string key = absl::StrCat("k", 1000 + i).substr(1);  // 4 bytes: charge 100
    ASSERT_EQ(Charge(key, ""), 100u);
    std::string got;
    RowCache::Ticket t;
    if (!cache.Lookup(key, &got, &t)) cache.Insert(key, "", t);
  }
  EXPECT_LE(cache.bytes(), 6400u);
  EXPECT_LE(cache.entries(), 64u);
  EXPECT_GT(cache.entries(), 32u) << "1000 keys should reach most shards";
  EXPECT_EQ(cache.bytes(), cache.entries() * 100);
  EXPECT_GE(cache.evictions(), 1000u - 64u);

  // An entry larger than one shard's share is never kept, although the total would fit.
  RowCache other(6400, 64);
  Fill(other, "wide", "w");  // charge 4 + 1 + 96 = 101
  EXPECT_FALSE(Has(other, "wide"));
  EXPECT_EQ(other.bytes(), 0u);
}

TEST(RowCacheTest, InvalidateRemoves) {
  RowCache cache(1 << 20, 1);
  Fill(cache, "a", "row-a");
  Fill(cache, "b", "row-b");
  cache.Invalidate("a");
  EXPECT_FALSE(Has(cache, "a"));
  EXPECT_TRUE(Has(cache, "b"));
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), Charge("b", "row-b"));
  // Invalidating an absent key is harmless.
  cache.Invalidate("never-cached");
  EXPECT_EQ(cache.entries(), 1u);
}

TEST(RowCacheTest, InsertWithTicketOlderThanInvalidateIsDropped) {
  // The stale-read race: a reader misses and reads the engine (old row); a writer writes the
  // engine and invalidates; the reader's insert of the old row must not be cached.
  RowCache cache(1 << 20, 1);
  std::string got;
  RowCache::Ticket reader;
  ASSERT_FALSE(cache.Lookup("k", &got, &reader));
  cache.Invalidate("k");                // the writer
  cache.Insert("k", "old-row", reader);  // the slow reader
  EXPECT_FALSE(Has(cache, "k")) << "a stale row was cached";
  EXPECT_EQ(cache.entries(), 0u);

  // A reader that starts after the write caches normally.
  Fill(cache, "k", "new-row");
  ASSERT_TRUE(Has(cache, "k", &got));
  EXPECT_EQ(got, "new-row");
}

TEST(RowCacheTest, InvalidateOfAnotherKeyInTheShardAlsoStalesTickets) {
  // Tickets are per shard, so with one shard a write to any key drops in-flight inserts
  // (conservative but never stale).
  RowCache cache(1 << 20, 1);
  std::string got;
  RowCache::Ticket t;
  ASSERT_FALSE(cache.Lookup("k", &got, &t));
  cache.Invalidate("other");
  cache.Insert("k", "row", t);
  EXPECT_FALSE(Has(cache, "k"));
}

TEST(RowCacheTest, SecondInsertKeepsFirstValue) {
  RowCache cache(1 << 20, 1);
  std::string got;
  RowCache::Ticket t1, t2;
  ASSERT_FALSE(cache.Lookup("k", &got, &t1));
  ASSERT_FALSE(cache.Lookup("k", &got, &t2));
  cache.Insert("k", "row", t1);
  cache.Insert("k", "row", t2);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), Charge("k", "row"));
}

TEST(RowCacheTest, ZeroCapacityDisables) {
  RowCache cache(0);
  std::string got;
  RowCache::Ticket t;
  EXPECT_FALSE(cache.Lookup("k", &got, &t));
  cache.Insert("k", "row", t);
  EXPECT_FALSE(cache.Lookup("k", &got, &t));
  cache.Invalidate("k");
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.hits(), 0u);
  EXPECT_EQ(cache.misses(), 2u);
  EXPECT_EQ(cache.capacity_bytes(), 0u);
}

TEST(RowCacheTest, ConcurrentSmoke) {
  // Threads look up, insert and invalidate overlapping keys. Values encode their key, so a hit
  // that returns another key's value (or a torn value) is detected.
  constexpr uint64_t kCapacity = 16 * 1024;
  RowCache cache(kCapacity, 4);
  constexpr int kThreads = 4, kIters = 20000, kKeys = 200;
  std::atomic<int> bad{0};
  std::atomic<uint64_t> lookups{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint32_t x = 2463534242u + static_cast<uint32_t>(t);
      for (int i = 0; i < kIters; ++i) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        const int k = static_cast<int>(x % kKeys);
        const std::string key = absl::StrCat("key", k);
        const std::string value = k % 7 == 0 ? std::string() : absl::StrCat("value-of-", key, std::string(k % 50, '.'));
        if ((x >> 8) % 10 == 0) {
          cache.Invalidate(key);
          continue;
        }
        std::string got;
        RowCache::Ticket ticket;
        lookups.fetch_add(1, std::memory_order_relaxed);
        if (cache.Lookup(key, &got, &ticket)) {
          if (got != value) bad.fetch_add(1);
        } else {
          cache.Insert(key, value, ticket);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(cache.hits() + cache.misses(), lookups.load());
  EXPECT_GT(cache.hits(), 0u);
  EXPECT_LE(cache.bytes(), kCapacity);
  EXPECT_LE(cache.entries(), static_cast<uint64_t>(kKeys));
  // Entries and bytes agree: every entry is charged at least the overhead and at most the largest
  // entry, and every remaining entry is readable with its own value.
  EXPECT_GE(cache.bytes(), cache.entries() * kOverhead);
  uint64_t found = 0, found_bytes = 0;
  for (int k = 0; k < kKeys; ++k) {
    const std::string key = absl::StrCat("key", k);
    std::string got;
    if (Has(cache, key, &got)) {
      ++found;
      found_bytes += Charge(key, got);
      const std::string want = k % 7 == 0 ? std::string() : absl::StrCat("value-of-", key, std::string(k % 50, '.'));
      EXPECT_EQ(got, want);
    }
  }
  EXPECT_EQ(found, cache.entries());
  EXPECT_EQ(found_bytes, cache.bytes());
}

}  // namespace
}  // namespace kosh::features
