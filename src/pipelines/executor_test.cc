// Executor semantics with fake nodes (test_nodes.h): parallel branches overlap, retries with
// backoff, timeouts, conditional skips, the request deadline, required nodes, limits, dry runs
// and per-node metrics.
#include "pipelines/executor.h"

#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "pipelines/test_nodes.h"

namespace kosh::pipelines {
namespace {

using testing::Probe;

class ExecutorTest : public ::testing::Test {
 protected:
  ExecutorTest() : nodes_(testing::TestNodeRegistry(&probe_)) {
    options_.enable_test_hooks = true;
    options_.threads = 4;
    executor_ = std::make_unique<PipelineExecutor>(options_);
  }

  std::shared_ptr<const CompiledPipeline> Compile(const std::string& yaml) {
    NodeEnv env;
    env.options = &options_;
    auto p = CompilePipeline(yaml, 1, *nodes_, env, &metrics_);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : nullptr;
  }

  v1::RunPipelineResponse Run(const std::string& yaml, v1::RunPipelineRequest req = {}) {
    v1::RunPipelineResponse resp;
    auto p = Compile(yaml);
    if (p == nullptr) return resp;
    req.set_return_timings(true);
    absl::Status s = executor_->Run(p, req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }

  static const v1::NodeResult& Node(const v1::RunPipelineResponse& r, const std::string& name) {
    for (const auto& n : r.nodes()) {
      if (n.name() == name) return n;
    }
    ADD_FAILURE() << "no result for node " << name;
    return v1::NodeResult::default_instance();
  }
  static std::vector<std::string> Ids(const v1::RunPipelineResponse& r) {
    std::vector<std::string> out;
    for (const auto& c : r.candidates()) out.push_back(c.item_id());
    return out;
  }

  Probe probe_;
  PipelinesOptions options_;
  base::MetricsRegistry metrics_;
  std::unique_ptr<NodeRegistry> nodes_;
  std::unique_ptr<PipelineExecutor> executor_;
};

TEST_F(ExecutorTest, ParallelBranchesOverlap) {
  auto resp = Run(R"(
pipeline_id: par
deadline: 2s
output: top
nodes:
  - {name: a, type: fixed, params: {items: ["x:1"], delay: 150}, timeout: 1s}
  - {name: b, type: fixed, params: {items: ["y:2"], delay: 150}, timeout: 1s}
  - {name: c, type: fixed, params: {items: ["z:3"], delay: 150}, timeout: 1s}
  - {name: m, type: merge, inputs: [a, b, c]}
  - {name: top, type: top_k, inputs: [m], params: {k: 3}}
)");
  EXPECT_EQ(Ids(resp), (std::vector<std::string>{"z", "y", "x"}));
  EXPECT_FALSE(resp.partial());
  // Three 150 ms nodes on a 4-thread pool: well under the 450 ms of a sequential run.
  EXPECT_LT(resp.total_micros(), 400000);
  auto a = probe_.Of("a"), b = probe_.Of("b"), c = probe_.Of("c");
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_LT(b[0].start, a[0].end);
  EXPECT_LT(a[0].start, b[0].end);
  EXPECT_LT(c[0].start, a[0].end);
  EXPECT_EQ(Node(resp, "m").stage(), 1u);
  EXPECT_EQ(Node(resp, "top").candidates(), 3u);
}

TEST_F(ExecutorTest, RetriesWithExponentialBackoffThenSucceeds) {
  auto resp = Run(R"(
pipeline_id: retry
deadline: 2s
output: out
nodes:
  - {name: src, type: fixed, params: {items: ["x:1"], fail: 2}, retries: 3, backoff: 20ms}
  - {name: out, type: pass, inputs: [src]}
)");
  const auto& n = Node(resp, "src");
  EXPECT_EQ(n.status(), v1::NODE_OK);
  EXPECT_EQ(n.attempts(), 3u);
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"x"});
  EXPECT_FALSE(resp.partial());
  auto at = probe_.Of("src");
  ASSERT_EQ(at.size(), 3u);
  // Backoff 20 ms, then 40 ms.
  EXPECT_GE(at[1].start - at[0].end, absl::Milliseconds(19));
  EXPECT_GE(at[2].start - at[1].end, absl::Milliseconds(39));
  bool found = false;
  for (const auto& line : absl::StrSplit(metrics_.RenderPrometheus(), '\n')) {
    if (absl::StartsWith(line, "kosh_pipeline_node_retries_total{pipeline=\"retry\",node=\"src\"} 2")) found = true;
  }
  EXPECT_TRUE(found) << metrics_.RenderPrometheus();
}

TEST_F(ExecutorTest, PermanentErrorsAreNotRetried) {
  auto resp = Run(R"(
pipeline_id: perm
output: out
nodes:
  - {name: src, type: fixed, params: {fail: 5, code: invalid_argument}, retries: 3, backoff: 1ms}
  - {name: out, type: pass, inputs: [src]}
)");
  const auto& n = Node(resp, "src");
  EXPECT_EQ(n.status(), v1::NODE_FAILED);
  EXPECT_EQ(n.attempts(), 1u);
  EXPECT_TRUE(absl::StrContains(n.error(), "injected failure 1")) << n.error();
  EXPECT_TRUE(resp.partial());
  EXPECT_EQ(resp.failed_nodes_size(), 1);
  EXPECT_EQ(resp.candidates_size(), 0);
}

TEST_F(ExecutorTest, RetriesGiveUpAndTheFailureIsReported) {
  auto resp = Run(R"(
pipeline_id: giveup
deadline: 2s
output: m
nodes:
  - {name: bad, type: fixed, params: {items: ["x:1"], fail: 10}, retries: 2, backoff: 1ms}
  - {name: good, type: fixed, params: {items: ["y:1"]}}
  - {name: m, type: merge, inputs: [bad, good]}
)");
  const auto& n = Node(resp, "bad");
  EXPECT_EQ(n.status(), v1::NODE_FAILED);
  EXPECT_EQ(n.attempts(), 3u);
  EXPECT_TRUE(absl::StrContains(n.error(), "attempt 3: injected failure 3")) << n.error();
  // The failed branch is empty; the other still delivers.
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"y"});
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_nodes_size(), 1);
  EXPECT_EQ(resp.failed_nodes(0), "bad");
}

