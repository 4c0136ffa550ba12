// Flows through the real binary: the example schema and data, the example flow (loaded from the
// config's flows.files), multi-hop fetches, broadcast, missing entities, invalid configs over gRPC
// and HTTP, a component timeout (test hook), and a hot reload under load with zero failed requests.
#include <atomic>
#include <thread>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "kosh/v1/datasets.grpc.pb.h"
#include "kosh/v1/flows.grpc.pb.h"
#include "kosh/v1/interactions.grpc.pb.h"

namespace kosh::e2e {
namespace {

class FlowsE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    KoshServer::Options opts;
    opts.schema_files = {SourcePath("examples/schema.yaml")};
    opts.config_yaml = absl::StrCat("flows:\n  files: [", SourcePath("examples/flows/ranker.yaml"),
                                    "]\n  enable_test_hooks: true\n",
                                    "interactions:\n  event_types:\n    - {name: click}\n    - {name: order}\n");
    server_ = new KoshServer(opts);
    auto started = server_->Start();
    ASSERT_TRUE(started) << started.message();
    for (const char* f : {"users.json", "products.json", "affinity.json"}) {
      auto r = RunCommand({KoshBinary(), "put", "--server", server_->grpc_target(), "--file",
                           SourcePath(std::string("examples/data/") + f)});
      ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.err;
    }
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  std::unique_ptr<v1::Flows::Stub> Stub() { return v1::Flows::NewStub(server_->NewChannel()); }

  v1::InferRequest Request(std::vector<std::string> targets, const std::string& model = "ranker") {
    v1::InferRequest req;
    req.set_model_id(model);
    (*req.mutable_context())["user_id"] = "u1";
    for (auto& t : targets) req.add_targets(t);
    return req;
  }

  static int Col(const v1::InferResponse& r, const std::string& name) {
    for (int i = 0; i < r.columns_size(); ++i) {
      if (r.columns(i).name() == name) return i;
    }
    ADD_FAILURE() << "no column " << name;
    return 0;
  }
  static const v1::MatrixRow* Row(const v1::InferResponse& r, const std::string& target) {
    for (const auto& row : r.rows()) {
      if (row.target() == target) return &row;
    }
    ADD_FAILURE() << "no row " << target;
    return &r.rows(0);
  }

