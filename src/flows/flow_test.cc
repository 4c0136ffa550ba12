// Flows end to end inside the library: compile against a real registry on the in-memory engine,
// execute against a real FeatureStore, check matrices, statuses, timeouts and versioning.
#include <chrono>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/metrics.h"
#include "features/feature_store.h"
#include "features/registry.h"
#include "features/schema_yaml.h"
#include "flows/executor.h"
#include "flows/flow_registry.h"
#include "gtest/gtest.h"
#include "storage/config_store.h"
#include "storage/engine.h"

namespace kosh::flows {
namespace {

constexpr char kSchema[] = R"(
entities:
  - {name: user, key_columns: [user_id]}
  - {name: product, key_columns: [product_id]}
  - {name: user_category, key_columns: [user_id, category_id]}
  - {name: age_category, key_columns: [age, category_id]}
feature_groups:
  - entity: user
    name: user_profile
    features:
      - {name: age, type: int32, default: -1}
      - {name: is_premium, type: bool}
      - {name: embedding, type: float32_vector, length: 2}
  - entity: product
    name: product_stats
    features:
      - {name: price, type: float32}
      - {name: category_id, type: string}
  - entity: user_category
    name: affinity
    features:
      - {name: clicks_30d, type: int32}
      - {name: score, type: float32, default: 0.5}
  - entity: age_category
    name: age_affinity
    features:
      - {name: lift, type: float32}
)";

constexpr char kFlow[] = R"(
model_id: ranker
inputs:
  context: [user_id]
  target: product_id
  request_features:
    - {name: hour, type: int32, default: 12}
components:
  - name: user
    kind: features
    entity: user
    keys: [user_id]
    features: [user_profile.*]
  - name: product
    kind: features
    entity: product
    keys: [product_id]
    features: [product_stats.price, product_stats.category_id]
  - name: user_category
    kind: features
    entity: user_category
    keys: [user_id, product.product_stats.category_id]
    features: [affinity.score, affinity.clicks_30d]
  - name: log_price
    kind: derived
    expr: log1p(product.product_stats.price)
  - name: score
    kind: model
    scorer:
      type: linear
      bias: 1
      weights: {user_category.affinity.score: 10, log_price: 0, hour: 0.5}
output:
  sort_by: score
  top_k: 3
)";

v1::Value Str(const std::string& s) {
  v1::Value v;
  v.set_string_value(s);
  return v;
}
v1::Value I32(int32_t x) {
  v1::Value v;
  v.set_int32_value(x);
  return v;
}
v1::Value F32(float x) {
  v1::Value v;
  v.set_float32_value(x);
  return v;
}

class FlowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = storage::NewMemoryEngine({{"registry", nullptr, nullptr},
                                        {"features", nullptr, nullptr},
                                        {"flows", nullptr, nullptr}});
    registry_config_ = storage::NewEngineConfigStore(engine_.get(), 0);
    flows_config_ = storage::NewEngineConfigStore(engine_.get(), 2);
    registry_ = *features::Registry::Open(registry_config_.get());
    auto req = features::ParseSchemaYaml(YAML::Load(kSchema), "schema");
    ASSERT_TRUE(req.ok()) << req.status();
    ASSERT_TRUE(registry_->Apply(*req).ok());
    store_ = std::make_unique<features::FeatureStore>(engine_.get(), 1, registry_.get(),
                                                      features::FeatureStoreOptions{}, &metrics_);
    Persist("user", "user_profile", {{{"u1"}, {I32(30)}}}, {"age"});
    Persist("product", "product_stats",
            {{{"p1"}, {F32(10), Str("c1")}}, {{"p2"}, {F32(20), Str("c2")}}, {{"p3"}, {F32(30), Str("c1")}}}, {});
    Persist("user_category", "affinity", {{{"u1", "c1"}, {I32(5), F32(0.9f)}}}, {});
    options_.enable_test_hooks = true;
    flows_ = *FlowRegistry::Open(flows_config_.get(), registry_.get(), options_, &metrics_);
    executor_ = std::make_unique<Executor>(Sources{store_.get()}, options_);
  }

  void Persist(const std::string& entity, const std::string& group,
               std::vector<std::pair<std::vector<std::string>, std::vector<v1::Value>>> rows,
               std::vector<std::string> features) {
    v1::PersistRequest req;
    req.set_entity(entity);
    req.set_group(group);
    for (auto& f : features) req.add_features(f);
    for (auto& [key, values] : rows) {
      auto* r = req.add_rows();
      for (auto& p : key) r->mutable_key()->add_parts(p);
      for (auto& v : values) *r->add_values() = v;
    }
    v1::PersistResponse resp;
    ASSERT_TRUE(store_->Persist(req, &resp).ok());
  }

  absl::StatusOr<v1::PutFlowResponse> Put(const std::string& config) {
    v1::PutFlowRequest req;
    req.set_config(config);
    return flows_->Put(req);
  }

  v1::InferRequest Request(std::vector<std::string> targets) {
    v1::InferRequest req;
    req.set_model_id("ranker");
    (*req.mutable_context())["user_id"] = "u1";
    for (auto& t : targets) req.add_targets(t);
    return req;
  }

  absl::Status Infer(const v1::InferRequest& req, v1::InferResponse* resp) {
    auto flow = flows_->Find(req.model_id(), req.version());
    if (!flow.ok()) return flow.status();
    return executor_->Run(**flow, req, resp);
  }

  static int Col(const v1::InferResponse& r, const std::string& name) {
    for (int i = 0; i < r.columns_size(); ++i) {
      if (r.columns(i).name() == name) return i;
    }
    ADD_FAILURE() << "no column " << name;
    return 0;
  }
  static const v1::MatrixRow& Row(const v1::InferResponse& r, const std::string& target) {
    for (const auto& row : r.rows()) {
      if (row.target() == target) return row;
    }
    ADD_FAILURE() << "no row " << target;
    return r.rows(0);
  }

  base::MetricsRegistry metrics_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<storage::ConfigStore> registry_config_;
  std::unique_ptr<storage::ConfigStore> flows_config_;
  std::unique_ptr<features::Registry> registry_;
  std::unique_ptr<features::FeatureStore> store_;
  FlowsOptions options_;
  std::unique_ptr<FlowRegistry> flows_;
  std::unique_ptr<Executor> executor_;
};

TEST_F(FlowTest, MultiHopBroadcastMissingAndScores) {
  ASSERT_TRUE(Put(kFlow).ok());
  auto req = Request({"p1", "p2", "p3", "nope"});
  req.set_top_k(10);
  req.set_return_timings(true);
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  EXPECT_FALSE(resp.partial());
  ASSERT_EQ(resp.rows_size(), 4);
  // Broadcast: the user's age is in every row, and the column says it is single-valued.
  int age = Col(resp, "user.user_profile.age");
  EXPECT_FALSE(resp.columns(age).per_row());
  for (const auto& row : resp.rows()) {
    EXPECT_EQ(row.values(age).int32_value(), 30);
    EXPECT_EQ(row.statuses(age), v1::PRESENT);
  }
  // Two hops: p1 and p3 are in category c1, which u1 has an affinity for; p2's c2 has none.
  int score = Col(resp, "user_category.affinity.score");
  EXPECT_TRUE(resp.columns(score).per_row());
  EXPECT_FLOAT_EQ(Row(resp, "p1").values(score).float32_value(), 0.9f);
  EXPECT_EQ(Row(resp, "p1").statuses(score), v1::PRESENT);
  EXPECT_FLOAT_EQ(Row(resp, "p2").values(score).float32_value(), 0.5f);  // the feature's default
  EXPECT_EQ(Row(resp, "p2").statuses(score), v1::MISSING);
  // An unknown product: its own features are MISSING and the hop that needs its category is too.
  EXPECT_EQ(Row(resp, "nope").statuses(Col(resp, "product.product_stats.price")), v1::MISSING);
  EXPECT_EQ(Row(resp, "nope").statuses(score), v1::MISSING);
  // Model: 1 + 10 * affinity + 0.5 * hour (default 12, status DEFAULT).
  int s = Col(resp, "score");
  EXPECT_NEAR(Row(resp, "p1").values(s).float32_value(), 1 + 9 + 6, 1e-4);
  EXPECT_NEAR(Row(resp, "p2").values(s).float32_value(), 1 + 5 + 6, 1e-4);
  // Sorted by score, descending: p1 and p3 (16) before p2 and nope (12); stable among equals.
  EXPECT_EQ(resp.rows(0).target(), "p1");
  EXPECT_EQ(resp.rows(1).target(), "p3");
  // Derived column.
  EXPECT_NEAR(Row(resp, "p2").values(Col(resp, "log_price")).float32_value(), std::log1p(20.0), 1e-5);
  // De-duplicated keys: user_category was looked up for 2 distinct categories (c1 twice, and one
  // row without a key), not 4 rows.
  bool seen = false;
  for (const auto& c : resp.components()) {
    if (c.name() == "user_category") {
      seen = true;
      EXPECT_EQ(c.keys(), 2u);
      EXPECT_EQ(c.stage(), 1u);
      EXPECT_EQ(c.status(), v1::COMPONENT_OK);
    }
  }
  EXPECT_TRUE(seen);
  EXPECT_EQ(resp.components_size(), 5);
}

