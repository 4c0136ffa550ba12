// End-to-end tests of the happy paths: the real `kosh serve` binary driven over gRPC, HTTP/JSON
// and the kosh CLI. Registry calls, typed reads and writes with per-value statuses (present,
// default, expired, missing), the dense matrix form, composite keys, several groups in one read,
// schema versions, durability of definitions and data across a restart, health and metrics.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "e2e_test_util.h"

namespace kosh::e2e {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using FS = v1::FeatureStore::Stub;
using Reg = v1::Registry::Stub;

class FeatureStoreE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    KoshServer::Options opts;
    opts.schema_files = {SourcePath("examples/schema.yaml")};
    server_ = new KoshServer(opts);
    auto started = server_->Start();
    if (!started) start_error_ = started.message();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(start_error_.empty()) << start_error_;
    ASSERT_TRUE(server_->running());
    store_ = server_->FeatureStore();
    registry_ = server_->Registry();
  }

  // Retrieve over both protocols; asserts they agree and returns the gRPC answer.
  v1::RetrieveResponse RetrieveBoth(const v1::RetrieveRequest& req) {
    v1::RetrieveResponse g, h;
    auto s = Invoke(store_.get(), &FS::Retrieve, req, &g);
    EXPECT_TRUE(IsOk(s));
    EXPECT_TRUE(HttpRpc(*server_, "/v1/features/retrieve", req, &h));
    EXPECT_TRUE(ProtoEqual(g, h)) << "gRPC and HTTP disagree";
    return g;
  }
  v1::RetrieveMatrixResponse MatrixBoth(const v1::RetrieveRequest& req) {
    v1::RetrieveMatrixResponse g, h;
    auto s = Invoke(store_.get(), &FS::RetrieveMatrix, req, &g);
    EXPECT_TRUE(IsOk(s));
    EXPECT_TRUE(HttpRpc(*server_, "/v1/features/retrieve_matrix", req, &h));
    EXPECT_TRUE(ProtoEqual(g, h)) << "gRPC and HTTP disagree";
    return g;
  }
  void PersistGrpc(const v1::PersistRequest& req, uint32_t expect_version) {
    v1::PersistResponse resp;
    auto s = Invoke(store_.get(), &FS::Persist, req, &resp);
    ASSERT_TRUE(IsOk(s));
    EXPECT_EQ(resp.rows_written(), static_cast<uint32_t>(req.rows_size()));
    EXPECT_EQ(resp.version(), expect_version);
  }

  static KoshServer* server_;
  static std::string start_error_;
  std::unique_ptr<FS> store_;
  std::unique_ptr<Reg> registry_;
};
KoshServer* FeatureStoreE2E::server_ = nullptr;
std::string FeatureStoreE2E::start_error_;

// Every feature type, with values that survive the wire and storage exactly (float16 values are
// exactly representable in half precision).
std::vector<v1::FeatureSpec> AllTypeSpecs() {
  v1::FeatureSpec s = SpecWithDefault("s", v1::STRING, Str("none"));
  s.set_max_length(8);
  return {Spec("b", v1::BOOL),
          SpecWithDefault("i32", v1::INT32, I32(7)),
          Spec("i64", v1::INT64),
          Spec("f32", v1::FLOAT32),
          Spec("f64", v1::FLOAT64),
          s,
          Spec("by", v1::BYTES),
          Spec("fv", v1::FLOAT32_VECTOR, 3),
          Spec("hv", v1::FLOAT16_VECTOR, 3),
          Spec("i8v", v1::INT8_VECTOR, 3),
          Spec("i32v", v1::INT32_VECTOR, 2),
          Spec("i64v", v1::INT64_VECTOR, 2)};
}
std::vector<v1::Value> AllTypeValues() {
  return {Bool(true),
          I32(-123456),
          I64(1234567890123LL),
          F32(0.1f),
          F64(3.141592653589793),
          Str("héllo"),
          Bytes(std::string("\x00\x01\xfe\xff", 4)),
          FList({0.25f, -1.5f, 1e10f}),
          FList({0.5f, -1.25f, 2048.0f}),
          IList({-128, 0, 127}),
          IList({-2147483647 - 1, 2147483647}),
          I64List({-9000000000000000000LL, 42})};
}