  static KoshServer* server_;
};
KoshServer* FlowsE2E::server_ = nullptr;

TEST_F(FlowsE2E, MultiHopBroadcastAndMissingOverGrpc) {
  auto stub = Stub();
  auto req = Request({"p1", "p2", "p404"});
  req.set_return_timings(true);
  v1::InferResponse resp;
  auto st = Invoke(stub.get(), &v1::Flows::Stub::Infer, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.model_id(), "ranker");
  EXPECT_FALSE(resp.partial());
  ASSERT_EQ(resp.rows_size(), 3);
  // Broadcast user features.
  int age = Col(resp, "user.user_profile.age");
  EXPECT_FALSE(resp.columns(age).per_row());
  for (const auto& row : resp.rows()) EXPECT_EQ(row.values(age).int32_value(), 31);
  // Hop: p1 -> c10 -> (u1, c10) affinity 0.81; p2 -> c20 -> 0.12.
  int aff = Col(resp, "user_category.affinity.score");
  EXPECT_NEAR(Row(resp, "p1")->values(aff).float32_value(), 0.81, 1e-6);
  EXPECT_NEAR(Row(resp, "p2")->values(aff).float32_value(), 0.12, 1e-6);
  EXPECT_EQ(Row(resp, "p1")->statuses(aff), v1::PRESENT);
  // Missing product: MISSING statuses with defaults, in its own and the dependent columns.
  EXPECT_EQ(Row(resp, "p404")->statuses(Col(resp, "product.product_stats.price")), v1::MISSING);
  EXPECT_EQ(Row(resp, "p404")->statuses(aff), v1::MISSING);
  EXPECT_NEAR(Row(resp, "p404")->values(aff).float32_value(), 0.5, 1e-6);  // the schema default
  // Scores are sorted descending and in (0, 1) (logistic).
  int score = Col(resp, "score");
  for (int i = 0; i < resp.rows_size(); ++i) {
    float s = resp.rows(i).values(score).float32_value();
    EXPECT_GT(s, 0.0f);
    EXPECT_LT(s, 1.0f);
    if (i > 0) {
      EXPECT_LE(s, resp.rows(i - 1).values(score).float32_value());
    }
  }
  EXPECT_EQ(resp.rows(0).target(), "p1");  // the higher affinity and more clicks
  EXPECT_EQ(resp.components_size(), 6);  // user, product, user_category, recent_clicks, log_price, score
  // Per-component metrics are always in /metrics.
  auto m = server_->Get("/metrics");
  EXPECT_TRUE(absl::StrContains(m.body, "kosh_flow_component_seconds_count{model=\"ranker\",component=\"user_category\"}"))
      << m.body.substr(0, 2000);
}

// Rank returns the same order and scores as Infer's matrix, over both protocols; a flow that does
// not sort cannot rank.
TEST_F(FlowsE2E, RankMatchesInferAndNeedsASortColumn) {
  auto stub = Stub();
  auto ireq = Request({"p1", "p2", "p3", "p404"});
  v1::InferResponse inferred;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::Infer, ireq, &inferred).ok());
  v1::RankRequest req;
  req.set_model_id("ranker");
  (*req.mutable_context())["user_id"] = "u1";
  for (const char* t : {"p1", "p2", "p3", "p404"}) req.add_targets(t);
  v1::RankResponse ranked;
  auto st = Invoke(stub.get(), &v1::Flows::Stub::Rank, req, &ranked);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(ranked.score_column(), "score");
  ASSERT_EQ(ranked.ranked_size(), inferred.rows_size());
  int score = Col(inferred, "score");
  for (int i = 0; i < ranked.ranked_size(); ++i) {
    EXPECT_EQ(ranked.ranked(i).target(), inferred.rows(i).target());
    EXPECT_FLOAT_EQ(static_cast<float>(ranked.ranked(i).score()), inferred.rows(i).values(score).float32_value());
    if (i > 0) {
      EXPECT_LE(ranked.ranked(i).score(), ranked.ranked(i - 1).score());
    }
  }
  auto h = server_->Post("/v1/flows/rank", R"({"model_id":"ranker","context":{"user_id":"u1"},"targets":["p2","p1"],"top_k":1})");
  ASSERT_EQ(h.status, 200) << h.body;
  v1::RankResponse hr;
  ASSERT_TRUE(ParseJson(h.body, &hr));
  ASSERT_EQ(hr.ranked_size(), 1);
  EXPECT_EQ(hr.ranked(0).target(), "p1");  // as in MultiHopBroadcastAndMissingOverGrpc

  v1::PutFlowRequest put;
  put.set_config("model_id: unsorted\ninputs: {context: [user_id], target: product_id}\n"
                 "components: [{name: p, kind: features, entity: product, keys: [product_id], "
                 "features: [product_stats.price]}]\n");
  v1::PutFlowResponse pr;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr).ok());
  req.set_model_id("unsorted");
  st = Invoke(stub.get(), &v1::Flows::Stub::Rank, req, &ranked);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("no output.sort_by"));
}

