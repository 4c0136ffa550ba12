// Pipelines (the DAG executor) through the real binary: a recommendation-list dataset built and
// loaded with the CLI, interactions written over gRPC, product features and a flow with the
// built-in scorer; a pipeline candidates -> merge -> features -> score -> filter -> top_k run
// over gRPC and HTTP with exact expected order and scores; a conditional fallback branch; the
// dry-run plan; invalid configs rejected with precise errors; a node timeout; a missing context
// key (partial, or an error when the node is required); auth scopes; and a hot reload of new
// versions under load with no failed request.
#include <atomic>
#include <cmath>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "e2e_interactions_util.h"
#include "kosh/v1/datasets.grpc.pb.h"
#include "kosh/v1/flows.grpc.pb.h"
#include "kosh/v1/pipelines.grpc.pb.h"

namespace kosh::e2e {
namespace {

using PS = v1::Pipelines::Stub;

// Product features (examples/schema.yaml: price, ctr_7d, rating, category_id). The flow's model
// scores 10 * ctr_7d.
constexpr const char* kProducts = R"({"entity": "product", "group": "product_stats", "rows": [
  {"key": {"parts": ["p1"]}, "values": [{"float32_value": 10}, {"float32_value": 0.05}, {"float_list": {"values": [4, 10]}}, {"string_value": "c1"}]},
  {"key": {"parts": ["p2"]}, "values": [{"float32_value": 20}, {"float32_value": 0.02}, {"float_list": {"values": [4, 10]}}, {"string_value": "c1"}]},
  {"key": {"parts": ["p3"]}, "values": [{"float32_value": 30}, {"float32_value": 0.08}, {"float_list": {"values": [4, 10]}}, {"string_value": "c2"}]},
  {"key": {"parts": ["p4"]}, "values": [{"float32_value": 40}, {"float32_value": 0.01}, {"float_list": {"values": [4, 10]}}, {"string_value": "c2"}]},
  {"key": {"parts": ["p5"]}, "values": [{"float32_value": 50}, {"float32_value": 0.03}, {"float_list": {"values": [4, 10]}}, {"string_value": "c3"}]},
  {"key": {"parts": ["p6"]}, "values": [{"float32_value": 60}, {"float32_value": 0.04}, {"float_list": {"values": [4, 10]}}, {"string_value": "c3"}]}
]})";

// Recommendation lists: per user, and a fixed "__popular__" list for the fallback branch.
constexpr const char* kRecs = "u1,p1:0.9|p2:0.5|p3:0.3|p9:0.2\nu2,p4:0.7\n__popular__,p5:0.6|p1:0.1\n";

constexpr const char* kFlow = R"(
model_id: pl_ranker
deadline: 5s
inputs: {context: [user_id], target: product_id}
components:
  - {name: product, kind: features, entity: product, keys: [product_id], features: [product_stats.ctr_7d], timeout: 5s}
  - name: model
    kind: model
    timeout: 5s
    scorer: {type: linear, bias: 0, weights: {product.product_stats.ctr_7d: 10.0}}
)";

// Timeouts are generous: the machine running the tests is small and shared.
constexpr const char* kPipeline = R"(
pipeline_id: home
deadline: 5s
output: rank
nodes:
  - {name: recs, type: dataset_candidates, params: {dataset: recs, key: user_id, limit: 10}, timeout: 2s, retries: 1, backoff: 1ms}
  - {name: recent, type: interaction_candidates, params: {types: [click], events: 50}, timeout: 2s}
  - name: popular
    type: dataset_candidates
    params: {dataset: recs, key_value: __popular__}
    timeout: 2s
    when: "count(recs) < 2"
  - {name: blend, type: merge, inputs: [recs, recent, popular], params: {weights: {recs: 1.0, recent: 0.5, popular: 1.0}}}
  - {name: feats, type: features, inputs: [blend], params: {model_id: pl_ranker}, timeout: 4s}
  - {name: rescore, type: score, inputs: [feats], params: {weights: {score: 1.0, pl_ranker.model: 1.0}}}
  - name: fresh
    type: filter
    inputs: [rescore]
    params: {expr: "score > 0.5", exclude_list: deny, exclude_interacted: {types: [order]}}
    timeout: 2s
  - {name: rank, type: top_k, inputs: [fresh], params: {k: 3}}
)";