TEST_F(FlowTest, TopKAndDenseForm) {
  ASSERT_TRUE(Put(kFlow).ok());
  auto req = Request({"p2", "p1", "p3"});
  req.set_dense(true);
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  ASSERT_EQ(resp.rows_size(), 3);  // top_k 3 from the flow
  // Dense columns: age, is_premium, embedding(2), price, score, clicks, log_price, score (string
  // category_id left out).
  EXPECT_EQ(resp.dense_width(), 1u + 1 + 2 + 1 + 1 + 1 + 1 + 1);
  EXPECT_EQ(resp.dense_size(), static_cast<int>(3 * resp.dense_width()));
  for (const auto& name : resp.dense_columns()) EXPECT_NE(name, "product.product_stats.category_id");
  EXPECT_FLOAT_EQ(resp.dense(0), 30.0f);  // age of row 0
  // No rows in an empty response without components.
  EXPECT_TRUE(resp.components().empty());
}

TEST_F(FlowTest, DryRunReturnsStages) {
  ASSERT_TRUE(Put(kFlow).ok());
  auto req = Request({"p1"});
  req.set_dry_run(true);
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  EXPECT_EQ(resp.rows_size(), 0);
  const auto& plan = resp.plan();
  ASSERT_EQ(plan.stages_size(), 3);
  ASSERT_EQ(plan.stages(0).components_size(), 2);  // user and product, in parallel
  EXPECT_EQ(plan.stages(0).components(0).name(), "user");
  EXPECT_FALSE(plan.stages(0).components(0).per_row());
  EXPECT_EQ(plan.stages(1).components(0).name(), "user_category");
  EXPECT_EQ(plan.stages(1).components(1).name(), "log_price");
  EXPECT_EQ(plan.stages(2).components(0).name(), "score");
  EXPECT_EQ(plan.stages(1).components(0).keys(1), "product.product_stats.category_id");
}

TEST_F(FlowTest, ComponentTimeoutGivesDefaultsAndIsReported) {
  std::string cfg = kFlow;
  cfg.replace(cfg.find("    keys: [product_id]\n"), 23, "    keys: [product_id]\n    timeout: 20ms\n    test_delay: 300ms\n");
  ASSERT_TRUE(Put(cfg).ok()) << Put(cfg).status();
  auto req = Request({"p1", "p2"});
  v1::InferResponse resp;
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(Infer(req, &resp).ok());
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, std::chrono::milliseconds(250)) << "the request waited for the slow component";
  EXPECT_TRUE(resp.partial());
  ASSERT_EQ(resp.failed_components_size(), 1);
  EXPECT_EQ(resp.failed_components(0), "product");
  int price = Col(resp, "product.product_stats.price");
  EXPECT_EQ(resp.columns(price).status(), v1::COMPONENT_TIMEOUT);
  EXPECT_EQ(Row(resp, "p1").statuses(price), v1::DEFAULT);
  // The dependent hop had no category to look up: MISSING, and it still succeeded.
  int score = Col(resp, "user_category.affinity.score");
  EXPECT_EQ(Row(resp, "p1").statuses(score), v1::MISSING);
  EXPECT_EQ(resp.columns(score).status(), v1::COMPONENT_OK);
  // The user's features were unaffected.
  EXPECT_EQ(Row(resp, "p1").values(Col(resp, "user.user_profile.age")).int32_value(), 30);
  bool reported = false;
  for (const auto& c : resp.components()) {
    if (c.name() == "product") {
      reported = true;
      EXPECT_EQ(c.status(), v1::COMPONENT_TIMEOUT);
      EXPECT_TRUE(absl::StrContains(c.error(), "component timeout")) << c.error();
    }
  }
  EXPECT_TRUE(reported);
}