TEST_F(FeatureStoreE2E, RegistryCallsOverGrpcWithEveryType) {
  // Entities.
  v1::Entity device = MakeEntity("device", {"device_id"});
  device.set_description("A phone or a tablet.");
  v1::Entity got;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, device, &got)));
  EXPECT_TRUE(ProtoEqual(device, got));
  EXPECT_TRUE(IsError(Invoke(registry_.get(), &Reg::CreateEntity, device, &got), grpc::ALREADY_EXISTS,
                      "entity \"device\" already exists"));
  v1::GetEntityRequest ge;
  ge.set_name("device");
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::GetEntity, ge, &got)));
  EXPECT_TRUE(ProtoEqual(device, got));
  v1::ListEntitiesResponse entities;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::ListEntities, v1::ListEntitiesRequest(), &entities)));
  std::vector<std::string> names;
  for (const auto& e : entities.entities()) names.push_back(e.name());
  // Sorted by name; the three from examples/schema.yaml plus ours (other tests may add more).
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const char* want : {"device", "product", "user", "user_category"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }

  // A group with every feature type.
  auto create = MakeGroup("device", "device_stats", AllTypeSpecs());
  create.set_description("everything");
  v1::FeatureGroup created;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup, create, &created)));
  EXPECT_EQ(created.entity(), "device");
  EXPECT_EQ(created.name(), "device_stats");
  EXPECT_EQ(created.description(), "everything");
  EXPECT_EQ(created.ttl_seconds(), 0);
  EXPECT_GT(created.id(), 0u);
  ASSERT_EQ(created.versions_size(), 1);
  EXPECT_EQ(created.versions(0).version(), 1u);
  ASSERT_EQ(created.versions(0).features_size(), 12);
  for (int i = 0; i < 12; ++i) EXPECT_TRUE(ProtoEqual(create.features(i), created.versions(0).features(i)));

  v1::GetFeatureGroupRequest gg;
  gg.set_entity("device");
  gg.set_name("device_stats");
  v1::FeatureGroup fetched;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::GetFeatureGroup, gg, &fetched)));
  EXPECT_TRUE(ProtoEqual(created, fetched));

  v1::ListFeatureGroupsRequest lg;
  lg.set_entity("device");
  v1::ListFeatureGroupsResponse groups;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::ListFeatureGroups, lg, &groups)));
  ASSERT_EQ(groups.groups_size(), 1);
  EXPECT_TRUE(ProtoEqual(created, groups.groups(0)));
  lg.clear_entity();
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::ListFeatureGroups, lg, &groups)));
  std::set<std::string> all;
  std::set<uint32_t> ids;
  for (const auto& g : groups.groups()) {
    all.insert(g.entity() + "/" + g.name());
    EXPECT_TRUE(ids.insert(g.id()).second) << "duplicate group id " << g.id();
  }
  for (const char* want : {"device/device_stats", "user/user_profile", "product/product_stats",
                           "user_category/affinity"}) {
    EXPECT_TRUE(all.count(want)) << want;
  }

  // Version 2 adds a feature; an identical version is refused.
  v1::AddFeatureGroupVersionRequest av;
  av.set_entity("device");
  av.set_group("device_stats");
  for (const auto& f : AllTypeSpecs()) *av.add_features() = f;
  *av.add_features() = Spec("extra", v1::INT32);
  v1::FeatureGroup v2;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::AddFeatureGroupVersion, av, &v2)));
  ASSERT_EQ(v2.versions_size(), 2);
  EXPECT_EQ(v2.versions(1).version(), 2u);
  EXPECT_EQ(v2.versions(1).features_size(), 13);
  EXPECT_EQ(v2.id(), created.id());
  EXPECT_TRUE(IsError(Invoke(registry_.get(), &Reg::AddFeatureGroupVersion, av, &v2), grpc::FAILED_PRECONDITION,
                      "identical to version 2"));

  // Every type round-trips through Persist (version 1) and Retrieve (latest, version 2).
  auto values = AllTypeValues();
  PersistGrpc(MakePersist("device", "device_stats", {{{"d1"}, values}}, {}, 1), 1);
  v1::RetrieveResponse want;
  for (const auto& f : AllTypeSpecs()) AddColumn(&want, "device_stats", f.name(), f.type(), f.vector_length());
  AddColumn(&want, "device_stats", "extra", v1::INT32);
  auto row_values = values;
  row_values.push_back(I32(0));
  std::vector<v1::ValueStatus> st(12, v1::PRESENT);
  st.push_back(v1::DEFAULT);
  AddRow(&want, row_values, st);
  // A missing key reads every default: declared ones (i32 = 7, s = "none") and zero values.
  AddRow(&want,
         {Bool(false), I32(7), I64(0), F32(0), F64(0), Str("none"), Bytes(""), FList({0, 0, 0}), FList({0, 0, 0}),
          IList({0, 0, 0}), IList({0, 0}), I64List({0, 0}), I32(0)},
         std::vector<v1::ValueStatus>(13, v1::MISSING));
  auto req = MakeRetrieve("device", {{"d1"}, {"d404"}}, {"device_stats.*"});
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(req)));

  // The HTTP body is the proto3 JSON mapping with the proto field names.
  HttpResponse r = server_->Post("/v1/features/retrieve", ToJson(req));
  ASSERT_TRUE(IsHttpOk(r));
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_THAT(r.body, HasSubstr("\"int64_value\":\"1234567890123\""));  // 64-bit ints are strings
  EXPECT_THAT(r.body, HasSubstr("\"bytes_value\":\"AAH+/w==\""));       // bytes are base64
  EXPECT_THAT(r.body, HasSubstr("\"vector_length\":3"));
  EXPECT_THAT(r.body, HasSubstr("\"type\":\"FLOAT16_VECTOR\""));
  EXPECT_THAT(r.body, HasSubstr("\"statuses\":[\"PRESENT\""));
  EXPECT_THAT(r.body, Not(HasSubstr("vectorLength")));
}

TEST_F(FeatureStoreE2E, ApplySchemaIsIdempotentAndRejectsConflicts) {
  v1::ApplySchemaRequest req;
  *req.add_entities() = MakeEntity("shop", {"shop_id"});
  auto* g = req.add_groups();
  g->set_entity("shop");
  g->set_name("shop_stats");
  g->set_ttl_seconds(3600);
  auto* v1f = g->add_versions();
  v1f->set_version(1);
  *v1f->add_features() = Spec("revenue", v1::FLOAT64);
  *v1f->add_features() = Spec("orders", v1::INT32);

  auto apply = [&](const v1::ApplySchemaRequest& r, v1::ApplySchemaResponse* out) {
    return Invoke(registry_.get(), &Reg::ApplySchema, r, out);
  };
  v1::ApplySchemaResponse resp;
  ASSERT_TRUE(IsOk(apply(req, &resp)));
  EXPECT_EQ(resp.entities_created(), 1u);
  EXPECT_EQ(resp.groups_created(), 1u);
  EXPECT_EQ(resp.versions_added(), 0u);
  ASSERT_TRUE(IsOk(apply(req, &resp)));  // idempotent
  EXPECT_EQ(resp.entities_created(), 0u);
  EXPECT_EQ(resp.groups_created(), 0u);
  EXPECT_EQ(resp.versions_added(), 0u);

  // Appending a version adds it; the schema may then list only a prefix of the history.
  v1::ApplySchemaRequest with_v2 = req;
  auto* v2f = with_v2.mutable_groups(0)->add_versions();
  *v2f = *v1f;
  v2f->set_version(2);
  *v2f->add_features() = Spec("rating", v1::FLOAT32);
  ASSERT_TRUE(IsOk(apply(with_v2, &resp)));
  EXPECT_EQ(resp.versions_added(), 1u);
  EXPECT_EQ(resp.groups_created(), 0u);
  ASSERT_TRUE(IsOk(apply(req, &resp)));
  EXPECT_EQ(resp.versions_added(), 0u);

  // The same over HTTP: 200, zero counts printed explicitly.
  HttpResponse r = server_->Post("/v1/registry/apply_schema", ToJson(with_v2));
  ASSERT_TRUE(IsHttpOk(r));
  EXPECT_THAT(r.body, HasSubstr("\"entities_created\":0"));
  v1::ApplySchemaResponse hresp;
  ASSERT_TRUE(ParseJson(r.body, &hresp));
  EXPECT_EQ(hresp.versions_added(), 0u);

  // Changing a registered version is a conflict, and nothing of the request is applied: the new
  // entity listed before the conflicting group is not created.
  v1::ApplySchemaRequest conflict = with_v2;
  *conflict.mutable_entities()->Add() = MakeEntity("ghost", {"id"});
  conflict.mutable_groups(0)->mutable_versions(0)->mutable_features(1)->set_type(v1::INT64);
  EXPECT_TRUE(IsError(apply(conflict, &resp), grpc::FAILED_PRECONDITION, "groups[0].versions[0]"));
  EXPECT_TRUE(IsError(apply(conflict, &resp), grpc::FAILED_PRECONDITION, "registered with different features"));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/registry/apply_schema", ToJson(conflict)), 400, "FAILED_PRECONDITION",
                          "version 1 of group \"shop_stats\""));
  v1::GetEntityRequest ge;
  ge.set_name("ghost");
  v1::Entity e;
  EXPECT_TRUE(IsError(Invoke(registry_.get(), &Reg::GetEntity, ge, &e), grpc::NOT_FOUND, "unknown entity \"ghost\""));

  v1::ApplySchemaRequest ttl = req;
  ttl.mutable_groups(0)->set_ttl_seconds(60);
  EXPECT_TRUE(IsError(apply(ttl, &resp), grpc::FAILED_PRECONDITION, "exists with ttl_seconds 3600, the schema says 60"));
  v1::ApplySchemaRequest keys = req;
  keys.mutable_entities(0)->add_key_columns("region");
  EXPECT_TRUE(IsError(apply(keys, &resp), grpc::FAILED_PRECONDITION, "entities[0]: entity \"shop\" exists with key"));

  v1::GetFeatureGroupRequest gg;
  gg.set_entity("shop");
  gg.set_name("shop_stats");
  v1::FeatureGroup fg;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::GetFeatureGroup, gg, &fg)));
  ASSERT_EQ(fg.versions_size(), 2);
  EXPECT_EQ(fg.ttl_seconds(), 3600);
  EXPECT_EQ(fg.versions(0).features(1).type(), v1::INT32);
}