std::string ServerConfig() {
  return absl::StrCat(R"(interactions:
  event_types:
    - {name: click}
    - {name: order}
    - {name: add_to_cart}
flows:
  deadline: 5s
  component_timeout: 5s
pipelines:
  enable_test_hooks: true
  deadline: 5s
  node_timeout: 2s
)");
}

// Waits (bounded) until `dataset` has a current version: a load may finish in the background.
bool WaitForCurrent(const KoshServer& s, const std::string& dataset) {
  auto stub = v1::Datasets::NewStub(s.NewChannel());
  for (int i = 0; i < 1000; ++i) {
    v1::ListVersionsRequest req;
    req.set_dataset(dataset);
    v1::ListVersionsResponse resp;
    if (Invoke(stub.get(), &v1::Datasets::Stub::ListVersions, req, &resp).ok() && resp.datasets_size() == 1 &&
        resp.datasets(0).current_version() > 0) {
      return true;
    }
    std::this_thread::sleep_for(Millis(10));
  }
  return false;
}

class PipelinesE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("pipelines-e2e");
    KoshServer::Options opts;
    opts.schema_files = {SourcePath("examples/schema.yaml")};
    opts.config_yaml = ServerConfig();
    server_ = new KoshServer(opts);
    auto started = server_->Start();
    if (!started) {
      setup_error_ = started.message();
      return;
    }
    // The dataset: built with the CLI (no server), loaded with the CLI.
    WriteFile(dir_->File("recs.csv"), kRecs);
    auto built = RunCommand({KoshBinary(), "dataset", "build", "--dataset", "recs", "--kind", "recs", "--output",
                             dir_->File("recs"), dir_->File("recs.csv")},
                            Millis(60000));
    if (!(built.status.exited && built.status.code == 0)) {
      setup_error_ = "dataset build: " + built.err;
      return;
    }
    auto loaded = RunCommand(
        {KoshBinary(), "dataset", "load", "--server", server_->grpc_target(), "--dataset", "recs", dir_->File("recs")},
        Millis(60000));
    if (!(loaded.status.exited && loaded.status.code == 0)) {
      setup_error_ = "dataset load: " + loaded.err;
      return;
    }
    // The example dataset for examples/pipelines/home_feed.yaml.
    built = RunCommand({KoshBinary(), "dataset", "build", "--dataset", "user_recs", "--kind", "recs", "--output",
                        dir_->File("user_recs"), SourcePath("examples/datasets/user_recs.csv")},
                       Millis(60000));
    loaded = RunCommand({KoshBinary(), "dataset", "load", "--server", server_->grpc_target(), "--dataset", "user_recs",
                         dir_->File("user_recs")},
                        Millis(60000));
    if (!(built.status.exited && built.status.code == 0 && loaded.status.exited && loaded.status.code == 0)) {
      setup_error_ = "user_recs: " + built.err + loaded.err;
      return;
    }
    for (const char* ds : {"recs", "user_recs"}) {
      if (!WaitForCurrent(*server_, ds)) {
        setup_error_ = absl::StrCat("dataset ", ds, " never became current");
        return;
      }
    }
    WriteFile(dir_->File("products.json"), kProducts);
    auto put =
        RunCommand({KoshBinary(), "put", "--server", server_->grpc_target(), "--file", dir_->File("products.json")});
    if (!(put.status.exited && put.status.code == 0)) {
      setup_error_ = "put products: " + put.err;
      return;
    }
    // Interactions: u1 clicked p3 twice and p6 once, and ordered p2 (which the filter drops).
    auto is = v1::Interactions::NewStub(server_->NewChannel());
    const int64_t now = NowMs();
    v1::WriteResponse wr;
    grpc::Status st =
        Invoke(is.get(), &IS::Write,
               MakeWrite({Event("u1", "click", "p3", now - 5000), Event("u1", "click", "p6", now - 4000),
                          Event("u1", "click", "p3", now - 3000), Event("u1", "order", "p2", now - 2000)}),
               &wr);
    if (!st.ok()) {
      setup_error_ = "write interactions: " + st.error_message();
      return;
    }
    auto flows = v1::Flows::NewStub(server_->NewChannel());
    v1::PutFlowRequest pf;
    v1::PutFlowResponse pfr;
    for (const std::string& config : {std::string(kFlow), ReadFile(SourcePath("examples/flows/ranker.yaml"))}) {
      pf.set_config(config);
      st = Invoke(flows.get(), &v1::Flows::Stub::PutFlow, pf, &pfr);
      if (!st.ok()) {
        setup_error_ = "put flow: " + st.error_message();
        return;
      }
    }
    auto ps = v1::Pipelines::NewStub(server_->NewChannel());
    v1::PutPipelineRequest pp;
    pp.set_config(kPipeline);
    v1::PutPipelineResponse ppr;
    st = Invoke(ps.get(), &PS::PutPipeline, pp, &ppr);
    if (!st.ok()) setup_error_ = "put pipeline: " + st.error_message();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(setup_error_.empty()) << setup_error_ << "\n" << (server_ ? server_->Log() : "");
    stub_ = v1::Pipelines::NewStub(server_->NewChannel());
  }

  static v1::RunPipelineRequest Request(const std::string& user, const std::string& pipeline = "home") {
    v1::RunPipelineRequest req;
    req.set_pipeline_id(pipeline);
    if (!user.empty()) (*req.mutable_context())["user_id"] = user;
    return req;
  }
  static std::vector<std::string> Ids(const v1::RunPipelineResponse& r) {
    std::vector<std::string> out;
    for (const auto& c : r.candidates()) out.push_back(c.item_id());
    return out;
  }
  static const v1::NodeResult* Node(const v1::RunPipelineResponse& r, const std::string& name) {
    for (const auto& n : r.nodes()) {
      if (n.name() == name) return &n;
    }
    return nullptr;
  }
  static int Col(const v1::RunPipelineResponse& r, const std::string& name) {
    for (int i = 0; i < r.columns_size(); ++i) {
      if (r.columns(i) == name) return i;
    }
    return -1;
  }
  grpc::Status Put(const std::string& config, v1::PutPipelineResponse* resp) {
    v1::PutPipelineRequest req;
    req.set_config(config);
    return Invoke(stub_.get(), &PS::PutPipeline, req, resp);
  }
  static std::string Edit(std::string c, const std::string& from, const std::string& to) {
    size_t at = c.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) c.replace(at, from.size(), to);
    return c;
  }

  static TempDir* dir_;
  static KoshServer* server_;
  static std::string setup_error_;
  std::unique_ptr<PS> stub_;
};
TempDir* PipelinesE2E::dir_ = nullptr;
KoshServer* PipelinesE2E::server_ = nullptr;
std::string PipelinesE2E::setup_error_;