TEST_F(FlowTest, RequestDeadlineSkipsLaterStages) {
  std::string cfg = kFlow;
  cfg.replace(cfg.find("inputs:"), 7, "deadline: 30ms\ninputs:");
  cfg.replace(cfg.find("    keys: [product_id]\n"), 23, "    keys: [product_id]\n    timeout: 1s\n    test_delay: 100ms\n");
  ASSERT_TRUE(Put(cfg).ok());
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(Request({"p1"}), &resp).ok());
  EXPECT_TRUE(resp.partial());
  std::map<std::string, v1::ComponentStatus> st;
  for (const auto& c : resp.components()) st[c.name()] = c.status();
  EXPECT_EQ(st["product"], v1::COMPONENT_TIMEOUT);
  EXPECT_EQ(st["user_category"], v1::COMPONENT_SKIPPED);
  EXPECT_EQ(st["score"], v1::COMPONENT_SKIPPED);
}

TEST_F(FlowTest, InvalidConfigsAreRejectedWithPreciseErrors) {
  struct Case {
    std::string from, to, message;
  };
  std::vector<Case> cases = {
      {"entity: user_category", "entity: user_categry", "components[2] (user_category).entity: unknown entity \"user_categry\""},
      {"[affinity.score, affinity.clicks_30d]", "[affinity.score, afinity.clicks_30d]",
       "components[2] (user_category).features[1]: unknown feature group \"afinity\""},
      {"[affinity.score, affinity.clicks_30d]", "[affinity.scor]", "unknown feature \"scor\" in group \"affinity\""},
      {"keys: [user_id, product.product_stats.category_id]", "keys: [user_id]",
       "components[2] (user_category).keys: entity \"user_category\" is keyed by (user_id, category_id)"},
      {"keys: [user_id, product.product_stats.category_id]", "keys: [user_id, product.product_stats.categry_id]",
       "components[2] (user_category).keys[1]: unknown column \"product.product_stats.categry_id\""},
      {"keys: [user_id, product.product_stats.category_id]", "keys: [user_id, product.product_stats.price]",
       "keys[1]: column \"product.product_stats.price\" is FLOAT32; key parts must be"},
      {"log1p(product.product_stats.price)", "log1p(product.product_stats.category_id)",
       "components[3] (log_price).expr: column \"product.product_stats.category_id\" is STRING"},
      {"log1p(product.product_stats.price)", "log1p(product.product_stats.price", "expected \")\""},
      {"log1p(product.product_stats.price)", "log1p(score)", "dependency cycle: "},
      {"kind: derived", "kind: sql", "components[3] (log_price).kind: \"sql\" is not a component kind"},
      {"name: score", "name: user", "component \"user\" is defined twice"},
      {"sort_by: score", "sort_by: product.product_stats.category_id", "output.sort_by: column"},
      {"type: linear", "type: xgboost", "scorer.type: \"xgboost\""},
      {"model_id: ranker", "model_id: \"bad id\"", "model_id: \"bad id\" is not a valid name"},
      {"target: product_id", "target: user_id", "column \"user_id\" is defined twice"},
      {"components:", "componentz:", "unknown option"},
  };
  for (const auto& c : cases) {
    std::string cfg = kFlow;
    size_t at = cfg.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    cfg.replace(at, c.from.size(), c.to);
    auto r = Put(cfg);
    ASSERT_FALSE(r.ok()) << c.to;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), c.message)) << "want: " << c.message << "\ngot: " << r.status();
  }
  // Nothing was stored by any rejected config.
  EXPECT_TRUE(flows_->List().empty());
  // The cycle names its members.
  std::string cfg = kFlow;
  cfg.replace(cfg.find("log1p(product.product_stats.price)"), 34, "log1p(score)");
  auto r = Put(cfg);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "log_price -> score -> log_price")) << r.status();
  // Broken YAML.
  r = Put("model_id: [unclosed");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "line 1")) << r.status();
}