TEST_F(ExecutorTest, NodeTimeoutIsAbandonedAndReported) {
  auto resp = Run(R"(
pipeline_id: slow
deadline: 2s
output: m
nodes:
  - {name: slow, type: fixed, params: {items: ["x:1"], delay: 300}, timeout: 30ms}
  - {name: fast, type: fixed, params: {items: ["y:1"]}}
  - {name: m, type: merge, inputs: [slow, fast]}
)");
  const auto& n = Node(resp, "slow");
  EXPECT_EQ(n.status(), v1::NODE_TIMEOUT);
  EXPECT_TRUE(absl::StrContains(n.error(), "(the node timeout)")) << n.error();
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"y"});
  EXPECT_LT(resp.total_micros(), 200000);
  EXPECT_TRUE(resp.partial());
  bool found = false;
  std::string text = metrics_.RenderPrometheus();
  for (const auto& line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line,
                         "kosh_pipeline_node_results_total{pipeline=\"slow\",node=\"slow\",status=\"timeout\"} 1")) {
      found = true;
    }
  }
  EXPECT_TRUE(found) << text;
}

TEST_F(ExecutorTest, TimeoutsAreRetried) {
  auto resp = Run(R"(
pipeline_id: slowretry
deadline: 2s
output: out
nodes:
  - {name: src, type: fixed, params: {items: ["x:1"], delay: 100}, timeout: 20ms, retries: 1, backoff: 1ms}
  - {name: out, type: pass, inputs: [src]}
)");
  const auto& n = Node(resp, "src");
  EXPECT_EQ(n.status(), v1::NODE_TIMEOUT);
  EXPECT_EQ(n.attempts(), 2u);
}

