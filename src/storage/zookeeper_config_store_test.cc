// The ZooKeeper ConfigStore against a real ZooKeeper that the suite starts itself (tests/zookeeper.h).
// Each test works under its own root znode, so tests do not see each other's keys.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "storage/config_store.h"
#include "zookeeper.h"

namespace kosh::storage {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Entries = std::vector<std::pair<std::string, std::string>>;

e2e::ZooKeeperServer* zk = nullptr;

// Counts on_change calls.
struct Changes {
  absl::Mutex mu;
  int count ABSL_GUARDED_BY(mu) = 0;
  std::function<void()> Callback() {
    return [this] {
      absl::MutexLock l(&mu);
      ++count;
    };
  }
  int Get() {
    absl::MutexLock l(&mu);
    return count;
  }
  // Waits until count >= n; false after `timeout`.
  bool WaitFor(int n, milliseconds timeout = milliseconds(10000)) {
    absl::MutexLock l(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return count >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::FromChrono(timeout));
  }
};

bool WaitUntil(const std::function<bool()>& cond, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return cond();
}

class ZooKeeperConfigStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    zk = new e2e::ZooKeeperServer();
    auto started = zk->Start();
    ASSERT_TRUE(started) << started.message();
  }
  static void TearDownTestSuite() {
    delete zk;
    zk = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(zk, nullptr);
    if (!zk->running()) {
      auto started = zk->Start();
      ASSERT_TRUE(started) << started.message();
    }
  }

  ZooKeeperOptions Options() const {
    ZooKeeperOptions o;
    o.hosts = zk->hosts();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    o.root = absl::StrCat("/kosh_test/", info->name());
    o.session_timeout_ms = 4000;
    o.connect_timeout_ms = 5000;
    return o;
  }
  std::unique_ptr<ConfigStore> Open(const std::string& ns = "registry") {
    auto s = NewZooKeeperConfigStore(Options(), ns);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  static Entries ScanAll(ConfigStore* s, absl::string_view prefix = "") {
    Entries out;
    absl::Status st = s->Scan(prefix, [&](absl::string_view k, absl::string_view v) {
      out.emplace_back(std::string(k), std::string(v));
      return true;
    });
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }
};

TEST(ZnodeNames, EscapeRoundTripsEveryByteAndIsCanonical) {
  std::vector<std::string> keys = {"", "a", "entity/user", ".", "..", "%", "%%41", "zookeeper", "a b\tc",
                                   std::string("\0\x01\xff", 3), "UPPER_lower-09"};
  for (int c = 0; c < 256; ++c) keys.emplace_back(1, static_cast<char>(c));
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string k(rng() % 40, '\0');
    for (auto& ch : k) ch = static_cast<char>(rng());
    keys.push_back(k);
  }
  std::set<std::string> names;
  for (const auto& k : keys) {
    std::string name = EscapeZnodeName(k);
    ASSERT_FALSE(name.empty());
    EXPECT_NE(name, ".");
    EXPECT_NE(name, "..");
    for (char c : name) {
      EXPECT_TRUE(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '%') << name;
    }
    std::string back;
    ASSERT_TRUE(UnescapeZnodeName(name, &back)) << name;
    EXPECT_EQ(back, k);
    names.insert(name);
  }
  // Distinct keys, distinct names (the key list has duplicates only among the random ones, if any).
  std::set<std::string> distinct(keys.begin(), keys.end());
  EXPECT_EQ(names.size(), distinct.size());
  std::string out;
  for (const char* bad : {"", "%4", "%zz", "%2a", "%41", "a/b", "a.b", "a%", "é"}) {
    EXPECT_FALSE(UnescapeZnodeName(bad, &out)) << bad;
  }
}

TEST_F(ZooKeeperConfigStoreTest, ScanIsInKeyOrderAndFiltersByPrefix) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(ScanAll(s.get()).empty());
  Entries puts = {{"group/user/b", "2"}, {"entity/user", "u"}, {"group/user/a", "1"},
                  {std::string("bin\0\xff", 5), "x"}, {std::string("bin\0\x01", 5), "y"}, {"", "empty key"},
                  {"meta/next", ""}};
  ASSERT_TRUE(s->Write(puts).ok());
  Entries sorted = puts;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(ScanAll(s.get()), sorted);
  EXPECT_EQ(ScanAll(s.get(), "group/"), (Entries{{"group/user/a", "1"}, {"group/user/b", "2"}}));
  EXPECT_EQ(ScanAll(s.get(), std::string("bin\0", 4)),
            (Entries{{std::string("bin\0\x01", 5), "y"}, {std::string("bin\0\xff", 5), "x"}}));
  EXPECT_TRUE(ScanAll(s.get(), "nothing").empty());
  // fn returning false stops the scan.
  int calls = 0;
  ASSERT_TRUE(s->Scan("", [&](absl::string_view, absl::string_view) { return ++calls < 2; }).ok());
  EXPECT_EQ(calls, 2);
  // Another client sees the same.
  auto other = Open();
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(ScanAll(other.get()), sorted);
}