TEST_F(FlowTest, TestHooksAreOffByDefault) {
  FlowsOptions strict;
  auto reg = *FlowRegistry::Open(flows_config_.get(), registry_.get(), strict, nullptr);
  std::string cfg = kFlow;
  cfg.replace(cfg.find("    keys: [product_id]\n"), 23, "    keys: [product_id]\n    test_delay: 1ms\n");
  v1::PutFlowRequest req;
  req.set_config(cfg);
  auto r = reg->Put(req);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "test hooks are disabled")) << r.status();
}

TEST_F(FlowTest, JsonConfigIsAccepted) {
  std::string json = R"({"model_id": "j", "inputs": {"context": ["user_id"], "target": "product_id"},
    "components": [{"name": "p", "kind": "features", "entity": "product", "keys": ["product_id"],
                    "features": ["product_stats.price"]}]})";
  auto r = Put(json);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model_id(), "j");
  v1::InferRequest req = Request({"p2"});
  req.set_model_id("j");
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  EXPECT_FLOAT_EQ(resp.rows(0).values(0).float32_value(), 20.0f);
}

TEST_F(FlowTest, VersionsHotSwapAndSurviveReopen) {
  auto v1r = Put(kFlow);
  ASSERT_TRUE(v1r.ok());
  EXPECT_EQ(v1r->version(), 1u);
  EXPECT_TRUE(v1r->created());
  // The same config again stores nothing.
  auto again = Put(kFlow);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created());
  EXPECT_EQ(again->version(), 1u);
  // Version 2: bias 1 -> 100. The next request sees it; version 1 stays addressable.
  std::string cfg = kFlow;
  cfg.replace(cfg.find("bias: 1"), 7, "bias: 100");
  auto v2r = Put(cfg);
  ASSERT_TRUE(v2r.ok());
  EXPECT_EQ(v2r->version(), 2u);
  v1::InferResponse r2, r1;
  ASSERT_TRUE(Infer(Request({"p2"}), &r2).ok());
  EXPECT_EQ(r2.version(), 2u);
  EXPECT_NEAR(r2.rows(0).values(Col(r2, "score")).float32_value(), 100 + 5 + 6, 1e-3);
  auto old = Request({"p2"});
  old.set_version(1);
  ASSERT_TRUE(Infer(old, &r1).ok());
  EXPECT_NEAR(r1.rows(0).values(Col(r1, "score")).float32_value(), 1 + 5 + 6, 1e-3);
  // Reopen from the same engine: both versions are back.
  auto reopened = FlowRegistry::Open(flows_config_.get(), registry_.get(), options_, nullptr);
  ASSERT_TRUE(reopened.ok());
  auto list = (*reopened)->List();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].latest_version(), 2u);
  auto rec = (*reopened)->Get("ranker", 1);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->config(), kFlow);
  EXPECT_EQ((*reopened)->Get("ranker", 3).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*reopened)->Find("nope", 0).status().code(), absl::StatusCode::kNotFound);
}

