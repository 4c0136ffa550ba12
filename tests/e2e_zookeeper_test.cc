// The registry in ZooKeeper, through the real binary: two kosh servers share one real ZooKeeper
// (started by the test, tests/zookeeper.h). A schema applied and a flow put on server A reach
// server B through the watches, without a restart; concurrent changes on both servers lose
// nothing; an outage of ZooKeeper leaves both serving and shows in /metrics; an unreachable
// ZooKeeper at start-up is a clear error and a non-zero exit.
#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "kosh/v1/flows.grpc.pb.h"
#include "zookeeper.h"

namespace kosh::e2e {
namespace {

using Clock = std::chrono::steady_clock;

bool WaitUntil(const std::function<bool()>& cond, Millis timeout = Millis(10000)) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(Millis(20));
  }
  return cond();
}

class ZooKeeperE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    zk_ = new ZooKeeperServer();
    auto started = zk_->Start();
    ASSERT_TRUE(started) << started.message();
  }
  static void TearDownTestSuite() {
    delete zk_;
    zk_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(zk_, nullptr);
    if (!zk_->running()) {
      auto started = zk_->Start();
      ASSERT_TRUE(started) << started.message();
    }
  }

  // A config with the registry in ZooKeeper under a root of this test's own.
  static std::string Config(const std::string& hosts, const std::string& connect_timeout = "5s") {
    return absl::StrCat("registry:\n  backend: zookeeper\n  zookeeper:\n    hosts: \"", hosts,
                        "\"\n    root: /kosh_e2e/",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                        "\n    session_timeout: 4s\n    connect_timeout: ", connect_timeout, "\n");
  }
  static std::unique_ptr<KoshServer> StartServer() {
    KoshServer::Options o;
    o.config_yaml = Config(zk_->hosts());
    auto s = std::make_unique<KoshServer>(o);
    auto started = s->Start(Millis(20000));
    EXPECT_TRUE(started) << started.message();
    return started ? std::move(s) : nullptr;
  }

  static ::testing::AssertionResult Cli(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {KoshBinary()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunCommand(argv);
    if (r.status.exited && r.status.code == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "kosh " << args[0] << ": " << r.status.ToString() << "\n" << r.err;
  }
  static ::testing::AssertionResult LoadExampleData(const KoshServer& s) {
    for (const char* f : {"users.json", "products.json", "affinity.json"}) {
      auto r = Cli({"put", "--server", s.grpc_target(), "--file", SourcePath(std::string("examples/data/") + f)});
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }

  static grpc::Status PutFlow(const KoshServer& s, const std::string& config, v1::PutFlowResponse* resp) {
    auto stub = v1::Flows::NewStub(s.NewChannel());
    v1::PutFlowRequest req;
    req.set_config(config);
    return Invoke(stub.get(), &v1::Flows::Stub::PutFlow, req, resp);
  }
  static grpc::Status Infer(const KoshServer& s, v1::InferResponse* resp) {
    auto stub = v1::Flows::NewStub(s.NewChannel());
    v1::InferRequest req;
    req.set_model_id("ranker");
    (*req.mutable_context())["user_id"] = "u1";
    req.add_targets("p1");
    req.add_targets("p2");
    return Invoke(stub.get(), &v1::Flows::Stub::Infer, req, resp, "", Millis(2000));
  }
  static bool HasEntity(const KoshServer& s, const std::string& name) {
    auto stub = s.Registry();
    v1::GetEntityRequest req;
    req.set_name(name);
    v1::Entity e;
    return Invoke(stub.get(), &v1::Registry::Stub::GetEntity, req, &e, "", Millis(2000)).ok();
  }
  static double Gauge(const KoshServer& s, const std::string& ns, bool* found) {
    auto m = s.Get("/metrics");
    return MetricValue(m.body, absl::StrCat("kosh_registry_zookeeper_connected{namespace=\"", ns, "\"}"), found);
  }

  static ZooKeeperServer* zk_;
};
ZooKeeperServer* ZooKeeperE2E::zk_ = nullptr;

TEST_F(ZooKeeperE2E, SchemaAndFlowOnOneServerReachTheOtherWithoutRestart) {
  auto a = StartServer();
  auto b = StartServer();
  ASSERT_TRUE(a && b);
  bool found = false;
  EXPECT_EQ(Gauge(*a, "registry", &found), 1.0);
  EXPECT_TRUE(found);
  EXPECT_EQ(Gauge(*b, "flows", &found), 1.0);
  EXPECT_TRUE(found);
  ASSERT_FALSE(HasEntity(*b, "user"));

  // Schema on A -> B.
  auto start = Clock::now();
  ASSERT_TRUE(Cli({"schema", "apply", SourcePath("examples/schema.yaml"), "--server", a->grpc_target()}));
  ASSERT_TRUE(WaitUntil([&] { return HasEntity(*b, "user"); })) << "B never saw A's schema; B's log:\n" << b->Log();
  std::printf("schema visible on B after %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<Millis>(Clock::now() - start).count()));
  // Rows are each server's own; the definitions are shared.
  ASSERT_TRUE(LoadExampleData(*b));

  // A flow on A -> B serves it.
  std::string ranker = ReadFile(SourcePath("examples/flows/ranker.yaml"));
  ASSERT_FALSE(ranker.empty());
  v1::PutFlowResponse put;
  auto st = PutFlow(*a, ranker, &put);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(put.version(), 1u);
  v1::InferResponse resp;
  ASSERT_TRUE(WaitUntil([&] { return Infer(*b, &resp).ok(); })) << "B never served A's flow; B's log:\n" << b->Log();
  EXPECT_EQ(resp.version(), 1u);
  EXPECT_EQ(resp.rows_size(), 2);

  // A new version on A replaces the one B serves.
  std::string top1 = absl::StrReplaceAll(ranker, {{"top_k: 10", "top_k: 1"}});
  ASSERT_NE(top1, ranker);
  st = PutFlow(*a, top1, &put);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(put.version(), 2u);
  ASSERT_TRUE(WaitUntil([&] { return Infer(*b, &resp).ok() && resp.version() == 2; }));
  EXPECT_EQ(resp.rows_size(), 1);
  // And B's own change reaches A the same way.
  ASSERT_TRUE(PutFlow(*b, ranker, &put).ok());
  EXPECT_EQ(put.version(), 3u);
  ASSERT_TRUE(LoadExampleData(*a));
  ASSERT_TRUE(WaitUntil([&] { return Infer(*a, &resp).ok() && resp.version() == 3; }));
  EXPECT_EQ(resp.rows_size(), 2);
}

TEST_F(ZooKeeperE2E, ConcurrentChangesOnBothServersLoseNothing) {
  auto a = StartServer();
  auto b = StartServer();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Cli({"schema", "apply", SourcePath("examples/schema.yaml"), "--server", a->grpc_target()}));
  ASSERT_TRUE(WaitUntil([&] { return HasEntity(*b, "user"); }));
  std::string ranker = ReadFile(SourcePath("examples/flows/ranker.yaml"));
  constexpr int kEach = 8;
  std::atomic<int> failures{0};
  // Each server: feature groups of its own names, and new versions of the same flow.
  auto work = [&](KoshServer* s, const std::string& prefix) {
    auto reg = s->Registry();
    for (int i = 0; i < kEach; ++i) {
      v1::CreateFeatureGroupRequest req;
      req.set_entity("user");
      req.set_name(absl::StrCat(prefix, i));
      auto* f = req.add_features();
      f->set_name("x");
      f->set_type(v1::INT64);
      v1::FeatureGroup g;
      auto st = Invoke(reg.get(), &v1::Registry::Stub::CreateFeatureGroup, req, &g);
      if (!st.ok()) {
        ADD_FAILURE() << prefix << i << ": " << st.error_message();
        failures.fetch_add(1);
      }
      v1::PutFlowResponse put;
      std::string cfg = absl::StrReplaceAll(ranker, {{"bias: -1.0", absl::StrCat("bias: -1.", prefix == "a" ? 1 : 2, i)}});
      st = PutFlow(*s, cfg, &put);
      if (!st.ok() || !put.created()) {
        ADD_FAILURE() << prefix << i << " flow: " << st.error_message();
        failures.fetch_add(1);
      }
    }
  };
  std::thread ta(work, a.get(), "a"), tb(work, b.get(), "b");
  ta.join();
  tb.join();
  ASSERT_EQ(failures.load(), 0);
  for (KoshServer* s : {a.get(), b.get()}) {
    auto reg = s->Registry();
    auto flows = v1::Flows::NewStub(s->NewChannel());
    v1::ListFeatureGroupsResponse groups;
    ASSERT_TRUE(WaitUntil([&] {
      groups.Clear();
      v1::ListFeatureGroupsRequest req;
      req.set_entity("user");
      v1::ListFlowsResponse list;
      return Invoke(reg.get(), &v1::Registry::Stub::ListFeatureGroups, req, &groups).ok() &&
             groups.groups_size() == 2 * kEach + 1 &&
             Invoke(flows.get(), &v1::Flows::Stub::ListFlows, v1::ListFlowsRequest(), &list).ok() &&
             list.flows_size() == 1 && list.flows(0).latest_version() == 2 * kEach;
    })) << "a change was lost; log:\n" << s->Log();
    std::set<uint32_t> ids;
    for (const auto& g : groups.groups()) EXPECT_TRUE(ids.insert(g.id()).second) << "id " << g.id() << " reused";
    std::set<std::string> configs;
    for (uint32_t v = 1; v <= 2 * kEach; ++v) {
      v1::GetFlowRequest req;
      req.set_model_id("ranker");
      req.set_version(v);
      v1::FlowRecord rec;
      ASSERT_TRUE(Invoke(flows.get(), &v1::Flows::Stub::GetFlow, req, &rec).ok());
      configs.insert(rec.config());
    }
    EXPECT_EQ(configs.size(), 2u * kEach) << "a flow version was overwritten";
  }
}

TEST_F(ZooKeeperE2E, OutageKeepsServingAndRecovers) {
  auto a = StartServer();
  auto b = StartServer();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(Cli({"schema", "apply", SourcePath("examples/schema.yaml"), "--server", a->grpc_target()}));
  ASSERT_TRUE(WaitUntil([&] { return HasEntity(*b, "user"); }));
  zk_->Kill();
  bool found = false;
  ASSERT_TRUE(WaitUntil([&] { return Gauge(*a, "registry", &found) == 0.0 && found; }))
      << "kosh_registry_zookeeper_connected did not drop";
  // Reads keep working from the definitions last read; /readyz stays 200 (serving).
  EXPECT_TRUE(HasEntity(*a, "user"));
  EXPECT_EQ(a->Get("/readyz").status, 200);
  // Definition changes cannot be stored: UNAVAILABLE, naming ZooKeeper.
  auto reg = a->Registry();
  v1::Entity e;
  e.set_name("shop");
  e.add_key_columns("shop_id");
  v1::Entity out;
  auto st = Invoke(reg.get(), &v1::Registry::Stub::CreateEntity, e, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_TRUE(absl::StrContains(st.error_message(), "ZooKeeper")) << st.error_message();
  // Back: the sessions resume, the change goes through and reaches B.
  auto restarted = zk_->Start();
  ASSERT_TRUE(restarted) << restarted.message();
  ASSERT_TRUE(WaitUntil([&] { return Gauge(*a, "registry", &found) == 1.0; }, Millis(15000)));
  st = Invoke(reg.get(), &v1::Registry::Stub::CreateEntity, e, &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(WaitUntil([&] { return HasEntity(*b, "shop"); }, Millis(15000)));
}

TEST_F(ZooKeeperE2E, UnreachableZooKeeperAtStartIsAClearErrorAndNonZeroExit) {
  TempDir dir("zk-unreachable");
  const std::string hosts = absl::StrCat("127.0.0.1:", FreeLoopbackPort());
  ASSERT_TRUE(WriteFile(dir.File("kosh.yaml"), Config(hosts, "1s")));
  auto start = Clock::now();
  auto r = RunCommand({KoshBinary(), "serve", "--config", dir.File("kosh.yaml"), "--grpc-address", "127.0.0.1:0",
                       "--http-address", "127.0.0.1:0", "--data-dir", dir.File("data")},
                      Millis(20000));
  auto took = Clock::now() - start;
  ASSERT_FALSE(r.status.timed_out) << "kosh serve kept running without ZooKeeper";
  EXPECT_TRUE(r.status.exited && r.status.code != 0) << r.status.ToString();
  const std::string output = r.out + r.err;
  EXPECT_TRUE(absl::StrContains(output, "cannot connect to ZooKeeper at " + hosts)) << output;
  EXPECT_LT(took, Millis(10000));
}

}  // namespace
}  // namespace kosh::e2e