TEST_F(FeatureStoreE2E, PersistAndRetrieveStatusesOverGrpcAndHttp) {
  // users.json (version 2, every feature) over HTTP; users_v1.json (version 1) over gRPC.
  HttpResponse w = server_->Post("/v1/features/persist", ReadFile(SourcePath("examples/data/users.json")));
  ASSERT_TRUE(IsHttpOk(w));
  EXPECT_EQ(w.body, "{\"rows_written\":2,\"version\":2}\n");
  v1::PersistRequest v1req;
  ASSERT_TRUE(ParseJson(ReadFile(SourcePath("examples/data/users_v1.json")), &v1req));
  PersistGrpc(v1req, 1);
  // A writer that sets only some features: the others read as DEFAULT.
  auto partial = MakePersist("user", "user_profile", {{{"u4"}, {Bool(true), I32(50)}}}, {"is_premium", "age"});
  v1::PersistResponse pr;
  ASSERT_TRUE(HttpRpc(*server_, "/v1/features/persist", partial, &pr));
  EXPECT_EQ(pr.rows_written(), 1u);
  EXPECT_EQ(pr.version(), 2u);

  v1::RetrieveResponse want;
  AddColumn(&want, "user_profile", "age", v1::INT32);
  AddColumn(&want, "user_profile", "city", v1::STRING);
  AddColumn(&want, "user_profile", "is_premium", v1::BOOL);
  AddColumn(&want, "user_profile", "embedding", v1::FLOAT32_VECTOR, 4);
  AddColumn(&want, "user_profile", "orders_30d", v1::INT32);
  using S = std::vector<v1::ValueStatus>;
  const auto P = v1::PRESENT, D = v1::DEFAULT, M = v1::MISSING;
  AddRow(&want, {I32(31), Str("Pune"), Bool(true), FList({0.1f, 0.2f, 0.3f, 0.4f}), I32(4)}, S{P, P, P, P, P});
  AddRow(&want, {I32(45), Str("Kochi"), Bool(false), FList({0.3f, 0.3f, 0.3f, 0.3f}), I32(0)}, S{P, P, P, P, D});
  AddRow(&want, {I32(50), Str(""), Bool(true), FList({0, 0, 0, 0}), I32(0)}, S{P, D, P, D, D});
  AddRow(&want, {I32(-1), Str(""), Bool(false), FList({0, 0, 0, 0}), I32(0)}, S{M, M, M, M, M});
  AddRow(&want, {I32(24), Str("Jaipur"), Bool(false), FList({0.5f, 0.1f, 0.0f, 0.9f}), I32(0)}, S{P, P, P, P, P});
  auto got = RetrieveBoth(MakeRetrieve("user", {{"u1"}, {"u3"}, {"u4"}, {"nobody"}, {"u2"}}, {"user_profile.*"}));
  EXPECT_TRUE(ProtoEqual(want, got));

  // Overwriting a key replaces the row (and the cache does not serve the old one).
  PersistGrpc(MakePersist("user", "user_profile", {{{"u4"}, {I32(51)}}}, {"age"}), 2);
  auto again = RetrieveBoth(MakeRetrieve("user", {{"u4"}}, {"user_profile.age", "user_profile.is_premium"}));
  ASSERT_EQ(again.rows_size(), 1);
  EXPECT_TRUE(ProtoEqual(I32(51), again.rows(0).values(0)));
  EXPECT_EQ(again.rows(0).statuses(0), v1::PRESENT);
  EXPECT_TRUE(ProtoEqual(Bool(false), again.rows(0).values(1)));
  EXPECT_EQ(again.rows(0).statuses(1), v1::DEFAULT);

  // Raw JSON: statuses are enum names, field names are the proto names.
  HttpResponse raw = server_->Post("/v1/features/retrieve",
                                   R"({"entity":"user","keys":[{"parts":["nobody"]}],"features":["user_profile.age"]})");
  ASSERT_TRUE(IsHttpOk(raw));
  EXPECT_EQ(raw.body,
            "{\"columns\":[{\"group\":\"user_profile\",\"feature\":\"age\",\"type\":\"INT32\",\"vector_length\":0}],"
            "\"rows\":[{\"values\":[{\"int32_value\":-1}],\"statuses\":[\"MISSING\"]}]}\n");
}

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Waits until the wall clock is early in a second, so that a row written with a 1 s TTL is still
// fresh when read back right away (expiry is at whole seconds).
void WaitForStartOfSecond() {
  for (int i = 0; i < 200; ++i) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count() %
              1000;
    if (ms < 200) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

TEST_F(FeatureStoreE2E, ExpiredAfterTtlReadsDefaults) {
  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, MakeEntity("session", {"session_id"}), &e)));
  v1::FeatureGroup g;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("session", "recent",
                                    {SpecWithDefault("clicks", v1::INT32, I32(9)),
                                     SpecWithDefault("vec", v1::FLOAT32_VECTOR, FList({0.5f, 0.25f}), 2)},
                                    /*ttl_seconds=*/1),
                          &g)));
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("session", "forever", {Spec("n", v1::INT64)}), &g)));

  auto req = MakeRetrieve("session", {{"s1"}}, {"recent.*", "forever.n"});
  // Write and read back within one wall-clock second (retrying if a slow machine crosses a second
  // boundary in between): the row is fresh.
  PersistGrpc(MakePersist("session", "forever", {{{"s1"}, {I64(77)}}}), 1);
  auto write_and_read_fresh = [&](int clicks) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      WaitForStartOfSecond();
      const int64_t before = UnixSeconds();
      PersistGrpc(MakePersist("session", "recent", {{{"s1"}, {I32(clicks), FList({1, 2})}}}), 1);
      auto fresh = RetrieveBoth(req);
      if (UnixSeconds() != before) continue;
      ASSERT_EQ(fresh.rows_size(), 1);
      EXPECT_TRUE(ProtoEqual(I32(clicks), fresh.rows(0).values(0)));
      EXPECT_TRUE(ProtoEqual(FList({1, 2}), fresh.rows(0).values(1)));
      EXPECT_THAT(fresh.rows(0).statuses(), ::testing::ElementsAre(v1::PRESENT, v1::PRESENT, v1::PRESENT));
      return;
    }
    FAIL() << "could not write and read within one second in 5 attempts";
  };
  write_and_read_fresh(3);

  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  v1::RetrieveResponse want;
  AddColumn(&want, "recent", "clicks", v1::INT32);
  AddColumn(&want, "recent", "vec", v1::FLOAT32_VECTOR, 2);
  AddColumn(&want, "forever", "n", v1::INT64);
  AddRow(&want, {I32(9), FList({0.5f, 0.25f}), I64(77)}, {v1::EXPIRED, v1::EXPIRED, v1::PRESENT});
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(req)));
  HttpResponse r = server_->Post("/v1/features/retrieve", ToJson(req));
  EXPECT_THAT(r.body, HasSubstr("\"statuses\":[\"EXPIRED\",\"EXPIRED\",\"PRESENT\"]"));

  auto m = MatrixBoth(MakeRetrieve("session", {{"s1"}}, {"recent.clicks", "recent.vec", "forever.n"}));
  EXPECT_EQ(m.num_rows(), 1u);
  EXPECT_EQ(m.num_cols(), 4u);
  EXPECT_THAT(m.values(), ::testing::ElementsAre(9.0f, 0.5f, 0.25f, 77.0f));
  EXPECT_THAT(m.statuses(), ::testing::ElementsAre(v1::EXPIRED, v1::EXPIRED, v1::PRESENT));

  // Writing again makes the row fresh again.
  write_and_read_fresh(4);
}

