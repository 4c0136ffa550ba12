#include "features/feature_store.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/metrics.h"
#include "features/codec.h"
#include "features/registry.h"
#include "features/test_values.h"
#include "gtest/gtest.h"
#include "storage/config_store.h"
#include "storage/engine.h"

namespace kosh::features {
namespace {

using namespace test_values;  // NOLINT: value builders

constexpr storage::Keyspace kRegistryKs = 0;
constexpr storage::Keyspace kFeaturesKs = 1;

// ---------------------------------------------------------------------------------------------
// Value and request builders

Value Ints(std::vector<int32_t> xs) {
  Value v;
  v.mutable_int32_list();
  for (int32_t x : xs) v.mutable_int32_list()->add_values(x);
  return v;
}
Value Longs(std::vector<int64_t> xs) {
  Value v;
  v.mutable_int64_list();
  for (int64_t x : xs) v.mutable_int64_list()->add_values(x);
  return v;
}

FeatureSpec Feature(const std::string& name, FeatureType type, uint32_t vector_length = 0) {
  FeatureSpec f;
  f.set_name(name);
  f.set_type(type);
  f.set_vector_length(vector_length);
  return f;
}
FeatureSpec WithDefault(FeatureSpec f, const Value& v) {
  *f.mutable_default_value() = v;
  return f;
}

v1::EntityKey Key(std::vector<std::string> parts) {
  v1::EntityKey k;
  for (auto& p : parts) k.add_parts(p);
  return k;
}

v1::PersistRow Row(const v1::EntityKey& key, std::vector<Value> values) {
  v1::PersistRow r;
  *r.mutable_key() = key;
  for (auto& v : values) *r.add_values() = v;
  return r;
}

bool Same(const google::protobuf::Message& a, const google::protobuf::Message& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

void ExpectError(const absl::Status& s, absl::StatusCode code, absl::string_view prefix,
                 absl::string_view contains = "") {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_TRUE(absl::StartsWith(s.message(), prefix))
      << "\"" << s.message() << "\" should start with \"" << prefix << "\"";
  if (!contains.empty()) {
    EXPECT_TRUE(absl::StrContains(s.message(), contains))
        << "\"" << s.message() << "\" should contain \"" << contains << "\"";
  }
}

// One feature of every type, and values for them.
std::vector<FeatureSpec> AllTypes() {
  return {Feature("b", v1::BOOL),
          Feature("i32", v1::INT32),
          Feature("i64", v1::INT64),
          Feature("f32", v1::FLOAT32),
          Feature("f64", v1::FLOAT64),
          Feature("s", v1::STRING),
          Feature("by", v1::BYTES),
          Feature("fv", v1::FLOAT32_VECTOR, 3),
          Feature("hv", v1::FLOAT16_VECTOR, 2),
          Feature("i8v", v1::INT8_VECTOR, 4),
          Feature("i32v", v1::INT32_VECTOR, 2),
          Feature("i64v", v1::INT64_VECTOR, 2)};
}
std::vector<Value> AllValues(int seed) {
  return {Bool(seed % 2 == 1),
          I32(-1000 * seed),
          I64((int64_t{1} << 40) + seed),
          F32(0.5f * seed),
          F64(0.1 * seed),
          Str(absl::StrCat("name-", seed)),
          Bytes(std::string("\x00\xff", 2) + std::to_string(seed)),
          Floats({1.0f * seed, -2.0f, 0.25f}),
          Floats({-2.5f, 1.0f * seed}),
          Ints({-128, 127, seed, -seed}),
          Ints({std::numeric_limits<int32_t>::max(), seed}),
          Longs({std::numeric_limits<int64_t>::min(), seed})};
}

// ---------------------------------------------------------------------------------------------
// Fixture

class FeatureStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Set by member so that options added to KeyspaceOptions later need no change here.
    storage::KeyspaceOptions registry, features;
    registry.name = "registry";
    features.name = "features";
    features.expired = FeatureStore::RowExpired;
    engine_ = storage::NewMemoryEngine({registry, features});
    config_ = storage::NewEngineConfigStore(engine_.get(), kRegistryKs);
    auto r = Registry::Open(config_.get());
    ASSERT_TRUE(r.ok()) << r.status();
    reg_ = std::move(*r);
    options_.max_keys_per_request = 8;
    options_.max_rows_per_write = 5;
    options_.max_key_part_bytes = 16;
    options_.cache_bytes = 1 << 20;
    MakeStore();
    v1::Entity user;
    user.set_name("user");
    user.add_key_columns("user_id");
    ASSERT_TRUE(reg_->CreateEntity(user).ok());
    v1::Entity pair;
    pair.set_name("pair");
    pair.add_key_columns("user_id");
    pair.add_key_columns("item_id");
    ASSERT_TRUE(reg_->CreateEntity(pair).ok());
  }

  void MakeStore() {
    store_.reset();
    metrics_ = std::make_unique<base::MetricsRegistry>();
    store_ = std::make_unique<FeatureStore>(engine_.get(), kFeaturesKs, reg_.get(), options_,
                                            metrics_.get(), [this] { return now_; });
  }

  uint32_t CreateGroup(const std::string& name, std::vector<FeatureSpec> features, int64_t ttl = 0,
                       const std::string& entity = "user") {
    v1::CreateFeatureGroupRequest req;
    req.set_entity(entity);
    req.set_name(name);
    req.set_ttl_seconds(ttl);
    for (auto& f : features) *req.add_features() = f;
    auto g = reg_->CreateFeatureGroup(req);
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? g->id() : 0;
  }

  void AddVersion(const std::string& group, std::vector<FeatureSpec> features,
                  const std::string& entity = "user") {
    v1::AddFeatureGroupVersionRequest req;
    req.set_entity(entity);
    req.set_group(group);
    for (auto& f : features) *req.add_features() = f;
    auto g = reg_->AddVersion(req);
    ASSERT_TRUE(g.ok()) << g.status();
  }

  absl::Status Persist(const std::string& group, std::vector<v1::PersistRow> rows,
                       std::vector<std::string> features = {}, uint32_t version = 0,
                       const std::string& entity = "user", v1::PersistResponse* resp_out = nullptr) {
    v1::PersistRequest req;
    req.set_entity(entity);
    req.set_group(group);
    req.set_version(version);
    for (auto& f : features) req.add_features(f);
    for (auto& r : rows) *req.add_rows() = r;
    v1::PersistResponse resp;
    absl::Status s = store_->Persist(req, &resp);
    if (s.ok()) {
      EXPECT_EQ(resp.rows_written(), rows.size());
    }
    if (resp_out != nullptr) *resp_out = resp;
    return s;
  }

  absl::StatusOr<v1::RetrieveResponse> Get(std::vector<v1::EntityKey> keys,
                                           std::vector<std::string> features,
                                           const std::string& entity = "user") {
    v1::RetrieveRequest req;
    req.set_entity(entity);
    for (auto& k : keys) *req.add_keys() = k;
    for (auto& f : features) req.add_features(f);
    v1::RetrieveResponse resp;
    absl::Status s = store_->Retrieve(req, &resp);
    if (!s.ok()) return s;
    EXPECT_EQ(resp.rows_size(), static_cast<int>(keys.size()));
    for (const auto& row : resp.rows()) {
      EXPECT_EQ(row.values_size(), resp.columns_size());
      EXPECT_EQ(row.statuses_size(), resp.columns_size());
    }
    return resp;
  }

