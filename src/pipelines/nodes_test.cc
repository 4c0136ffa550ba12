// The pure built-in nodes (merge, top_k, score, filter) run through the executor on fixed
// inputs; the store-backed ones (dataset_candidates, interaction_candidates, features) are
// covered end to end in tests/e2e_pipelines_test.cc.
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "pipelines/executor.h"
#include "pipelines/test_nodes.h"

namespace kosh::pipelines {
namespace {

class NodesTest : public ::testing::Test {
 protected:
  NodesTest() : nodes_(testing::TestNodeRegistry(&probe_)), executor_(options_) {}

  // Runs `nodes` (YAML list items after the fixed source a, and b when the nodes read it) with
  // output `out`.
  v1::RunPipelineResponse Run(const std::string& nodes, v1::RunPipelineRequest req = {}) {
    std::string yaml = R"(
pipeline_id: t
output: out
nodes:
  - name: a
    type: fixed
    params: {blocking: false, items: ["p1:0.9", "p2:0.5", "p3:0.2"], columns: {price: [10, 20, ~], ctr: [0.1, 0.3, 0.2]}}
)";
    if (absl::StrContains(nodes, "inputs: [a, b]") || absl::StrContains(nodes, "inputs: [b, a]")) {
      yaml += R"(  - name: b
    type: fixed
    params: {blocking: false, items: ["p2:1.0", "p4:0.8"], columns: {price: [21, 40], pop: [5, 7]}}
)";
    }
    yaml += nodes;
    return RunYaml(yaml, std::move(req));
  }

  v1::RunPipelineResponse RunYaml(const std::string& yaml, v1::RunPipelineRequest req = {}) {
    NodeEnv env;
    env.options = &options_;
    auto p = CompilePipeline(yaml, 1, *nodes_, env, nullptr);
    EXPECT_TRUE(p.ok()) << p.status();
    v1::RunPipelineResponse resp;
    if (!p.ok()) return resp;
    req.set_return_timings(true);
    absl::Status s = executor_.Run(*p, req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }

  static std::vector<std::pair<std::string, double>> Scored(const v1::RunPipelineResponse& r) {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& c : r.candidates()) out.emplace_back(c.item_id(), c.score());
    return out;
  }
  static int Col(const v1::RunPipelineResponse& r, const std::string& name) {
    for (int i = 0; i < r.columns_size(); ++i) {
      if (r.columns(i) == name) return i;
    }
    return -1;
  }
  static const v1::NodeResult* Result(const v1::RunPipelineResponse& r, const std::string& name) {
    for (const auto& n : r.nodes()) {
      if (n.name() == name) return &n;
    }
    return nullptr;
  }

  using Scores = std::vector<std::pair<std::string, double>>;
  testing::Probe probe_;
  PipelinesOptions options_;
  std::unique_ptr<NodeRegistry> nodes_;
  PipelineExecutor executor_;
};

TEST_F(NodesTest, MergeSumsWeightedScoresAndUnitesColumns) {
  auto r = Run("  - {name: out, type: merge, inputs: [a, b], params: {weights: {b: 0.5}}}\n");
  // Order of first appearance; p2 = 0.5 + 0.5 * 1.0.
  EXPECT_EQ(Scored(r), (Scores{{"p1", 0.9}, {"p2", 1.0}, {"p3", 0.2}, {"p4", 0.4}}));
  ASSERT_EQ(r.columns_size(), 3);
  EXPECT_EQ(r.columns(0), "price");
  EXPECT_EQ(r.columns(1), "ctr");
  EXPECT_EQ(r.columns(2), "pop");
  int price = Col(r, "price"), pop = Col(r, "pop");
  // p2's price comes from the first input that has one (a: 20); its pop from b.
  EXPECT_EQ(r.candidates(1).values(price).float64_value(), 20);
  EXPECT_EQ(r.candidates(1).values(pop).float64_value(), 5);
  // p3 has no price in a, and is not in b: unset.
  EXPECT_EQ(r.candidates(2).values(price).kind_case(), v1::Value::KIND_NOT_SET);
  EXPECT_EQ(r.candidates(3).values(price).float64_value(), 40);
}

TEST_F(NodesTest, MergeMaxAndFirst) {
  auto r = Run("  - {name: out, type: merge, inputs: [b, a], params: {mode: max, weights: {a: 2}}}\n");
  EXPECT_EQ(Scored(r), (Scores{{"p2", 1.0}, {"p4", 0.8}, {"p1", 1.8}, {"p3", 0.4}}));
  r = Run("  - {name: out, type: merge, inputs: [b, a], params: {mode: first, weights: {a: 2}}}\n");
  EXPECT_EQ(Scored(r), (Scores{{"p2", 1.0}, {"p4", 0.8}, {"p1", 1.8}, {"p3", 0.4}}));
  r = Run("  - {name: out, type: merge, inputs: [a, b], params: {mode: first}}\n");
  EXPECT_EQ(Scored(r), (Scores{{"p1", 0.9}, {"p2", 0.5}, {"p3", 0.2}, {"p4", 0.8}}));
}