// u1: recs p1 .9, p2 .5, p3 .3, p9 .2 (4: the popular fallback is skipped); recent clicks p3 x2,
// p6 x1; blend p1 .9, p2 .5, p3 .3 + .5 * 2 = 1.3, p9 .2, p6 .5; the flow's model is 10 * ctr:
// p1 .5, p2 .2, p3 .8, p9 0 (no features), p6 .4; rescore = blend + model: p1 1.4, p2 .7, p3 2.1,
// p9 .2, p6 .9; the filter drops p2 (ordered) and p9 (score <= .5); top 3: p3, p1, p6.
TEST_F(PipelinesE2E, CandidatesToTopKOverGrpcAndHttp) {
  auto req = Request("u1");
  req.set_return_timings(true);
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, req, &resp)));
  EXPECT_EQ(resp.pipeline_id(), "home");
  EXPECT_EQ(resp.version(), 1u);
  EXPECT_FALSE(resp.partial()) << resp.DebugString();
  ASSERT_EQ(Ids(resp), (std::vector<std::string>{"p3", "p1", "p6"})) << resp.DebugString();
  EXPECT_NEAR(resp.candidates(0).score(), 0.3 + 1.0 + 0.8, 1e-5);
  EXPECT_NEAR(resp.candidates(1).score(), 0.9 + 0.5, 1e-5);
  EXPECT_NEAR(resp.candidates(2).score(), 0.5 + 0.4, 1e-5);
  // The flow's columns are attached under its model id.
  int ctr = Col(resp, "pl_ranker.product.product_stats.ctr_7d"), model = Col(resp, "pl_ranker.model");
  ASSERT_GE(ctr, 0) << resp.DebugString();
  ASSERT_GE(model, 0);
  EXPECT_NEAR(resp.candidates(0).values(ctr).float32_value(), 0.08, 1e-6);
  EXPECT_NEAR(resp.candidates(0).values(model).float32_value(), 0.8, 1e-5);
  // Every node is reported (return_timings); the fallback was skipped by its condition.
  EXPECT_EQ(resp.nodes_size(), 8);
  for (const char* n : {"recs", "recent", "blend", "feats", "rescore", "fresh", "rank"}) {
    ASSERT_NE(Node(resp, n), nullptr) << n;
    EXPECT_EQ(Node(resp, n)->status(), v1::NODE_OK) << n << ": " << Node(resp, n)->error();
  }
  EXPECT_EQ(Node(resp, "popular")->status(), v1::NODE_SKIPPED);
  EXPECT_EQ(Node(resp, "recs")->candidates(), 4u);
  EXPECT_EQ(Node(resp, "blend")->candidates(), 5u);
  EXPECT_EQ(Node(resp, "fresh")->candidates(), 3u);
  EXPECT_EQ(Node(resp, "feats")->stage(), 3u);

  // The same over HTTP/JSON.
  v1::RunPipelineResponse http;
  ASSERT_TRUE(HttpRpc(*server_, "/v1/pipelines/run", Request("u1"), &http));
  EXPECT_EQ(Ids(http), Ids(resp));
  ASSERT_EQ(http.candidates_size(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(http.candidates(i).score(), resp.candidates(i).score(), 1e-12);
  EXPECT_EQ(http.nodes_size(), 1);  // without return_timings: only the non-OK (skipped) node
  // A request deny-list, and limit.
  req = Request("u1");
  (*req.mutable_lists())["deny"].add_items("p3");
  req.set_limit(1);
  resp.Clear();
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, req, &resp)));
  EXPECT_EQ(Ids(resp), std::vector<std::string>{"p1"});

  // Per-node timings and outcomes are always in /metrics.
  std::string m = server_->Get("/metrics").body;
  EXPECT_TRUE(absl::StrContains(m, "kosh_pipeline_node_seconds_count{pipeline=\"home\",node=\"feats\"}"))
      << m.substr(0, 3000);
  bool found = false;
  EXPECT_GE(
      MetricValue(m, "kosh_pipeline_node_results_total{pipeline=\"home\",node=\"popular\",status=\"skipped\"}", &found),
      3);
  EXPECT_TRUE(found);
  found = false;
  EXPECT_GE(MetricValue(m, "kosh_requests_total{protocol=\"http\",method=\"RunPipeline\",code=\"OK\"}", &found), 1);
  EXPECT_TRUE(found);
}