TEST_F(FeatureStoreE2E, HugeTtlsNeverExpire) {
  // The registry accepts any positive TTL; expiry saturates instead of wrapping into the past.
  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, MakeEntity("longlived", {"id"}), &e)));
  const std::vector<std::pair<std::string, int64_t>> ttls = {
      {"ttl_2_32", int64_t{1} << 32}, {"ttl_2_62", int64_t{1} << 62}, {"ttl_max", INT64_MAX}};
  for (const auto& [name, ttl] : ttls) {
    SCOPED_TRACE(name);
    v1::FeatureGroup g;
    ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                            MakeGroup("longlived", name, {Spec("n", v1::INT32)}, ttl), &g)));
    EXPECT_EQ(g.ttl_seconds(), ttl);
    PersistGrpc(MakePersist("longlived", name, {{{"k"}, {I32(5)}}}), 1);
    auto got = RetrieveBoth(MakeRetrieve("longlived", {{"k"}}, {name + ".n"}));
    ASSERT_EQ(got.rows_size(), 1);
    EXPECT_EQ(got.rows(0).statuses(0), v1::PRESENT);
    EXPECT_TRUE(ProtoEqual(I32(5), got.rows(0).values(0)));
  }
}

TEST_F(FeatureStoreE2E, DuplicateKeysAndFeaturesInOneRequest) {
  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, MakeEntity("dup", {"id"}), &e)));
  v1::FeatureGroup g;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("dup", "dg", {Spec("a", v1::INT32), Spec("b", v1::STRING)}), &g)));
  // The same key twice in one batch: the later row wins (the batch is applied in order).
  PersistGrpc(MakePersist("dup", "dg", {{{"k1"}, {I32(1), Str("first")}}, {{"k1"}, {I32(2), Str("second")}}}), 1);
  v1::RetrieveResponse want;
  AddColumn(&want, "dg", "a", v1::INT32);
  AddColumn(&want, "dg", "b", v1::STRING);
  AddColumn(&want, "dg", "a", v1::INT32);
  const auto P = v1::PRESENT, M = v1::MISSING;
  AddRow(&want, {I32(2), Str("second"), I32(2)}, {P, P, P});
  AddRow(&want, {I32(2), Str("second"), I32(2)}, {P, P, P});
  AddRow(&want, {I32(0), Str(""), I32(0)}, {M, M, M});
  AddRow(&want, {I32(2), Str("second"), I32(2)}, {P, P, P});
  // Repeated keys and a feature named twice ("dg.*" then "dg.a") each get their own row / column.
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(MakeRetrieve("dup", {{"k1"}, {"k1"}, {"k0"}, {"k1"}}, {"dg.*", "dg.a"}))));
  // No keys: the columns and no rows.
  auto none = RetrieveBoth(MakeRetrieve("dup", {}, {"dg.a"}));
  EXPECT_EQ(none.columns_size(), 1);
  EXPECT_EQ(none.rows_size(), 0);
  auto m = MatrixBoth(MakeRetrieve("dup", {}, {"dg.a"}));
  EXPECT_EQ(m.num_rows(), 0u);
  EXPECT_EQ(m.num_cols(), 1u);
  EXPECT_EQ(m.values_size(), 0);
}

TEST_F(FeatureStoreE2E, RetrieveMatrixValuesAndStatuses) {
  v1::PersistRequest products;
  ASSERT_TRUE(ParseJson(ReadFile(SourcePath("examples/data/products.json")), &products));
  PersistGrpc(products, 1);

  auto m = MatrixBoth(MakeRetrieve("product", {{"p1"}, {"p2"}, {"p404"}},
                                   {"product_stats.price", "product_stats.rating", "product_stats.ctr_7d"}));
  ASSERT_EQ(m.columns_size(), 3);
  EXPECT_EQ(m.columns(0).feature(), "price");
  EXPECT_EQ(m.columns(1).feature(), "rating");
  EXPECT_EQ(m.columns(1).type(), v1::FLOAT16_VECTOR);
  EXPECT_EQ(m.columns(1).vector_length(), 2u);
  EXPECT_EQ(m.columns(2).feature(), "ctr_7d");
  EXPECT_EQ(m.num_rows(), 3u);
  EXPECT_EQ(m.num_cols(), 4u);
  ASSERT_EQ(m.values_size(), 12);
  const float want[12] = {299.0f, 4.5f, 1200.0f, 0.042f, 1499.0f, 3.900390625f /* 3.9 in half precision */,
                          87.0f,  0.013f, 0, 0, 0, 0};
  for (int i = 0; i < 12; ++i) EXPECT_FLOAT_EQ(m.values(i), want[i]) << "values[" << i << "]";
  const auto P = v1::PRESENT, M = v1::MISSING;
  EXPECT_THAT(m.statuses(), ::testing::ElementsAre(P, P, P, P, P, P, M, M, M));

  // Integers and bools become floats; missing rows take declared defaults (age = -1).
  PersistGrpc(MakePersist("user", "user_profile", {{{"mx1"}, {I32(33), Bool(true), FList({1, 2, 3, 4})}}},
                          {"age", "is_premium", "embedding"}),
              2);
  auto u = MatrixBoth(MakeRetrieve("user", {{"mx1"}, {"mx404"}},
                                   {"user_profile.age", "user_profile.is_premium", "user_profile.embedding",
                                    "user_profile.orders_30d"}));
  EXPECT_EQ(u.num_cols(), 7u);
  EXPECT_THAT(u.values(), ::testing::ElementsAre(33, 1, 1, 2, 3, 4, 0, -1, 0, 0, 0, 0, 0, 0));
  EXPECT_THAT(u.statuses(), ::testing::ElementsAre(P, P, P, v1::DEFAULT, M, M, M, M));

  // Strings have no matrix form.
  v1::RetrieveMatrixResponse bad;
  EXPECT_TRUE(IsError(Invoke(store_.get(), &FS::RetrieveMatrix,
                             MakeRetrieve("product", {{"p1"}}, {"product_stats.category_id"}), &bad),
                      grpc::INVALID_ARGUMENT, "is STRING; the matrix form takes numeric features only"));
}

