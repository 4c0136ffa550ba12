#include "interactions/history.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "gtest/gtest.h"

namespace kosh::interactions {
namespace {

// An owned event for building test blocks.
struct Ev {
  int64_t ts;
  std::string item;
  std::string payload;
  bool operator==(const Ev& o) const { return ts == o.ts && item == o.item && payload == o.payload; }
};

std::vector<EventView> Views(const std::vector<Ev>& evs) {
  std::vector<EventView> out;
  for (const Ev& e : evs) {
    EventView v;
    v.ts_ms = e.ts;
    SetItem(e.item, &v);
    v.payload = e.payload;
    out.push_back(v);
  }
  return out;
}

std::string Block(const std::vector<Ev>& evs) {
  std::vector<EventView> v = Views(evs);
  SortUnique(&v);
  std::string out;
  EncodeBlock(v, &out);
  return out;
}

std::vector<Ev> Decode(absl::string_view block) {
  std::vector<Ev> out;
  BlockReader r(block);
  EventView v;
  while (r.Next(&v)) out.push_back({v.ts_ms, ItemString(v), std::string(v.payload)});
  EXPECT_FALSE(r.corrupt());
  EXPECT_EQ(out.size(), r.count());
  return out;
}

TEST(HistoryTest, NumericItemsAreCanonicalDecimals) {
  uint64_t v = 99;
  EXPECT_TRUE(ParseNumericItem("0", &v));
  EXPECT_EQ(v, 0u);
  EXPECT_TRUE(ParseNumericItem("1234567", &v));
  EXPECT_EQ(v, 1234567u);
  EXPECT_TRUE(ParseNumericItem("9223372036854775807", &v));
  EXPECT_EQ(v, 9223372036854775807ull);
  for (const char* s : {"", "007", "00", "-1", "+1", "12a", "1.5", " 1", "9223372036854775808",
                        "99999999999999999999"}) {
    EXPECT_FALSE(ParseNumericItem(s, &v)) << s;
  }
}

TEST(HistoryTest, RoundTripsEveryKindOfEvent) {
  std::vector<Ev> evs = {{1700000000123, "42", ""},
                         {1700000000000, "p-9", "\x01\x02"},
                         {1700000000000, "007", ""},  // not canonical: stored as a string
                         {5, "9223372036854775807", std::string(300, 'x')},
                         {-3, "neg", ""}};
  std::string block = Block(evs);
  std::vector<Ev> got = Decode(block);
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got[0], (Ev{1700000000123, "42", ""}));
  // Equal timestamps: item ids ascending as strings ("007" < "p-9").
  EXPECT_EQ(got[1], (Ev{1700000000000, "007", ""}));
  EXPECT_EQ(got[2], (Ev{1700000000000, "p-9", "\x01\x02"}));
  EXPECT_EQ(got[3].item, "9223372036854775807");
  EXPECT_EQ(got[3].payload.size(), 300u);
  EXPECT_EQ(got[4].ts, -3);
}

TEST(HistoryTest, NumericIdsAreCompact) {
  std::vector<Ev> evs;
  for (int i = 0; i < 100; ++i) evs.push_back({1700000000000 - i * 60000, std::to_string(1000000 + i * 7919), ""});
  std::string block = Block(evs);
  // ~3 bytes of timestamp delta and ~3-4 bytes of item id per event.
  EXPECT_LT(block.size(), 100u * 8);
  EXPECT_EQ(Decode(block).size(), 100u);
}

TEST(HistoryTest, EqualTimestampsOrderItemsAsStringsWhateverTheEncoding) {
  std::vector<Ev> evs = {{10, "9", ""}, {10, "10", ""}, {10, "1a", ""}, {10, "z", ""}};
  std::vector<Ev> got = Decode(Block(evs));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].item, "10");
  EXPECT_EQ(got[1].item, "1a");
  EXPECT_EQ(got[2].item, "9");
  EXPECT_EQ(got[3].item, "z");
}

TEST(HistoryTest, DuplicatesKeepTheGreaterPayloadWhateverTheOrder) {
  std::string a = Block({{100, "1", "aa"}, {90, "2", ""}});
  std::string b = Block({{100, "1", "ab"}, {90, "2", ""}, {80, "3", ""}});
  std::string ab, ba;
  std::vector<absl::string_view> in1 = {a, b}, in2 = {b, a};
  MergeStats st;
  ASSERT_TRUE(MergeBlocks(in1, {}, &ab, &st));
  ASSERT_TRUE(MergeBlocks(in2, {}, &ba));
  EXPECT_EQ(ab, ba);
  std::vector<Ev> got = Decode(ab);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], (Ev{100, "1", "ab"}));
  EXPECT_EQ(st.events_in, 5u);
  EXPECT_EQ(st.events_out, 3u);
  EXPECT_EQ(st.duplicates, 2u);
  EXPECT_EQ(st.dropped, 0u);
  // SortUnique applies the same rule within one batch.
  std::vector<Ev> single = Decode(Block({{7, "x", "b"}, {7, "x", "c"}, {7, "x", "a"}}));
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].payload, "c");
}

