// The versioned registry over a ConfigStore: versions, identical configs, validate_only,
// reopen, reloads after another server's write (the store's watch), and the race for the next
// version number (ABORTED from the store).
#include "pipelines/pipeline_registry.h"

#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pipelines/test_nodes.h"

namespace kosh::pipelines {
namespace {

// A shared in-memory namespace that behaves like the ZooKeeper store: every client remembers the
// generation it last read (Scan) or wrote; a Write from a client whose generation is stale is
// ABORTED; a successful write notifies the other clients' watches.
struct SharedNamespace {
  absl::Mutex mu;
  std::map<std::string, std::string> data;
  uint64_t generation = 0;
  std::vector<std::pair<const void*, std::function<void()>>> watches;
};

class FakeStore final : public storage::ConfigStore {
 public:
  explicit FakeStore(std::shared_ptr<SharedNamespace> ns) : ns_(std::move(ns)) {}

  absl::Status Scan(absl::string_view prefix,
                    const std::function<bool(absl::string_view, absl::string_view)>& fn) override {
    std::map<std::string, std::string> copy;
    {
      absl::MutexLock l(&ns_->mu);
      copy = ns_->data;
      seen_ = ns_->generation;
    }
    for (const auto& [k, v] : copy) {
      if (!absl::StartsWith(k, prefix)) continue;
      if (!fn(k, v)) break;
    }
    return absl::OkStatus();
  }
  absl::Status Write(const std::vector<std::pair<std::string, std::string>>& puts) override {
    std::vector<std::function<void()>> notify;
    {
      absl::MutexLock l(&ns_->mu);
      if (before_write) {
        auto hook = std::move(before_write);
        before_write = nullptr;
        ns_->mu.Unlock();
        hook();
        ns_->mu.Lock();
      }
      if (ns_->generation != seen_) return absl::AbortedError("the namespace changed since it was read");
      for (const auto& [k, v] : puts) ns_->data[k] = v;
      seen_ = ++ns_->generation;
      for (const auto& [owner, fn] : ns_->watches) {
        if (owner != this) notify.push_back(fn);
      }
    }
    // A real store calls the watches on its own thread, with none of the writer's locks held.
    std::thread t([&] {
      for (auto& fn : notify) fn();
    });
    t.join();
    return absl::OkStatus();
  }
  void Watch(std::function<void()> on_change) override {
    absl::MutexLock l(&ns_->mu);
    ns_->watches.emplace_back(this, std::move(on_change));
  }
  void Unwatch() {
    absl::MutexLock l(&ns_->mu);
    std::erase_if(ns_->watches, [this](const auto& w) { return w.first == this; });
  }

  std::function<void()> before_write;  // runs once, inside the next Write, before its check

 private:
  std::shared_ptr<SharedNamespace> ns_;
  uint64_t seen_ = 0;
};

std::string Config(const std::string& id, int k) {
  return absl::StrCat("pipeline_id: ", id,
                      "\noutput: top\nnodes:\n  - {name: s, type: fixed, params: {items: [\"a:1\"]}}\n",
                      "  - {name: top, type: top_k, inputs: [s], params: {k: ", k, "}}\n");
}

class RegistryTest : public ::testing::Test {
 protected:
  RegistryTest() : nodes_(testing::TestNodeRegistry(&probe_)), ns_(std::make_shared<SharedNamespace>()) {
    env_.options = &options_;
  }
  ~RegistryTest() override {
    for (auto& s : stores_) s->Unwatch();
  }