  absl::StatusOr<v1::RetrieveMatrixResponse> Matrix(std::vector<v1::EntityKey> keys,
                                                    std::vector<std::string> features,
                                                    const std::string& entity = "user") {
    v1::RetrieveRequest req;
    req.set_entity(entity);
    for (auto& k : keys) *req.add_keys() = k;
    for (auto& f : features) req.add_features(f);
    v1::RetrieveMatrixResponse resp;
    absl::Status s = store_->RetrieveMatrix(req, &resp);
    if (!s.ok()) return s;
    EXPECT_EQ(resp.values_size(), static_cast<int>(resp.num_rows() * resp.num_cols()));
    EXPECT_EQ(resp.statuses_size(), static_cast<int>(resp.num_rows()) * resp.columns_size());
    return resp;
  }

  // The single value of (one key, one feature).
  std::pair<Value, v1::ValueStatus> GetOne(const v1::EntityKey& key, const std::string& feature,
                                           const std::string& entity = "user") {
    auto r = Get({key}, {feature}, entity);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->rows_size() != 1 || r->rows(0).values_size() != 1) return {Value(), v1::VALUE_STATUS_UNSPECIFIED};
    return {r->rows(0).values(0), r->rows(0).statuses(0)};
  }

  std::optional<std::string> RawGet(uint32_t group_id, const v1::EntityKey& key) {
    std::string skey = StorageKey(group_id, key);
    absl::string_view keys[] = {skey};
    std::vector<std::optional<std::string>> values;
    EXPECT_TRUE(engine_->MultiGet(kFeaturesKs, keys, &values).ok());
    return values[0];
  }

  int64_t now_ = 1000;
  FeatureStoreOptions options_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<storage::ConfigStore> config_;
  std::unique_ptr<Registry> reg_;
  std::unique_ptr<base::MetricsRegistry> metrics_;  // outlives store_ (declared before it)
  std::unique_ptr<FeatureStore> store_;
};

// ---------------------------------------------------------------------------------------------
// Round trips and statuses

TEST_F(FeatureStoreTest, PersistThenRetrieveEveryType) {
  CreateGroup("all", AllTypes());
  v1::PersistResponse presp;
  ASSERT_TRUE(Persist("all", {Row(Key({"u1"}), AllValues(1)), Row(Key({"u2"}), AllValues(2))}, {}, 0,
                      "user", &presp)
                  .ok());
  EXPECT_EQ(presp.rows_written(), 2u);
  EXPECT_EQ(presp.version(), 1u);

  auto r = Get({Key({"u2"}), Key({"u1"})}, {"all.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  const auto specs = AllTypes();
  ASSERT_EQ(r->columns_size(), static_cast<int>(specs.size()));
  for (int c = 0; c < r->columns_size(); ++c) {
    EXPECT_EQ(r->columns(c).group(), "all");
    EXPECT_EQ(r->columns(c).feature(), specs[c].name());
    EXPECT_EQ(r->columns(c).type(), specs[c].type());
    EXPECT_EQ(r->columns(c).vector_length(), specs[c].vector_length());
  }
  for (int k = 0; k < 2; ++k) {
    const std::vector<Value> want = AllValues(k == 0 ? 2 : 1);
    for (int c = 0; c < r->columns_size(); ++c) {
      EXPECT_EQ(r->rows(k).statuses(c), v1::PRESENT) << k << "," << c;
      EXPECT_TRUE(Same(r->rows(k).values(c), want[c]))
          << specs[c].name() << ": got " << r->rows(k).values(c).ShortDebugString() << ", want "
          << want[c].ShortDebugString();
    }
  }
}

TEST_F(FeatureStoreTest, NamedFeaturesInRequestOrder) {
  CreateGroup("all", AllTypes());
  ASSERT_TRUE(Persist("all", {Row(Key({"u1"}), AllValues(3))}).ok());
  auto r = Get({Key({"u1"})}, {"all.s", "all.i32", "all.s"});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->columns_size(), 3);
  EXPECT_EQ(r->columns(0).feature(), "s");
  EXPECT_EQ(r->columns(1).feature(), "i32");
  EXPECT_EQ(r->rows(0).values(0).string_value(), "name-3");
  EXPECT_EQ(r->rows(0).values(1).int32_value(), -3000);
  EXPECT_EQ(r->rows(0).values(2).string_value(), "name-3");
}

TEST_F(FeatureStoreTest, UnknownKeysAreMissingWithDefaults) {
  CreateGroup("g", {WithDefault(Feature("age", v1::INT32), I32(18)), Feature("name", v1::STRING),
                    WithDefault(Feature("emb", v1::FLOAT16_VECTOR, 2), Floats({0.5f, -1.0f})),
                    Feature("q", v1::INT8_VECTOR, 3)});
  ASSERT_TRUE(Persist("g", {Row(Key({"known"}), {I32(40), Str("ann"), Floats({1, 2}), Ints({1, 2, 3})})}).ok());
  auto r = Get({Key({"nobody"}), Key({"known"}), Key({""})}, {"g.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  for (int k : {0, 2}) {
    for (int c = 0; c < 4; ++c) EXPECT_EQ(r->rows(k).statuses(c), v1::MISSING);
    EXPECT_EQ(r->rows(k).values(0).int32_value(), 18);
    EXPECT_EQ(r->rows(k).values(1).kind_case(), Value::kStringValue);
    EXPECT_EQ(r->rows(k).values(1).string_value(), "");
    EXPECT_TRUE(Same(r->rows(k).values(2), Floats({0.5f, -1.0f})));
    EXPECT_TRUE(Same(r->rows(k).values(3), Ints({0, 0, 0})));
  }
  EXPECT_EQ(r->rows(1).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(1).values(0).int32_value(), 40);
}

TEST_F(FeatureStoreTest, PartialPersistReadsDefault) {
  CreateGroup("g", {Feature("a", v1::INT32), WithDefault(Feature("b", v1::STRING), Str("none")),
                    Feature("c", v1::FLOAT64)});
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {F64(2.5), I32(7)})}, {"c", "a"}).ok());
  auto r = Get({Key({"u1"})}, {"g.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows(0).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(0).int32_value(), 7);
  EXPECT_EQ(r->rows(0).statuses(1), v1::DEFAULT);
  EXPECT_EQ(r->rows(0).values(1).string_value(), "none");
  EXPECT_EQ(r->rows(0).statuses(2), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(2).float64_value(), 2.5);

  // A persist replaces the whole row: what it does not name reads DEFAULT afterwards.
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {Str("bob")})}, {"b"}).ok());
  r = Get({Key({"u1"})}, {"g.*"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->rows(0).statuses(0), v1::DEFAULT);
  EXPECT_EQ(r->rows(0).values(0).int32_value(), 0);
  EXPECT_EQ(r->rows(0).statuses(1), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(1).string_value(), "bob");
  EXPECT_EQ(r->rows(0).statuses(2), v1::DEFAULT);
}