TEST_F(NodesTest, TopKByScoreOrColumnWithStableTiesAndMissingLast) {
  auto r = Run(R"(  - {name: m, type: merge, inputs: [a, b]}
  - {name: out, type: top_k, inputs: [m], params: {k: 3}}
)");
  EXPECT_EQ(Scored(r), (Scores{{"p2", 1.5}, {"p1", 0.9}, {"p4", 0.8}}));
  r = Run(R"(  - {name: m, type: merge, inputs: [a, b]}
  - {name: out, type: top_k, inputs: [m], params: {k: 4, by: price, order: asc}}
)");
  // p3 has no price: last, whatever the order.
  EXPECT_EQ(Scored(r), (Scores{{"p1", 0.9}, {"p2", 1.5}, {"p4", 0.8}, {"p3", 0.2}}));
  r = Run(R"(  - {name: m, type: merge, inputs: [a, b]}
  - {name: out, type: top_k, inputs: [m], params: {k: 10, by: price}}
)");
  EXPECT_EQ(Scored(r), (Scores{{"p4", 0.8}, {"p2", 1.5}, {"p1", 0.9}, {"p3", 0.2}}));
  // Ties keep input order.
  r = RunYaml(R"(
pipeline_id: ties
output: out
nodes:
  - {name: t, type: fixed, params: {blocking: false, items: ["x:1", "y:2", "z:1", "w:1"]}}
  - {name: out, type: top_k, inputs: [t], params: {k: 3}}
)");
  EXPECT_EQ(Scored(r), (Scores{{"y", 2}, {"x", 1}, {"z", 1}}));
}

TEST_F(NodesTest, ScoreByColumnWeightsAndExpression) {
  auto r = Run(R"(  - {name: out, type: score, inputs: [a], params: {column: price, default: -1}}
)");
  EXPECT_EQ(Scored(r), (Scores{{"p1", 10}, {"p2", 20}, {"p3", -1}}));
  r = Run(R"(  - {name: out, type: score, inputs: [a], params: {weights: {score: 1, ctr: 10}, bias: 0.5}}
)");
  ASSERT_EQ(r.candidates_size(), 3);
  EXPECT_NEAR(r.candidates(0).score(), 0.5 + 0.9 + 1.0, 1e-9);
  EXPECT_NEAR(r.candidates(1).score(), 0.5 + 0.5 + 3.0, 1e-9);
  r = Run(R"(  - {name: out, type: score, inputs: [a], params: {expr: 'score * 2 + log1p(price)'}}
)");
  ASSERT_EQ(r.candidates_size(), 3);
  EXPECT_NEAR(r.candidates(0).score(), 1.8 + std::log1p(10.0), 1e-9);
  EXPECT_NEAR(r.candidates(2).score(), 0.4, 1e-9);  // a missing price reads 0
  // An unknown column fails the node, naming what the input has.
  r = Run(R"(  - {name: out, type: score, inputs: [a], params: {column: prise}}
)");
  const auto* res = Result(r, "out");
  ASSERT_NE(res, nullptr);
  EXPECT_EQ(res->status(), v1::NODE_FAILED);
  EXPECT_TRUE(absl::StrContains(res->error(), "unknown column \"prise\" (the input has: price, ctr; and score)"))
      << res->error();
}

TEST_F(NodesTest, FilterByExpressionDenyListsAndRequestLists) {
  auto r = Run(R"(  - {name: out, type: filter, inputs: [a], params: {expr: '(score > 0.3) * (ctr < 0.2)'}}
)");
  EXPECT_EQ(Scored(r), (Scores{{"p1", 0.9}}));
  v1::RunPipelineRequest req;
  (*req.mutable_lists())["deny"].add_items("p2");
  r = Run(R"(  - {name: m, type: merge, inputs: [a, b]}
  - {name: out, type: filter, inputs: [m], params: {exclude_list: deny, exclude_items: [p4]}}
)",
          req);
  EXPECT_EQ(Scored(r), (Scores{{"p1", 0.9}, {"p3", 0.2}}));
  // An absent request list excludes nothing.
  r = Run(R"(  - {name: m, type: merge, inputs: [a, b]}
  - {name: out, type: filter, inputs: [m], params: {exclude_list: deny}}
)");
  EXPECT_EQ(r.candidates_size(), 4);
}

}  // namespace
}  // namespace kosh::pipelines
