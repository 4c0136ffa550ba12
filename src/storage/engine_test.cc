#include "storage/engine.h"

#include <filesystem>
#include <random>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "small_tmpfs.h"

namespace kosh::storage {
namespace {

// Values starting with 'x' are expired.
// A merge that concatenates operands with '+' separators: "a" + "b" + "c" -> "a+b+c".
bool Concat(absl::string_view, const absl::string_view* existing, absl::Span<const absl::string_view> ops,
            std::string* out) {
  out->clear();
  if (existing != nullptr) out->append(existing->data(), existing->size());
  for (absl::string_view o : ops) {
    if (o == "corrupt") return false;
    if (!out->empty()) out->push_back('+');
    out->append(o.data(), o.size());
  }
  return true;
}

std::vector<KeyspaceOptions> Keyspaces() {
  return {{"meta", nullptr, nullptr},
          {"data", [](absl::string_view v, int64_t) { return !v.empty() && v[0] == 'x'; }, nullptr},
          {"log", nullptr, Concat}};
}

std::string TempDir() {
  std::random_device rd;
  auto p = std::filesystem::temp_directory_path() / ("kosh_engine_test_" + std::to_string(rd()));
  std::filesystem::remove_all(p);
  return p.string();
}

class EngineTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    Reopen();
  }
  void TearDown() override {
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    engine_.reset();
    if (GetParam()) {
      RocksDbOptions o;
      o.path = dir_;
      o.sync_writes = false;
      auto e = OpenRocksDb(o, Keyspaces());
      ASSERT_TRUE(e.ok()) << e.status();
      engine_ = std::move(*e);
    } else {
      engine_ = NewMemoryEngine(Keyspaces());
    }
  }
  std::optional<std::string> Get(Keyspace ks, absl::string_view key) {
    std::vector<std::optional<std::string>> v;
    absl::string_view keys[] = {key};
    EXPECT_TRUE(engine_->MultiGet(ks, keys, &v).ok());
    return v[0];
  }
  std::string dir_;
  std::unique_ptr<Engine> engine_;
};

TEST_P(EngineTest, WriteThenMultiGetAcrossKeyspaces) {
  WriteBatch b;
  b.Put(0, "a", "meta-a");
  b.Put(1, "a", "data-a");
  b.Put(1, "b", "data-b");
  ASSERT_TRUE(engine_->Write(b).ok());
  EXPECT_EQ(Get(0, "a"), "meta-a");
  std::vector<std::optional<std::string>> v;
  std::vector<absl::string_view> keys = {"b", "zz", "a"};
  ASSERT_TRUE(engine_->MultiGet(1, keys, &v).ok());
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[0], "data-b");
  EXPECT_FALSE(v[1].has_value());
  EXPECT_EQ(v[2], "data-a");

  WriteBatch d;
  d.Delete(1, "a");
  ASSERT_TRUE(engine_->Write(d).ok());
  EXPECT_FALSE(Get(1, "a").has_value());
  EXPECT_EQ(Get(0, "a"), "meta-a");
}

TEST_P(EngineTest, ScanStaysInsidePrefixInOrder) {
  WriteBatch b;
  for (std::string k : {"p/2", "p/1", "q/1", "p/3", "o/9"}) b.Put(0, k, "v" + k);
  ASSERT_TRUE(engine_->Write(b).ok());
  std::vector<std::string> seen;
  ASSERT_TRUE(engine_->Scan(0, "p/", [&](absl::string_view k, absl::string_view) {
    seen.emplace_back(k);
    return true;
  }).ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"p/1", "p/2", "p/3"}));
}

TEST_P(EngineTest, CompactionDropsExpiredValuesOnlyInExpiringKeyspace) {
  WriteBatch b;
  b.Put(1, "live", "ok");
  b.Put(1, "dead", "xpired");
  b.Put(0, "meta", "xkept");
  ASSERT_TRUE(engine_->Write(b).ok());
  ASSERT_TRUE(engine_->Flush().ok());
  ASSERT_TRUE(engine_->CompactAll(1).ok());
  ASSERT_TRUE(engine_->CompactAll(0).ok());
  EXPECT_EQ(Get(1, "live"), "ok");
  EXPECT_FALSE(Get(1, "dead").has_value());
  EXPECT_EQ(Get(0, "meta"), "xkept");
}