TEST_F(ZooKeeperConfigStoreTest, OverwritesLargeValuesAndLastPutOfAKeyWins) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ScanAll(s.get()).empty());
  std::string big(300000, 'v');  // larger than the first read buffer
  ASSERT_TRUE(s->Write({{"k", "old"}, {"big", big}}).ok());
  ASSERT_TRUE(s->Write({{"k", "first"}, {"k", "second"}}).ok());
  EXPECT_EQ(ScanAll(s.get()), (Entries{{"big", big}, {"k", "second"}}));
}

TEST_F(ZooKeeperConfigStoreTest, WriteIsAllOrNothing) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(ScanAll(s.get()).empty());
  // Too big for one znode: refused before anything is sent.
  absl::Status st = s->Write({{"a", "1"}, {"huge", std::string(2 << 20, 'x')}});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "huge")) << st;
  // A multi that ZooKeeper rejects: another client created "b" after this store's Scan, so both
  // the generation check and the create of "b" fail, and "a" must not appear either.
  auto other = Open();
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(ScanAll(other.get()).empty());
  ASSERT_TRUE(other->Write({{"b", "theirs"}}).ok());
  st = s->Write({{"a", "1"}, {"b", "mine"}});
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_EQ(ScanAll(s.get()), (Entries{{"b", "theirs"}}));
}

TEST_F(ZooKeeperConfigStoreTest, ConcurrentChangeIsAbortedUntilReadAgain) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ScanAll(a.get());
  ScanAll(b.get());
  ASSERT_TRUE(a->Write({{"x", "from a"}}).ok());
  // b read before a's write: a different key still conflicts (the generation moved).
  absl::Status st = b->Write({{"y", "from b"}});
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "changed by another server")) << st;
  EXPECT_EQ(ScanAll(a.get()), (Entries{{"x", "from a"}}));
  // Still refused without a new read; accepted after one.
  EXPECT_EQ(b->Write({{"y", "from b"}}).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(ScanAll(b.get()), (Entries{{"x", "from a"}}));
  ASSERT_TRUE(b->Write({{"y", "from b"}}).ok());
  // A store's own writes do not make its next write conflict.
  ASSERT_TRUE(b->Write({{"z", "again"}}).ok());
  EXPECT_EQ(ScanAll(a.get()).size(), 3u);
  // The same new key from both: exactly one wins.
  ScanAll(a.get());
  ScanAll(b.get());
  absl::Status sa = a->Write({{"new", "a"}});
  absl::Status sb = b->Write({{"new", "b"}});
  EXPECT_TRUE(sa.ok()) << sa;
  EXPECT_EQ(sb.code(), absl::StatusCode::kAborted) << sb;
}

TEST_F(ZooKeeperConfigStoreTest, ReadModifyWriteFromTwoClientsLosesNoUpdate) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kPerClient = 25;
  std::atomic<int> aborted{0};
  auto increment = [&](ConfigStore* s) {
    for (int i = 0; i < kPerClient; ++i) {
      for (int attempt = 0;; ++attempt) {
        ASSERT_LT(attempt, 1000);
        int value = 0;
        ASSERT_TRUE(s->Scan("counter", [&](absl::string_view, absl::string_view v) {
                       value = std::stoi(std::string(v));
                       return true;
                     }).ok());
        absl::Status st = s->Write({{"counter", std::to_string(value + 1)}});
        if (st.ok()) break;
        ASSERT_EQ(st.code(), absl::StatusCode::kAborted) << st;
        aborted.fetch_add(1);
      }
    }
  };
  std::thread ta(increment, a.get()), tb(increment, b.get());
  ta.join();
  tb.join();
  EXPECT_EQ(ScanAll(a.get()), (Entries{{"counter", std::to_string(2 * kPerClient)}}));
  std::printf("conflicts retried: %d\n", aborted.load());
}

