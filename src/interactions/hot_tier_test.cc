#include "interactions/hot_tier.h"

#include <map>

#include "gtest/gtest.h"

namespace kosh::interactions {
namespace {

std::string Block(std::vector<std::pair<int64_t, std::string>> evs) {
  std::vector<EventView> v;
  for (auto& [ts, item] : evs) {
    EventView e;
    e.ts_ms = ts;
    SetItem(item, &e);
    v.push_back(e);
  }
  SortUnique(&v);
  std::string out;
  EncodeBlock(v, &out);
  return out;
}

std::string Record(uint32_t type_id, const std::string& block) {
  std::string r;
  AppendRecordEntry(type_id, block, &r);
  return r;
}

// Merges ops into a record with no trimming (the store passes its own, trimming merger).
bool Merge(absl::string_view record, absl::Span<const RecordEntry> ops, std::string* out) {
  std::vector<RecordEntry> entries;
  if (!ParseRecord(record, &entries)) return false;
  std::map<uint32_t, std::vector<absl::string_view>> by_type;
  for (const auto& e : entries) by_type[e.type_id].push_back(e.block);
  for (const auto& o : ops) by_type[o.type_id].push_back(o.block);
  out->clear();
  for (auto& [id, blocks] : by_type) {
    std::string merged;
    if (!MergeBlocks(blocks, {}, &merged)) return false;
    AppendRecordEntry(id, merged, out);
  }
  return true;
}

size_t Events(const std::string& record, uint32_t type_id) {
  return BlockReader(FindBlock(record, type_id)).count();
}

TEST(HotTierTest, LoadsOnFirstReadThenHits) {
  HotTier hot(1 << 20, 1000);
  std::shared_ptr<const std::string> rec;
  HotTier::Ticket t;
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t), HotTier::Lookup::kLoad);
  // A second reader while the first loads reads the cold tier itself.
  HotTier::Ticket t2;
  EXPECT_EQ(hot.Get("u1", 0, &rec, &t2), HotTier::Lookup::kCold);
  auto served = hot.FinishLoad("u1", t, Record(1, Block({{10, "a"}})), Merge, 0);
  EXPECT_EQ(Events(*served, 1), 1u);
  ASSERT_EQ(hot.Get("u1", 5, &rec, &t), HotTier::Lookup::kHit);
  EXPECT_EQ(*rec, *served);
  EXPECT_EQ(hot.users(), 1u);
  EXPECT_EQ(hot.loads(), 1u);
  EXPECT_EQ(hot.hits(), 1u);
  EXPECT_EQ(hot.misses(), 2u);
  EXPECT_GT(hot.bytes(), rec->size());
}

TEST(HotTierTest, WritesDuringALoadAreMergedIntoIt) {
  HotTier hot(1 << 20, 1000);
  std::shared_ptr<const std::string> rec;
  HotTier::Ticket t;
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t), HotTier::Lookup::kLoad);
  std::string op = Block({{20, "new"}});
  std::vector<RecordEntry> ops = {{1, op}, {2, op}};
  hot.ApplyWrite("u1", ops, Merge, 0);  // committed to the cold tier after the loader's read
  auto served = hot.FinishLoad("u1", t, Record(1, Block({{10, "old"}})), Merge, 0);
  EXPECT_EQ(Events(*served, 1), 2u);
  EXPECT_EQ(Events(*served, 2), 1u);
  // Writes to a hot user merge in place; to a cold user they do nothing here.
  hot.ApplyWrite("u1", {{{1, Block({{30, "newer"}})}}}, Merge, 0);
  hot.ApplyWrite("u2", {{{1, op}}}, Merge, 0);
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t), HotTier::Lookup::kHit);
  EXPECT_EQ(Events(*rec, 1), 3u);
  EXPECT_EQ(hot.users(), 1u);
}

TEST(HotTierTest, EraseOrClearDuringALoadInstallsNothing) {
  HotTier hot(1 << 20, 1000);
  std::shared_ptr<const std::string> rec;
  HotTier::Ticket t;
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t), HotTier::Lookup::kLoad);
  EXPECT_TRUE(hot.Erase("u1"));
  auto served = hot.FinishLoad("u1", t, Record(1, Block({{10, "stale"}})), Merge, 0);
  EXPECT_EQ(Events(*served, 1), 1u);  // this read is served what it read...
  EXPECT_EQ(hot.users(), 0u);         // ...but nothing was cached
  // A newer load of the same user is not confused with the old ticket.
  HotTier::Ticket t1, t2;
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t1), HotTier::Lookup::kLoad);
  hot.Clear();
  ASSERT_EQ(hot.Get("u1", 0, &rec, &t2), HotTier::Lookup::kLoad);
  hot.FinishLoad("u1", t1, "", Merge, 0);
  EXPECT_EQ(hot.users(), 0u);
  hot.FinishLoad("u1", t2, Record(1, Block({{1, "x"}})), Merge, 0);
  EXPECT_EQ(hot.users(), 1u);
  hot.AbortLoad("u1", t2);  // a stale abort does not remove the installed entry
  EXPECT_EQ(hot.users(), 1u);
}