// Two components of one stage on the same entity and keys are one Retrieve (the plan says so),
// and each still gets exactly its own columns.
TEST_F(FlowTest, SameEntityFetchesOfAStageAreMerged) {
  ASSERT_TRUE(Put(R"(
model_id: ranker
inputs: {context: [user_id], target: product_id}
components:
  - {name: price, kind: features, entity: product, keys: [product_id], features: [product_stats.price]}
  - {name: category, kind: features, entity: product, keys: [product_id], features: [product_stats.category_id]}
  - {name: user, kind: features, entity: user, keys: [user_id], features: [user_profile.age]}
  - {name: premium, kind: features, entity: user, keys: [user_id], features: [user_profile.is_premium], timeout: 7ms}
)").ok());
  auto flow = flows_->Find("ranker", 0);
  ASSERT_TRUE(flow.ok());
  const auto& stage = (*flow)->plan.stages(0);
  ASSERT_EQ(stage.components_size(), 4);
  for (const auto& pc : stage.components()) {
    // Only `category` joins `price`: `premium` has another timeout than `user`.
    EXPECT_EQ(pc.fetched_with(), pc.name() == "category" ? "price" : "") << pc.name();
  }
  auto req = Request({"p1", "p2", "nope"});
  req.set_return_timings(true);
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  EXPECT_FALSE(resp.partial());
  int price = Col(resp, "product.product_stats.price"), cat = Col(resp, "product.product_stats.category_id");
  EXPECT_EQ(resp.columns(price).component(), "price");
  EXPECT_EQ(resp.columns(cat).component(), "category");
  EXPECT_FLOAT_EQ(Row(resp, "p2").values(price).float32_value(), 20);
  EXPECT_EQ(Row(resp, "p2").values(cat).string_value(), "c2");
  EXPECT_EQ(Row(resp, "nope").statuses(cat), v1::MISSING);
  EXPECT_EQ(Row(resp, "p1").statuses(cat), v1::PRESENT);
  // Both report the shared fetch's outcome and key count.
  ASSERT_EQ(resp.components_size(), 4);
  for (const auto& cr : resp.components()) {
    EXPECT_EQ(cr.status(), v1::COMPONENT_OK) << cr.name();
    if (cr.name() == "category" || cr.name() == "price") {
      EXPECT_EQ(cr.keys(), 3u) << cr.name();
    }
  }
}

TEST_F(FlowTest, BadRequests) {
  ASSERT_TRUE(Put(kFlow).ok());
  v1::InferResponse resp;
  auto no_ctx = Request({"p1"});
  no_ctx.mutable_context()->clear();
  auto s = Infer(no_ctx, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "context: missing \"user_id\"")) << s;
  auto bad_rf = Request({"p1"});
  (*bad_rf.mutable_request_features())["hour"] = Str("noon");
  s = Infer(bad_rf, &resp);
  EXPECT_TRUE(absl::StrContains(s.message(), "request_features.hour: expected INT32")) << s;
  auto unknown_rf = Request({"p1"});
  (*unknown_rf.mutable_request_features())["minute"] = I32(1);
  EXPECT_EQ(Infer(unknown_rf, &resp).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Infer(Request({}), &resp).code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::string> many(options_.max_targets + 1, "p1");
  EXPECT_EQ(Infer(Request(many), &resp).code(), absl::StatusCode::kResourceExhausted);
  // A given request feature is used (status PRESENT) and changes the score.
  auto with_hour = Request({"p2"});
  (*with_hour.mutable_request_features())["hour"] = I32(0);
  v1::InferResponse ok;
  ASSERT_TRUE(Infer(with_hour, &ok).ok());
  EXPECT_NEAR(ok.rows(0).values(Col(ok, "score")).float32_value(), 1 + 5, 1e-4);
}

// Key parts that are numbers (an INT32 column) are written as text, alone or in a composite key,
// and de-duplicated like strings.
TEST_F(FlowTest, NumericKeyPartsInCompositeKeys) {
  Persist("age_category", "age_affinity", {{{"30", "c1"}, {F32(1.5f)}}, {{"30", "c2"}, {F32(2.5f)}}}, {});
  ASSERT_TRUE(Put(R"(
model_id: ranker
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
    features: [product_stats.category_id]
  - name: age_category
    kind: features
    entity: age_category
    keys: [user.user_profile.age, product.product_stats.category_id]
    features: [age_affinity.lift]
)").ok());
  auto req = Request({"p1", "p2", "p3", "p1", "nope"});
  req.set_return_timings(true);
  v1::InferResponse resp;
  ASSERT_TRUE(Infer(req, &resp).ok());
  EXPECT_FALSE(resp.partial());
  ASSERT_EQ(resp.rows_size(), 5);
  const int lift = Col(resp, "age_category.age_affinity.lift");
  EXPECT_FLOAT_EQ(resp.rows(0).values(lift).float32_value(), 1.5f);  // (30, c1)
  EXPECT_FLOAT_EQ(resp.rows(1).values(lift).float32_value(), 2.5f);  // (30, c2)
  EXPECT_FLOAT_EQ(resp.rows(2).values(lift).float32_value(), 1.5f);  // (30, c1) again
  EXPECT_EQ(resp.rows(2).statuses(lift), v1::PRESENT);
  EXPECT_EQ(resp.rows(4).statuses(lift), v1::MISSING);  // no category: no key
  for (const auto& c : resp.components()) {
    if (c.name() == "age_category") {
      EXPECT_EQ(c.keys(), 2u);  // (30, c1), (30, c2)
    }
    if (c.name() == "product") {
      EXPECT_EQ(c.keys(), 4u);  // p1 twice
    }
  }
}

// A NaN in the sort column (a fetched float) sorts last in either order.
TEST_F(FlowTest, NaNSortsLast) {
  Persist("product", "product_stats", {{{"p4"}, {F32(std::nanf("")), Str("c1")}}}, {});
  for (const char* order : {"desc", "asc"}) {
    ASSERT_TRUE(Put(absl::StrCat(R"(
model_id: ranker
inputs:
  context: [user_id]
  target: product_id
components:
  - name: product
    kind: features
    entity: product
    keys: [product_id]
    features: [product_stats.price]
output:
  sort_by: product.product_stats.price
  order: )", order, "\n")).ok());
    std::vector<std::string> targets;
    for (int i = 0; i < 40; ++i) targets.push_back(i % 2 ? "p4" : "p" + std::to_string(1 + i % 3));
    auto req = Request(targets);
    req.set_top_k(40);
    v1::InferResponse resp;
    ASSERT_TRUE(Infer(req, &resp).ok());
    ASSERT_EQ(resp.rows_size(), 40);
    for (int i = 0; i < 20; ++i) EXPECT_NE(resp.rows(i).target(), "p4") << order << " row " << i;
    for (int i = 20; i < 40; ++i) EXPECT_EQ(resp.rows(i).target(), "p4") << order << " row " << i;
    const bool desc = std::string(order) == "desc";
    EXPECT_EQ(resp.rows(0).target(), desc ? "p3" : "p1") << order;
  }
}

// Where a fetch runs (the request's thread or a pool thread) changes nothing in the answer.
TEST_F(FlowTest, SameMatrixWhetherFetchesRunInlineOrOnThePool) {
  ASSERT_TRUE(Put(kFlow).ok());
  std::vector<std::string> targets;
  for (int i = 0; i < 60; ++i) targets.push_back(i % 7 == 6 ? "nope" : "p" + std::to_string(1 + i % 3));
  auto req = Request(targets);
  req.set_top_k(60);
  req.set_dense(true);
  std::vector<v1::InferResponse> answers;
  for (uint32_t inline_max : {0u, 1u, 1000u}) {
    FlowsOptions o = options_;
    o.inline_max_keys = inline_max;
    o.threads = 2;
    Executor executor(Sources{store_.get()}, o);
    auto flow = flows_->Find("ranker", 0);
    ASSERT_TRUE(flow.ok());
    v1::InferResponse resp;
    ASSERT_TRUE(executor.Run(**flow, req, &resp).ok());
    EXPECT_FALSE(resp.partial());
    resp.clear_total_micros();
    answers.push_back(resp);
  }
  ASSERT_EQ(answers[0].rows_size(), 60);
  for (size_t i = 1; i < answers.size(); ++i) {
    EXPECT_EQ(answers[i].SerializeAsString(), answers[0].SerializeAsString()) << "inline_max_keys case " << i;
  }
}

// A response on an arena (as gRPC's are) refers to the fetched and computed values instead of
// copying them; it must show the same matrix as a response on the heap, and stay valid after the
// request, the flow, the executor and the stored rows it came from are gone or changed.
TEST_F(FlowTest, MatrixOnAnArenaOutlivesWhatItCameFrom) {
  // Deadlines long enough for a run under valgrind, which checks the references best.
  options_.default_deadline_ms = 60000;
  options_.default_component_timeout_ms = 60000;
  flows_ = *FlowRegistry::Open(flows_config_.get(), registry_.get(), options_, &metrics_);
  executor_ = std::make_unique<Executor>(Sources{store_.get()}, options_);
  ASSERT_TRUE(Put(kFlow).ok());
  std::vector<std::string> targets;
  for (int i = 0; i < 30; ++i) targets.push_back(i % 5 == 4 ? "nope" : "p" + std::to_string(1 + i % 3));
  auto req = Request(targets);
  req.set_top_k(30);
  req.set_dense(true);
  (*req.mutable_request_features())["hour"] = I32(7);
  v1::InferResponse on_heap;
  ASSERT_TRUE(Infer(req, &on_heap).ok());
  on_heap.clear_total_micros();
  ASSERT_EQ(on_heap.rows_size(), 30);
  ASSERT_FALSE(on_heap.partial());

  // The request on the heap, the response on an arena; then everything else goes away.
  google::protobuf::Arena arena;
  auto* on_arena = google::protobuf::Arena::CreateMessage<v1::InferResponse>(&arena);
  {
    auto own_req = std::make_unique<v1::InferRequest>(req);
    auto flow = flows_->Find("ranker", 0);
    ASSERT_TRUE(flow.ok());
    ASSERT_TRUE(executor_->Run(**flow, *own_req, on_arena).ok());
    own_req->Clear();
  }
  executor_.reset();
  ASSERT_TRUE(Put(std::string(kFlow) + "description: another version\n").ok());
  flows_.reset();
  Persist("product", "product_stats", {{{"p1"}, {F32(99), Str("c2")}}}, {});
  Persist("user", "user_profile", {{{"u1"}, {I32(77)}}}, {"age"});
  on_arena->clear_total_micros();
  EXPECT_EQ(on_arena->SerializeAsString(), on_heap.SerializeAsString());
  EXPECT_EQ(on_arena->DebugString(), on_heap.DebugString());

  // The request on the same arena as the response (gRPC's case) gives the same matrix too.
  auto* req_on_arena = google::protobuf::Arena::CreateMessage<v1::InferRequest>(&arena);
  *req_on_arena = Request(targets);
  req_on_arena->set_top_k(30);
  req_on_arena->set_dense(true);
  (*req_on_arena->mutable_request_features())["hour"] = I32(7);
  auto* same_arena = google::protobuf::Arena::CreateMessage<v1::InferResponse>(&arena);
  flows_ = *FlowRegistry::Open(flows_config_.get(), registry_.get(), options_, &metrics_);
  executor_ = std::make_unique<Executor>(Sources{store_.get()}, options_);
  ASSERT_TRUE(Infer(*req_on_arena, same_arena).ok());
  v1::InferResponse heap_now;
  ASSERT_TRUE(Infer(*req_on_arena, &heap_now).ok());
  same_arena->clear_total_micros();
  heap_now.clear_total_micros();
  EXPECT_EQ(same_arena->SerializeAsString(), heap_now.SerializeAsString());
  EXPECT_NE(heap_now.SerializeAsString(), on_heap.SerializeAsString());  // the stored rows changed
  // Changing the request afterwards (its caller may) leaves the response as it was.
  (*req_on_arena->mutable_request_features())["hour"] = I32(1);
  req_on_arena->mutable_context()->clear();
  req_on_arena->clear_targets();
  EXPECT_EQ(same_arena->SerializeAsString(), heap_now.SerializeAsString());

  // A fetch that timed out is never referred to (its columns show defaults), though it finishes
  // after the request returned; the response stays valid after it is gone.
  std::string slow = kFlow;
  slow.replace(slow.find("    keys: [product_id]\n"), 23, "    keys: [product_id]\n    timeout: 20ms\n    test_delay: 100ms\n");
  ASSERT_TRUE(Put(slow).ok());
  auto* timed_out = google::protobuf::Arena::CreateMessage<v1::InferResponse>(&arena);
  ASSERT_TRUE(Infer(Request(targets), timed_out).ok());
  v1::InferResponse timed_out_heap;
  ASSERT_TRUE(Infer(Request(targets), &timed_out_heap).ok());
  executor_.reset();  // waits for the abandoned fetches
  EXPECT_TRUE(timed_out->partial());
  timed_out->clear_total_micros();
  timed_out_heap.clear_total_micros();
  for (auto& c : *timed_out->mutable_components()) c.clear_micros();
  for (auto& c : *timed_out_heap.mutable_components()) c.clear_micros();
  EXPECT_EQ(timed_out->SerializeAsString(), timed_out_heap.SerializeAsString());

  // Run fills an empty response only.
  executor_ = std::make_unique<Executor>(Sources{store_.get()}, options_);
  EXPECT_EQ(Infer(Request(targets), same_arena).code(), absl::StatusCode::kInternal);
}

TEST_F(FlowTest, OptionsParse) {
  auto o = ParseFlowsOptions(YAML::Load("{threads: 2, deadline: 40ms, component_timeout: 10ms, files: [a.yaml]}"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->threads, 2);
  EXPECT_EQ(o->default_deadline_ms, 40);
  EXPECT_EQ(o->files.size(), 1u);
  EXPECT_EQ(o->inline_max_keys, 8u);  // the default
  o = ParseFlowsOptions(YAML::Load("{inline_max_keys: 0}"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->inline_max_keys, 0u);
  auto bad = ParseFlowsOptions(YAML::Load("{treads: 2}"));
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "flows.treads")) << bad.status();
}

}  // namespace
}  // namespace kosh::flows