TEST_F(FeatureStoreE2E, CompositeKeys) {
  v1::PersistRequest affinity;
  ASSERT_TRUE(ParseJson(ReadFile(SourcePath("examples/data/affinity.json")), &affinity));
  // Over HTTP this time.
  v1::PersistResponse pr;
  ASSERT_TRUE(HttpRpc(*server_, "/v1/features/persist", affinity, &pr));
  EXPECT_EQ(pr.rows_written(), 2u);

  v1::RetrieveResponse want;
  AddColumn(&want, "affinity", "clicks_30d", v1::INT32);
  AddColumn(&want, "affinity", "score", v1::FLOAT32);
  AddRow(&want, {I32(2), F32(0.12f)}, {v1::PRESENT, v1::PRESENT});
  AddRow(&want, {I32(17), F32(0.81f)}, {v1::PRESENT, v1::PRESENT});
  AddRow(&want, {I32(0), F32(0.5f)}, {v1::MISSING, v1::MISSING});  // declared default score 0.5
  AddRow(&want, {I32(0), F32(0.5f)}, {v1::MISSING, v1::MISSING});  // key parts are ordered
  AddRow(&want, {I32(0), F32(0.5f)}, {v1::MISSING, v1::MISSING});
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(MakeRetrieve("user_category",
                                                         {{"u1", "c20"}, {"u1", "c10"}, {"u2", "c10"},
                                                          {"c10", "u1"}, {"u1c", "10"}},
                                                         {"affinity.*"}))));
}

TEST_F(FeatureStoreE2E, SeveralGroupsInOneRetrieve) {
  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, MakeEntity("acct", {"acct_id"}), &e)));
  v1::FeatureGroup g;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("acct", "g1", {Spec("a", v1::INT32), Spec("b", v1::STRING)}), &g)));
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("acct", "g2", {Spec("f", v1::FLOAT64), Spec("h", v1::INT64)}), &g)));
  PersistGrpc(MakePersist("acct", "g1", {{{"k1"}, {I32(1), Str("one")}}, {{"k2"}, {I32(2), Str("two")}}}), 1);
  PersistGrpc(MakePersist("acct", "g2", {{{"k1"}, {F64(1.5), I64(10)}}}), 1);

  v1::RetrieveResponse want;
  AddColumn(&want, "g1", "a", v1::INT32);
  AddColumn(&want, "g1", "b", v1::STRING);
  AddColumn(&want, "g2", "f", v1::FLOAT64);
  const auto P = v1::PRESENT, M = v1::MISSING;
  AddRow(&want, {I32(1), Str("one"), F64(1.5)}, {P, P, P});
  AddRow(&want, {I32(2), Str("two"), F64(0)}, {P, P, M});
  AddRow(&want, {I32(0), Str(""), F64(0)}, {M, M, M});
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(MakeRetrieve("acct", {{"k1"}, {"k2"}, {"k3"}}, {"g1.*", "g2.f"}))));

  // Columns follow the request order, across groups, in the matrix form too.
  auto m = MatrixBoth(MakeRetrieve("acct", {{"k1"}, {"k2"}}, {"g2.h", "g1.a", "g2.f"}));
  ASSERT_EQ(m.columns_size(), 3);
  EXPECT_EQ(m.columns(0).group(), "g2");
  EXPECT_EQ(m.columns(1).group(), "g1");
  EXPECT_THAT(m.values(), ::testing::ElementsAre(10, 1, 1.5, 0, 2, 0));
  EXPECT_THAT(m.statuses(), ::testing::ElementsAre(P, P, P, M, P, M));
}