TEST_F(FeatureStoreTest, OverwriteAndMultipleGroups) {
  CreateGroup("a", {Feature("x", v1::INT64)});
  CreateGroup("b", {Feature("y", v1::STRING)});
  ASSERT_TRUE(Persist("a", {Row(Key({"u1"}), {I64(1)}), Row(Key({"u2"}), {I64(2)})}).ok());
  ASSERT_TRUE(Persist("b", {Row(Key({"u2"}), {Str("two")})}).ok());
  ASSERT_TRUE(Persist("a", {Row(Key({"u1"}), {I64(11)})}).ok());
  auto r = Get({Key({"u1"}), Key({"u2"})}, {"b.y", "a.x"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->columns(0).group(), "b");
  EXPECT_EQ(r->columns(1).group(), "a");
  EXPECT_EQ(r->rows(0).statuses(0), v1::MISSING);
  EXPECT_EQ(r->rows(0).values(1).int64_value(), 11);
  EXPECT_EQ(r->rows(1).values(0).string_value(), "two");
  EXPECT_EQ(r->rows(1).values(1).int64_value(), 2);
  EXPECT_EQ(r->rows(1).statuses(0), v1::PRESENT);
}

TEST_F(FeatureStoreTest, LargeValuesRoundTripCompressed) {
  uint32_t id = CreateGroup("g", {Feature("text", v1::STRING), Feature("n", v1::INT32)});
  std::string text;
  while (text.size() < 8000) text += "the quick brown fox ";
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {Str(text), I32(5)})}).ok());
  auto raw = RawGet(id, Key({"u1"}));
  ASSERT_TRUE(raw.has_value());
  EXPECT_LT(raw->size(), text.size() / 2) << "stored rows are compressed";
  auto [v, st] = GetOne(Key({"u1"}), "g.text");
  EXPECT_EQ(st, v1::PRESENT);
  EXPECT_EQ(v.string_value(), text);
}

// ---------------------------------------------------------------------------------------------
// Schema versions

TEST_F(FeatureStoreTest, RowsDecodeByTheirVersion) {
  CreateGroup("g", {Feature("a", v1::INT32), Feature("b", v1::STRING), Feature("c", v1::FLOAT32)});
  ASSERT_TRUE(Persist("g", {Row(Key({"old"}), {I32(1), Str("bee"), F32(1.5f)})}).ok());
  // v2 removes b, adds d (with a default) and reorders.
  AddVersion("g", {Feature("c", v1::FLOAT32), WithDefault(Feature("d", v1::BOOL), Bool(true)),
                   Feature("a", v1::INT32)});
  v1::PersistResponse presp;
  ASSERT_TRUE(Persist("g", {Row(Key({"new"}), {F32(2.5f), Bool(false), I32(2)})}, {}, 0, "user", &presp).ok());
  EXPECT_EQ(presp.version(), 2u);

  auto r = Get({Key({"old"}), Key({"new"})}, {"g.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->columns_size(), 3);
  EXPECT_EQ(r->columns(0).feature(), "c");
  EXPECT_EQ(r->columns(1).feature(), "d");
  EXPECT_EQ(r->columns(2).feature(), "a");
  // The v1 row.
  EXPECT_EQ(r->rows(0).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(0).float32_value(), 1.5f);
  EXPECT_EQ(r->rows(0).statuses(1), v1::DEFAULT);
  EXPECT_TRUE(r->rows(0).values(1).bool_value());
  EXPECT_EQ(r->rows(0).statuses(2), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(2).int32_value(), 1);
  // The v2 row.
  EXPECT_EQ(r->rows(1).values(0).float32_value(), 2.5f);
  EXPECT_EQ(r->rows(1).statuses(1), v1::PRESENT);
  EXPECT_FALSE(r->rows(1).values(1).bool_value());
  EXPECT_EQ(r->rows(1).values(2).int32_value(), 2);

  // The removed feature can still be read by name: present in v1 rows, DEFAULT in v2 rows.
  auto removed = Get({Key({"old"}), Key({"new"})}, {"g.b"});
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(removed->columns(0).type(), v1::STRING);
  EXPECT_EQ(removed->rows(0).statuses(0), v1::PRESENT);
  EXPECT_EQ(removed->rows(0).values(0).string_value(), "bee");
  EXPECT_EQ(removed->rows(1).statuses(0), v1::DEFAULT);
  EXPECT_EQ(removed->rows(1).values(0).string_value(), "");
}

TEST_F(FeatureStoreTest, WritersMayStillUseAnOlderVersion) {
  CreateGroup("g", {Feature("a", v1::INT32), Feature("b", v1::STRING)});
  AddVersion("g", {Feature("a", v1::INT32), Feature("d", v1::BOOL)});
  v1::PersistResponse presp;
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(9), Str("v1-writer")})}, {}, 1, "user", &presp).ok());
  EXPECT_EQ(presp.version(), 1u);
  auto r = Get({Key({"u1"})}, {"g.a", "g.b", "g.d"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows(0).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(0).int32_value(), 9);
  EXPECT_EQ(r->rows(0).statuses(1), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(1).string_value(), "v1-writer");
  EXPECT_EQ(r->rows(0).statuses(2), v1::DEFAULT);
  // Feature names are resolved against the version written, not the latest.
  ExpectError(Persist("g", {Row(Key({"u1"}), {Bool(true)})}, {"d"}, 1), absl::StatusCode::kInvalidArgument,
              "features[0]: ", "unknown feature \"d\" in version 1");
  ExpectError(Persist("g", {Row(Key({"u1"}), {Str("x")})}, {"b"}, 2), absl::StatusCode::kInvalidArgument,
              "features[0]: ", "unknown feature \"b\" in version 2");
  ASSERT_TRUE(Persist("g", {Row(Key({"u2"}), {Str("partial-v1")})}, {"b"}, 1).ok());
  EXPECT_EQ(GetOne(Key({"u2"}), "g.b").first.string_value(), "partial-v1");
  EXPECT_EQ(GetOne(Key({"u2"}), "g.a").second, v1::DEFAULT);
}

TEST_F(FeatureStoreTest, RetypedFeatureReadsDefaultForOldRows) {
  CreateGroup("g", {Feature("x", v1::INT32), Feature("v", v1::FLOAT32_VECTOR, 2), Feature("keep", v1::INT64)});
  ASSERT_TRUE(Persist("g", {Row(Key({"old"}), {I32(77), Floats({1, 2}), I64(5)})}).ok());
  // v2: x becomes a STRING, v changes length.
  AddVersion("g", {WithDefault(Feature("x", v1::STRING), Str("n/a")), Feature("v", v1::FLOAT32_VECTOR, 3),
                   Feature("keep", v1::INT64)});
  ASSERT_TRUE(Persist("g", {Row(Key({"new"}), {Str("seventy"), Floats({1, 2, 3}), I64(6)})}).ok());
  auto r = Get({Key({"old"}), Key({"new"})}, {"g.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->columns(0).type(), v1::STRING);
  EXPECT_EQ(r->columns(1).vector_length(), 3u);
  EXPECT_EQ(r->rows(0).statuses(0), v1::DEFAULT);
  EXPECT_EQ(r->rows(0).values(0).string_value(), "n/a");
  EXPECT_EQ(r->rows(0).statuses(1), v1::DEFAULT);
  EXPECT_TRUE(Same(r->rows(0).values(1), Floats({0, 0, 0})));
  EXPECT_EQ(r->rows(0).statuses(2), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(2).int64_value(), 5);
  EXPECT_EQ(r->rows(1).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(1).values(0).string_value(), "seventy");
  EXPECT_TRUE(Same(r->rows(1).values(1), Floats({1, 2, 3})));

  // The matrix form agrees: the old row's vector is the column's default.
  auto m = Matrix({Key({"old"}), Key({"new"})}, {"g.v", "g.keep"});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->num_cols(), 4u);
  EXPECT_EQ(std::vector<float>(m->values().begin(), m->values().end()),
            std::vector<float>({0, 0, 0, 5, 1, 2, 3, 6}));
  EXPECT_EQ(m->statuses(0), v1::DEFAULT);
  EXPECT_EQ(m->statuses(1), v1::PRESENT);
}

TEST_F(FeatureStoreTest, UnknownVersionIsRejected) {
  CreateGroup("g", {Feature("a", v1::INT32)});
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(1)})}).ok());
  ExpectError(Persist("g", {Row(Key({"u1"}), {I32(2)})}, {}, 2), absl::StatusCode::kInvalidArgument,
              "version: ", "versions 1 to 1, not 2");
  EXPECT_EQ(GetOne(Key({"u1"}), "g.a").first.int32_value(), 1);
}