// u2: recs p4 .7 (1 < 2: the popular fallback runs: p5 .6, p1 .1); no clicks; model p4 .1, p5 .3,
// p1 .5: p4 .8, p5 .9, p1 .6.
TEST_F(PipelinesE2E, ConditionalFallbackBranch) {
  auto req = Request("u2");
  req.set_return_timings(true);
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, req, &resp)));
  ASSERT_EQ(Ids(resp), (std::vector<std::string>{"p5", "p4", "p1"})) << resp.DebugString();
  EXPECT_NEAR(resp.candidates(0).score(), 0.9, 1e-5);
  EXPECT_NEAR(resp.candidates(1).score(), 0.8, 1e-5);
  EXPECT_NEAR(resp.candidates(2).score(), 0.6, 1e-5);
  EXPECT_EQ(Node(resp, "popular")->status(), v1::NODE_OK);
  EXPECT_EQ(Node(resp, "recent")->candidates(), 0u);
  EXPECT_FALSE(resp.partial());
  // A user with no list and no history: only the fallback.
  resp.Clear();
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, Request("stranger"), &resp)));
  EXPECT_EQ(Ids(resp), (std::vector<std::string>{"p5", "p1"}));
}

TEST_F(PipelinesE2E, DryRunReturnsThePlan) {
  auto r = server_->Post("/v1/pipelines/run", R"({"pipeline_id": "home", "dry_run": true})");
  ASSERT_EQ(r.status, 200) << r.body;
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(ParseJson(r.body, &resp));
  EXPECT_EQ(resp.candidates_size(), 0);
  const auto& plan = resp.plan();
  EXPECT_EQ(plan.pipeline_id(), "home");
  EXPECT_EQ(plan.version(), 1u);
  EXPECT_EQ(plan.output(), "rank");
  EXPECT_EQ(plan.deadline_ms(), 5000);
  ASSERT_EQ(plan.stages_size(), 7);
  ASSERT_EQ(plan.stages(0).nodes_size(), 2);  // recs, recent
  EXPECT_EQ(plan.stages(0).nodes(0).name(), "recs");
  EXPECT_EQ(plan.stages(0).nodes(0).retries(), 1u);
  EXPECT_TRUE(plan.stages(0).nodes(0).blocking());
  EXPECT_EQ(plan.stages(1).nodes(0).name(), "popular");
  EXPECT_EQ(plan.stages(1).nodes(0).when(), "count(recs) < 2");
  EXPECT_EQ(plan.stages(1).nodes(0).condition_on(0), "recs");
  EXPECT_EQ(plan.stages(2).nodes(0).name(), "blend");
  EXPECT_FALSE(plan.stages(2).nodes(0).blocking());
  EXPECT_EQ(plan.stages(6).nodes(0).name(), "rank");
  EXPECT_EQ(plan.edges_size(), 8);  // 7 data edges + 1 condition edge
  // The same plan comes back from PutPipeline(validate_only) and GetPipeline has the config.
  v1::GetPipelineRequest get;
  get.set_pipeline_id("home");
  v1::PipelineRecord rec;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::GetPipeline, get, &rec)));
  EXPECT_EQ(rec.config(), kPipeline);
  auto g = server_->Get("/v1/pipelines/list");
  ASSERT_EQ(g.status, 200) << g.body;
  EXPECT_TRUE(absl::StrContains(g.body, "\"pipeline_id\":\"home\"")) << g.body;
}