TEST_F(FeatureStoreE2E, SchemaVersionsThroughTheBinary) {
  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateEntity, MakeEntity("doc", {"doc_id"}), &e)));
  v1::FeatureGroup g;
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("doc", "evo", {Spec("x", v1::INT32), Spec("y", v1::STRING)}), &g)));
  PersistGrpc(MakePersist("doc", "evo", {{{"k1"}, {I32(1), Str("a")}}}), 1);  // version 0 = latest = 1

  v1::AddFeatureGroupVersionRequest av;
  av.set_entity("doc");
  av.set_group("evo");
  *av.add_features() = Spec("x", v1::INT32);
  *av.add_features() = Spec("y", v1::STRING);
  *av.add_features() = SpecWithDefault("z", v1::FLOAT32, F32(1.5f));
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::AddFeatureGroupVersion, av, &g)));
  ASSERT_EQ(g.versions_size(), 2);

  PersistGrpc(MakePersist("doc", "evo", {{{"k2"}, {I32(2), Str("b"), F32(2.5f)}}}), 2);  // latest is now 2
  // An old writer keeps writing version 1.
  PersistGrpc(MakePersist("doc", "evo", {{{"k3"}, {I32(3), Str("c")}}}, {}, 1), 1);
  v1::PersistResponse pr;
  ASSERT_TRUE(HttpRpc(*server_, "/v1/features/persist",
                      MakePersist("doc", "evo", {{{"k4"}, {I32(4), Str("d")}}}, {}, 1), &pr));
  EXPECT_EQ(pr.version(), 1u);

  v1::RetrieveResponse want;
  AddColumn(&want, "evo", "x", v1::INT32);
  AddColumn(&want, "evo", "y", v1::STRING);
  AddColumn(&want, "evo", "z", v1::FLOAT32);
  const auto P = v1::PRESENT, D = v1::DEFAULT;
  AddRow(&want, {I32(1), Str("a"), F32(1.5f)}, {P, P, D});
  AddRow(&want, {I32(2), Str("b"), F32(2.5f)}, {P, P, P});
  AddRow(&want, {I32(3), Str("c"), F32(1.5f)}, {P, P, D});
  AddRow(&want, {I32(4), Str("d"), F32(1.5f)}, {P, P, D});
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(MakeRetrieve("doc", {{"k1"}, {"k2"}, {"k3"}, {"k4"}}, {"evo.*"}))));

  // Version 1 has no z; there is no version 3.
  EXPECT_TRUE(IsError(Invoke(store_.get(), &FS::Persist,
                             MakePersist("doc", "evo", {{{"k5"}, {F32(1)}}}, {"z"}, 1), &pr),
                      grpc::INVALID_ARGUMENT, "features[0]: unknown feature \"z\" in version 1 of group \"evo\""));
  EXPECT_TRUE(IsError(Invoke(store_.get(), &FS::Persist,
                             MakePersist("doc", "evo", {{{"k5"}, {I32(1), Str("e")}}}, {}, 3), &pr),
                      grpc::INVALID_ARGUMENT, "version: group \"evo\" has versions 1 to 2, not 3"));

  // Version 3 drops y: "evo.*" no longer lists it, but it stays readable by name.
  av.clear_features();
  *av.add_features() = Spec("x", v1::INT32);
  *av.add_features() = SpecWithDefault("z", v1::FLOAT32, F32(1.5f));
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::AddFeatureGroupVersion, av, &g)));
  auto star = RetrieveBoth(MakeRetrieve("doc", {{"k1"}}, {"evo.*"}));
  ASSERT_EQ(star.columns_size(), 2);
  EXPECT_EQ(star.columns(1).feature(), "z");
  auto named = RetrieveBoth(MakeRetrieve("doc", {{"k1"}, {"k2"}}, {"evo.y"}));
  ASSERT_EQ(named.rows_size(), 2);
  EXPECT_TRUE(ProtoEqual(Str("a"), named.rows(0).values(0)));
  EXPECT_TRUE(ProtoEqual(Str("b"), named.rows(1).values(0)));
  EXPECT_EQ(named.rows(1).statuses(0), v1::PRESENT);

  // Retyping a feature in a later version: rows of the old version hold bytes of the old type,
  // so they read as the new type's default rather than being misinterpreted.
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("doc", "retype", {Spec("x", v1::INT64), Spec("keep", v1::INT32)}), &g)));
  PersistGrpc(MakePersist("doc", "retype", {{{"k1"}, {I64(1234567890123LL), I32(1)}}}), 1);
  av.set_group("retype");
  av.clear_features();
  *av.add_features() = Spec("x", v1::STRING);
  *av.add_features() = Spec("keep", v1::INT32);
  ASSERT_TRUE(IsOk(Invoke(registry_.get(), &Reg::AddFeatureGroupVersion, av, &g)));
  PersistGrpc(MakePersist("doc", "retype", {{{"k2"}, {Str("hi"), I32(2)}}}), 2);
  v1::RetrieveResponse rw;
  AddColumn(&rw, "retype", "x", v1::STRING);
  AddColumn(&rw, "retype", "keep", v1::INT32);
  AddRow(&rw, {Str(""), I32(1)}, {D, P});
  AddRow(&rw, {Str("hi"), I32(2)}, {P, P});
  EXPECT_TRUE(ProtoEqual(rw, RetrieveBoth(MakeRetrieve("doc", {{"k1"}, {"k2"}}, {"retype.*"}))));
}

TEST_F(FeatureStoreE2E, HealthReadinessAndMetrics) {
  HttpResponse h = server_->Get("/healthz");
  ASSERT_TRUE(h.ok()) << h.error;
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "ok\n");
  HttpResponse r = server_->Get("/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready\n");

  auto metrics = [&] {
    HttpResponse m = server_->Get("/metrics");
    EXPECT_EQ(m.status, 200);
    EXPECT_EQ(m.content_type, "text/plain; version=0.0.4");
    return m.body;
  };
  auto value = [](const std::string& text, const std::string& series) {
    bool found = false;
    double v = MetricValue(text, series, &found);
    EXPECT_TRUE(found) << "no sample " << series;
    return v;
  };
  const std::string grpc_ok = R"(kosh_requests_total{protocol="grpc",method="Retrieve",code="OK"})";
  const std::string http_ok = R"(kosh_requests_total{protocol="http",method="Retrieve",code="OK"})";
  const std::string http_bad = R"(kosh_requests_total{protocol="http",method="Persist",code="INVALID_ARGUMENT"})";
  const std::string http_count = R"(kosh_request_duration_seconds_count{protocol="http",method="Retrieve"})";
  const std::string present = R"(kosh_feature_values_total{status="present"})";
  const std::string missing = R"(kosh_feature_values_total{status="missing"})";

  std::string before = metrics();
  PersistGrpc(MakePersist("user", "user_profile", {{{"mt1"}, {I32(1)}}}, {"age"}), 2);
  v1::RetrieveResponse resp;
  auto req = MakeRetrieve("user", {{"mt1"}, {"mt404"}}, {"user_profile.age", "user_profile.city"});
  ASSERT_TRUE(IsOk(Invoke(store_.get(), &FS::Retrieve, req, &resp)));
  ASSERT_TRUE(HttpRpc(*server_, "/v1/features/retrieve", req, &resp));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/features/persist", R"({"entity":"nope"})"), 400, "INVALID_ARGUMENT"));
  std::string after = metrics();

  EXPECT_EQ(value(after, grpc_ok) - value(before, grpc_ok), 1);
  EXPECT_EQ(value(after, http_ok) - value(before, http_ok), 1);
  EXPECT_EQ(value(after, http_bad) - value(before, http_bad), 1);
  EXPECT_EQ(value(after, http_count) - value(before, http_count), 1);
  // Two reads: each saw age PRESENT, city DEFAULT for mt1 and two MISSING for mt404.
  EXPECT_EQ(value(after, present) - value(before, present), 2);
  EXPECT_EQ(value(after, missing) - value(before, missing), 4);
  EXPECT_GE(value(after, R"(kosh_request_duration_seconds_bucket{protocol="grpc",method="Retrieve",le="+Inf"})"), 1);
  EXPECT_THAT(after, HasSubstr("kosh_request_duration_seconds_bucket{protocol=\"http\",method=\"Retrieve\",le=\""));
  double ratio = value(after, "kosh_feature_cache_hit_ratio");
  EXPECT_GT(ratio, 0.0);  // the second read of mt1 hits the row cache
  EXPECT_LE(ratio, 1.0);
  EXPECT_GE(value(after, R"(kosh_storage{figure="estimate_num_keys",keyspace="features"})"), 1);
  EXPECT_THAT(after, HasSubstr("kosh_storage{figure=\"estimate_num_keys\""));
  EXPECT_EQ(value(after, "kosh_ready"), 1);
  EXPECT_THAT(after, HasSubstr("# TYPE kosh_requests_total counter"));
}