TEST_F(FlowsE2E, HttpInferDryRunAndDense) {
  auto r = server_->Post("/v1/flows/infer",
                         R"({"model_id":"ranker","context":{"user_id":"u1"},"targets":["p2","p1"],"dense":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  v1::InferResponse resp;
  ASSERT_TRUE(ParseJson(r.body, &resp));
  ASSERT_EQ(resp.rows_size(), 2);
  EXPECT_GT(resp.dense_width(), 0u);
  EXPECT_EQ(resp.dense_size(), static_cast<int>(2 * resp.dense_width()));
  auto d = server_->Post("/v1/flows/infer", R"({"model_id":"ranker","dry_run":true})");
  ASSERT_EQ(d.status, 200) << d.body;
  v1::InferResponse plan;
  ASSERT_TRUE(ParseJson(d.body, &plan));
  ASSERT_EQ(plan.plan().stages_size(), 3);
  EXPECT_EQ(plan.plan().stages(1).components(0).name(), "user_category");
  // Bad requests name the field.
  auto bad = server_->Post("/v1/flows/infer", R"({"model_id":"ranker","targets":["p1"]})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_TRUE(absl::StrContains(ParseErrorBody(bad.body).message, "context: missing \"user_id\"")) << bad.body;
  auto unknown = server_->Post("/v1/flows/infer", R"({"model_id":"nope","targets":["p1"]})");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
}

TEST_F(FlowsE2E, InvalidConfigsAreRejectedAndChangeNothing) {
  auto stub = Stub();
  v1::ListFlowsResponse before;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::ListFlows, v1::ListFlowsRequest(), &before).ok());
  struct Case {
    std::string config, message;
  };
  std::string base = ReadFile(SourcePath("examples/flows/ranker.yaml"));
  ASSERT_FALSE(base.empty());
  auto edit = [&](const std::string& from, const std::string& to) {
    std::string c = base;
    c.replace(c.find(from), from.size(), to);
    return c;
  };
  std::vector<Case> cases = {
      {edit("entity: user_category", "entity: nobody"), "components[2] (user_category).entity: unknown entity \"nobody\""},
      {edit("affinity.clicks_30d, affinity.score", "affinity.clicks"), "unknown feature \"clicks\" in group \"affinity\""},
      {edit("keys: [user_id, product.product_stats.category_id]", "keys: [user_id]"), "is keyed by (user_id, category_id)"},
      {edit("log1p(product.product_stats.price)", "log1p(score)"), "dependency cycle"},
      {edit("log1p(product.product_stats.price)", "log1p(product.product_stats.category_id)"), "is STRING"},
      {"model_id: [", "line"},
  };
  for (const auto& c : cases) {
    v1::PutFlowRequest req;
    req.set_config(c.config);
    v1::PutFlowResponse resp;
    auto st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_TRUE(absl::StrContains(st.error_message(), c.message)) << "want " << c.message << "\ngot " << st.error_message();
  }
  // The same over HTTP.
  auto r = server_->Post("/v1/flows/put", ToJson([&] {
                           v1::PutFlowRequest req;
                           req.set_config(cases[0].config);
                           return req;
                         }()));
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(absl::StrContains(ParseErrorBody(r.body).message, "unknown entity")) << r.body;
  v1::ListFlowsResponse after;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::ListFlows, v1::ListFlowsRequest(), &after).ok());
  EXPECT_TRUE(ProtoEqual(before, after));
}

TEST_F(FlowsE2E, ComponentTimeoutIsExplicit) {
  std::string cfg = ReadFile(SourcePath("examples/flows/ranker.yaml"));
  cfg.replace(cfg.find("model_id: ranker"), 16, "model_id: slow_ranker");
  cfg.replace(cfg.find("    timeout: 20ms"), 17, "    timeout: 20ms\n    test_delay: 200ms");
  auto stub = Stub();
  v1::PutFlowRequest put;
  put.set_config(cfg);
  v1::PutFlowResponse put_resp;
  auto st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &put_resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  v1::InferResponse resp;
  auto t0 = std::chrono::steady_clock::now();
  st = Invoke(stub.get(), &v1::Flows::Stub::Infer, Request({"p1", "p2"}, "slow_ranker"), &resp);
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_LT(took, std::chrono::milliseconds(180));
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_components_size(), 1);
  EXPECT_EQ(resp.failed_components(0), "product");
  int price = Col(resp, "product.product_stats.price");
  EXPECT_EQ(resp.columns(price).status(), v1::COMPONENT_TIMEOUT);
  EXPECT_EQ(resp.rows(0).statuses(price), v1::DEFAULT);
  ASSERT_GE(resp.components_size(), 1);
  EXPECT_EQ(resp.components(0).status(), v1::COMPONENT_TIMEOUT);
  // Counted in /metrics by outcome.
  bool found = false;
  double v = MetricValue(server_->Get("/metrics").body,
                         "kosh_flow_component_results_total{model=\"slow_ranker\",component=\"product\",status=\"timeout\"}",
                         &found);
  EXPECT_TRUE(found);
  EXPECT_GE(v, 1);
}

