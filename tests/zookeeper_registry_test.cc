// Two "servers" in one process, each with its own feature registry and flow registry over its own
// ZooKeeper sessions, sharing one real ZooKeeper (tests/zookeeper.h): hot reload through the
// watches, and concurrent mutations from both sides with no lost update and no id handed out twice.
// The same through the real binary is e2e_zookeeper_test.cc.
#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "features/registry.h"
#include "features/schema_yaml.h"
#include "flows/flow_registry.h"
#include "gtest/gtest.h"
#include "storage/config_store.h"
#include "zookeeper.h"

namespace kosh {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr char kSchema[] = R"(
entities:
  - {name: user, key_columns: [user_id]}
  - {name: product, key_columns: [product_id]}
feature_groups:
  - entity: user
    name: user_profile
    features:
      - {name: age, type: int32, default: -1}
  - entity: product
    name: product_stats
    features:
      - {name: price, type: float32}
)";

constexpr char kFlow[] = R"(
model_id: MODEL
inputs:
  context: [user_id]
  target: product_id
components:
  - name: user
    kind: features
    entity: user
    keys: [user_id]
    features: [user_profile.age]
  - name: product
    kind: features
    entity: product
    keys: [product_id]
    features: [FEATURE]
  - name: score
    kind: model
    scorer: {type: linear, bias: BIAS, weights: {user.user_profile.age: 1}}
)";

std::string Flow(const std::string& model, const std::string& feature = "product_stats.price", int bias = 0) {
  return absl::StrReplaceAll(kFlow, {{"MODEL", model}, {"FEATURE", feature}, {"BIAS", absl::StrCat(bias)}});
}

e2e::ZooKeeperServer* zk = nullptr;

bool WaitUntil(const std::function<bool()>& cond, milliseconds timeout = milliseconds(10000)) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return cond();
}

// One server's registries.
struct Server {
  std::unique_ptr<storage::ConfigStore> registry_store, flows_store;
  std::unique_ptr<features::Registry> registry;
  std::unique_ptr<flows::FlowRegistry> flows;
};

class ZooKeeperRegistryTest : public ::testing::Test {
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