TEST_F(PipelinesE2E, InvalidConfigsAreRejectedAndChangeNothing) {
  v1::ListPipelinesResponse before;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::ListPipelines, v1::ListPipelinesRequest(), &before)));
  std::string base = Edit(kPipeline, "pipeline_id: home", "pipeline_id: bad");
  struct Case {
    std::string config, message;
  };
  std::vector<Case> cases = {
      {Edit(base, "type: merge", "type: blend"),
       "nodes[3] (blend).type: unknown node type \"blend\" (known: dataset_candidates,"},
      {Edit(base, "inputs: [recs, recent, popular]", "inputs: [recs, recnt, popular]"),
       "nodes[3] (blend).inputs[1]: unknown node \"recnt\""},
      {Edit(base, "inputs: [blend], params: {model_id", "inputs: [rescore], params: {model_id"), "dependency cycle: "},
      {Edit(base, "params: {k: 3}", "params: {}"), "nodes[7] (rank).params.k: required"},
      {Edit(base, "dataset: recs, key: user_id", "dataset: recz, key: user_id"),
       "nodes[0] (recs).params.dataset: unknown dataset \"recz\""},
      {Edit(base, "model_id: pl_ranker", "model_id: nobody"),
       "nodes[4] (feats).params.model_id: model_id: no flow \"nobody\""},
      {Edit(base, "types: [click]", "types: [clik]"), "nodes[1] (recent).params.types[0]: unknown event type \"clik\""},
      {Edit(base, "when: \"count(recs) < 2\"", "when: \"count(recs) <\""), "nodes[2] (popular).when: at offset"},
      {Edit(base, "output: rank", "output: ranked"), "output: unknown node \"ranked\""},
      {"pipeline_id: [", "config: line"},
  };
  for (const auto& c : cases) {
    v1::PutPipelineResponse resp;
    auto st = Put(c.config, &resp);
    EXPECT_TRUE(IsError(st, grpc::StatusCode::INVALID_ARGUMENT, c.message));
  }
  // The same over HTTP.
  v1::PutPipelineRequest req;
  req.set_config(cases[1].config);
  EXPECT_TRUE(
      IsHttpError(server_->Post("/v1/pipelines/put", ToJson(req)), 400, "INVALID_ARGUMENT", "unknown node \"recnt\""));
  v1::ListPipelinesResponse after;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::ListPipelines, v1::ListPipelinesRequest(), &after)));
  EXPECT_TRUE(ProtoEqual(before, after));
  // Bad run requests name the field.
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/pipelines/run", R"({"pipeline_id": "nope"})"), 404, "NOT_FOUND",
                          "no pipeline \"nope\""));
  EXPECT_TRUE(
      IsHttpError(server_->Post("/v1/pipelines/run", R"({})"), 400, "INVALID_ARGUMENT", "pipeline_id: required"));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/pipelines/run", R"({"pipeline_id": "home", "version": 9})"), 404,
                          "NOT_FOUND", "has versions 1 to"));
}