  FakeStore* NewStore() {
    stores_.push_back(std::make_unique<FakeStore>(ns_));
    return stores_.back().get();
  }
  std::unique_ptr<PipelineRegistry> Open(FakeStore* store) {
    auto r = PipelineRegistry::Open(store, nodes_.get(), env_, &metrics_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }
  static v1::PutPipelineRequest Put(const std::string& config, bool validate_only = false) {
    v1::PutPipelineRequest req;
    req.set_config(config);
    req.set_validate_only(validate_only);
    return req;
  }

  testing::Probe probe_;
  PipelinesOptions options_;
  NodeEnv env_;
  base::MetricsRegistry metrics_;
  std::unique_ptr<NodeRegistry> nodes_;
  std::shared_ptr<SharedNamespace> ns_;
  std::vector<std::unique_ptr<FakeStore>> stores_;
};

TEST_F(RegistryTest, VersionsIdenticalConfigsValidateOnlyAndReopen) {
  FakeStore* store = NewStore();
  auto reg = Open(store);
  ASSERT_NE(reg, nullptr);
  auto r = reg->Put(Put(Config("feed", 1)));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version(), 1u);
  EXPECT_TRUE(r->created());
  EXPECT_EQ(r->plan().version(), 1u);
  r = reg->Put(Put(Config("feed", 1)));  // identical: nothing stored
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version(), 1u);
  EXPECT_FALSE(r->created());
  r = reg->Put(Put(Config("feed", 2), /*validate_only=*/true));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version(), 0u);
  EXPECT_EQ(reg->List()[0].latest_version(), 1u);
  r = reg->Put(Put(Config("feed", 2)));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version(), 2u);
  // Requests name the pipeline consistently.
  auto req = Put(Config("feed", 3));
  req.set_pipeline_id("other");
  EXPECT_TRUE(absl::StrContains(reg->Put(req).status().message(), "pipeline_id: \"other\" differs"))
      << reg->Put(req).status();
  // A rejected config changes nothing.
  EXPECT_EQ(reg->Put(Put("pipeline_id: feed\noutput: x\nnodes: []\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_EQ(reg->List().size(), 1u);
  EXPECT_EQ(reg->List()[0].num_versions(), 2u);
  auto f = reg->Find("feed", 0);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->version, 2u);
  f = reg->Find("feed", 1);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->version, 1u);
  EXPECT_EQ(reg->Find("feed", 3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->Find("nope", 0).status().code(), absl::StatusCode::kNotFound);
  auto g = reg->Get("feed", 1);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->config(), Config("feed", 1));
  // Reopen from the store: the same versions.
  reg.reset();
  reg = Open(store);
  ASSERT_NE(reg, nullptr);
  ASSERT_EQ(reg->List().size(), 1u);
  EXPECT_EQ(reg->List()[0].latest_version(), 2u);
  EXPECT_TRUE(reg->Find("feed", 1).ok());
}

TEST_F(RegistryTest, AnotherServersWriteIsReloadedThroughTheWatch) {
  auto a = Open(NewStore());
  auto b = Open(NewStore());
  ASSERT_TRUE(a->Put(Put(Config("feed", 1))).ok());
  // b's watch fired: it serves version 1 without a restart.
  auto f = b->Find("feed", 0);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version, 1u);
  ASSERT_TRUE(b->Put(Put(Config("feed", 2))).ok());
  f = a->Find("feed", 0);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->version, 2u);
  // Unchanged versions keep their compiled form across reloads.
  auto v1a = *a->Find("feed", 1);
  ASSERT_TRUE(b->Put(Put(Config("other", 1))).ok());
  EXPECT_EQ(*a->Find("feed", 1), v1a);
  ASSERT_TRUE(a->Find("other", 0).ok());
}

TEST_F(RegistryTest, RacingWritersGetConsecutiveVersions) {
  FakeStore* sa = NewStore();
  FakeStore* sb = NewStore();
  auto a = Open(sa);
  auto b = Open(sb);
  sa->Unwatch();  // a does not hear about b's write: it learns through ABORTED
  sb->Unwatch();
  // While a is writing version 1, b writes its own version 1 first.
  sa->before_write = [&] { ASSERT_TRUE(b->Put(Put(Config("feed", 7))).ok()); };
  auto r = a->Put(Put(Config("feed", 1)));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version(), 2u);  // re-read after ABORTED, took the next number
  auto g = a->Get("feed", 1);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->config(), Config("feed", 7));  // b's version is known to a now
  ASSERT_TRUE(b->Reload().ok());
  EXPECT_EQ(b->List()[0].latest_version(), 2u);
}

TEST_F(RegistryTest, CorruptRecordsAreReported) {
  FakeStore* store = NewStore();
  {
    absl::MutexLock l(&ns_->mu);
    ns_->data[PipelineKey("feed", 1)] = "not a record";
  }
  auto r = PipelineRegistry::Open(store, nodes_.get(), env_, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  {
    absl::MutexLock l(&ns_->mu);
    v1::PipelineRecord rec;
    rec.set_pipeline_id("feed");
    rec.set_version(2);
    rec.set_config(Config("feed", 1));
    ns_->data.clear();
    ns_->data[PipelineKey("feed", 2)] = rec.SerializeAsString();
  }
  r = PipelineRegistry::Open(store, nodes_.get(), env_, nullptr);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "missing version 1")) << r.status();
}

TEST_F(RegistryTest, StoredVersionThatNoLongerCompilesIsReportedNotFatal) {
  FakeStore* store = NewStore();
  {
    absl::MutexLock l(&ns_->mu);
    v1::PipelineRecord rec;
    rec.set_pipeline_id("feed");
    rec.set_version(1);
    rec.set_config("pipeline_id: feed\noutput: s\nnodes:\n  - {name: s, type: retired_type}\n");
    ns_->data[PipelineKey("feed", 1)] = rec.SerializeAsString();
  }
  auto reg = Open(store);
  ASSERT_NE(reg, nullptr);
  auto f = reg->Find("feed", 1);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(f.status().message(), "unknown node type \"retired_type\"")) << f.status();
  auto r = reg->Put(Put(Config("feed", 1)));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->version(), 2u);
  EXPECT_TRUE(reg->Find("feed", 0).ok());
}

}  // namespace
}  // namespace kosh::pipelines