  std::unique_ptr<Server> NewServer() {
    storage::ZooKeeperOptions o;
    o.hosts = zk->hosts();
    o.root = absl::StrCat("/kosh_test/", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    o.session_timeout_ms = 4000;
    auto s = std::make_unique<Server>();
    auto rs = storage::NewZooKeeperConfigStore(o, "registry");
    auto fs = storage::NewZooKeeperConfigStore(o, "flows");
    EXPECT_TRUE(rs.ok() && fs.ok()) << rs.status() << fs.status();
    if (!rs.ok() || !fs.ok()) return nullptr;
    s->registry_store = std::move(*rs);
    s->flows_store = std::move(*fs);
    auto reg = features::Registry::Open(s->registry_store.get());
    EXPECT_TRUE(reg.ok()) << reg.status();
    if (!reg.ok()) return nullptr;
    s->registry = std::move(*reg);
    auto flows = flows::FlowRegistry::Open(s->flows_store.get(), s->registry.get(), {}, nullptr);
    EXPECT_TRUE(flows.ok()) << flows.status();
    if (!flows.ok()) return nullptr;
    s->flows = std::move(*flows);
    return s;
  }

  static absl::Status ApplySchema(features::Registry* r) {
    auto req = features::ParseSchemaYaml(YAML::Load(kSchema), "schema");
    if (!req.ok()) return req.status();
    return r->Apply(*req).status();
  }
  static absl::StatusOr<v1::PutFlowResponse> PutFlow(flows::FlowRegistry* f, const std::string& config) {
    v1::PutFlowRequest req;
    req.set_config(config);
    return f->Put(req);
  }
};

TEST_F(ZooKeeperRegistryTest, SchemaAndFlowReachTheOtherServerWithoutRestart) {
  auto a = NewServer();
  auto b = NewServer();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(ApplySchema(a->registry.get()).ok());
  ASSERT_TRUE(WaitUntil([&] { return b->registry->snapshot()->FindEntity("product") != nullptr; }))
      << "b never saw a's schema";
  EXPECT_EQ(b->registry->GetFeatureGroup("product", "product_stats")->id(),
            a->registry->GetFeatureGroup("product", "product_stats")->id());
  // A flow put on b runs on a.
  auto put = PutFlow(b->flows.get(), Flow("ranker"));
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_TRUE(WaitUntil([&] { return a->flows->Find("ranker", 0).ok(); })) << "a never saw b's flow";
  // A new feature and, right after it, a flow using it, both on a: b compiles the flow once it has
  // the feature, whichever of the two watches fires first.
  v1::AddFeatureGroupVersionRequest add;
  add.set_entity("product");
  add.set_group("product_stats");
  auto* f1 = add.add_features();
  f1->set_name("price");
  f1->set_type(v1::FLOAT32);
  auto* f2 = add.add_features();
  f2->set_name("rating");
  f2->set_type(v1::FLOAT32);
  ASSERT_TRUE(a->registry->AddVersion(add).ok());
  ASSERT_TRUE(PutFlow(a->flows.get(), Flow("rated", "product_stats.rating")).ok());
  ASSERT_TRUE(WaitUntil([&] { return b->flows->Find("rated", 0).ok(); }))
      << b->flows->Find("rated", 0).status();
  // And a new version of an existing flow replaces the one b serves.
  ASSERT_TRUE(PutFlow(a->flows.get(), Flow("ranker", "product_stats.price", 7)).ok());
  ASSERT_TRUE(WaitUntil([&] {
    auto f = b->flows->Find("ranker", 0);
    return f.ok() && (*f)->version == 2;
  }));
}

TEST_F(ZooKeeperRegistryTest, ConcurrentSchemaChangesFromTwoServersLoseNothing) {
  auto a = NewServer();
  auto b = NewServer();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(ApplySchema(a->registry.get()).ok());
  ASSERT_TRUE(WaitUntil([&] { return b->registry->snapshot()->FindEntity("user") != nullptr; }));
  constexpr int kGroups = 12;
  std::atomic<int> failures{0};
  auto create = [&](features::Registry* r, const std::string& prefix) {
    for (int i = 0; i < kGroups; ++i) {
      v1::CreateFeatureGroupRequest req;
      req.set_entity("user");
      req.set_name(absl::StrCat(prefix, i));
      auto* f = req.add_features();
      f->set_name("x");
      f->set_type(v1::INT64);
      auto g = r->CreateFeatureGroup(req);
      if (!g.ok()) {
        ADD_FAILURE() << g.status();
        failures.fetch_add(1);
      }
    }
  };
  // And each adds a version to the same group at the same time: both versions must be kept.
  auto add_version = [&](features::Registry* r, const std::string& feature) {
    v1::AddFeatureGroupVersionRequest req;
    req.set_entity("user");
    req.set_group("user_profile");
    auto* f = req.add_features();
    f->set_name(feature);
    f->set_type(v1::INT32);
    auto g = r->AddVersion(req);
    if (!g.ok()) {
      ADD_FAILURE() << g.status();
      failures.fetch_add(1);
    }
  };
  std::thread ta([&] {
    create(a->registry.get(), "a");
    add_version(a->registry.get(), "from_a");
  });
  std::thread tb([&] {
    create(b->registry.get(), "b");
    add_version(b->registry.get(), "from_b");
  });
  ta.join();
  tb.join();
  ASSERT_EQ(failures.load(), 0);
  for (Server* s : {a.get(), b.get()}) {
    ASSERT_TRUE(WaitUntil([&] {
      auto groups = s->registry->ListFeatureGroups("user");
      return groups.ok() && groups->size() == 2 * kGroups + 1 &&
             s->registry->GetFeatureGroup("user", "user_profile")->versions_size() == 3;
    })) << "a server is missing a concurrent change";
    std::set<uint32_t> ids;
    auto all = s->registry->ListFeatureGroups("");
    ASSERT_TRUE(all.ok()) << all.status();
    for (const auto& g : *all) {
      EXPECT_TRUE(ids.insert(g.id()).second) << "group id " << g.id() << " handed out twice";
    }
    auto profile = *s->registry->GetFeatureGroup("user", "user_profile");
    std::set<std::string> added = {profile.versions(1).features(0).name(), profile.versions(2).features(0).name()};
    EXPECT_EQ(added, (std::set<std::string>{"from_a", "from_b"}));
  }
}

TEST_F(ZooKeeperRegistryTest, ConcurrentFlowPutsFromTwoServersKeepEveryVersion) {
  auto a = NewServer();
  auto b = NewServer();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(ApplySchema(a->registry.get()).ok());
  ASSERT_TRUE(WaitUntil([&] { return b->registry->snapshot()->FindEntity("product") != nullptr; }));
  constexpr int kPuts = 8;
  auto put = [&](flows::FlowRegistry* f, int base) {
    for (int i = 0; i < kPuts; ++i) {
      auto r = PutFlow(f, Flow("m", "product_stats.price", base + i));
      EXPECT_TRUE(r.ok()) << r.status();
      if (r.ok()) {
        EXPECT_TRUE(r->created());
      }
    }
  };
  std::thread ta(put, a->flows.get(), 100), tb(put, b->flows.get(), 200);
  ta.join();
  tb.join();
  for (Server* s : {a.get(), b.get()}) {
    ASSERT_TRUE(WaitUntil([&] {
      auto list = s->flows->List();
      return list.size() == 1 && list[0].latest_version() == 2 * kPuts;
    }));
    std::set<std::string> configs;
    for (uint32_t v = 1; v <= 2 * kPuts; ++v) {
      auto rec = s->flows->Get("m", v);
      ASSERT_TRUE(rec.ok()) << rec.status();
      configs.insert(rec->config());
    }
    EXPECT_EQ(configs.size(), 2u * kPuts) << "a version was overwritten";
  }
}

}  // namespace
}  // namespace kosh
