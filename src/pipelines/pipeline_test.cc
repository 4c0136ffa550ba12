// Config validation: every rejected config names the node and field; options parsing.
#include "pipelines/pipeline.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "pipelines/test_nodes.h"

namespace kosh::pipelines {
namespace {

class CompileTest : public ::testing::Test {
 protected:
  CompileTest() : nodes_(testing::TestNodeRegistry(&probe_)) {}

  absl::StatusOr<std::shared_ptr<const CompiledPipeline>> Compile(const std::string& yaml) {
    NodeEnv env;
    env.options = &options_;
    return CompilePipeline(yaml, 1, *nodes_, env, nullptr);
  }
  void ExpectError(const std::string& yaml, const std::string& message,
                   absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    auto p = Compile(yaml);
    ASSERT_FALSE(p.ok()) << "accepted:\n" << yaml;
    EXPECT_EQ(p.status().code(), code) << p.status();
    EXPECT_TRUE(absl::StrContains(p.status().message(), message))
        << "want: " << message << "\ngot:  " << p.status().message();
  }

  testing::Probe probe_;
  PipelinesOptions options_;
  std::unique_ptr<NodeRegistry> nodes_;
};

constexpr const char* kGood = R"(
pipeline_id: home_feed
description: example
deadline: 50ms
output: rank
nodes:
  - name: recs
    type: fixed
    params: {items: ["a:1", "b:0.5"]}
    timeout: 10ms
    retries: 2
    backoff: 2ms
  - name: recent
    type: fixed
    params: {items: ["c:1"]}
    when: "context.segment != 'new_user'"
  - name: blend
    type: merge
    inputs: [recs, recent]
    params: {weights: {recs: 1.0, recent: 0.5}}
  - {name: keep, type: filter, inputs: [blend], params: {expr: "score > 0.1", exclude_list: deny}}
  - {name: rank, type: top_k, inputs: [keep], params: {k: 10, by: score}}
)";

TEST_F(CompileTest, GoodConfigCompilesWithStagesAndPlan) {
  auto p = Compile(kGood);
  ASSERT_TRUE(p.ok()) << p.status();
  const CompiledPipeline& c = **p;
  EXPECT_EQ(c.pipeline_id, "home_feed");
  EXPECT_EQ(c.deadline_ms, 50);
  ASSERT_EQ(c.stages.size(), 4u);
  EXPECT_EQ(c.stages[0], (std::vector<int>{0, 1}));
  EXPECT_EQ(c.nodes[c.output].name, "rank");
  EXPECT_EQ(c.nodes[0].retries, 2u);
  EXPECT_EQ(c.nodes[1].timeout_ms, options_.default_node_timeout_ms);
  EXPECT_TRUE(c.nodes[1].when.has_value());
  EXPECT_EQ(c.plan.stages(3).nodes(0).name(), "rank");
  // The same as JSON.
  auto j = Compile(R"({"pipeline_id": "j", "output": "t", "nodes": [
      {"name": "s", "type": "fixed", "params": {"items": ["a:1"]}},
      {"name": "t", "type": "top_k", "inputs": ["s"], "params": {"k": 1}}]})");
  ASSERT_TRUE(j.ok()) << j.status();
}