// ---------------------------------------------------------------------------------------------
// TTL

TEST_F(FeatureStoreTest, TtlExpiresRowsAndCompactionDropsThem) {
  uint32_t id = CreateGroup("g", {WithDefault(Feature("score", v1::FLOAT32), F32(-1.0f)), Feature("n", v1::INT32)},
                            /*ttl=*/10);
  now_ = 1000;
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {F32(0.75f), I32(3)})}).ok());
  uint32_t expiry = 0;
  auto raw = RawGet(id, Key({"u1"}));
  ASSERT_TRUE(raw.has_value());
  ASSERT_TRUE(PeekExpiry(*raw, &expiry));
  EXPECT_EQ(expiry, 1010u);

  now_ = 1005;
  auto r = Get({Key({"u1"})}, {"g.*"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->rows(0).statuses(0), v1::PRESENT);
  EXPECT_EQ(r->rows(0).values(0).float32_value(), 0.75f);

  now_ = 1009;
  EXPECT_EQ(GetOne(Key({"u1"}), "g.score").second, v1::PRESENT);
  now_ = 1010;
  EXPECT_EQ(GetOne(Key({"u1"}), "g.score").second, v1::EXPIRED);
  now_ = 1011;
  r = Get({Key({"u1"})}, {"g.*"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->rows(0).statuses(0), v1::EXPIRED);
  EXPECT_EQ(r->rows(0).values(0).float32_value(), -1.0f);
  EXPECT_EQ(r->rows(0).statuses(1), v1::EXPIRED);
  EXPECT_EQ(r->rows(0).values(1).int32_value(), 0);
  auto m = Matrix({Key({"u1"})}, {"g.*"});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(std::vector<float>(m->values().begin(), m->values().end()), std::vector<float>({-1.0f, 0.0f}));
  EXPECT_EQ(m->statuses(0), v1::EXPIRED);

  // A rewrite refreshes the expiry.
  ASSERT_TRUE(Persist("g", {Row(Key({"u2"}), {F32(2.0f), I32(4)})}).ok());  // expires at 1021
  EXPECT_EQ(GetOne(Key({"u2"}), "g.n").second, v1::PRESENT);

  // A row written "now" by the real clock with the TTL still ahead survives compaction; the
  // engine compacts with the real clock, so rows written at t=1011 are long expired.
  uint32_t keep_id = CreateGroup("forever", {Feature("n", v1::INT32)}, /*ttl=*/0);
  ASSERT_TRUE(Persist("forever", {Row(Key({"u1"}), {I32(1)})}).ok());
  now_ = SystemNowSeconds();
  ASSERT_TRUE(Persist("g", {Row(Key({"fresh"}), {F32(9.0f), I32(9)})}).ok());

  ASSERT_TRUE(engine_->CompactAll(kFeaturesKs).ok());
  EXPECT_FALSE(RawGet(id, Key({"u1"})).has_value()) << "expired row not dropped by compaction";
  EXPECT_FALSE(RawGet(id, Key({"u2"})).has_value());
  EXPECT_TRUE(RawGet(id, Key({"fresh"})).has_value());
  EXPECT_TRUE(RawGet(keep_id, Key({"u1"})).has_value());
  EXPECT_EQ(GetOne(Key({"fresh"}), "g.n").first.int32_value(), 9);
  // The registry keyspace is untouched by compaction of the features keyspace.
  EXPECT_TRUE(reg_->GetFeatureGroup("user", "g").ok());
}

TEST_F(FeatureStoreTest, HugeTtlSaturatesInsteadOfOverflowing) {
  // Expiries are stored as u32 seconds: a TTL past 2106 (up to the largest int64 the registry
  // accepts) must clamp to the far future, not wrap around into the past.
  uint32_t big = CreateGroup("big", {Feature("n", v1::INT32)}, /*ttl=*/int64_t{1} << 40);
  uint32_t huge = CreateGroup("huge", {Feature("n", v1::INT32)}, std::numeric_limits<int64_t>::max());
  now_ = 1000;
  ASSERT_TRUE(Persist("big", {Row(Key({"u1"}), {I32(1)})}).ok());
  ASSERT_TRUE(Persist("huge", {Row(Key({"u1"}), {I32(2)})}).ok());
  for (uint32_t id : {big, huge}) {
    auto raw = RawGet(id, Key({"u1"}));
    ASSERT_TRUE(raw.has_value());
    uint32_t expiry = 0;
    ASSERT_TRUE(PeekExpiry(*raw, &expiry));
    EXPECT_EQ(expiry, std::numeric_limits<uint32_t>::max()) << "group id " << id;
  }
  now_ = 2000;
  EXPECT_EQ(GetOne(Key({"u1"}), "big.n").second, v1::PRESENT);
  EXPECT_EQ(GetOne(Key({"u1"}), "huge.n").second, v1::PRESENT);
  ASSERT_TRUE(engine_->CompactAll(kFeaturesKs).ok());
  EXPECT_TRUE(RawGet(huge, Key({"u1"})).has_value());
}

TEST_F(FeatureStoreTest, RowExpiredPredicate) {
  EXPECT_FALSE(FeatureStore::RowExpired("", 1 << 30));
  EXPECT_FALSE(FeatureStore::RowExpired("not a row", 1 << 30));
  Layout layout(1, {Feature("a", v1::INT32)});
  Value v = I32(1);
  const Value* vp = &v;
  int field = 0;
  std::string with_ttl, without_ttl;
  ASSERT_TRUE(EncodeRow(layout, absl::MakeConstSpan(&field, 1), absl::MakeConstSpan(&vp, 1), 500, {}, "",
                        &with_ttl)
                  .ok());
  ASSERT_TRUE(EncodeRow(layout, absl::MakeConstSpan(&field, 1), absl::MakeConstSpan(&vp, 1), 0, {}, "",
                        &without_ttl)
                  .ok());
  EXPECT_FALSE(FeatureStore::RowExpired(with_ttl, 499));
  EXPECT_TRUE(FeatureStore::RowExpired(with_ttl, 500));
  EXPECT_FALSE(FeatureStore::RowExpired(without_ttl, std::numeric_limits<int64_t>::max()));
}

// ---------------------------------------------------------------------------------------------
// Matrix

TEST_F(FeatureStoreTest, RetrieveMatrixLayout) {
  CreateGroup("m", {Feature("b", v1::BOOL), WithDefault(Feature("i", v1::INT32), I32(7)),
                    Feature("v", v1::FLOAT32_VECTOR, 3),
                    WithDefault(Feature("h", v1::FLOAT16_VECTOR, 2), Floats({0.5f, 0.1f})),
                    Feature("l", v1::INT64_VECTOR, 2), Feature("f", v1::FLOAT64)});
  CreateGroup("other", {Feature("q", v1::INT8_VECTOR, 2), Feature("name", v1::STRING)});
  ASSERT_TRUE(Persist("m", {Row(Key({"u1"}), {Bool(true), I32(-3), Floats({1, 2, 3}), Floats({1.5f, -2.0f}),
                                              Longs({10, -20}), F64(0.25)}),
                            Row(Key({"u2"}), {Bool(false), I32(100), Floats({4, 5, 6}), Floats({0, 65504}),
                                              Longs({0, 1}), F64(-8)})})
                  .ok());
  ASSERT_TRUE(Persist("other", {Row(Key({"u2"}), {Ints({-5, 5}), Str("two")})}).ok());
  // u3 is written with only b: its other features read DEFAULT.
  ASSERT_TRUE(Persist("m", {Row(Key({"u3"}), {Bool(true)})}, {"b"}).ok());

  auto m = Matrix({Key({"u1"}), Key({"missing"}), Key({"u2"}), Key({"u3"})}, {"m.*", "other.q"});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->columns_size(), 7);
  EXPECT_EQ(m->columns(2).feature(), "v");
  EXPECT_EQ(m->columns(2).vector_length(), 3u);
  EXPECT_EQ(m->columns(6).group(), "other");
  EXPECT_EQ(m->num_rows(), 4u);
  ASSERT_EQ(m->num_cols(), 1u + 1 + 3 + 2 + 2 + 1 + 2);
  const float h01 = HalfToFloat(FloatToHalf(0.1f));
  std::vector<std::vector<float>> want = {
      {1, -3, 1, 2, 3, 1.5f, -2, 10, -20, 0.25f, 0, 0},  // u1; other.q missing -> 0 0
      {0, 7, 0, 0, 0, 0.5f, h01, 0, 0, 0, 0, 0},         // missing: defaults
      {0, 100, 4, 5, 6, 0, 65504, 0, 1, -8, -5, 5},       // u2
      {1, 7, 0, 0, 0, 0.5f, h01, 0, 0, 0, 0, 0},         // u3: only b set
  };
  for (size_t k = 0; k < want.size(); ++k) {
    std::vector<float> got(m->values().begin() + k * m->num_cols(), m->values().begin() + (k + 1) * m->num_cols());
    EXPECT_EQ(got, want[k]) << "row " << k;
  }
  auto status = [&](int k, int c) { return m->statuses(k * m->columns_size() + c); };
  for (int c = 0; c < 6; ++c) {
    EXPECT_EQ(status(0, c), v1::PRESENT);
    EXPECT_EQ(status(1, c), v1::MISSING);
    EXPECT_EQ(status(2, c), v1::PRESENT);
  }
  EXPECT_EQ(status(0, 6), v1::MISSING);
  EXPECT_EQ(status(2, 6), v1::PRESENT);
  EXPECT_EQ(status(3, 0), v1::PRESENT);
  EXPECT_EQ(status(3, 1), v1::DEFAULT);
  EXPECT_EQ(status(3, 6), v1::MISSING);
}