TEST_F(FlowsE2E, HotReloadUnderLoadFailsNoRequest) {
  std::string base = ReadFile(SourcePath("examples/flows/ranker.yaml"));
  base.replace(base.find("model_id: ranker"), 16, "model_id: reload");
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::atomic<uint32_t> max_version{0};
  std::vector<std::thread> load;
  auto stub = Stub();
  v1::PutFlowRequest put;
  put.set_config(base);
  v1::PutFlowResponse pr;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr).ok());
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&] {
      auto s = Stub();
      while (!stop.load()) {
        v1::InferResponse resp;
        auto st = Invoke(s.get(), &v1::Flows::Stub::Infer, Request({"p1", "p2"}, "reload"), &resp);
        if (st.ok() && !resp.partial() && resp.rows_size() == 2) {
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
  for (int i = 1; i <= 10; ++i) {
    std::string cfg = base;
    cfg.replace(cfg.find("bias: -1.0"), 10, absl::StrCat("bias: ", -1.0 - i * 0.1));
    put.set_config(cfg);
    auto st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(pr.version(), static_cast<uint32_t>(i + 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_GT(ok.load(), 20);
  EXPECT_EQ(max_version.load(), 11u);  // the last version was served without a restart
  v1::GetFlowRequest get;
  get.set_model_id("reload");
  get.set_version(3);
  v1::FlowRecord rec;
  ASSERT_TRUE(Invoke(stub.get(), &v1::Flows::Stub::GetFlow, get, &rec).ok());
  EXPECT_TRUE(absl::StrContains(rec.config(), "bias: -1.2"));
}


// A flow that also reads the interaction store (the user's clicks: all of them, and per product)
// and a dataset of recommendation lists (the score and rank of each product in the user's list),
// and scores with them; then the same flow against a dataset that is not loaded: explicit partial.
TEST_F(FlowsE2E, InteractionAndDatasetComponents) {
  // Interactions: u1 clicked p1 twice and p2 once, ordered p3; an old click on p2 is outside 1h.
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  auto istub = v1::Interactions::NewStub(server_->NewChannel());
  v1::WriteRequest w;
  auto add = [&](const std::string& user, const std::string& type, const std::string& item, int64_t ago_ms) {
    auto* e = w.add_events();
    e->set_user_id(user);
    e->set_type(type);
    e->set_item_id(item);
    e->set_timestamp_ms(now - ago_ms);
  };
  add("u1", "click", "p1", 1000);
  add("u1", "click", "p1", 2000);
  add("u1", "click", "p2", 3000);
  add("u1", "click", "p2", 2 * 3600 * 1000);
  add("u1", "order", "p3", 4000);
  add("u2", "click", "p1", 1000);
  v1::WriteResponse wr;
  auto st = Invoke(istub.get(), &v1::Interactions::Stub::Write, w, &wr);
  ASSERT_TRUE(st.ok()) << st.error_message();

  // A recommendation-list dataset: u1 -> [p2 0.75, p9 0.5, p1 0.25].
  TempDir dir("flows-ds");
  ASSERT_TRUE(WriteFile(dir.File("recs.csv"), "u1,p2:0.75|p9:0.5|p1:0.25\nu2,p1:1\n"));
  auto built = RunCommand({KoshBinary(), "dataset", "build", "--dataset", "user_recs", "--kind", "recs", "--output",
                           dir.File("v1"), dir.File("recs.csv")});
  ASSERT_TRUE(built.status.exited && built.status.code == 0) << built.err;
  auto loaded = RunCommand({KoshBinary(), "dataset", "load", "--server", server_->grpc_target(), "--dataset",
                            "user_recs", dir.File("v1")});
  ASSERT_TRUE(loaded.status.exited && loaded.status.code == 0) << loaded.err;

  const std::string flow = R"(
model_id: blended
inputs: {context: [user_id], target: product_id}
components:
  - {name: clicks, kind: interactions, user: user_id, types: [click], window: 1h, outputs: [count, target_count]}
  - {name: all_events, kind: interactions, user: user_id}
  - {name: recs, kind: dataset, dataset: user_recs, key: user_id, outputs: [target_score, target_rank]}
  - name: score
    kind: model
    scorer: {type: linear, bias: 0, weights: {clicks.target_count: 1, recs.target_score: 4}}
output: {sort_by: score}
)";
  auto stub = Stub();
  v1::PutFlowRequest put;
  put.set_config(flow);
  v1::PutFlowResponse pr;
  st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto req = Request({"p1", "p2", "p3", "p4"}, "blended");
  v1::InferResponse resp;
  st = Invoke(stub.get(), &v1::Flows::Stub::Infer, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(resp.partial()) << resp.DebugString();
  ASSERT_EQ(resp.rows_size(), 4);
  int count = Col(resp, "clicks.count"), tc = Col(resp, "clicks.target_count");
  int all = Col(resp, "all_events.count");
  int ts = Col(resp, "recs.target_score"), tr = Col(resp, "recs.target_rank"), score = Col(resp, "score");
  // A component is per row when any of its outputs is (target_count is): count then repeats per row.
  EXPECT_FALSE(resp.columns(all).per_row());
  EXPECT_TRUE(resp.columns(tc).per_row());
  // p2: 1 click within the hour + 4 * 0.75 = 4; p1: 2 + 4 * 0.25 = 3; p3: 0; p4: 0.
  EXPECT_EQ(resp.rows(0).target(), "p2");
  EXPECT_EQ(resp.rows(1).target(), "p1");
  for (const auto& row : resp.rows()) {
    EXPECT_EQ(row.values(count).int64_value(), 3) << row.target();  // 3 clicks of u1 within 1h
    EXPECT_EQ(row.values(all).int64_value(), 5) << row.target();    // every type, every retained event
  }
  const auto* p1 = Row(resp, "p1");
  const auto* p2 = Row(resp, "p2");
  const auto* p3 = Row(resp, "p3");
  EXPECT_EQ(p1->values(tc).int64_value(), 2);
  EXPECT_EQ(p2->values(tc).int64_value(), 1);
  EXPECT_EQ(p3->values(tc).int64_value(), 0);
  EXPECT_EQ(p3->statuses(tc), v1::PRESENT);  // a real zero: u1 has no click on p3
  EXPECT_FLOAT_EQ(p2->values(ts).float32_value(), 0.75f);
  EXPECT_EQ(p2->values(tr).int32_value(), 1);
  EXPECT_EQ(p1->values(tr).int32_value(), 3);
  EXPECT_EQ(p1->statuses(ts), v1::PRESENT);
  EXPECT_EQ(p3->statuses(ts), v1::DEFAULT);  // not in u1's list
  EXPECT_FLOAT_EQ(p2->values(score).float32_value(), 4.0f);
  EXPECT_FLOAT_EQ(p1->values(score).float32_value(), 3.0f);

  // A user with no list: MISSING, not a failure.
  (*req.mutable_context())["user_id"] = "u404";
  st = Invoke(stub.get(), &v1::Flows::Stub::Infer, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(resp.partial());
  EXPECT_EQ(resp.rows(0).statuses(ts), v1::MISSING);
  EXPECT_EQ(resp.rows(0).values(count).int64_value(), 0);

  // The same flow on a dataset nobody loaded: the component fails explicitly, the rest serves.
  std::string other = flow;
  other.replace(other.find("model_id: blended"), 17, "model_id: blended2");
  other.replace(other.find("dataset: user_recs"), 18, "dataset: not_loaded");
  put.set_config(other);
  st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = Invoke(stub.get(), &v1::Flows::Stub::Infer, Request({"p1", "p2"}, "blended2"), &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_components_size(), 1);
  EXPECT_EQ(resp.failed_components(0), "recs");
  ASSERT_GE(resp.components_size(), 1);
  EXPECT_THAT(resp.components(0).error(), ::testing::HasSubstr("not_loaded"));
  EXPECT_EQ(Row(resp, "p1")->values(Col(resp, "clicks.target_count")).int64_value(), 2);

  // Invalid component configs name the component and field.
  for (const auto& [cfg, want] : std::vector<std::pair<std::string, std::string>>{
           {"{kind: interactions, user: nobody}", "unknown column \"nobody\""},
           {"{kind: interactions, user: user_id, outputs: [sum]}", "outputs[0]: \"sum\" is not an interactions output"},
           {"{kind: dataset, dataset: d, key: user_id}", "name either outputs"},
           {"{kind: dataset, dataset: d, key: user_id, fields: [{name: x, type: float32_vector}]}", "fields[0].type"},
       }) {
    // cfg is a flow-style mapping without the name: "{kind: ...}" -> "{name: c, kind: ...}".
    put.set_config("model_id: bad\ninputs: {context: [user_id], target: product_id}\ncomponents: [{name: c, " +
                   cfg.substr(1) + "]\n");
    st = Invoke(stub.get(), &v1::Flows::Stub::PutFlow, put, &pr);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << cfg;
    EXPECT_THAT(st.error_message(), ::testing::HasSubstr("components[0] (c)")) << cfg;
    EXPECT_THAT(st.error_message(), ::testing::HasSubstr(want)) << cfg;
  }
}

// A model server the test starts itself: kosh_v2_test_server with a linear model, its ports read
// from its port file.
class V2Server {
 public:
  explicit V2Server(std::vector<std::string> flags) : dir_("v2") {
    std::vector<std::string> argv = {KOSH_V2_TEST_SERVER, "--port-file", dir_.File("ports.json")};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string err;
    ok_ = child_.Spawn(argv, dir_.File("out.log"), dir_.File("err.log"), &err);
    for (int i = 0; ok_ && i < 200 && grpc_port_ == 0; ++i) {
      std::string ports = ReadFile(dir_.File("ports.json"));
      size_t g = ports.find("\"grpc\": "), h = ports.find("\"http\": ");
      if (g != std::string::npos && h != std::string::npos) {
        grpc_port_ = std::atoi(ports.c_str() + g + 8);
        http_port_ = std::atoi(ports.c_str() + h + 8);
      } else {
        std::this_thread::sleep_for(Millis(25));
      }
    }
  }
  bool ok() const { return ok_ && grpc_port_ != 0; }
  std::string grpc() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  std::string http() const { return "127.0.0.1:" + std::to_string(http_port_); }

 private:
  TempDir dir_;
  Child child_;
  bool ok_ = false;
  int grpc_port_ = 0, http_port_ = 0;
};

// Model components calling an external KServe v2 server over gRPC and over HTTP (batched), a
// server too slow for the component's timeout (explicit TIMEOUT, defaults), and a bad endpoint.
TEST_F(FlowsE2E, KServeModelCallsOverGrpcAndHttp) {
  // score = 0.5 + 2 * price + 10 * ctr_7d
  V2Server model({"--model", "ctr", "--weights", "2,10", "--bias", "0.5"});
  V2Server slow({"--model", "ctr", "--weights", "2,10", "--delay-ms", "300"});
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE(slow.ok());
  auto flow = [](const std::string& id, const std::string& endpoints, const std::string& timeout) {
    return "model_id: " + id + R"(
inputs: {context: [user_id], target: product_id}
components:
  - {name: product, kind: features, entity: product, keys: [product_id], features: [product_stats.price, product_stats.ctr_7d]}
  - name: ctr
    kind: model
    inputs: [product.product_stats.price, product.product_stats.ctr_7d]
    timeout: )" + timeout + R"(
    kserve: {name: ctr, batch_size: 2, endpoints: )" + endpoints + R"(}
output: {sort_by: ctr}
)";
  };
  auto stub = Stub();
  auto put = [&](const std::string& cfg) {
    v1::PutFlowRequest req;
    req.set_config(cfg);
    v1::PutFlowResponse resp;
    return Invoke(stub.get(), &v1::Flows::Stub::PutFlow, req, &resp);
  };
  ASSERT_TRUE(put(flow("kserve_grpc", "[{address: " + model.grpc() + ", protocol: grpc}]", "2s")).ok());
  ASSERT_TRUE(put(flow("kserve_http", "[{address: " + model.http() + ", protocol: http}]", "2s")).ok());
  ASSERT_TRUE(put(flow("kserve_slow", "[{address: " + slow.grpc() + "}]", "50ms")).ok());
  for (const char* id : {"kserve_grpc", "kserve_http"}) {
    SCOPED_TRACE(id);
    v1::InferResponse resp;
    auto st = Invoke(stub.get(), &v1::Flows::Stub::Infer, Request({"p1", "p2", "p3", "p404"}, id), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(resp.partial()) << resp.DebugString();
    ASSERT_EQ(resp.rows_size(), 4);
    int price = Col(resp, "product.product_stats.price"), ctr = Col(resp, "product.product_stats.ctr_7d");
    int score = Col(resp, "ctr");
    for (const auto& row : resp.rows()) {
      double want = 0.5 + 2.0 * row.values(price).float32_value() + 10.0 * row.values(ctr).float32_value();
      EXPECT_NEAR(row.values(score).float32_value(), want, 1e-3 * std::max(1.0, std::abs(want))) << row.target();
    }
    // p404 has no product row: its inputs are defaults, so the score is computed but not PRESENT.
    EXPECT_EQ(Row(resp, "p404")->statuses(score), v1::DEFAULT);
    EXPECT_EQ(Row(resp, "p1")->statuses(score), v1::PRESENT);
  }
  // Too slow: the component times out at its 50 ms, its column holds defaults, the request answers.
  v1::InferResponse resp;
  auto t0 = std::chrono::steady_clock::now();
  auto st = Invoke(stub.get(), &v1::Flows::Stub::Infer, Request({"p1", "p2"}, "kserve_slow"), &resp);
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_LT(took, std::chrono::milliseconds(250));
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_components_size(), 1);
  EXPECT_EQ(resp.failed_components(0), "ctr");
  EXPECT_EQ(resp.columns(Col(resp, "ctr")).status(), v1::COMPONENT_TIMEOUT);
  EXPECT_EQ(resp.rows(0).statuses(Col(resp, "ctr")), v1::DEFAULT);
  // Invalid model configs name the field.
  auto bad = put(flow("kserve_bad", "[{address: nohost}]", "2s"));
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), ::testing::HasSubstr("components[1] (ctr).kserve.endpoints[0].address"));
  std::string no_inputs = flow("kserve_bad", "[{address: " + model.grpc() + "}]", "2s");
  no_inputs.replace(no_inputs.find("    inputs: ["), no_inputs.find("\n", no_inputs.find("    inputs: [")) -
                                                          no_inputs.find("    inputs: [") + 1, "");
  bad = put(no_inputs);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), ::testing::HasSubstr("components[1] (ctr).inputs"));
}

}  // namespace
}  // namespace kosh::e2e