TEST_F(PipelinesE2E, BadInputIsRejectedWithoutCrashing) {
  // Malformed bodies, wrong types, unknown fields.
  for (const char* body : {"not json", R"({"pipeline_id": 5})", R"({"pipeline_id": "home", "nope": 1})",
                           R"({"pipeline_id": "home", "lists": {"deny": ["p1"]}})",
                           R"({"pipeline_id": "home", "context": {"user_id": 7}})"}) {
    auto r = server_->Post("/v1/pipelines/run", body);
    EXPECT_EQ(r.status, 400) << body << " -> " << r.body;
    EXPECT_EQ(ParseErrorBody(r.body).code, "INVALID_ARGUMENT") << r.body;
  }
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/pipelines/run", R"({"pipeline_id": "home", "deadline_ms": -1})"), 400,
                          "INVALID_ARGUMENT", "deadline_ms: must not be negative"));
  EXPECT_TRUE(
      IsHttpError(server_->Post("/v1/pipelines/put", R"({"config": ""})"), 400, "INVALID_ARGUMENT", "config: empty"));
  // Limits: config size (pipelines.max_config_bytes, 1 MiB) and request lists (max_request_items).
  v1::PutPipelineResponse put;
  std::string huge = std::string(kPipeline) + "# " + std::string(1 << 20, 'x') + "\n";
  EXPECT_TRUE(IsError(Put(huge, &put), grpc::StatusCode::RESOURCE_EXHAUSTED, "pipelines.max_config_bytes"));
  auto req = Request("u1");
  auto* deny = &(*req.mutable_lists())["deny"];
  for (int i = 0; i < 10001; ++i) deny->add_items(absl::StrCat("x", i));
  v1::RunPipelineResponse resp;
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &PS::RunPipeline, req, &resp), grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "lists: 10001 items exceeds the limit of 10000"));
  auto http = server_->Post("/v1/pipelines/run", ToJson(req));
  EXPECT_EQ(http.status, 413) << http.body.substr(0, 300);
  deny->Clear();
  deny->add_items("");
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &PS::RunPipeline, req, &resp), grpc::StatusCode::INVALID_ARGUMENT,
                      "lists.deny.items[0]: empty item id"));
  // The server is still serving.
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, Request("u1"), &resp)));
  EXPECT_EQ(resp.candidates_size(), 3);
}

TEST_F(PipelinesE2E, MissingContextIsPartialOrFailsARequiredNode) {
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, Request(""), &resp)));
  EXPECT_TRUE(resp.partial());
  ASSERT_NE(Node(resp, "recs"), nullptr);
  EXPECT_EQ(Node(resp, "recs")->status(), v1::NODE_FAILED);
  EXPECT_EQ(Node(resp, "recs")->attempts(), 1u);  // INVALID_ARGUMENT is not retried
  EXPECT_TRUE(absl::StrContains(Node(resp, "recs")->error(), "context: missing \"user_id\""))
      << Node(resp, "recs")->error();
  v1::PutPipelineResponse put;
  ASSERT_TRUE(IsOk(Put(Edit(Edit(kPipeline, "pipeline_id: home", "pipeline_id: strict"), "timeout: 2s, retries: 1",
                            "timeout: 2s, required: true, retries: 1"),
                       &put)));
  auto st = Invoke(stub_.get(), &PS::RunPipeline, Request("", "strict"), &resp);
  EXPECT_TRUE(
      IsError(st, grpc::StatusCode::INVALID_ARGUMENT, "node \"recs\" (required) failed: context: missing \"user_id\""));
}

TEST_F(PipelinesE2E, NodeTimeoutIsExplicit) {
  std::string cfg = Edit(kPipeline, "pipeline_id: home", "pipeline_id: slow");
  cfg = Edit(cfg, "params: {types: [click], events: 50}, timeout: 2s",
             "params: {types: [click], events: 50}, timeout: 30ms, test_delay: 400ms");
  v1::PutPipelineResponse put;
  ASSERT_TRUE(IsOk(Put(cfg, &put)));
  v1::RunPipelineResponse resp;
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, Request("u1", "slow"), &resp)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(380));
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_nodes_size(), 1);
  EXPECT_EQ(resp.failed_nodes(0), "recent");
  EXPECT_EQ(Node(resp, "recent")->status(), v1::NODE_TIMEOUT);
  // Without the clicks: p1 1.4, p3 .3 + .8 = 1.1 (p6 came only from the clicks).
  EXPECT_EQ(Ids(resp), (std::vector<std::string>{"p1", "p3"}));
  bool found = false;
  double v =
      MetricValue(server_->Get("/metrics").body,
                  "kosh_pipeline_node_results_total{pipeline=\"slow\",node=\"recent\",status=\"timeout\"}", &found);
  EXPECT_TRUE(found);
  EXPECT_GE(v, 1);
}