TEST_F(FeatureStoreE2E, ReadMethodsAlsoAcceptGet) {
  // docs/api.md: read-scope methods accept GET, with the request (if any) as the body.
  HttpResponse r = server_->Get("/v1/registry/list_entities");
  ASSERT_TRUE(IsHttpOk(r));
  v1::ListEntitiesResponse entities;
  ASSERT_TRUE(ParseJson(r.body, &entities));
  EXPECT_GE(entities.entities_size(), 3);
  auto req = MakeRetrieve("user", {{"nobody"}}, {"user_profile.age"});
  r = HttpCall(server_->http_port(), "GET", "/v1/features/retrieve", ToJson(req));
  ASSERT_TRUE(IsHttpOk(r));
  v1::RetrieveResponse resp;
  ASSERT_TRUE(ParseJson(r.body, &resp));
  ASSERT_EQ(resp.rows_size(), 1);
  EXPECT_EQ(resp.rows(0).statuses(0), v1::MISSING);
  EXPECT_TRUE(ProtoEqual(I32(-1), resp.rows(0).values(0)));
  // Writes do not.
  EXPECT_TRUE(IsHttpError(HttpCall(server_->http_port(), "GET", "/v1/features/persist", "{}"), 405,
                          "INVALID_ARGUMENT", "/v1/features/persist takes POST"));
}

// --- the kosh CLI ---------------------------------------------------------------------------------

TEST_F(FeatureStoreE2E, CliSchemaApplyPutAndGet) {
  TempDir dir("cli");
  const std::string schema = dir.File("schema.yaml");
  ASSERT_TRUE(WriteFile(schema, R"(entities:
  - name: cli_user
    key_columns: [user_id]
feature_groups:
  - entity: cli_user
    name: cli_profile
    features:
      - {name: age, type: int32}
      - {name: city, type: string}
      - {name: ok, type: bool}
      - {name: emb, type: float32_vector, length: 3}
)"));
  const std::string bin = KoshBinary();
  const std::string srv = server_->grpc_target();

  CommandResult r = RunCommand({bin, "schema", "apply", schema, "--server", srv});
  ASSERT_TRUE(r.status.exited && r.status.code == 0) << r.status.ToString() << "\n" << r.err;
  v1::ApplySchemaResponse applied;
  ASSERT_TRUE(ParseJson(r.out, &applied));
  EXPECT_EQ(applied.entities_created(), 1u);
  EXPECT_EQ(applied.groups_created(), 1u);
  r = RunCommand({bin, "schema", "apply", schema, "--server", srv});
  ASSERT_EQ(r.status.code, 0) << r.err;
  ASSERT_TRUE(ParseJson(r.out, &applied));
  EXPECT_EQ(applied.entities_created(), 0u);
  EXPECT_EQ(applied.groups_created(), 0u);

  r = RunCommand({bin, "put", "--server", srv, "--entity", "cli_user", "--group", "cli_profile", "--key", "k1",
                  "age=31", "city=Pune", "ok=true", "emb=[0.1,0.2,0.3]"});
  ASSERT_EQ(r.status.code, 0) << r.status.ToString() << "\n" << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"rows_written\": 1"));
  v1::PersistResponse put;
  ASSERT_TRUE(ParseJson(r.out, &put));
  EXPECT_EQ(put.rows_written(), 1u);
  EXPECT_EQ(put.version(), 1u);

  r = RunCommand({bin, "get", "--server", srv, "--entity", "cli_user", "--key", "k1", "--key", "k2", "--features",
                  "cli_profile.*"});
  ASSERT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"string_value\": \"Pune\""));
  v1::RetrieveResponse got;
  ASSERT_TRUE(ParseJson(r.out, &got));
  v1::RetrieveResponse want;
  AddColumn(&want, "cli_profile", "age", v1::INT32);
  AddColumn(&want, "cli_profile", "city", v1::STRING);
  AddColumn(&want, "cli_profile", "ok", v1::BOOL);
  AddColumn(&want, "cli_profile", "emb", v1::FLOAT32_VECTOR, 3);
  const auto P = v1::PRESENT, M = v1::MISSING;
  AddRow(&want, {I32(31), Str("Pune"), Bool(true), FList({0.1f, 0.2f, 0.3f})}, {P, P, P, P});
  AddRow(&want, {I32(0), Str(""), Bool(false), FList({0, 0, 0})}, {M, M, M, M});
  EXPECT_TRUE(ProtoEqual(want, got));
  // What the CLI wrote is what a gRPC client reads.
  EXPECT_TRUE(ProtoEqual(want, RetrieveBoth(MakeRetrieve("cli_user", {{"k1"}, {"k2"}}, {"cli_profile.*"}))));

  r = RunCommand({bin, "get", "--server", srv, "--entity", "cli_user", "--key", "k1", "--key", "k2", "--features",
                  "cli_profile.age,cli_profile.emb", "--matrix"});
  ASSERT_EQ(r.status.code, 0) << r.err;
  v1::RetrieveMatrixResponse m;
  ASSERT_TRUE(ParseJson(r.out, &m));
  EXPECT_EQ(m.num_rows(), 2u);
  EXPECT_EQ(m.num_cols(), 4u);
  EXPECT_THAT(m.values(), ::testing::ElementsAre(31, 0.1f, 0.2f, 0.3f, 0, 0, 0, 0));
  EXPECT_THAT(m.statuses(), ::testing::ElementsAre(P, P, M, M));

  // put --file: one PersistRequest per line.
  const std::string rows = dir.File("rows.jsonl");
  ASSERT_TRUE(WriteFile(rows,
                        R"({"entity":"cli_user","group":"cli_profile","features":["age"],"rows":[{"key":{"parts":["f1"]},"values":[{"int32_value":1}]},{"key":{"parts":["f2"]},"values":[{"int32_value":2}]}]}
{"entity":"cli_user","group":"cli_profile","features":["city"],"rows":[{"key":{"parts":["f3"]},"values":[{"string_value":"Goa"}]}]}
)"));
  r = RunCommand({bin, "put", "--server", srv, "--file", rows});
  ASSERT_EQ(r.status.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"rows_written\": 3}\n");
  auto f = RetrieveBoth(MakeRetrieve("cli_user", {{"f2"}, {"f3"}}, {"cli_profile.age", "cli_profile.city"}));
  ASSERT_EQ(f.rows_size(), 2);
  EXPECT_TRUE(ProtoEqual(I32(2), f.rows(0).values(0)));
  EXPECT_TRUE(ProtoEqual(Str("Goa"), f.rows(1).values(1)));

  r = RunCommand({bin, "schema", "get", "--server", srv, "--entity", "cli_user", "--group", "cli_profile"});
  ASSERT_EQ(r.status.code, 0) << r.err;
  v1::FeatureGroup fg;
  ASSERT_TRUE(ParseJson(r.out, &fg));
  ASSERT_EQ(fg.versions_size(), 1);
  EXPECT_EQ(fg.versions(0).features_size(), 4);

  // Errors: exit code 2 for bad input, with the reason on stderr and nothing on stdout.
  r = RunCommand({bin, "put", "--server", srv, "--entity", "cli_user", "--group", "cli_profile", "--key", "k9",
                  "nope=1"});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("has no feature \"nope\""));
  EXPECT_EQ(r.out, "");
  r = RunCommand({bin, "put", "--server", srv, "--entity", "cli_user", "--group", "cli_profile", "--key", "k9",
                  "age=abc"});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("age: not a valid INT32 value"));
  r = RunCommand({bin, "get", "--server", srv, "--entity", "nobody", "--key", "k1", "--features", "g.f"});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT: entity: unknown entity \"nobody\""));
  auto k9 = RetrieveBoth(MakeRetrieve("cli_user", {{"k9"}}, {"cli_profile.age"}));
  ASSERT_EQ(k9.rows_size(), 1);
  EXPECT_EQ(k9.rows(0).statuses(0), v1::MISSING);
}