TEST(HistoryTest, MergeTrimsByCapAndCutoff) {
  std::string old_block = Block({{50, "a", ""}, {40, "b", ""}, {30, "c", ""}});
  std::string late = Block({{45, "late", ""}, {10, "ancient", ""}});
  std::vector<absl::string_view> in = {old_block, late};
  std::string out;
  TrimSpec cap3;
  cap3.cap = 3;
  MergeStats st;
  ASSERT_TRUE(MergeBlocks(in, cap3, &out, &st));
  std::vector<Ev> got = Decode(out);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].item, "a");
  EXPECT_EQ(got[1].item, "late");  // out-of-order arrival lands in its place
  EXPECT_EQ(got[2].item, "b");
  EXPECT_EQ(st.dropped, 2u);

  TrimSpec cutoff;
  cutoff.cutoff_ms = 40;  // events older than 40 go
  ASSERT_TRUE(MergeBlocks(in, cutoff, &out));
  got = Decode(out);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got.back().item, "b");

  TrimSpec all_gone;
  all_gone.cutoff_ms = 1000;
  ASSERT_TRUE(MergeBlocks(in, all_gone, &out));
  EXPECT_TRUE(IsEmptyBlock(out));
  EXPECT_FALSE(IsEmptyBlock(old_block));
}

// The property both tiers rely on: merging in any grouping and order, trimming at every step,
// gives the same bytes as merging everything at once.
TEST(HistoryTest, MergeIsAssociativeAndCommutativeWithTrimming) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<Ev> all;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      all.push_back({static_cast<int64_t>(rng() % 40), std::to_string(rng() % 12),
                     (rng() % 3 == 0) ? std::string(1, static_cast<char>('a' + rng() % 3)) : ""});
    }
    TrimSpec trim;
    trim.cap = 1 + rng() % 20;
    trim.cutoff_ms = static_cast<int64_t>(rng() % 10);
    std::string expected;
    {
      std::string b = Block(all);
      absl::string_view v = b;
      ASSERT_TRUE(MergeBlocks(absl::MakeConstSpan(&v, 1), trim, &expected));
    }
    // Split into random blocks and fold them in a random order, trimming at each step.
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<std::string> blocks;
    for (size_t i = 0; i < all.size();) {
      size_t len = 1 + rng() % 5;
      blocks.push_back(Block(std::vector<Ev>(all.begin() + i, all.begin() + std::min(all.size(), i + len))));
      i += len;
    }
    std::string acc;
    EncodeBlock({}, &acc);
    while (!blocks.empty()) {
      size_t take = 1 + rng() % std::min<size_t>(3, blocks.size());
      std::vector<absl::string_view> in = {acc};
      for (size_t k = 0; k < take; ++k) in.push_back(blocks[k]);
      if (rng() % 2) std::reverse(in.begin(), in.end());
      std::string next;
      ASSERT_TRUE(MergeBlocks(in, trim, &next));
      acc = std::move(next);
      blocks.erase(blocks.begin(), blocks.begin() + static_cast<long>(take));
    }
    ASSERT_EQ(acc, expected) << "round " << round;
  }
}

TEST(HistoryTest, CorruptBlocksAreDetected) {
  std::string good = Block({{100, "abc", "pp"}, {90, "1", "q"}});
  for (size_t cut = 0; cut < good.size(); ++cut) {
    absl::string_view v = absl::string_view(good).substr(0, cut);
    std::string out;
    EXPECT_FALSE(MergeBlocks(absl::MakeConstSpan(&v, 1), {}, &out)) << "cut at " << cut;
  }
  std::string bad_magic = good;
  bad_magic[0] = 0x10;
  BlockReader r(bad_magic);
  EXPECT_TRUE(r.corrupt());
  EventView ev;
  EXPECT_FALSE(r.Next(&ev));
}

// The example in docs/formats.md, byte for byte.
TEST(HistoryTest, DocumentedExample) {
  std::string block = Block({{1700000060000, "1234567", ""}, {1700000000000, "p-9", ""}});
  const unsigned char want[] = {0x30, 0x02, 0xc0, 0xc9, 0xb2, 0xfe, 0xf9, 0x62, 0x8f, 0xda, 0x96,
                                0x01, 0xe0, 0xd4, 0x03, 0x06, 'p',  '-',  '9'};
  EXPECT_EQ(block, std::string(reinterpret_cast<const char*>(want), sizeof(want)));
  std::string empty;
  EncodeBlock({}, &empty);
  EXPECT_EQ(empty, std::string("\x30\x00", 2));
}

TEST(HistoryTest, RecordsHoldBlocksByTypeId) {
  std::string b1 = Block({{5, "1", ""}});
  std::string b3 = Block({{6, "x", ""}, {4, "y", ""}});
  std::string rec;
  AppendRecordEntry(1, b1, &rec);
  AppendRecordEntry(3, b3, &rec);
  EXPECT_EQ(FindBlock(rec, 1), b1);
  EXPECT_EQ(FindBlock(rec, 3), b3);
  EXPECT_TRUE(FindBlock(rec, 2).empty());
  EXPECT_TRUE(FindBlock(rec, 4).empty());
  std::vector<RecordEntry> entries;
  ASSERT_TRUE(ParseRecord(rec, &entries));
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].type_id, 3u);
  EXPECT_FALSE(ParseRecord(absl::string_view(rec).substr(0, rec.size() - 1), &entries));
}

}  // namespace
}  // namespace kosh::interactions