TEST_F(FeatureStoreTest, RetrieveMatrixMatchesRetrieve) {
  CreateGroup("all", AllTypes());
  ASSERT_TRUE(Persist("all", {Row(Key({"u1"}), AllValues(5))}).ok());
  std::vector<std::string> numeric;
  for (const auto& f : AllTypes()) {
    if (IsNumeric(f.type())) numeric.push_back("all." + f.name());
  }
  auto m = Matrix({Key({"u1"})}, numeric);
  ASSERT_TRUE(m.ok()) << m.status();
  auto r = Get({Key({"u1"})}, numeric);
  ASSERT_TRUE(r.ok());
  // Flatten the typed response by hand and compare.
  std::vector<float> flat;
  for (const Value& v : r->rows(0).values()) {
    switch (v.kind_case()) {
      case Value::kBoolValue: flat.push_back(v.bool_value() ? 1.0f : 0.0f); break;
      case Value::kInt32Value: flat.push_back(static_cast<float>(v.int32_value())); break;
      case Value::kInt64Value: flat.push_back(static_cast<float>(v.int64_value())); break;
      case Value::kFloat32Value: flat.push_back(v.float32_value()); break;
      case Value::kFloat64Value: flat.push_back(static_cast<float>(v.float64_value())); break;
      case Value::kFloatList: for (float x : v.float_list().values()) flat.push_back(x); break;
      case Value::kInt32List: for (int32_t x : v.int32_list().values()) flat.push_back(static_cast<float>(x)); break;
      case Value::kInt64List: for (int64_t x : v.int64_list().values()) flat.push_back(static_cast<float>(x)); break;
      default: ADD_FAILURE() << "unexpected value " << v.ShortDebugString();
    }
  }
  EXPECT_EQ(std::vector<float>(m->values().begin(), m->values().end()), flat);
}

TEST_F(FeatureStoreTest, RetrieveMatrixRejectsNonNumeric) {
  CreateGroup("g", {Feature("n", v1::INT32), Feature("name", v1::STRING), Feature("blob", v1::BYTES)});
  auto m = Matrix({Key({"u1"})}, {"g.n", "g.name"});
  ExpectError(m.status(), absl::StatusCode::kInvalidArgument, "features: ", "\"g.name\" is STRING");
  auto star = Matrix({Key({"u1"})}, {"g.*"});
  EXPECT_EQ(star.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Matrix({Key({"u1"})}, {"g.n"}).ok());
}

TEST_F(FeatureStoreTest, EmptyKeyListGivesEmptyResults) {
  CreateGroup("g", {Feature("n", v1::INT32)});
  auto r = Get({}, {"g.*"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->columns_size(), 1);
  EXPECT_EQ(r->rows_size(), 0);
  auto m = Matrix({}, {"g.*"});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->num_rows(), 0u);
  EXPECT_EQ(m->num_cols(), 1u);
  EXPECT_EQ(m->values_size(), 0);
}

// ---------------------------------------------------------------------------------------------
// Composite keys

TEST_F(FeatureStoreTest, CompositeKeys) {
  CreateGroup("aff", {Feature("clicks", v1::INT64)}, 0, "pair");
  ASSERT_TRUE(Persist("aff",
                      {Row(Key({"u1", "i1"}), {I64(11)}), Row(Key({"u1", "i2"}), {I64(12)}),
                       Row(Key({"u2", "i1"}), {I64(21)}), Row(Key({"a", "bc"}), {I64(1)}),
                       Row(Key({"ab", "c"}), {I64(2)})},
                      {}, 0, "pair")
                  .ok());
  auto r = Get({Key({"u1", "i2"}), Key({"u2", "i1"}), Key({"u1", "i1"}), Key({"u2", "i2"}), Key({"ab", "c"}),
                Key({"a", "bc"})},
               {"aff.clicks"}, "pair");
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<int64_t> got;
  for (const auto& row : r->rows()) got.push_back(row.values(0).int64_value());
  EXPECT_EQ(got, std::vector<int64_t>({12, 21, 11, 0, 2, 1}));
  EXPECT_EQ(r->rows(3).statuses(0), v1::MISSING);
  // Key parts are length-prefixed, so ("a","bc") and ("ab","c") are different keys.
  EXPECT_NE(StorageKey(1, Key({"a", "bc"})), StorageKey(1, Key({"ab", "c"})));
}