// --- durability across a graceful restart -----------------------------------------------------------

TEST(RestartE2E, DefinitionsAndDataSurviveSigtermAndRestart) {
  TempDir data("restart-data");
  KoshServer::Options opts;
  opts.data_dir = data.path();
  opts.schema_files = {SourcePath("examples/schema.yaml")};
  auto server = std::make_unique<KoshServer>(opts);
  ASSERT_TRUE(server->Start());
  auto reg = server->Registry();
  auto store = server->FeatureStore();

  v1::Entity e;
  ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::CreateEntity, MakeEntity("r_ent", {"a", "b"}), &e)));
  v1::FeatureGroup g;
  ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::CreateFeatureGroup,
                          MakeGroup("r_ent", "r_grp", {Spec("n", v1::INT64), Spec("s", v1::STRING)}, 86400), &g)));
  v1::AddFeatureGroupVersionRequest av;
  av.set_entity("r_ent");
  av.set_group("r_grp");
  *av.add_features() = Spec("n", v1::INT64);
  *av.add_features() = Spec("s", v1::STRING);
  *av.add_features() = Spec("v", v1::INT8_VECTOR, 2);
  ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::AddFeatureGroupVersion, av, &g)));
  v1::PersistResponse pr;
  ASSERT_TRUE(IsOk(Invoke(store.get(), &FS::Persist,
                          MakePersist("r_ent", "r_grp",
                                      {{{"x", "1"}, {I64(5), Str("five"), IList({1, -1})}},
                                       {{"x", "2"}, {I64(6), Str("six"), IList({2, -2})}}}),
                          &pr)));
  ASSERT_TRUE(IsOk(Invoke(store.get(), &FS::Persist, MakePersist("r_ent", "r_grp", {{{"x", "3"}, {I64(7), Str("7")}}},
                                                                  {}, 1),
                          &pr)));
  ASSERT_TRUE(IsHttpOk(server->Post("/v1/features/persist", ReadFile(SourcePath("examples/data/users.json")))));

  auto reads = [](KoshServer* s) {
    auto st = s->FeatureStore();
    std::vector<v1::RetrieveResponse> out(2);
    EXPECT_TRUE(IsOk(Invoke(st.get(), &FS::Retrieve,
                            MakeRetrieve("r_ent", {{"x", "1"}, {"x", "2"}, {"x", "3"}, {"x", "4"}}, {"r_grp.*"}),
                            &out[0])));
    EXPECT_TRUE(IsOk(Invoke(st.get(), &FS::Retrieve, MakeRetrieve("user", {{"u1"}, {"u2"}}, {"user_profile.*"}),
                            &out[1])));
    return out;
  };
  auto defs = [](KoshServer* s) {
    auto r = s->Registry();
    std::pair<v1::ListEntitiesResponse, v1::ListFeatureGroupsResponse> out;
    EXPECT_TRUE(IsOk(Invoke(r.get(), &Reg::ListEntities, v1::ListEntitiesRequest(), &out.first)));
    EXPECT_TRUE(IsOk(Invoke(r.get(), &Reg::ListFeatureGroups, v1::ListFeatureGroupsRequest(), &out.second)));
    return out;
  };
  auto data_before = reads(server.get());
  auto defs_before = defs(server.get());
  ASSERT_EQ(data_before[0].rows_size(), 4);
  EXPECT_EQ(data_before[0].rows(2).statuses(2), v1::DEFAULT);  // x/3 was written with version 1
  EXPECT_EQ(data_before[0].rows(3).statuses(0), v1::MISSING);
  EXPECT_EQ(defs_before.second.groups_size(), 4);

  // Close our connections first: the server's gRPC shutdown waits for clients to hang up (up to
  // the grace period), which would only make this test slow.
  reg.reset();
  store.reset();
  ExitStatus st = server->Stop(SIGTERM);
  EXPECT_TRUE(st.exited) << st.ToString();
  EXPECT_EQ(st.code, 0) << server->Log();
  EXPECT_THAT(server->Log(), HasSubstr("stopped"));

  // Same data directory, same schema file: applying it again is a no-op.
  ASSERT_TRUE(server->Start());
  EXPECT_TRUE(ProtoEqual(defs_before.first, defs(server.get()).first));
  EXPECT_TRUE(ProtoEqual(defs_before.second, defs(server.get()).second));
  auto data_after = reads(server.get());
  EXPECT_TRUE(ProtoEqual(data_before[0], data_after[0]));
  EXPECT_TRUE(ProtoEqual(data_before[1], data_after[1]));

  // A group created after the restart gets a fresh id, so its rows never collide with old ones.
  reg = server->Registry();
  store = server->FeatureStore();
  v1::FeatureGroup g2;
  ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::CreateFeatureGroup, MakeGroup("r_ent", "r_grp2", {Spec("n", v1::INT64)}),
                          &g2)));
  for (const auto& old : defs_before.second.groups()) EXPECT_NE(old.id(), g2.id()) << old.name();
  ASSERT_TRUE(IsOk(Invoke(store.get(), &FS::Persist, MakePersist("r_ent", "r_grp2", {{{"x", "1"}, {I64(99)}}}), &pr)));
  v1::RetrieveResponse both;
  ASSERT_TRUE(IsOk(Invoke(store.get(), &FS::Retrieve, MakeRetrieve("r_ent", {{"x", "1"}}, {"r_grp.n", "r_grp2.n"}),
                          &both)));
  ASSERT_EQ(both.rows_size(), 1);
  EXPECT_TRUE(ProtoEqual(I64(5), both.rows(0).values(0)));
  EXPECT_TRUE(ProtoEqual(I64(99), both.rows(0).values(1)));
  reg.reset();
  store.reset();
  st = server->Stop(SIGTERM);
  EXPECT_EQ(st.code, 0) << st.ToString();

  // Without --schema the definitions still come from storage.
  KoshServer::Options bare_opts;
  bare_opts.data_dir = data.path();
  KoshServer bare(bare_opts);
  ASSERT_TRUE(bare.Start());
  auto defs_bare = defs(&bare);
  EXPECT_EQ(defs_bare.second.groups_size(), 5);
  EXPECT_TRUE(ProtoEqual(data_before[1], reads(&bare)[1]));
  EXPECT_EQ(bare.Stop(SIGTERM).code, 0);
}

}  // namespace
}  // namespace kosh::e2e