TEST_F(ExecutorTest, ConditionalBranches) {
  const std::string yaml = R"(
pipeline_id: cond
output: m
nodes:
  - {name: base, type: fixed, params: {items: ["a:1"]}}
  - {name: newbie, type: fixed, params: {items: ["popular:5"]}, when: "context.segment == 'new_user'"}
  - {name: fallback, type: fixed, params: {items: ["f:0.1"]}, when: "count(base) < 1"}
  - {name: m, type: merge, inputs: [base, newbie, fallback]}
)";
  v1::RunPipelineRequest req;
  auto resp = Run(yaml, req);
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"a"});
  EXPECT_EQ(Node(resp, "newbie").status(), v1::NODE_SKIPPED);
  EXPECT_TRUE(absl::StrContains(Node(resp, "newbie").error(), "condition is false"));
  EXPECT_EQ(Node(resp, "fallback").status(), v1::NODE_SKIPPED);
  EXPECT_FALSE(resp.partial());  // a skip is not a failure
  EXPECT_TRUE(probe_.Of("newbie").empty());
  (*req.mutable_context())["segment"] = "new_user";
  resp = Run(yaml, req);
  EXPECT_EQ(Ids(resp), (std::vector<std::string>{"a", "popular"}));
  EXPECT_EQ(Node(resp, "newbie").status(), v1::NODE_OK);
  // The condition on a count waits for that node (a "condition" edge).
  auto p = Compile(yaml);
  bool edge = false;
  for (const auto& e : p->plan.edges()) edge |= e.from() == "base" && e.to() == "fallback" && e.kind() == "condition";
  EXPECT_TRUE(edge);
}

TEST_F(ExecutorTest, FallbackRunsWhenTheMainSourceFails) {
  auto resp = Run(R"(
pipeline_id: fb
output: m
nodes:
  - {name: main, type: fixed, params: {items: ["a:1"], fail: 1, code: invalid_argument}}
  - {name: fallback, type: fixed, params: {items: ["f:0.1"]}, when: "count(main) == 0"}
  - {name: m, type: merge, inputs: [main, fallback]}
)");
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"f"});
  EXPECT_EQ(Node(resp, "fallback").status(), v1::NODE_OK);
}

TEST_F(ExecutorTest, RequestDeadlineTimesOutRunningNodesAndSkipsTheRest) {
  v1::RunPipelineRequest req;
  req.set_deadline_ms(40);  // shortens the pipeline's 5 s
  auto resp = Run(R"(
pipeline_id: dl
deadline: 5s
output: out
nodes:
  - {name: slow, type: fixed, params: {items: ["x:1"], delay: 300}, timeout: 2s, retries: 3, backoff: 1ms}
  - {name: after, type: fixed, params: {items: ["y:1"]}, when: "count(slow) >= 0"}
  - {name: out, type: merge, inputs: [slow, after]}
)",
                  req);
  EXPECT_LT(resp.total_micros(), 200000);
  const auto& slow = Node(resp, "slow");
  EXPECT_EQ(slow.status(), v1::NODE_TIMEOUT);
  EXPECT_TRUE(absl::StrContains(slow.error(), "(the request deadline)")) << slow.error();
  EXPECT_EQ(slow.attempts(), 1u);  // no time left to retry
  EXPECT_EQ(Node(resp, "after").status(), v1::NODE_NOT_RUN);
  EXPECT_TRUE(resp.partial());
  EXPECT_EQ(resp.failed_nodes_size(), 3);  // slow, after and the output that came too late
}

TEST_F(ExecutorTest, RequiredNodeFailsTheRequest) {
  auto p = Compile(R"(
pipeline_id: req
output: out
nodes:
  - {name: src, type: fixed, params: {fail: 1, code: invalid_argument}, required: true}
  - {name: other, type: fixed, params: {items: ["a:1"], delay: 500}, timeout: 1s}
  - {name: out, type: merge, inputs: [src, other]}
)");
  ASSERT_NE(p, nullptr);
  v1::RunPipelineResponse resp;
  absl::Time t0 = absl::Now();
  absl::Status s = executor_->Run(p, v1::RunPipelineRequest(), &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "node \"src\" (required) failed: injected failure 1")) << s;
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(400));  // does not wait for the other branch
}