// The in-process form (keys as text views, n parts per key) reads exactly what the request form
// reads, and checks its keys the same way.
TEST_F(FeatureStoreTest, KeyViewsReadAsEntityKeys) {
  CreateGroup("aff", {Feature("clicks", v1::INT64)}, 0, "pair");
  ASSERT_TRUE(Persist("aff", {Row(Key({"u1", "i1"}), {I64(11)}), Row(Key({"a", "bc"}), {I64(1)})}, {}, 0, "pair").ok());
  auto by_keys = Get({Key({"a", "bc"}), Key({"u1", "i1"}), Key({"ab", "c"}), Key({"u1", "i1"})}, {"aff.clicks"}, "pair");
  ASSERT_TRUE(by_keys.ok()) << by_keys.status();
  v1::RetrieveRequest req;
  req.set_entity("pair");
  req.add_features("aff.clicks");
  std::vector<absl::string_view> parts = {"a", "bc", "u1", "i1", "ab", "c", "u1", "i1"};
  v1::RetrieveResponse by_views;
  ASSERT_TRUE(store_->Retrieve(req, parts, &by_views).ok());
  EXPECT_EQ(by_views.SerializeAsString(), by_keys->SerializeAsString());
  EXPECT_EQ(by_views.rows(0).values(0).int64_value(), 1);
  EXPECT_EQ(by_views.rows(2).statuses(0), v1::MISSING);
  // Keys in the request are ignored on this path.
  *req.add_keys() = Key({"zz", "zz"});
  v1::RetrieveResponse again;
  ASSERT_TRUE(store_->Retrieve(req, parts, &again).ok());
  EXPECT_EQ(again.SerializeAsString(), by_keys->SerializeAsString());
  // Bad input, named as on the request path.
  v1::RetrieveResponse bad;
  ExpectError(store_->Retrieve(req, std::vector<absl::string_view>{"u1", "i1", "u2"}, &bad),
              absl::StatusCode::kInvalidArgument, "keys: ", "3 key parts");
  std::string long_part(17, 'k');
  ExpectError(store_->Retrieve(req, std::vector<absl::string_view>{"u1", "i1", "u2", long_part}, &bad),
              absl::StatusCode::kInvalidArgument, "keys[1].parts[1]: ", "17 bytes");
  ExpectError(store_->Retrieve(req, std::vector<absl::string_view>(18, "u"), &bad),
              absl::StatusCode::kResourceExhausted, "keys: ", "limit of 8");
  req.set_entity("ghost");
  ExpectError(store_->Retrieve(req, parts, &bad), absl::StatusCode::kInvalidArgument, "entity: ", "\"ghost\"");
}

TEST(StorageKeyTest, Format) {
  EXPECT_EQ(StorageKey(0x01020304, Key({"ab"})), std::string("\x01\x02\x03\x04\x02" "ab", 7));
  EXPECT_EQ(StorageKey(7, Key({"x", ""})), std::string("\x00\x00\x00\x07\x01x\x00", 7));
  std::string long_part(200, 'p');
  std::string k = StorageKey(1, Key({long_part}));
  ASSERT_EQ(k.size(), 4u + 2 + 200);
  EXPECT_EQ(static_cast<uint8_t>(k[4]), 0x80 | (200 & 0x7f));
  EXPECT_EQ(static_cast<uint8_t>(k[5]), 200 >> 7);
  // Group ids are big-endian so one group's keys are contiguous and ordered.
  EXPECT_LT(StorageKey(1, Key({"zzz"})), StorageKey(2, Key({"a"})));
  EXPECT_LT(StorageKey(255, Key({"zzz"})), StorageKey(256, Key({"a"})));
}

// ---------------------------------------------------------------------------------------------
// Bad input: reads

TEST_F(FeatureStoreTest, RetrieveBadInput) {
  CreateGroup("g", {Feature("n", v1::INT32)});
  ExpectError(Get({Key({"u1"})}, {"g.n"}, "ghost").status(), absl::StatusCode::kInvalidArgument, "entity: ",
              "\"ghost\"");
  ExpectError(Get({Key({"u1"})}, {"g.n", "nope.n"}).status(), absl::StatusCode::kInvalidArgument,
              "features[1]: ", "unknown feature group \"nope\"");
  ExpectError(Get({Key({"u1"})}, {"g.zz"}).status(), absl::StatusCode::kInvalidArgument, "features[0]: ",
              "unknown feature \"zz\"");
  ExpectError(Get({Key({"u1"})}, {"g.n", "g"}).status(), absl::StatusCode::kInvalidArgument, "features[1]: ",
              "\"g\"");
  ExpectError(Get({Key({"u1"})}, {"g."}).status(), absl::StatusCode::kInvalidArgument, "features[0]: ");
  ExpectError(Get({Key({"u1"})}, {}).status(), absl::StatusCode::kInvalidArgument, "features: ");
  // A group of another entity is unknown here.
  CreateGroup("aff", {Feature("c", v1::INT64)}, 0, "pair");
  ExpectError(Get({Key({"u1"})}, {"aff.c"}).status(), absl::StatusCode::kInvalidArgument, "features[0]: ",
              "\"aff\"");
  ExpectError(Get({Key({"u1"}), Key({"u2"}), Key({"a", "b"})}, {"g.n"}).status(),
              absl::StatusCode::kInvalidArgument, "keys[2]: ", "expected 1 part, got 2");
  ExpectError(Get({Key({"u1"}), Key({})}, {"g.n"}).status(), absl::StatusCode::kInvalidArgument, "keys[1]: ");
  ExpectError(Get({Key({"u1", "i1"}), Key({"u1"})}, {"aff.c"}, "pair").status(),
              absl::StatusCode::kInvalidArgument, "keys[1]: ", "expected 2 parts, got 1");
  ExpectError(Get({Key({"u1"}), Key({std::string(17, 'k')})}, {"g.n"}).status(),
              absl::StatusCode::kInvalidArgument, "keys[1].parts[0]: ", "17 bytes");
  std::vector<v1::EntityKey> nine;
  for (int i = 0; i < 9; ++i) nine.push_back(Key({absl::StrCat("u", i)}));
  ExpectError(Get(nine, {"g.n"}).status(), absl::StatusCode::kResourceExhausted, "keys: ", "limit of 8");
  nine.pop_back();
  EXPECT_TRUE(Get(nine, {"g.n"}).ok());
  // The matrix form validates the same way.
  ExpectError(Matrix({Key({"u1"}), Key({"u2"}), Key({"a", "b"})}, {"g.n"}).status(),
              absl::StatusCode::kInvalidArgument, "keys[2]: ");
  ExpectError(Matrix(std::vector<v1::EntityKey>(9, Key({"u"})), {"g.n"}).status(),
              absl::StatusCode::kResourceExhausted, "keys: ");
}

// ---------------------------------------------------------------------------------------------
// Bad input: writes (each rejected write changes nothing)

