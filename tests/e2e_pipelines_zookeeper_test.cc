// Pipelines with the registry in ZooKeeper, through the real binary: two kosh servers share one
// real ZooKeeper (tests/zookeeper.h); a version put on either server is served by the other
// without a restart, and concurrent puts on both get consecutive versions with none lost.
#include <atomic>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "e2e_test_util.h"
#include "kosh/v1/pipelines.grpc.pb.h"
#include "zookeeper.h"

namespace kosh::e2e {
namespace {

using PS = v1::Pipelines::Stub;

// A pipeline that needs no data: the recent items of a user (who has none), cut to k.
std::string Config(int k) {
  return absl::StrCat("pipeline_id: shared\noutput: t\nnodes:\n  - {name: s, type: interaction_candidates}\n",
                      "  - {name: t, type: top_k, inputs: [s], params: {k: ", k, "}}\n");
}

class PipelinesZooKeeperE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = zk_.Start();
    ASSERT_TRUE(started) << started.message();
  }
  std::unique_ptr<KoshServer> StartServer() {
    KoshServer::Options o;
    o.config_yaml = absl::StrCat("registry:\n  backend: zookeeper\n  zookeeper:\n    hosts: \"", zk_.hosts(),
                                 "\"\n    root: /kosh_e2e_pipelines\n    session_timeout: 4s\n");
    auto s = std::make_unique<KoshServer>(o);
    auto started = s->Start(Millis(20000));
    EXPECT_TRUE(started) << started.message();
    return started ? std::move(s) : nullptr;
  }
  static grpc::Status Put(const KoshServer& s, const std::string& config, v1::PutPipelineResponse* resp) {
    auto stub = v1::Pipelines::NewStub(s.NewChannel());
    v1::PutPipelineRequest req;
    req.set_config(config);
    return Invoke(stub.get(), &PS::PutPipeline, req, resp);
  }
  // The latest version `s` serves (0 when it knows no such pipeline).
  static uint32_t Served(const KoshServer& s) {
    auto stub = v1::Pipelines::NewStub(s.NewChannel());
    v1::RunPipelineRequest req;
    req.set_pipeline_id("shared");
    (*req.mutable_context())["user_id"] = "u1";
    v1::RunPipelineResponse resp;
    return Invoke(stub.get(), &PS::RunPipeline, req, &resp, "", Millis(2000)).ok() ? resp.version() : 0;
  }
  static bool WaitFor(const std::function<bool()>& cond) {
    for (int i = 0; i < 500; ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(Millis(10));
    }
    return cond();
  }

  ZooKeeperServer zk_;
};

TEST_F(PipelinesZooKeeperE2E, VersionsReachTheOtherServerAndConcurrentPutsLoseNothing) {
  auto a = StartServer();
  auto b = StartServer();
  ASSERT_TRUE(a && b);
  v1::PutPipelineResponse put;
  ASSERT_TRUE(IsOk(Put(*a, Config(1), &put)));
  EXPECT_EQ(put.version(), 1u);
  EXPECT_TRUE(WaitFor([&] { return Served(*b) == 1; })) << "b serves version " << Served(*b);
  ASSERT_TRUE(IsOk(Put(*b, Config(2), &put)));
  EXPECT_EQ(put.version(), 2u);
  EXPECT_TRUE(WaitFor([&] { return Served(*a) == 2; })) << "a serves version " << Served(*a);
  // Both servers put five versions each at the same time: 12 versions, each config once.
  std::vector<std::thread> writers;
  std::atomic<int> failed{0};
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      const KoshServer& s = w == 0 ? *a : *b;
      for (int i = 0; i < 5; ++i) {
        v1::PutPipelineResponse r;
        if (!Put(s, Config(10 + w * 10 + i), &r).ok() || !r.created()) ++failed;
      }
    });
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_TRUE(WaitFor([&] { return Served(*a) == 12 && Served(*b) == 12; }))
      << "a: " << Served(*a) << ", b: " << Served(*b);
  auto stub = v1::Pipelines::NewStub(b->NewChannel());
  std::set<std::string> configs;
  for (uint32_t v = 1; v <= 12; ++v) {
    v1::GetPipelineRequest get;
    get.set_pipeline_id("shared");
    get.set_version(v);
    v1::PipelineRecord rec;
    ASSERT_TRUE(IsOk(Invoke(stub.get(), &PS::GetPipeline, get, &rec)));
    configs.insert(rec.config());
  }
  EXPECT_EQ(configs.size(), 12u);
}

}  // namespace
}  // namespace kosh::e2e