TEST_P(EngineTest, RocksDbSurvivesReopen) {
  if (!GetParam()) GTEST_SKIP() << "the memory engine is not durable";
  WriteBatch b;
  b.Put(1, "k", "v");
  ASSERT_TRUE(engine_->Write(b).ok());
  Reopen();
  EXPECT_EQ(Get(1, "k"), "v");
  auto stats = engine_->Stats();
  EXPECT_FALSE(stats.empty());
}

TEST_P(EngineTest, MergeAppendsWithoutReading) {
  WriteBatch b;
  b.Merge(2, "k", "a");
  b.Merge(2, "k", "b");
  ASSERT_TRUE(engine_->Write(b).ok());
  WriteBatch c;
  c.Merge(2, "k", "c");
  ASSERT_TRUE(engine_->Write(c).ok());
  EXPECT_EQ(Get(2, "k"), "a+b+c");
  ASSERT_TRUE(engine_->Flush().ok());
  ASSERT_TRUE(engine_->CompactAll(2).ok());
  EXPECT_EQ(Get(2, "k"), "a+b+c");
  if (GetParam()) {
    Reopen();
    EXPECT_EQ(Get(2, "k"), "a+b+c");
  }
}

TEST_P(EngineTest, MergeOnKeyspaceWithoutMergeFnIsRejectedByMemoryEngine) {
  if (GetParam()) GTEST_SKIP() << "RocksDB reports this at read time";
  WriteBatch b;
  b.Put(0, "x", "1");
  b.Merge(0, "x", "2");
  EXPECT_FALSE(engine_->Write(b).ok());
  EXPECT_FALSE(Get(0, "x").has_value());  // nothing of the batch applied
}

// A full disk fails writes with RESOURCE_EXHAUSTED instead of aborting the process (RocksDB's
// messages go to the process log, not to a LOG file whose failed append would abort it), keeps
// every acknowledged write readable, and once there is space again a reopen finds them all.
TEST(RocksDbEngine, FullDiskFailsWritesAndLosesNothingAcknowledged) {
  const std::string base = TempDir();
  const std::string dir = base + "/small";
  std::unique_ptr<Engine> engine;
  {
    kosh::testing::SmallTmpfs tmpfs(dir, 4 << 20, [&] { engine.reset(); });
    if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error() << ")";
    RocksDbOptions o;
    o.path = dir + "/db";
    o.write_buffer_bytes = 1 << 20;
    auto opened = OpenRocksDb(o, Keyspaces());
    ASSERT_TRUE(opened.ok()) << opened.status();
    engine = std::move(*opened);

    std::mt19937_64 rng(7);
    auto value = [&] {  // 16 KiB that compress poorly
      std::string v(16 << 10, '\0');
      for (auto& c : v) c = static_cast<char>(rng());
      return v;
    };
    std::vector<std::string> acked;
    absl::Status failure;
    for (int i = 0; i < 2000 && failure.ok(); ++i) {
      std::string key = absl::StrFormat("k%05d", i);
      WriteBatch b;
      b.Put(1, key, value());
      failure = engine->Write(b);
      if (failure.ok()) acked.push_back(key);
    }
    ASSERT_FALSE(failure.ok()) << "4 MiB never filled up";
    EXPECT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure;
    EXPECT_FALSE(acked.empty());
    // Writes keep failing cleanly; reads keep working.
    WriteBatch again;
    again.Put(1, "again", "v");
    EXPECT_FALSE(engine->Write(again).ok());
    std::vector<absl::string_view> keys(acked.begin(), acked.end());
    std::vector<std::optional<std::string>> got;
    ASSERT_TRUE(engine->MultiGet(1, keys, &got).ok());
    for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(got[i].has_value()) << keys[i];
    EXPECT_FALSE(std::filesystem::exists(o.path + "/LOG"));

    // With room again, a reopened engine has every acknowledged write and takes new ones.
    engine.reset();
    ASSERT_TRUE(tmpfs.Resize(64 << 20)) << tmpfs.error();
    opened = OpenRocksDb(o, Keyspaces());
    ASSERT_TRUE(opened.ok()) << opened.status();
    engine = std::move(*opened);
    got.clear();
    ASSERT_TRUE(engine->MultiGet(1, keys, &got).ok());
    for (size_t i = 0; i < keys.size(); ++i) EXPECT_TRUE(got[i].has_value()) << keys[i];
    EXPECT_TRUE(engine->Write(again).ok());
  }
  std::filesystem::remove_all(base);
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "RocksDb" : "Memory"; });

}  // namespace
}  // namespace kosh::storage