TEST_F(CompileTest, ErrorsNameTheNodeAndField) {
  auto edit = [](const std::string& from, const std::string& to) {
    std::string c = kGood;
    size_t at = c.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    c.replace(at, from.size(), to);
    return c;
  };
  ExpectError(edit("type: fixed\n    params: {items: [\"c:1\"]}", "type: fixd\n    params: {}"),
              "nodes[1] (recent).type: unknown node type \"fixd\" (known: append, dataset_candidates, features, "
              "filter, fixed,");
  ExpectError(edit("inputs: [recs, recent]", "inputs: [recs, recnt]"),
              "nodes[2] (blend).inputs[1]: unknown node \"recnt\"");
  ExpectError(edit("inputs: [recs, recent]", "inputs: [recs, recs]"),
              "nodes[2] (blend).inputs[1]: node \"recs\" is listed twice");
  ExpectError(edit("inputs: [blend], params: {expr", "inputs: [keep], params: {expr"),
              "nodes[3] (keep).inputs[0]: a node cannot read its own output");
  ExpectError(edit("{weights: {recs: 1.0, recent: 0.5}}", "{weights: {recs: 1.0, recnt: 0.5}}"),
              "nodes[2] (blend).params.weights.recnt: \"recnt\" is not an input of this node (inputs: recs, recent)");
  ExpectError(edit("params: {k: 10, by: score}", "params: {by: score}"), "nodes[4] (rank).params.k: required");
  ExpectError(edit("params: {k: 10, by: score}", "params: {k: 10, by: score, limit: 3}"),
              "nodes[4] (rank).params.limit: unknown option");
  ExpectError(edit("params: {k: 10, by: score}", "params: {k: 5000}"),
              "nodes[4] (rank).params.k: must be 1 to 1000 (pipelines.max_candidates)");
  ExpectError(edit("{expr: \"score > 0.1\", exclude_list: deny}", "{expr: \"score >\"}"),
              "nodes[3] (keep).params.expr:");
  ExpectError(edit("{expr: \"score > 0.1\", exclude_list: deny}", "{}"),
              "nodes[3] (keep).params: give at least one of");
  ExpectError(edit("when: \"context.segment != 'new_user'\"", "when: \"context.segment = 'x'\""),
              "nodes[1] (recent).when: at offset 16: unexpected character '='");
  ExpectError(edit("when: \"context.segment != 'new_user'\"", "when: \"count(nobody) > 1\""),
              "nodes[1] (recent).when: count(nobody): unknown node \"nobody\"");
  ExpectError(edit("output: rank", "output: rnk"), "output: unknown node \"rnk\"");
  ExpectError(edit("output: rank", ""), "output: required");
  ExpectError(edit("deadline: 50ms", "deadline: soon"), "deadline:");
  ExpectError(edit("timeout: 10ms", "timeout: 0ms"), "nodes[0] (recs).timeout: must be positive");
  ExpectError(edit("retries: 2", "retries: 9"), "nodes[0] (recs).retries: 9 exceeds pipelines.max_retries (5)");
  ExpectError(edit("    retries: 2\n", ""), "nodes[0] (recs).backoff: only meaningful with retries");
  ExpectError(edit("name: recent", "name: recs"), "nodes[1] (recs).name: node \"recs\" is defined twice");
  ExpectError(edit("name: recent", "name: 9recent"), "nodes[1].name: \"9recent\" is not a valid name");
  ExpectError(edit("pipeline_id: home_feed", "pipeline_id: home-feed"),
              "pipeline_id: \"home-feed\" is not a valid name");
  ExpectError(edit("description: example", "descripton: example"), "descripton: unknown option");
  ExpectError(edit("    backoff: 2ms\n", "    backoff: 2ms\n    test_delay: 5ms\n"),
              "nodes[0] (recs).test_delay: test hooks are disabled");
  ExpectError(edit("inputs: [recs, recent]\n", "inputs: []\n"),
              "nodes[2] (blend).inputs: a merge node takes at least 1 input(s), got 0");
  ExpectError(edit("inputs: [keep], params: {k", "inputs: [keep, blend], params: {k"),
              "nodes[4] (rank).inputs: a top_k node takes 1 input(s), got 2");
  ExpectError(edit("    params: {items: [\"a:1\", \"b:0.5\"]}\n", "    inputs: [rank]\n    params: {items: []}\n"),
              "nodes[0] (recs).inputs: a fixed node takes 0 input(s), got 1");
  ExpectError("pipeline_id: [", "config: line");
  ExpectError("- a\n- b\n", "config: expected a mapping");
  ExpectError("pipeline_id: x\nnodes: []\noutput: a\n", "nodes: required non-empty list");
}

TEST_F(CompileTest, CyclesUnusedNodesAndRetriesOnNonIdempotentTypes) {
  ExpectError(R"(
pipeline_id: cyc
output: c
nodes:
  - {name: a, type: pass, inputs: [c]}
  - {name: b, type: pass, inputs: [a]}
  - {name: c, type: merge, inputs: [b]}
)",
              "dependency cycle: ");
  auto p = Compile(R"(
pipeline_id: cyc
output: c
nodes:
  - {name: a, type: pass, inputs: [c]}
  - {name: b, type: pass, inputs: [a]}
  - {name: c, type: merge, inputs: [b]}
)");
  EXPECT_TRUE(absl::StrContains(p.status().message(), "a -> b -> c -> a") ||
              absl::StrContains(p.status().message(), "b -> c -> a -> b") ||
              absl::StrContains(p.status().message(), "c -> a -> b -> c"))
      << p.status();
  // A condition on a later node's count is a dependency too.
  ExpectError(R"(
pipeline_id: cyc2
output: b
nodes:
  - {name: a, type: fixed, when: "count(b) > 0"}
  - {name: b, type: pass, inputs: [a]}
)",
              "dependency cycle: ");
  ExpectError(R"(
pipeline_id: unused
output: b
nodes:
  - {name: a, type: fixed}
  - {name: b, type: pass, inputs: [a]}
  - {name: stray, type: fixed}
)",
              "nodes[2] (stray): not used by the output node \"b\" (no path to it)");
  ExpectError(R"(
pipeline_id: idem
output: b
nodes:
  - {name: a, type: fixed}
  - {name: b, type: append, inputs: [a], retries: 1}
)",
              "nodes[1] (b).retries: node type \"append\" is not idempotent and cannot be retried");
  ExpectError(R"(
pipeline_id: self
output: a
nodes:
  - {name: a, type: fixed, when: "count(a) > 0"}
)",
              "nodes[0] (a).when: count(a): a node cannot read its own count");
}