TEST_F(PipelinesE2E, HotReloadUnderLoadFailsNoRequest) {
  const std::string base = Edit(kPipeline, "pipeline_id: home", "pipeline_id: reload");
  auto with_k = [&](int k) { return Edit(base, "params: {k: 3}", absl::StrCat("params: {k: ", k, "}")); };
  v1::PutPipelineResponse put;
  ASSERT_TRUE(IsOk(Put(with_k(1), &put)));
  // Version v keeps k = 1 + (v - 1) % 3 candidates.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::atomic<uint32_t> max_version{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&] {
      auto s = v1::Pipelines::NewStub(server_->NewChannel());
      while (!stop.load()) {
        v1::RunPipelineResponse resp;
        auto st = Invoke(s.get(), &PS::RunPipeline, Request("u1", "reload"), &resp);
        const int k = 1 + static_cast<int>((resp.version() - 1) % 3);
        if (st.ok() && !resp.partial() && resp.candidates_size() == k && resp.candidates(0).item_id() == "p3") {
          ++ok;
          uint32_t v = resp.version(), cur = max_version.load();
          while (v > cur && !max_version.compare_exchange_weak(cur, v)) {
          }
        } else {
          ++failed;
        }
      }
    });
  }
  for (int v = 2; v <= 8; ++v) {
    auto st = Put(with_k(1 + (v - 1) % 3), &put);
    ASSERT_TRUE(IsOk(st));
    EXPECT_EQ(put.version(), static_cast<uint32_t>(v));
    EXPECT_TRUE(put.created());
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(ok.load(), 10);
  EXPECT_EQ(max_version.load(), 8u);  // the last version was served without a restart
  // Older versions stay runnable by number.
  auto req = Request("u1", "reload");
  req.set_version(3);
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, req, &resp)));
  EXPECT_EQ(resp.candidates_size(), 3);
  // Re-submitting the latest config stores nothing.
  ASSERT_TRUE(IsOk(Put(with_k(1 + 7 % 3), &put)));
  EXPECT_FALSE(put.created());
  EXPECT_EQ(put.version(), 8u);
}

// The example pipeline (examples/pipelines/home_feed.yaml) over the example dataset and flow.
// u1's list is 1001 .91, 1002 .85, 2040 .40; those products have no features, so the ranker
// scores them alike from defaults and the blend score (0.3 x list score) decides.
TEST_F(PipelinesE2E, ExamplePipelineRuns) {
  v1::PutPipelineResponse put;
  ASSERT_TRUE(IsOk(Put(ReadFile(SourcePath("examples/pipelines/home_feed.yaml")), &put)));
  EXPECT_EQ(put.pipeline_id(), "home_feed");
  auto req = Request("u1", "home_feed");
  (*req.mutable_context())["segment"] = "new_user";
  (*req.mutable_lists())["seen"].add_items("2040");
  req.set_return_timings(true);
  v1::RunPipelineResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &PS::RunPipeline, req, &resp)));
  EXPECT_EQ(Node(resp, "recent")->status(), v1::NODE_SKIPPED);
  if (resp.partial()) GTEST_SKIP() << "too slow for the example's 80 ms deadline here: " << resp.DebugString();
  EXPECT_EQ(Ids(resp), (std::vector<std::string>{"1001", "1002"})) << resp.DebugString();
  ASSERT_EQ(resp.candidates_size(), 2);
  EXPECT_GT(resp.candidates(0).score(), resp.candidates(1).score());
  EXPECT_GE(Col(resp, "ranker.score"), 0);
}