class PersistRejectTest : public FeatureStoreTest {
 protected:
  void SetUp() override {
    FeatureStoreTest::SetUp();
    group_id_ = CreateGroup("g", {Feature("n", v1::INT32), Feature("emb", v1::FLOAT32_VECTOR, 2),
                                  WithDefault(Feature("name", v1::STRING), Str("?"))});
    CreateGroup("aff", {Feature("c", v1::INT64)}, 0, "pair");
    ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(1), Floats({1, 1}), Str("one")}),
                              Row(Key({"u2"}), {I32(2), Floats({2, 2}), Str("two")})})
                    .ok());
    ASSERT_TRUE(Persist("aff", {Row(Key({"u1", "i1"}), {I64(5)})}, {}, 0, "pair").ok());
    auto r = Get({Key({"u1"}), Key({"u2"}), Key({"u3"})}, {"g.*"});
    ASSERT_TRUE(r.ok());
    baseline_ = *r;
  }
  // Previously stored values are unchanged and nothing of the rejected batch was written.
  void ExpectUnchanged() {
    auto r = Get({Key({"u1"}), Key({"u2"}), Key({"u3"})}, {"g.*"});
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(Same(*r, baseline_)) << r->ShortDebugString();
    EXPECT_FALSE(RawGet(group_id_, Key({"u3"})).has_value()) << "a row of a rejected batch was written";
    EXPECT_EQ(GetOne(Key({"u1", "i1"}), "aff.c", "pair").first.int64_value(), 5);
  }
  // A good row for u1 (overwrite), a new row for u3 and one bad row in the middle.
  std::vector<v1::PersistRow> WithBadRow(const v1::PersistRow& bad) {
    return {Row(Key({"u1"}), {I32(100), Floats({9, 9}), Str("changed")}), bad,
            Row(Key({"u3"}), {I32(3), Floats({3, 3}), Str("three")})};
  }

  uint32_t group_id_ = 0;
  v1::RetrieveResponse baseline_;
};

TEST_F(PersistRejectTest, UnknownTargets) {
  auto good = Row(Key({"u3"}), {I32(3), Floats({3, 3}), Str("three")});
  ExpectError(Persist("g", {good}, {}, 0, "ghost"), absl::StatusCode::kInvalidArgument, "entity: ", "\"ghost\"");
  ExpectError(Persist("nope", {good}), absl::StatusCode::kInvalidArgument, "group: ", "\"nope\"");
  ExpectError(Persist("aff", {good}), absl::StatusCode::kInvalidArgument, "group: ", "\"aff\"");
  ExpectError(Persist("g", {good}, {}, 2), absl::StatusCode::kInvalidArgument, "version: ");
  ExpectError(Persist("g", {Row(Key({"u3"}), {I32(3), Str("x")})}, {"n", "zz"}),
              absl::StatusCode::kInvalidArgument, "features[1]: ", "unknown feature \"zz\"");
  ExpectError(Persist("g", {Row(Key({"u3"}), {I32(3), I32(4)})}, {"n", "n"}), absl::StatusCode::kInvalidArgument,
              "features[1]: ", "named twice");
  ExpectError(Persist("g", {}), absl::StatusCode::kInvalidArgument, "rows: ");
  ExpectUnchanged();
}

TEST_F(PersistRejectTest, TooManyRows) {
  std::vector<v1::PersistRow> rows;
  for (int i = 0; i < 6; ++i) rows.push_back(Row(Key({absl::StrCat("u", i + 3)}), {I32(i), Floats({0, 0}), Str("")}));
  ExpectError(Persist("g", rows), absl::StatusCode::kResourceExhausted, "rows: ", "limit of 5");
  ExpectUnchanged();
  rows.pop_back();
  EXPECT_TRUE(Persist("g", rows).ok());
}

TEST_F(PersistRejectTest, BadKeys) {
  ExpectError(Persist("g", WithBadRow(Row(Key({"a", "b"}), {I32(1), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].key: ", "expected 1 part, got 2");
  ExpectError(Persist("g", WithBadRow(Row(Key({}), {I32(1), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].key: ");
  ExpectError(Persist("g", WithBadRow(Row(Key({""}), {I32(1), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].key.parts[0]: ", "empty");
  ExpectError(Persist("g", WithBadRow(Row(Key({std::string(17, 'k')}), {I32(1), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].key.parts[0]: ", "17 bytes");
  ExpectError(Persist("aff", {Row(Key({"u9", "i9"}), {I64(1)}), Row(Key({"u9"}), {I64(2)})}, {}, 0, "pair"),
              absl::StatusCode::kInvalidArgument, "rows[1].key: ", "expected 2 parts, got 1");
  ExpectUnchanged();
  EXPECT_EQ(GetOne(Key({"u9", "i9"}), "aff.c", "pair").second, v1::MISSING);
}

TEST_F(PersistRejectTest, BadValues) {
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {Str("1"), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values[0] (feature \"n\"): ",
              "expected INT32, got string_value");
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I32(1), Floats({1, 1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values[1] (feature \"emb\"): ", "expected 2 elements, got 3");
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I64(int64_t{1} << 40), Floats({1, 1}), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values[0] (feature \"n\"): ", "does not fit INT32");
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I32(1), Floats({1, 1})}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values: ", "expected 3 values");
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I32(1), Floats({1, 1}), Str(""), Str("")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values: ", "got 4");
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I32(1), Floats({1, 1}), Value()}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values[2] (feature \"name\"): ");
  options_.codec.max_string_bytes = 8;
  MakeStore();
  ExpectError(Persist("g", WithBadRow(Row(Key({"u4"}), {I32(1), Floats({1, 1}), Str("123456789")}))),
              absl::StatusCode::kInvalidArgument, "rows[1].values[2] (feature \"name\"): ", "limit of 8");
  // With a subset of features, value indices follow the request's feature list.
  ExpectError(Persist("g", {Row(Key({"u1"}), {Str("ok"), I32(5)}), Row(Key({"u3"}), {Str("ok"), F32(1.5f)})},
                      {"name", "n"}),
              absl::StatusCode::kInvalidArgument, "rows[1].values[1] (feature \"n\"): ");
  ExpectUnchanged();
}

TEST_F(PersistRejectTest, BadRowAtTheEndWritesNothing) {
  std::vector<v1::PersistRow> rows = {Row(Key({"u1"}), {I32(100), Floats({9, 9}), Str("changed")}),
                                      Row(Key({"u3"}), {I32(3), Floats({3, 3}), Str("three")}),
                                      Row(Key({"u2"}), {I32(100), Floats({9, 9}), Str("changed")}),
                                      Row(Key({"u5"}), {Bool(true), Floats({9, 9}), Str("bad")})};
  ExpectError(Persist("g", rows), absl::StatusCode::kInvalidArgument, "rows[3].values[0]");
  ExpectUnchanged();
  // Fixing the bad row makes the whole batch apply.
  rows[3] = Row(Key({"u5"}), {I32(5), Floats({5, 5}), Str("five")});
  ASSERT_TRUE(Persist("g", rows).ok());
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 100);
  EXPECT_EQ(GetOne(Key({"u3"}), "g.name").first.string_value(), "three");
  EXPECT_EQ(GetOne(Key({"u5"}), "g.n").first.int32_value(), 5);
}

// ---------------------------------------------------------------------------------------------
// Corrupt storage

TEST_F(FeatureStoreTest, CorruptStoredRowIsDataLoss) {
  uint32_t id = CreateGroup("g", {Feature("n", v1::INT32), Feature("s", v1::STRING)});
  ASSERT_TRUE(Persist("g", {Row(Key({"good"}), {I32(1), Str("x")})}).ok());
  storage::WriteBatch b;
  b.Put(kFeaturesKs, StorageKey(id, Key({"garbage"})), "this is not a row");
  // A well-formed row of a version the group does not have.
  Layout v9(9, {Feature("n", v1::INT32), Feature("s", v1::STRING)});
  Value n = I32(1), s = Str("x");
  const Value* vals[] = {&n, &s};
  int fields[] = {0, 1};
  std::string encoded;
  ASSERT_TRUE(EncodeRow(v9, fields, vals, 0, {}, "", &encoded).ok());
  b.Put(kFeaturesKs, StorageKey(id, Key({"future"})), encoded);
  // A row truncated in its payload.
  std::string good_row = *RawGet(id, Key({"good"}));
  b.Put(kFeaturesKs, StorageKey(id, Key({"short"})), good_row.substr(0, good_row.size() - 1));
  ASSERT_TRUE(engine_->Write(b).ok());

  for (const char* bad : {"garbage", "future", "short"}) {
    SCOPED_TRACE(bad);
    auto r = Get({Key({"good"}), Key({bad})}, {"g.*"});
    ExpectError(r.status(), absl::StatusCode::kDataLoss, "keys[1]: ", "\"g\"");
    auto m = Matrix({Key({"good"}), Key({bad})}, {"g.n"});
    ExpectError(m.status(), absl::StatusCode::kDataLoss, "keys[1]: ");
  }
  EXPECT_TRUE(absl::StrContains(metrics_->RenderPrometheus(), "kosh_feature_corrupt_rows_total 6"))
      << metrics_->RenderPrometheus();
  // Other keys still read fine.
  EXPECT_EQ(GetOne(Key({"good"}), "g.n").first.int32_value(), 1);
}

// ---------------------------------------------------------------------------------------------
// Cache

TEST_F(FeatureStoreTest, CacheHitsAndInvalidation) {
  CreateGroup("g", {Feature("n", v1::INT32)});
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(1)})}).ok());
  const uint64_t hits0 = store_->cache().hits();
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 1);  // miss, fills the cache
  EXPECT_EQ(store_->cache().hits(), hits0);
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 1);  // hit
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 1);  // hit
  EXPECT_EQ(store_->cache().hits(), hits0 + 2);
  EXPECT_GE(store_->cache().entries(), 1u);

  // A write invalidates: the next read sees the new value.
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(2)})}).ok());
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 2);
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 2);

  // Absent keys are cached too, and a write to them is seen.
  EXPECT_EQ(GetOne(Key({"u9"}), "g.n").second, v1::MISSING);
  const uint64_t hits1 = store_->cache().hits();
  EXPECT_EQ(GetOne(Key({"u9"}), "g.n").second, v1::MISSING);
  EXPECT_EQ(store_->cache().hits(), hits1 + 1);
  ASSERT_TRUE(Persist("g", {Row(Key({"u9"}), {I32(9)})}).ok());
  auto [v, st] = GetOne(Key({"u9"}), "g.n");
  EXPECT_EQ(st, v1::PRESENT);
  EXPECT_EQ(v.int32_value(), 9);

  // A write behind the store's back (not through Persist) is not seen while cached: this is what
  // makes the hits above real cache hits rather than engine reads.
  storage::WriteBatch b;
  b.Put(kFeaturesKs, StorageKey(reg_->GetFeatureGroup("user", "g")->id(), Key({"u1"})), "garbage");
  ASSERT_TRUE(engine_->Write(b).ok());
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 2);
}