TEST_F(CompileTest, BuiltinParamsAreChecked) {
  auto one = [](const std::string& node) {
    return "pipeline_id: t\noutput: n\nnodes:\n  - {name: s, type: fixed}\n  - " + node + "\n";
  };
  ExpectError(one("{name: n, type: score, inputs: [s], params: {column: a, expr: \"b\"}}"),
              "nodes[1] (n).params: give exactly one of column, weights, expr");
  ExpectError(one("{name: n, type: score, inputs: [s], params: {weights: {}}}"),
              "nodes[1] (n).params.weights: name at least one column");
  ExpectError(one("{name: n, type: score, inputs: [s], params: {weights: {a: x}}}"),
              "nodes[1] (n).params.weights.a: expected a number");
  ExpectError(one("{name: n, type: score, inputs: [s], params: {column: a, bias: 1}}"),
              "nodes[1] (n).params.bias: only with weights");
  ExpectError(one("{name: n, type: merge, inputs: [s], params: {mode: avg}}"),
              "nodes[1] (n).params.mode: \"avg\" is not sum, max or first");
  ExpectError(one("{name: n, type: top_k, inputs: [s], params: {k: 3, order: up}}"),
              "nodes[1] (n).params.order: \"up\" is not asc or desc");
  ExpectError(one("{name: n, type: filter, inputs: [s], params: {exclude_items: [a, [b]]}}"),
              "nodes[1] (n).params.exclude_items[1]: expected a non-empty string");
  // Nodes that need a subsystem this (test) server does not run say so.
  ExpectError(one("{name: n, type: features, inputs: [s], params: {model_id: ranker}}"),
              "nodes[1] (n).type: a features node needs flows, which this server does not run",
              absl::StatusCode::kFailedPrecondition);
  ExpectError(one("{name: n, type: dataset_candidates, params: {}}"), "nodes[1] (n).params.dataset: required");
  ExpectError(one("{name: n, type: interaction_candidates, params: {types: [click], type_weights: {order: 2}}}"),
              "nodes[1] (n).params.type_weights.order: \"order\" is not one of params.types");
}

TEST_F(CompileTest, LimitsOnSize) {
  options_.max_config_bytes = 64;
  ExpectError(kGood, "bytes exceeds the limit of 64 (pipelines.max_config_bytes)",
              absl::StatusCode::kResourceExhausted);
  options_.max_config_bytes = 1 << 20;
  options_.max_nodes = 3;
  ExpectError(kGood, "nodes: 5 nodes exceeds the limit of 3", absl::StatusCode::kResourceExhausted);
}

TEST(PipelinesOptionsTest, ParsesAndRejectsUnknownKeys) {
  auto o =
      ParsePipelinesOptions(YAML::Load("{threads: 2, deadline: 30ms, node_timeout: 5ms, max_candidates: 50, "
                                       "enable_test_hooks: true, files: [a.yaml]}"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->threads, 2);
  EXPECT_EQ(o->default_deadline_ms, 30);
  EXPECT_EQ(o->default_node_timeout_ms, 5);
  EXPECT_EQ(o->max_candidates, 50u);
  EXPECT_TRUE(o->enable_test_hooks);
  EXPECT_EQ(o->files, std::vector<std::string>{"a.yaml"});
  auto d = ParsePipelinesOptions(YAML::Node());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->threads, 8);
  auto bad = ParsePipelinesOptions(YAML::Load("{thread: 2}"));
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "pipelines.thread: unknown option")) << bad.status();
  bad = ParsePipelinesOptions(YAML::Load("{threads: 0}"));
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "pipelines.threads: must be 1 to 256")) << bad.status();
  bad = ParsePipelinesOptions(YAML::Load("{max_candidates: 0}"));
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "pipelines.max_candidates: must be 1 to")) << bad.status();
}

}  // namespace
}  // namespace kosh::pipelines