TEST_F(ZooKeeperConfigStoreTest, WatchFiresForAnotherClientsWriteNotForOwn) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Changes seen_by_b, seen_by_a;
  b->Watch(seen_by_b.Callback());
  a->Watch(seen_by_a.Callback());
  ScanAll(a.get());
  ASSERT_TRUE(a->Write({{"k", "1"}}).ok());
  ASSERT_TRUE(seen_by_b.WaitFor(1)) << "b was not told of a's write";
  EXPECT_EQ(ScanAll(b.get()), (Entries{{"k", "1"}}));
  // Watches are re-armed: a second and a third change are seen too.
  ASSERT_TRUE(a->Write({{"k", "2"}}).ok());
  ASSERT_TRUE(seen_by_b.WaitFor(2));
  ScanAll(b.get());
  ASSERT_TRUE(b->Write({{"other", "x"}}).ok());
  ASSERT_TRUE(seen_by_a.WaitFor(1)) << "a was not told of b's write";
  // Nobody is told of their own writes.
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(seen_by_b.Get(), 2);
  EXPECT_EQ(seen_by_a.Get(), 1);
  // Namespaces are independent.
  auto flows = Open("flows");
  ASSERT_NE(flows, nullptr);
  ASSERT_TRUE(ScanAll(flows.get()).empty());
  ASSERT_TRUE(flows->Write({{"f", "1"}}).ok());
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(seen_by_b.Get(), 2);
  EXPECT_EQ(ScanAll(b.get()).size(), 2u);
}

TEST_F(ZooKeeperConfigStoreTest, SessionExpiryOpensANewSessionAndTellsTheReader) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Changes changes;
  b->Watch(changes.Callback());
  ScanAll(b.get());
  ASSERT_TRUE(ExpireZooKeeperSessionForTest(b.get()).ok());
  // One notification for the new session, so that readers reload whatever they missed.
  ASSERT_TRUE(changes.WaitFor(1)) << "no notification after the session was replaced";
  ASSERT_TRUE(WaitUntil([&] { return b->Connected(); }, milliseconds(10000)));
  // The new session's watches work.
  ScanAll(a.get());
  ASSERT_TRUE(a->Write({{"after", "1"}}).ok());
  ASSERT_TRUE(changes.WaitFor(2)) << "watch not re-armed on the new session";
  // Writes work again after a read.
  EXPECT_EQ(ScanAll(b.get()), (Entries{{"after", "1"}}));
  EXPECT_TRUE(b->Write({{"from_b", "1"}}).ok());
}

TEST_F(ZooKeeperConfigStoreTest, ServerRestartIsUnavailableThenRecovers) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(ScanAll(a.get()).empty());
  ASSERT_TRUE(a->Write({{"before", "1"}}).ok());
  Changes changes;
  b->Watch(changes.Callback());
  ScanAll(b.get());
  zk->Kill();
  ASSERT_TRUE(WaitUntil([&] { return !a->Connected(); }, milliseconds(10000)));
  absl::Status st = a->Write({{"during", "1"}});
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), zk->hosts())) << st;
  EXPECT_EQ(a->Scan("", [](absl::string_view, absl::string_view) { return true; }).code(),
            absl::StatusCode::kUnavailable);
  auto restarted = zk->Start();
  ASSERT_TRUE(restarted) << restarted.message();
  ASSERT_TRUE(WaitUntil([&] { return a->Connected() && b->Connected(); }, milliseconds(15000)));
  EXPECT_EQ(ScanAll(a.get()), (Entries{{"before", "1"}}));
  ASSERT_TRUE(a->Write({{"after", "1"}}).ok());
  ASSERT_TRUE(changes.WaitFor(1)) << "b's watch did not survive the restart";
  EXPECT_EQ(ScanAll(b.get()).size(), 2u);
}

TEST(ZooKeeperConfigStoreOpen, UnreachableIsUnavailableNamingTheHosts) {
  ZooKeeperOptions o;
  o.hosts = absl::StrCat("127.0.0.1:", e2e::FreeLoopbackPort());
  o.connect_timeout_ms = 500;
  auto start = Clock::now();
  auto s = NewZooKeeperConfigStore(o, "registry");
  auto took = Clock::now() - start;
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kUnavailable) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), o.hosts)) << s.status();
  EXPECT_LT(took, milliseconds(3000));
}

TEST(ZooKeeperConfigStoreOpen, BadOptionsAreInvalidArgument) {
  ZooKeeperOptions o;
  EXPECT_EQ(NewZooKeeperConfigStore(o, "a/b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewZooKeeperConfigStore(o, "").status().code(), absl::StatusCode::kInvalidArgument);
  o.root = "kosh";
  EXPECT_EQ(NewZooKeeperConfigStore(o, "registry").status().code(), absl::StatusCode::kInvalidArgument);
  o.root = "/kosh/";
  EXPECT_EQ(NewZooKeeperConfigStore(o, "registry").status().code(), absl::StatusCode::kInvalidArgument);
  o.root = "/kosh";
  o.hosts = "";
  EXPECT_EQ(NewZooKeeperConfigStore(o, "registry").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kosh::storage