TEST_F(FeatureStoreTest, CacheDisabled) {
  options_.cache_bytes = 0;
  MakeStore();
  CreateGroup("g", {Feature("n", v1::INT32)});
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(1)})}).ok());
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 1);
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 1);
  EXPECT_EQ(store_->cache().hits(), 0u);
  EXPECT_EQ(store_->cache().entries(), 0u);
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(3)})}).ok());
  EXPECT_EQ(GetOne(Key({"u1"}), "g.n").first.int32_value(), 3);
}

TEST_F(FeatureStoreTest, ConcurrentReadersSeeTheLastWrite) {
  CreateGroup("g", {Feature("n", v1::INT64)});
  constexpr int kKeys = 4, kWrites = 300;
  std::atomic<bool> done{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&] {
      while (!done.load()) {
        for (int k = 0; k < kKeys; ++k) {
          v1::RetrieveRequest req;
          req.set_entity("user");
          *req.add_keys() = Key({absl::StrCat("k", k)});
          req.add_features("g.n");
          v1::RetrieveResponse resp;
          if (!store_->Retrieve(req, &resp).ok()) {
            errors.fetch_add(1);
            continue;
          }
          // Any value some write produced (or the default before the first write). Reads racing
          // a write in flight may see either side of it, so per-reader order is not checked.
          int64_t v = resp.rows(0).values(0).int64_value();
          if (v < 0 || v > kWrites) errors.fetch_add(1);
        }
      }
    });
  }
  for (int i = 1; i <= kWrites; ++i) {
    std::vector<v1::PersistRow> rows;
    for (int k = 0; k < kKeys; ++k) rows.push_back(Row(Key({absl::StrCat("k", k)}), {I64(i)}));
    ASSERT_TRUE(Persist("g", rows).ok());
  }
  done.store(true);
  for (auto& th : readers) th.join();
  EXPECT_EQ(errors.load(), 0);
  for (int k = 0; k < kKeys; ++k) {
    // Twice: the second read is served from the cache, which must not hold a stale row.
    EXPECT_EQ(GetOne(Key({absl::StrCat("k", k)}), "g.n").first.int64_value(), kWrites);
    EXPECT_EQ(GetOne(Key({absl::StrCat("k", k)}), "g.n").first.int64_value(), kWrites);
  }
}

// ---------------------------------------------------------------------------------------------
// Metrics

TEST_F(FeatureStoreTest, ValueStatusMetrics) {
  CreateGroup("g", {Feature("a", v1::INT32), Feature("b", v1::INT32)}, /*ttl=*/10);
  ASSERT_TRUE(Persist("g", {Row(Key({"u1"}), {I32(1), I32(2)})}).ok());
  ASSERT_TRUE(Persist("g", {Row(Key({"u2"}), {I32(1)})}, {"a"}).ok());
  // u1: 2 present; u2: 1 present + 1 default; u3: 2 missing.
  ASSERT_TRUE(Get({Key({"u1"}), Key({"u2"}), Key({"u3"})}, {"g.*"}).ok());
  // Matrix: u1 2 present.
  ASSERT_TRUE(Matrix({Key({"u1"})}, {"g.*"}).ok());
  now_ += 100;
  // u1: 2 expired.
  ASSERT_TRUE(Get({Key({"u1"})}, {"g.*"}).ok());
  const std::string text = metrics_->RenderPrometheus();
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_values_total{status=\"present\"} 5\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_values_total{status=\"default\"} 1\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_values_total{status=\"missing\"} 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_values_total{status=\"expired\"} 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "# TYPE kosh_feature_values_total counter")) << text;
  // Cache gauges are exported: 3 misses then 1 hit (u1 again in the matrix) + 1 (u1 again).
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_cache_lookups_total{result=\"hit\"} 2\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_cache_lookups_total{result=\"miss\"} 3\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "kosh_feature_cache_capacity_bytes 1048576\n")) << text;
}

}  // namespace
}  // namespace kosh::features