TEST(HotTierTest, EvictsLeastRecentlyUsedUnderTheBudget) {
  // One user's record is ~ 300 bytes of block plus ~250 bytes of overhead.
  std::vector<std::pair<int64_t, std::string>> evs;
  for (int i = 0; i < 100; ++i) evs.push_back({1000 - i, std::to_string(i)});
  const std::string rec = Record(1, Block(evs));
  std::shared_ptr<const std::string> r;
  HotTier::Ticket t;
  uint64_t per_user;
  {
    HotTier probe(1 << 20, 1000000);
    ASSERT_EQ(probe.Get("a", 0, &r, &t), HotTier::Lookup::kLoad);
    probe.FinishLoad("a", t, rec, Merge, 0);
    per_user = probe.bytes();
  }
  const uint64_t budget = per_user * 3 + per_user / 2;  // room for three users
  HotTier hot(budget, 1000000);
  for (const char* u : {"a", "b", "c"}) {
    ASSERT_EQ(hot.Get(u, 0, &r, &t), HotTier::Lookup::kLoad);
    hot.FinishLoad(u, t, rec, Merge, 0);
  }
  EXPECT_EQ(hot.users(), 3u);
  ASSERT_EQ(hot.Get("a", 1, &r, &t), HotTier::Lookup::kHit);  // "b" is now least recently used
  ASSERT_EQ(hot.Get("d", 2, &r, &t), HotTier::Lookup::kLoad);
  hot.FinishLoad("d", t, rec, Merge, 2);
  EXPECT_EQ(hot.users(), 3u);
  EXPECT_EQ(hot.evictions_memory(), 1u);
  EXPECT_LE(hot.bytes(), budget);
  EXPECT_EQ(hot.Get("b", 3, &r, &t), HotTier::Lookup::kLoad);
  hot.AbortLoad("b", t);
  EXPECT_EQ(hot.Get("a", 3, &r, &t), HotTier::Lookup::kHit);
  // A user larger than the whole budget is served but not kept.
  std::vector<std::pair<int64_t, std::string>> many;
  for (int i = 0; i < 2000; ++i) many.push_back({5000 - i, std::to_string(i)});
  ASSERT_EQ(hot.Get("huge", 4, &r, &t), HotTier::Lookup::kLoad);
  auto served = hot.FinishLoad("huge", t, Record(1, Block(many)), Merge, 4);
  EXPECT_EQ(Events(*served, 1), 2000u);
  EXPECT_LE(hot.bytes(), budget);
}

TEST(HotTierTest, EvictsInactiveUsers) {
  HotTier hot(1 << 20, 1000);
  std::shared_ptr<const std::string> r;
  HotTier::Ticket t;
  for (const char* u : {"a", "b"}) {
    ASSERT_EQ(hot.Get(u, 0, &r, &t), HotTier::Lookup::kLoad);
    hot.FinishLoad(u, t, Record(1, Block({{1, "x"}})), Merge, 0);
  }
  hot.ApplyWrite("b", {{{1, Block({{2, "y"}})}}}, Merge, 800);  // writes keep a user active
  EXPECT_EQ(hot.EvictIdle(999), 0u);
  EXPECT_EQ(hot.EvictIdle(1500), 1u);  // a: idle since 0
  EXPECT_EQ(hot.evictions_idle(), 1u);
  EXPECT_EQ(hot.Get("b", 1500, &r, &t), HotTier::Lookup::kHit);
  EXPECT_EQ(hot.Get("a", 1500, &r, &t), HotTier::Lookup::kLoad);
  hot.AbortLoad("a", t);
  EXPECT_EQ(hot.EvictIdle(2499), 0u);
  EXPECT_EQ(hot.EvictIdle(2501), 1u);
  EXPECT_EQ(hot.users(), 0u);
  EXPECT_EQ(hot.bytes(), 0u);
}

TEST(HotTierTest, DisabledTierSendsEveryReadCold) {
  HotTier hot(0, 1000);
  EXPECT_FALSE(hot.enabled());
  std::shared_ptr<const std::string> r;
  HotTier::Ticket t;
  EXPECT_EQ(hot.Get("a", 0, &r, &t), HotTier::Lookup::kCold);
  hot.ApplyWrite("a", {{{1, Block({{2, "y"}})}}}, Merge, 0);
  EXPECT_EQ(hot.users(), 0u);
  EXPECT_EQ(hot.EvictIdle(100000), 0u);
}

}  // namespace
}  // namespace kosh::interactions