// The `pipelines:` config section: unknown keys and bad pipeline files stop the start-up with an
// error naming the path; a good file is applied at start.
TEST(PipelinesConfigE2E, StartupOptionsAndFiles) {
  TempDir dir("pipelines-config");
  WriteFile(dir.File("bad.yaml"), "pipeline_id: p\noutput: t\nnodes:\n  - {name: t, type: top_k}\n");
  WriteFile(dir.File("good.yaml"),
            "pipeline_id: p\noutput: t\nnodes:\n  - {name: s, type: interaction_candidates}\n"
            "  - {name: t, type: top_k, inputs: [s], params: {k: 2}}\n");
  struct Case {
    std::string yaml, message;
  };
  for (const Case& c : std::vector<Case>{
           {"pipelines:\n  thread: 2\n", "pipelines.thread: unknown option"},
           {"pipelines:\n  threads: 0\n", "pipelines.threads: must be 1 to 256"},
           {"pipelines:\n  deadline: soon\n", "pipelines.deadline"},
           {"pipelines:\n  files: [" + dir.File("bad.yaml") + "]\n",
            dir.File("bad.yaml") + ": nodes[0] (t).inputs: a top_k node takes 1 input(s), got 0"},
       }) {
    SCOPED_TRACE(c.yaml);
    ASSERT_TRUE(WriteFile(dir.File("kosh.yaml"), c.yaml));
    CommandResult r = RunCommand({KoshBinary(), "serve", "--config", dir.File("kosh.yaml"), "--grpc-address",
                                  "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--data-dir", dir.File("data")},
                                 std::chrono::seconds(10));
    EXPECT_TRUE(r.status.exited) << r.status.ToString();
    EXPECT_NE(r.status.code, 0);
    EXPECT_TRUE(absl::StrContains(r.err, c.message)) << r.err;
  }
  KoshServer::Options opts;
  opts.config_yaml = "pipelines:\n  files: [" + dir.File("good.yaml") + "]\n";
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  v1::PipelineRecord rec;
  ASSERT_TRUE(HttpRpc(
      server, "/v1/pipelines/get",
      [] {
        v1::GetPipelineRequest g;
        g.set_pipeline_id("p");
        return g;
      }(),
      &rec));
  EXPECT_EQ(rec.version(), 1u);
}

// Auth: PutPipeline needs admin; Get, List and Run need read. Pipelines survive a restart.
TEST(PipelinesAuthE2E, ScopesAndRestart) {
  TempDir data("pipelines-auth");
  KoshServer::Options opts;
  opts.data_dir = data.path();
  opts.config_yaml = R"(auth:
  enabled: true
  tokens:
    - {name: reader, token: reader-token-0123, scopes: [read]}
    - {name: ops, token: admin-token-89ab, scopes: [admin]}
)";
  // A pipeline that needs no data: the recent items of a user who has none.
  const std::string cfg =
      "pipeline_id: plain\noutput: t\nnodes:\n"
      "  - {name: s, type: interaction_candidates}\n"
      "  - {name: t, type: top_k, inputs: [s], params: {k: 5}}\n";
  for (int run = 0; run < 2; ++run) {
    KoshServer server(opts);
    ASSERT_TRUE(server.Start());
    auto stub = v1::Pipelines::NewStub(server.NewChannel());
    v1::PutPipelineRequest put;
    put.set_config(cfg);
    v1::PutPipelineResponse pr;
    if (run == 0) {
      EXPECT_TRUE(IsError(Invoke(stub.get(), &PS::PutPipeline, put, &pr, "reader-token-0123"),
                          grpc::StatusCode::PERMISSION_DENIED));
      EXPECT_TRUE(IsError(Invoke(stub.get(), &PS::PutPipeline, put, &pr), grpc::StatusCode::UNAUTHENTICATED));
      ASSERT_TRUE(IsOk(Invoke(stub.get(), &PS::PutPipeline, put, &pr, "admin-token-89ab")));
      EXPECT_EQ(pr.version(), 1u);
    }
    v1::RunPipelineRequest req;
    req.set_pipeline_id("plain");
    (*req.mutable_context())["user_id"] = "nobody";
    v1::RunPipelineResponse resp;
    EXPECT_TRUE(IsError(Invoke(stub.get(), &PS::RunPipeline, req, &resp), grpc::StatusCode::UNAUTHENTICATED));
    ASSERT_TRUE(IsOk(Invoke(stub.get(), &PS::RunPipeline, req, &resp, "reader-token-0123")));
    EXPECT_EQ(resp.version(), 1u);  // after the restart too: the version was stored
    EXPECT_FALSE(resp.partial());
    EXPECT_EQ(resp.candidates_size(), 0);
    v1::ListPipelinesResponse list;
    ASSERT_TRUE(IsOk(Invoke(stub.get(), &PS::ListPipelines, v1::ListPipelinesRequest(), &list, "reader-token-0123")));
    ASSERT_EQ(list.pipelines_size(), 1);
    stub.reset();  // no open channel: the drain need not wait for it
    EXPECT_EQ(server.Stop().code, 0);
  }
}

}  // namespace
}  // namespace kosh::e2e