TEST_F(ExecutorTest, OversizeOutputFailsTheNode) {
  options_.max_candidates = 2;
  executor_ = std::make_unique<PipelineExecutor>(options_);
  auto resp = Run(R"(
pipeline_id: big
output: out
nodes:
  - {name: src, type: fixed, params: {items: ["a:1", "b:1", "c:1"]}}
  - {name: out, type: pass, inputs: [src]}
)");
  EXPECT_EQ(Node(resp, "src").status(), v1::NODE_FAILED);
  EXPECT_TRUE(absl::StrContains(Node(resp, "src").error(), "pipelines.max_candidates")) << Node(resp, "src").error();
}

TEST_F(ExecutorTest, RequestLimitsAndDryRun) {
  auto p = Compile(R"(
pipeline_id: plan
output: top
nodes:
  - {name: a, type: fixed, params: {items: ["x:1", "y:2", "z:3"]}, timeout: 10ms, retries: 2, backoff: 2ms}
  - {name: b, type: fixed, params: {items: ["w:1"]}, when: 'has(context.user_id)'}
  - {name: m, type: merge, inputs: [a, b], params: {weights: {b: 0.5}}}
  - {name: top, type: top_k, inputs: [m], params: {k: 2}}
)");
  ASSERT_NE(p, nullptr);
  v1::RunPipelineRequest req;
  req.set_dry_run(true);
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(executor_->Run(p, req, &resp).ok());
  EXPECT_EQ(resp.candidates_size(), 0);
  EXPECT_TRUE(probe_.Of("a").empty());  // nothing ran
  const auto& plan = resp.plan();
  ASSERT_EQ(plan.stages_size(), 3);
  EXPECT_EQ(plan.stages(0).nodes_size(), 2);
  EXPECT_EQ(plan.stages(0).nodes(0).name(), "a");
  EXPECT_EQ(plan.stages(0).nodes(0).retries(), 2u);
  EXPECT_EQ(plan.stages(0).nodes(0).backoff_ms(), 2);
  EXPECT_EQ(plan.stages(0).nodes(0).timeout_ms(), 10);
  EXPECT_TRUE(plan.stages(0).nodes(0).blocking());
  EXPECT_EQ(plan.stages(0).nodes(1).when(), "has(context.user_id)");
  EXPECT_EQ(plan.stages(1).nodes(0).name(), "m");
  EXPECT_FALSE(plan.stages(1).nodes(0).blocking());
  EXPECT_EQ(plan.stages(1).nodes(0).params(), "{weights: {b: 0.5}}");
  EXPECT_EQ(plan.edges_size(), 3);
  EXPECT_EQ(plan.output(), "top");
  // limit cuts the output; oversize lists are refused.
  req.set_dry_run(false);
  req.set_limit(1);
  resp.Clear();
  ASSERT_TRUE(executor_->Run(p, req, &resp).ok());
  ASSERT_EQ(resp.candidates_size(), 1);
  EXPECT_EQ(resp.candidates(0).item_id(), "z");
  options_.max_request_items = 2;
  executor_ = std::make_unique<PipelineExecutor>(options_);
  auto* list = &(*req.mutable_lists())["deny"];
  for (const char* i : {"a", "b", "c"}) list->add_items(i);
  EXPECT_EQ(executor_->Run(p, req, &resp).code(), absl::StatusCode::kResourceExhausted);
  req.set_deadline_ms(-1);
  EXPECT_EQ(executor_->Run(p, req, &resp).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ExecutorTest, ConcurrentRunsShareOneCompiledPipeline) {
  auto p = Compile(R"(
pipeline_id: conc
output: top
nodes:
  - {name: a, type: fixed, params: {items: ["x:1", "y:2"], delay: 2}}
  - {name: b, type: fixed, params: {items: ["y:1", "z:0.5"]}, timeout: 1s}
  - {name: m, type: merge, inputs: [a, b]}
  - {name: top, type: top_k, inputs: [m], params: {k: 2}}
)");
  ASSERT_NE(p, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        v1::RunPipelineResponse resp;
        absl::Status s = executor_->Run(p, v1::RunPipelineRequest(), &resp);
        if (!s.ok() || resp.candidates_size() != 2 || resp.candidates(0).item_id() != "y" ||
            resp.candidates(0).score() != 3.0) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace kosh::pipelines
