#include "features/registry.h"

#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "storage/config_store.h"
#include "storage/engine.h"

namespace kosh::features {
namespace {

using google::protobuf::util::MessageDifferencer;

constexpr storage::Keyspace kRegistryKs = 0;

// Set by member so that options added to KeyspaceOptions later need no change here.
std::vector<storage::KeyspaceOptions> RegistryKeyspaces() {
  storage::KeyspaceOptions registry;
  registry.name = "registry";
  return {registry};
}

v1::Entity MakeEntity(const std::string& name, std::vector<std::string> keys) {
  v1::Entity e;
  e.set_name(name);
  for (auto& k : keys) e.add_key_columns(k);
  return e;
}

FeatureSpec Feature(const std::string& name, FeatureType type, uint32_t vector_length = 0) {
  FeatureSpec f;
  f.set_name(name);
  f.set_type(type);
  f.set_vector_length(vector_length);
  return f;
}

v1::CreateFeatureGroupRequest GroupReq(const std::string& entity, const std::string& name,
                                       std::vector<FeatureSpec> features, int64_t ttl = 0) {
  v1::CreateFeatureGroupRequest r;
  r.set_entity(entity);
  r.set_name(name);
  r.set_ttl_seconds(ttl);
  for (auto& f : features) *r.add_features() = f;
  return r;
}

v1::AddFeatureGroupVersionRequest VersionReq(const std::string& entity, const std::string& group,
                                             std::vector<FeatureSpec> features) {
  v1::AddFeatureGroupVersionRequest r;
  r.set_entity(entity);
  r.set_group(group);
  for (auto& f : features) *r.add_features() = f;
  return r;
}

// A group definition for ApplySchema with `versions` numbered from 1.
v1::FeatureGroup SchemaGroup(const std::string& entity, const std::string& name, int64_t ttl,
                             std::vector<std::vector<FeatureSpec>> versions) {
  v1::FeatureGroup g;
  g.set_entity(entity);
  g.set_name(name);
  g.set_ttl_seconds(ttl);
  for (size_t i = 0; i < versions.size(); ++i) {
    auto* v = g.add_versions();
    v->set_version(static_cast<uint32_t>(i + 1));
    for (auto& f : versions[i]) *v->add_features() = f;
  }
  return g;
}

std::vector<FeatureSpec> BasicFeatures() {
  return {Feature("age", v1::INT32), Feature("score", v1::FLOAT32),
          Feature("emb", v1::FLOAT32_VECTOR, 4)};
}

// Everything the registry serves, as one comparable string (sorted by the List functions).
std::string Dump(const Registry& r) {
  std::string out;
  for (const auto& e : r.ListEntities()) absl::StrAppend(&out, e.ShortDebugString(), "\n");
  auto groups = r.ListFeatureGroups("");
  if (groups.ok()) {
    for (const auto& g : *groups) absl::StrAppend(&out, g.ShortDebugString(), "\n");
  }
  return out;
}

void ExpectError(const absl::Status& s, absl::StatusCode code, absl::string_view prefix,
                 absl::string_view contains = "") {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_TRUE(absl::StartsWith(s.message(), prefix)) << "\"" << s.message() << "\" should start with \""
                                                      << prefix << "\"";
  if (!contains.empty()) {
    EXPECT_TRUE(absl::StrContains(s.message(), contains))
        << "\"" << s.message() << "\" should contain \"" << contains << "\"";
  }
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = storage::NewMemoryEngine(RegistryKeyspaces());
    config_ = storage::NewEngineConfigStore(engine_.get(), kRegistryKs);
    Open();
  }
  void Open(RegistryLimits limits = {}) {
    reg_.reset();
    auto r = Registry::Open(config_.get(), limits);
    ASSERT_TRUE(r.ok()) << r.status();
    reg_ = std::move(*r);
  }
  void CreateUser() {
    auto e = reg_->CreateEntity(MakeEntity("user", {"user_id"}));
    ASSERT_TRUE(e.ok()) << e.status();
  }
  v1::FeatureGroup CreateGroup(const std::string& name, std::vector<FeatureSpec> features,
                               int64_t ttl = 0) {
    auto g = reg_->CreateFeatureGroup(GroupReq("user", name, std::move(features), ttl));
    EXPECT_TRUE(g.ok()) << g.status();
    return g.ok() ? *g : v1::FeatureGroup();
  }

  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<storage::ConfigStore> config_;
  std::unique_ptr<Registry> reg_;
};

// ---------------------------------------------------------------------------------------------
// Entities

TEST_F(RegistryTest, CreateAndGetEntity) {
  v1::Entity e = MakeEntity("user", {"user_id"});
  e.set_description("a person");
  auto created = reg_->CreateEntity(e);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*created, e));
  auto got = reg_->GetEntity("user");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, e));
  EXPECT_NE(reg_->snapshot()->FindEntity("user"), nullptr);
  EXPECT_EQ(reg_->snapshot()->FindEntity("nobody"), nullptr);
  EXPECT_EQ(reg_->GetEntity("nobody").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, DuplicateEntityIsAlreadyExists) {
  CreateUser();
  // Identical definition: still ALREADY_EXISTS.
  auto again = reg_->CreateEntity(MakeEntity("user", {"user_id"}));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(absl::StrContains(again.status().message(), "\"user\"")) << again.status();
  // Different definition: rejected, the original stays.
  auto other = reg_->CreateEntity(MakeEntity("user", {"a", "b"}));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists);
  auto got = reg_->GetEntity("user");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->key_columns_size(), 1);
  EXPECT_EQ(got->key_columns(0), "user_id");
}

TEST_F(RegistryTest, InvalidEntityNames) {
  for (const std::string& bad :
       {std::string(""), std::string("1user"), std::string("us-er"), std::string("us er"),
        std::string("user.x"), std::string(65, 'a'), std::string("\xc3\xa9t\xc3\xa9")}) {
    auto r = reg_->CreateEntity(MakeEntity(bad, {"id"}));
    ExpectError(r.status(), absl::StatusCode::kInvalidArgument, "name: ");
  }
  EXPECT_TRUE(reg_->ListEntities().empty());
  // The boundaries are accepted.
  EXPECT_TRUE(reg_->CreateEntity(MakeEntity(std::string(64, 'a'), {"id"})).ok());
  EXPECT_TRUE(reg_->CreateEntity(MakeEntity("_x9", {"id"})).ok());
  EXPECT_TRUE(reg_->CreateEntity(MakeEntity("A", {"id"})).ok());
  EXPECT_EQ(reg_->ListEntities().size(), 3u);
}

TEST_F(RegistryTest, IsValidName) {
  EXPECT_TRUE(IsValidName("a"));
  EXPECT_TRUE(IsValidName("_"));
  EXPECT_TRUE(IsValidName("user_id2"));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName("2x"));
  EXPECT_FALSE(IsValidName("a*"));
  EXPECT_FALSE(IsValidName("a/b"));
  EXPECT_TRUE(IsValidName(std::string(64, 'z')));
  EXPECT_FALSE(IsValidName(std::string(65, 'z')));
}

TEST_F(RegistryTest, InvalidKeyColumns) {
  ExpectError(reg_->CreateEntity(MakeEntity("user", {})).status(), absl::StatusCode::kInvalidArgument,
              "key_columns: ", "at least one key column");
  ExpectError(reg_->CreateEntity(MakeEntity("user", {"id", "id"})).status(),
              absl::StatusCode::kInvalidArgument, "key_columns[1]: ", "duplicate key column \"id\"");
  ExpectError(reg_->CreateEntity(MakeEntity("user", {"id", "x", "x"})).status(),
              absl::StatusCode::kInvalidArgument, "key_columns[2]: ", "duplicate");
  ExpectError(reg_->CreateEntity(MakeEntity("user", {"ok", "bad-name"})).status(),
              absl::StatusCode::kInvalidArgument, "key_columns[1]: ", "\"bad-name\"");
  ExpectError(reg_->CreateEntity(MakeEntity("user", {""})).status(), absl::StatusCode::kInvalidArgument,
              "key_columns[0]: ");
  std::vector<std::string> nine;
  for (int i = 0; i < 9; ++i) nine.push_back(absl::StrCat("k", i));
  ExpectError(reg_->CreateEntity(MakeEntity("user", nine)).status(), absl::StatusCode::kInvalidArgument,
              "key_columns: ", "at most 8");
  EXPECT_TRUE(reg_->ListEntities().empty());
  nine.pop_back();
  EXPECT_TRUE(reg_->CreateEntity(MakeEntity("user", nine)).ok());
}

// ---------------------------------------------------------------------------------------------
// Feature groups

TEST_F(RegistryTest, CreateGroupAssignsIdAndVersionOne) {
  CreateUser();
  v1::CreateFeatureGroupRequest req = GroupReq("user", "profile", BasicFeatures(), 3600);
  req.set_description("profile features");
  auto g = reg_->CreateFeatureGroup(req);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->entity(), "user");
  EXPECT_EQ(g->name(), "profile");
  EXPECT_EQ(g->ttl_seconds(), 3600);
  EXPECT_EQ(g->description(), "profile features");
  EXPECT_GE(g->id(), 1u);
  ASSERT_EQ(g->versions_size(), 1);
  EXPECT_EQ(g->versions(0).version(), 1u);
  EXPECT_EQ(g->versions(0).features_size(), 3);

  auto got = reg_->GetFeatureGroup("user", "profile");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, *g));

  auto g2 = CreateGroup("clicks", {Feature("n", v1::INT64)});
  EXPECT_NE(g2.id(), g->id());
  EXPECT_GT(g2.id(), g->id());

  EXPECT_EQ(reg_->GetFeatureGroup("user", "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg_->GetFeatureGroup("nobody", "profile").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, CreateGroupOnUnknownEntity) {
  auto g = reg_->CreateFeatureGroup(GroupReq("ghost", "profile", BasicFeatures()));
  ExpectError(g.status(), absl::StatusCode::kInvalidArgument, "entity: ", "\"ghost\"");
  EXPECT_TRUE(reg_->ListFeatureGroups("").value().empty());
}

TEST_F(RegistryTest, DuplicateGroupIsAlreadyExists) {
  CreateUser();
  v1::FeatureGroup first = CreateGroup("profile", BasicFeatures());
  auto again = reg_->CreateFeatureGroup(GroupReq("user", "profile", {Feature("x", v1::BOOL)}));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  auto got = reg_->GetFeatureGroup("user", "profile");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*got, first));
}

TEST_F(RegistryTest, SameGroupNameUnderTwoEntities) {
  CreateUser();
  ASSERT_TRUE(reg_->CreateEntity(MakeEntity("item", {"item_id"})).ok());
  v1::FeatureGroup a = CreateGroup("stats", BasicFeatures());
  auto b = reg_->CreateFeatureGroup(GroupReq("item", "stats", {Feature("price", v1::FLOAT64)}));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(a.id(), b->id());
  EXPECT_EQ(reg_->GetFeatureGroup("item", "stats")->versions(0).features(0).name(), "price");
  EXPECT_EQ(reg_->GetFeatureGroup("user", "stats")->versions(0).features(0).name(), "age");
}

TEST_F(RegistryTest, InvalidGroupRequests) {
  CreateUser();
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "bad name", BasicFeatures())).status(),
              absl::StatusCode::kInvalidArgument, "name: ");
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "g", BasicFeatures(), -1)).status(),
              absl::StatusCode::kInvalidArgument, "ttl_seconds: ");
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "g", {})).status(),
              absl::StatusCode::kInvalidArgument, "features: ", "at least one feature");
  EXPECT_TRUE(reg_->ListFeatureGroups("user").value().empty());
}

struct BadFeatureCase {
  const char* label;
  std::vector<FeatureSpec> features;
  const char* prefix;
  const char* contains;
};

TEST_F(RegistryTest, InvalidFeatureSpecsNameTheField) {
  CreateUser();
  FeatureSpec ok = Feature("ok", v1::INT32);
  FeatureSpec untyped = Feature("untyped", v1::FEATURE_TYPE_UNSPECIFIED);
  FeatureSpec bad_enum = Feature("weird", static_cast<FeatureType>(99));
  FeatureSpec scalar_len = Feature("n", v1::INT64, 3);
  FeatureSpec vec_nolen = Feature("emb", v1::FLOAT32_VECTOR);
  FeatureSpec vec_huge = Feature("emb", v1::INT8_VECTOR, 65537);
  FeatureSpec maxlen_int = Feature("n", v1::INT32);
  maxlen_int.set_max_length(10);
  FeatureSpec maxlen_huge = Feature("s", v1::STRING);
  maxlen_huge.set_max_length(65537);
  FeatureSpec bad_default = Feature("n", v1::INT32);
  bad_default.mutable_default_value()->set_string_value("seven");
  FeatureSpec bad_vec_default = Feature("emb", v1::FLOAT32_VECTOR, 3);
  bad_vec_default.mutable_default_value()->mutable_float_list()->add_values(1.0f);
  FeatureSpec long_default = Feature("s", v1::STRING);
  long_default.set_max_length(3);
  long_default.mutable_default_value()->set_string_value("four");
  FeatureSpec int8_default = Feature("q", v1::INT8_VECTOR, 1);
  int8_default.mutable_default_value()->mutable_int32_list()->add_values(300);

  std::vector<BadFeatureCase> cases = {
      {"bad name", {ok, Feature("9lives", v1::BOOL)}, "features[1].name: ", "\"9lives\""},
      {"empty name", {ok, Feature("", v1::BOOL)}, "features[1].name: ", "not a valid name"},
      {"duplicate", {ok, Feature("ok", v1::BOOL)}, "features[1].name: ", "duplicate feature \"ok\""},
      {"no type", {ok, untyped}, "features[1].type: ", "\"untyped\""},
      {"unknown enum", {bad_enum}, "features[0].type: ", "\"weird\""},
      {"vector without length", {ok, vec_nolen}, "features[1].vector_length: ", "FLOAT32_VECTOR"},
      {"vector too long", {vec_huge}, "features[0].vector_length: ", "65536"},
      {"length on scalar", {ok, scalar_len}, "features[1].vector_length: ", "only vector types"},
      {"max_length on int", {ok, maxlen_int}, "features[1].max_length: ", "STRING and BYTES"},
      {"max_length too big", {ok, maxlen_huge}, "features[1].max_length: ", "65536"},
      {"bad default", {ok, bad_default}, "features[1].default_value: ", "expected INT32, got string_value"},
      {"bad vector default", {ok, bad_vec_default}, "features[1].default_value: ", "expected 3 elements"},
      {"default over max_length", {ok, long_default}, "features[1].default_value: ", "exceeds the limit of 3"},
      {"int8 default out of range", {int8_default}, "features[0].default_value: ", "does not fit INT8"},
  };
  CreateGroup("existing", {ok});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    auto g = reg_->CreateFeatureGroup(GroupReq("user", "g", c.features));
    ExpectError(g.status(), absl::StatusCode::kInvalidArgument, c.prefix, c.contains);
    // The same validation applies to new versions.
    auto v = reg_->AddVersion(VersionReq("user", "existing", c.features));
    ExpectError(v.status(), absl::StatusCode::kInvalidArgument, c.prefix, c.contains);
  }
  auto groups = reg_->ListFeatureGroups("user");
  ASSERT_TRUE(groups.ok());
  ASSERT_EQ(groups->size(), 1u);
  EXPECT_EQ((*groups)[0].name(), "existing");
  EXPECT_EQ((*groups)[0].versions_size(), 1);
}

TEST_F(RegistryTest, ValidDefaultsAndLimitsAccepted) {
  CreateUser();
  FeatureSpec s = Feature("s", v1::STRING);
  s.set_max_length(4);
  s.mutable_default_value()->set_string_value("four");
  FeatureSpec f = Feature("f", v1::FLOAT32);
  f.mutable_default_value()->set_int32_value(3);  // integers are valid for floats
  FeatureSpec q = Feature("q", v1::INT8_VECTOR, 2);
  q.mutable_default_value()->mutable_int32_list()->add_values(-128);
  q.mutable_default_value()->mutable_int32_list()->add_values(127);
  v1::FeatureGroup g = CreateGroup("g", {s, f, q, Feature("v", v1::FLOAT16_VECTOR, 65536)});
  EXPECT_EQ(g.versions(0).features_size(), 4);
}

TEST_F(RegistryTest, ConfigurableLimits) {
  RegistryLimits limits;
  limits.max_features_per_group = 2;
  limits.max_vector_length = 8;
  limits.max_key_columns = 1;
  limits.max_string_bytes = 16;
  Open(limits);
  EXPECT_EQ(reg_->limits().max_features_per_group, 2u);
  ExpectError(reg_->CreateEntity(MakeEntity("pair", {"a", "b"})).status(),
              absl::StatusCode::kInvalidArgument, "key_columns: ", "at most 1");
  CreateUser();
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "g", {Feature("a", v1::BOOL), Feature("b", v1::BOOL),
                                                              Feature("c", v1::BOOL)}))
                  .status(),
              absl::StatusCode::kInvalidArgument, "features: ", "3 features exceeds the limit of 2");
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "g", {Feature("v", v1::FLOAT32_VECTOR, 9)})).status(),
              absl::StatusCode::kInvalidArgument, "features[0].vector_length: ", "from 1 to 8");
  FeatureSpec s = Feature("s", v1::STRING);
  s.mutable_default_value()->set_string_value(std::string(17, 'x'));
  ExpectError(reg_->CreateFeatureGroup(GroupReq("user", "g", {s})).status(),
              absl::StatusCode::kInvalidArgument, "features[0].default_value: ", "limit of 16");
  EXPECT_TRUE(reg_->CreateFeatureGroup(GroupReq("user", "g", {Feature("v", v1::FLOAT32_VECTOR, 8)})).ok());
}

// ---------------------------------------------------------------------------------------------
// Versions

TEST_F(RegistryTest, AddVersionIncrements) {
  CreateUser();
  v1::FeatureGroup g1 = CreateGroup("profile", BasicFeatures());
  std::vector<FeatureSpec> v2 = BasicFeatures();
  v2.push_back(Feature("country", v1::STRING));
  auto g2 = reg_->AddVersion(VersionReq("user", "profile", v2));
  ASSERT_TRUE(g2.ok()) << g2.status();
  ASSERT_EQ(g2->versions_size(), 2);
  EXPECT_EQ(g2->versions(1).version(), 2u);
  EXPECT_EQ(g2->versions(1).features_size(), 4);
  EXPECT_EQ(g2->id(), g1.id());
  EXPECT_TRUE(MessageDifferencer::Equals(g2->versions(0), g1.versions(0)));

  auto g3 = reg_->AddVersion(VersionReq("user", "profile", {Feature("only", v1::BOOL)}));
  ASSERT_TRUE(g3.ok()) << g3.status();
  EXPECT_EQ(g3->versions(2).version(), 3u);
  auto stored = reg_->GetFeatureGroup("user", "profile");
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(MessageDifferencer::Equals(*stored, *g3));
}

TEST_F(RegistryTest, AddIdenticalVersionIsFailedPrecondition) {
  CreateUser();
  CreateGroup("profile", BasicFeatures());
  auto same = reg_->AddVersion(VersionReq("user", "profile", BasicFeatures()));
  ExpectError(same.status(), absl::StatusCode::kFailedPrecondition, "features: ", "version 1");
  EXPECT_EQ(reg_->GetFeatureGroup("user", "profile")->versions_size(), 1);

  // Only the latest version is compared: going back to an older feature list is a new version.
  ASSERT_TRUE(reg_->AddVersion(VersionReq("user", "profile", {Feature("x", v1::BOOL)})).ok());
  auto back = reg_->AddVersion(VersionReq("user", "profile", BasicFeatures()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->versions_size(), 3);
  // A change of default alone is a change.
  std::vector<FeatureSpec> with_default = BasicFeatures();
  with_default[0].mutable_default_value()->set_int32_value(18);
  auto dflt = reg_->AddVersion(VersionReq("user", "profile", with_default));
  ASSERT_TRUE(dflt.ok()) << dflt.status();
  EXPECT_EQ(dflt->versions_size(), 4);
}

TEST_F(RegistryTest, AddVersionUnknownTargets) {
  CreateUser();
  CreateGroup("profile", BasicFeatures());
  auto e = reg_->AddVersion(VersionReq("ghost", "profile", {Feature("x", v1::BOOL)}));
  ExpectError(e.status(), absl::StatusCode::kNotFound, "entity: ", "\"ghost\"");
  auto g = reg_->AddVersion(VersionReq("user", "ghost", {Feature("x", v1::BOOL)}));
  ExpectError(g.status(), absl::StatusCode::kNotFound, "group: ", "\"ghost\"");
  auto bad = reg_->AddVersion(VersionReq("user", "profile", {Feature("x", v1::BOOL, 2)}));
  ExpectError(bad.status(), absl::StatusCode::kInvalidArgument, "features[0].vector_length: ");
  EXPECT_EQ(reg_->GetFeatureGroup("user", "profile")->versions_size(), 1);
}

// ---------------------------------------------------------------------------------------------
// Snapshot

TEST_F(RegistryTest, SnapshotGroupInfo) {
  CreateUser();
  // v1: age INT32, score FLOAT32, emb FLOAT32_VECTOR(4)
  // v2: score FLOAT64 (retyped), country STRING (new), age INT32; emb removed
  v1::FeatureGroup g = CreateGroup("profile", BasicFeatures(), 60);
  ASSERT_TRUE(reg_->AddVersion(VersionReq("user", "profile",
                                          {Feature("score", v1::FLOAT64), Feature("country", v1::STRING),
                                           Feature("age", v1::INT32)}))
                  .ok());
  auto snap = reg_->snapshot();
  const EntityInfo* e = snap->FindEntity("user");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->def.name(), "user");
  ASSERT_TRUE(e->groups.contains("profile"));
  const GroupInfo& info = *e->groups.at("profile");
  EXPECT_EQ(info.def.id(), g.id());
  EXPECT_EQ(info.def.ttl_seconds(), 60);
  ASSERT_EQ(info.layouts.size(), 2u);
  EXPECT_EQ(info.layouts[0]->version(), 1u);
  EXPECT_EQ(info.layouts[1]->version(), 2u);
  EXPECT_EQ(&info.latest(), info.layouts[1].get());
  EXPECT_EQ(info.layout(1), info.layouts[0].get());
  EXPECT_EQ(info.layout(2), info.layouts[1].get());
  EXPECT_EQ(info.layout(0), nullptr);
  EXPECT_EQ(info.layout(3), nullptr);

  const Layout& l1 = *info.layout(1);
  ASSERT_EQ(l1.size(), 3u);
  EXPECT_EQ(l1.IndexOf("emb"), 2);
  EXPECT_EQ(l1.IndexOf("country"), -1);
  EXPECT_EQ(l1.spec(l1.IndexOf("score")).type(), v1::FLOAT32);
  const Layout& l2 = *info.layout(2);
  ASSERT_EQ(l2.size(), 3u);
  EXPECT_EQ(l2.IndexOf("emb"), -1);
  EXPECT_EQ(l2.IndexOf("country"), 1);
  EXPECT_EQ(l2.spec(l2.IndexOf("score")).type(), v1::FLOAT64);

  // all_features: every name of any version, with the spec of the latest version having it.
  EXPECT_EQ(info.all_features.size(), 4u);
  ASSERT_TRUE(info.all_features.contains("emb"));
  EXPECT_EQ(info.all_features.at("emb").type(), v1::FLOAT32_VECTOR);
  EXPECT_EQ(info.all_features.at("emb").vector_length(), 4u);
  EXPECT_EQ(info.all_features.at("score").type(), v1::FLOAT64);
  EXPECT_EQ(info.all_features.at("country").type(), v1::STRING);
  EXPECT_EQ(info.all_features.at("age").type(), v1::INT32);
  // latest_names: the latest version's features in order.
  EXPECT_EQ(info.latest_names, std::vector<std::string>({"score", "country", "age"}));
}

TEST_F(RegistryTest, SnapshotsAreImmutable) {
  CreateUser();
  CreateGroup("profile", BasicFeatures());
  auto before = reg_->snapshot();
  ASSERT_TRUE(reg_->AddVersion(VersionReq("user", "profile", {Feature("x", v1::BOOL)})).ok());
  ASSERT_TRUE(reg_->CreateEntity(MakeEntity("item", {"item_id"})).ok());
  auto after = reg_->snapshot();
  EXPECT_NE(before.get(), after.get());
  // The held snapshot still shows the old state.
  EXPECT_EQ(before->FindEntity("item"), nullptr);
  EXPECT_EQ(before->FindEntity("user")->groups.at("profile")->layouts.size(), 1u);
  EXPECT_NE(after->FindEntity("item"), nullptr);
  EXPECT_EQ(after->FindEntity("user")->groups.at("profile")->layouts.size(), 2u);
}

TEST(CompileGroupTest, BuildsLayoutsFromDefinition) {
  v1::FeatureGroup def = SchemaGroup("user", "g", 0,
                                     {{Feature("a", v1::INT32)},
                                      {Feature("a", v1::INT64), Feature("b", v1::BYTES)}});
  auto info = CompileGroup(def);
  ASSERT_EQ(info->layouts.size(), 2u);
  EXPECT_EQ(info->latest().size(), 2u);
  EXPECT_EQ(info->all_features.at("a").type(), v1::INT64);
  EXPECT_EQ(info->latest_names, std::vector<std::string>({"a", "b"}));
}

// ---------------------------------------------------------------------------------------------
// Apply

v1::ApplySchemaRequest BaseSchema() {
  v1::ApplySchemaRequest req;
  *req.add_entities() = MakeEntity("user", {"user_id"});
  *req.add_entities() = MakeEntity("pair", {"user_id", "item_id"});
  *req.add_groups() = SchemaGroup("user", "profile", 86400, {BasicFeatures()});
  *req.add_groups() = SchemaGroup("pair", "affinity", 0, {{Feature("clicks", v1::INT64)}});
  return req;
}

TEST_F(RegistryTest, ApplyCreatesEverything) {
  auto r = reg_->Apply(BaseSchema());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entities_created(), 2u);
  EXPECT_EQ(r->groups_created(), 2u);
  EXPECT_EQ(r->versions_added(), 0u);
  auto pair = reg_->GetEntity("pair");
  ASSERT_TRUE(pair.ok());
  EXPECT_EQ(pair->key_columns_size(), 2);
  auto profile = reg_->GetFeatureGroup("user", "profile");
  ASSERT_TRUE(profile.ok());
  EXPECT_EQ(profile->ttl_seconds(), 86400);
  EXPECT_EQ(profile->versions_size(), 1);
  auto affinity = reg_->GetFeatureGroup("pair", "affinity");
  ASSERT_TRUE(affinity.ok());
  EXPECT_GE(profile->id(), 1u);
  EXPECT_GE(affinity->id(), 1u);
  EXPECT_NE(profile->id(), affinity->id());
}

TEST_F(RegistryTest, ApplyIsIdempotent) {
  ASSERT_TRUE(reg_->Apply(BaseSchema()).ok());
  auto snap = reg_->snapshot();
  std::string dump = Dump(*reg_);
  auto again = reg_->Apply(BaseSchema());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->entities_created(), 0u);
  EXPECT_EQ(again->groups_created(), 0u);
  EXPECT_EQ(again->versions_added(), 0u);
  EXPECT_EQ(reg_->snapshot().get(), snap.get()) << "a no-op apply publishes nothing";
  EXPECT_EQ(Dump(*reg_), dump);
}

TEST_F(RegistryTest, ApplyMatchesImperativeDefinitions) {
  // Definitions created through CreateEntity/CreateFeatureGroup/AddVersion apply cleanly.
  CreateUser();
  CreateGroup("profile", BasicFeatures(), 86400);
  v1::ApplySchemaRequest req;
  *req.add_entities() = MakeEntity("user", {"user_id"});
  *req.add_groups() = SchemaGroup("user", "profile", 86400, {BasicFeatures()});
  auto r = reg_->Apply(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entities_created() + r->groups_created() + r->versions_added(), 0u);
}

TEST_F(RegistryTest, ApplyAddsVersions) {
  ASSERT_TRUE(reg_->Apply(BaseSchema()).ok());
  uint32_t id = reg_->GetFeatureGroup("user", "profile")->id();
  v1::ApplySchemaRequest req = BaseSchema();
  std::vector<FeatureSpec> v2 = BasicFeatures();
  v2.push_back(Feature("country", v1::STRING));
  std::vector<FeatureSpec> v3 = {Feature("country", v1::STRING)};
  *req.mutable_groups(0) = SchemaGroup("user", "profile", 86400, {BasicFeatures(), v2, v3});
  auto r = reg_->Apply(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entities_created(), 0u);
  EXPECT_EQ(r->groups_created(), 0u);
  EXPECT_EQ(r->versions_added(), 2u);
  auto g = reg_->GetFeatureGroup("user", "profile");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->id(), id);
  ASSERT_EQ(g->versions_size(), 3);
  EXPECT_EQ(g->versions(2).version(), 3u);
  EXPECT_EQ(reg_->snapshot()->FindEntity("user")->groups.at("profile")->layouts.size(), 3u);

  // The same schema again is a no-op; a prefix of the history is fine too.
  auto again = reg_->Apply(req);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->versions_added(), 0u);
  auto prefix = reg_->Apply(BaseSchema());
  ASSERT_TRUE(prefix.ok()) << prefix.status();
  EXPECT_EQ(prefix->versions_added(), 0u);
  EXPECT_EQ(reg_->GetFeatureGroup("user", "profile")->versions_size(), 3);
}

class ApplyConflictTest : public RegistryTest {
 protected:
  void SetUp() override {
    RegistryTest::SetUp();
    ASSERT_TRUE(reg_->Apply(BaseSchema()).ok());
    snap_ = reg_->snapshot();
    dump_ = Dump(*reg_);
  }
  // Checks that a rejected apply changed nothing, in memory and in storage.
  void ExpectUnchanged() {
    EXPECT_EQ(reg_->snapshot().get(), snap_.get());
    EXPECT_EQ(Dump(*reg_), dump_);
    auto reopened = Registry::Open(config_.get());
    ASSERT_TRUE(reopened.ok());
    EXPECT_EQ(Dump(**reopened), dump_) << "storage changed";
  }
  std::shared_ptr<const Snapshot> snap_;
  std::string dump_;
};

TEST_F(ApplyConflictTest, ChangedKeyColumns) {
  v1::ApplySchemaRequest req = BaseSchema();
  *req.mutable_entities(1) = MakeEntity("pair", {"item_id", "user_id"});
  auto r = reg_->Apply(req);
  ExpectError(r.status(), absl::StatusCode::kFailedPrecondition, "entities[1]: ", "\"pair\"");
  ExpectUnchanged();
}

TEST_F(ApplyConflictTest, ChangedTtl) {
  v1::ApplySchemaRequest req = BaseSchema();
  req.mutable_groups(0)->set_ttl_seconds(60);
  auto r = reg_->Apply(req);
  ExpectError(r.status(), absl::StatusCode::kFailedPrecondition, "groups[0]: ", "ttl_seconds 86400");
  ExpectUnchanged();
}

TEST_F(ApplyConflictTest, ChangedExistingVersion) {
  v1::ApplySchemaRequest req = BaseSchema();
  std::vector<FeatureSpec> changed = BasicFeatures();
  changed[1].set_type(v1::FLOAT64);
  *req.mutable_groups(0) = SchemaGroup("user", "profile", 86400, {changed});
  auto r = reg_->Apply(req);
  ExpectError(r.status(), absl::StatusCode::kFailedPrecondition, "groups[0].versions[0]: ",
              "version 1 of group \"profile\"");
  ExpectUnchanged();
}

TEST_F(ApplyConflictTest, AllOrNothingWhenEarlierPartsAreNew) {
  // A new entity, a new group and a new version come first; a later group conflicts.
  v1::ApplySchemaRequest req = BaseSchema();
  *req.add_entities() = MakeEntity("item", {"item_id"});
  std::vector<FeatureSpec> v2 = BasicFeatures();
  v2.push_back(Feature("extra", v1::BOOL));
  *req.mutable_groups(0) = SchemaGroup("user", "profile", 86400, {BasicFeatures(), v2});
  auto* item_group = req.add_groups();
  *item_group = SchemaGroup("item", "prices", 0, {{Feature("price", v1::FLOAT64)}});
  auto* conflict = req.add_groups();
  *conflict = SchemaGroup("pair", "affinity", 5, {{Feature("clicks", v1::INT64)}});  // ttl changed
  auto r = reg_->Apply(req);
  ExpectError(r.status(), absl::StatusCode::kFailedPrecondition, "groups[3]: ");
  ExpectUnchanged();
  EXPECT_EQ(reg_->GetEntity("item").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg_->GetFeatureGroup("user", "profile")->versions_size(), 1);

  // With the conflict fixed, the same schema applies and creates exactly what is new.
  req.mutable_groups(3)->set_ttl_seconds(0);
  auto ok = reg_->Apply(req);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->entities_created(), 1u);
  EXPECT_EQ(ok->groups_created(), 1u);
  EXPECT_EQ(ok->versions_added(), 1u);
}

TEST_F(ApplyConflictTest, InvalidSchemas) {
  {
    v1::ApplySchemaRequest req = BaseSchema();
    req.mutable_entities(0)->set_name("bad name");
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "entities[0].name: ");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    req.mutable_entities(1)->clear_key_columns();
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "entities[1].key_columns: ");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    *req.add_groups() = SchemaGroup("ghost", "g", 0, {{Feature("a", v1::BOOL)}});
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "groups[2].entity: ",
                "\"ghost\"");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    req.mutable_groups(1)->set_name("1bad");
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "groups[1].name: ");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    req.mutable_groups(1)->set_ttl_seconds(-5);
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "groups[1].ttl_seconds: ");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    req.mutable_groups(1)->clear_versions();
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "groups[1].versions: ");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    auto* v = req.mutable_groups(1)->add_versions();
    v->set_version(3);  // gap: 1, 3
    *v->add_features() = Feature("z", v1::BOOL);
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument,
                "groups[1].versions[1].version: ", "expected 2, got 3");
  }
  {
    v1::ApplySchemaRequest req = BaseSchema();
    auto* v = req.mutable_groups(1)->add_versions();
    v->set_version(2);
    *v->add_features() = Feature("z", v1::FLOAT32_VECTOR);
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument,
                "groups[1].versions[1].features[0].vector_length: ");
  }
  {
    // A new version identical to the one before it.
    v1::ApplySchemaRequest req = BaseSchema();
    *req.mutable_groups(1)->add_versions() = req.groups(1).versions(0);
    req.mutable_groups(1)->mutable_versions(1)->set_version(2);
    ExpectError(reg_->Apply(req).status(), absl::StatusCode::kInvalidArgument, "groups[1].versions[1]: ",
                "identical to version 1");
  }
  ExpectUnchanged();
}

TEST_F(RegistryTest, ApplyNewEntityAndItsGroupTogether) {
  v1::ApplySchemaRequest req;
  *req.add_entities() = MakeEntity("shop", {"shop_id"});
  *req.add_groups() = SchemaGroup("shop", "stats", 0,
                                  {{Feature("orders", v1::INT64)},
                                   {Feature("orders", v1::INT64), Feature("rating", v1::FLOAT32)}});
  auto r = reg_->Apply(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->entities_created(), 1u);
  EXPECT_EQ(r->groups_created(), 1u);
  // Versions of a new group come with it; they are not counted as added.
  EXPECT_EQ(r->versions_added(), 0u);
  EXPECT_EQ(reg_->GetFeatureGroup("shop", "stats")->versions_size(), 2);
  EXPECT_EQ(reg_->snapshot()->FindEntity("shop")->groups.at("stats")->latest_names,
            std::vector<std::string>({"orders", "rating"}));
}

TEST_F(RegistryTest, ApplyIgnoresClientGroupIds) {
  CreateUser();
  v1::FeatureGroup existing = CreateGroup("a", {Feature("x", v1::BOOL)});
  v1::ApplySchemaRequest req;
  v1::FeatureGroup g = SchemaGroup("user", "b", 0, {{Feature("y", v1::BOOL)}});
  g.set_id(existing.id());  // a client cannot pick (or collide with) an id
  *req.add_groups() = g;
  ASSERT_TRUE(reg_->Apply(req).ok());
  EXPECT_NE(reg_->GetFeatureGroup("user", "b")->id(), existing.id());
}

// ---------------------------------------------------------------------------------------------
// Listing

TEST_F(RegistryTest, ListsAreSorted) {
  for (const char* name : {"zeta", "alpha", "mid"}) {
    ASSERT_TRUE(reg_->CreateEntity(MakeEntity(name, {"id"})).ok());
  }
  auto entities = reg_->ListEntities();
  ASSERT_EQ(entities.size(), 3u);
  EXPECT_EQ(entities[0].name(), "alpha");
  EXPECT_EQ(entities[1].name(), "mid");
  EXPECT_EQ(entities[2].name(), "zeta");

  for (const auto& [e, g] : std::vector<std::pair<std::string, std::string>>{
           {"zeta", "b"}, {"alpha", "z"}, {"zeta", "a"}, {"alpha", "c"}, {"mid", "m"}}) {
    ASSERT_TRUE(reg_->CreateFeatureGroup(GroupReq(e, g, {Feature("f", v1::BOOL)})).ok());
  }
  auto all = reg_->ListFeatureGroups("");
  ASSERT_TRUE(all.ok());
  std::vector<std::string> names;
  for (const auto& g : *all) names.push_back(g.entity() + "." + g.name());
  EXPECT_EQ(names, std::vector<std::string>({"alpha.c", "alpha.z", "mid.m", "zeta.a", "zeta.b"}));

  auto zeta = reg_->ListFeatureGroups("zeta");
  ASSERT_TRUE(zeta.ok());
  ASSERT_EQ(zeta->size(), 2u);
  EXPECT_EQ((*zeta)[0].name(), "a");
  EXPECT_EQ((*zeta)[1].name(), "b");

  EXPECT_EQ(reg_->ListFeatureGroups("nobody").status().code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// Durability

TEST_F(RegistryTest, ReopenOnSameEngineRestoresDefinitions) {
  ASSERT_TRUE(reg_->Apply(BaseSchema()).ok());
  ASSERT_TRUE(reg_->AddVersion(VersionReq("user", "profile", {Feature("x", v1::BOOL)})).ok());
  std::string dump = Dump(*reg_);
  uint32_t max_id = 0;
  auto groups = reg_->ListFeatureGroups("");
  ASSERT_TRUE(groups.ok());
  ASSERT_EQ(groups->size(), 2u);
  for (const auto& g : *groups) max_id = std::max(max_id, g.id());
  Open();
  EXPECT_EQ(Dump(*reg_), dump);
  EXPECT_EQ(reg_->snapshot()->FindEntity("user")->groups.at("profile")->layouts.size(), 2u);
  // New groups after a reopen do not reuse ids.
  auto g = reg_->CreateFeatureGroup(GroupReq("user", "later", {Feature("y", v1::INT32)}));
  ASSERT_TRUE(g.ok());
  EXPECT_GT(g->id(), max_id);
}

TEST_F(RegistryTest, CorruptRecordIsDataLoss) {
  CreateUser();
  storage::WriteBatch b;
  b.Put(kRegistryKs, "entity/broken", std::string("\xff\xff\xff\xff", 4));
  ASSERT_TRUE(engine_->Write(b).ok());
  auto r = Registry::Open(config_.get());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
}

TEST_F(RegistryTest, GroupOfUnknownEntityInStorageIsDataLoss) {
  v1::FeatureGroup orphan = SchemaGroup("ghost", "g", 0, {{Feature("a", v1::BOOL)}});
  orphan.set_id(5);
  storage::WriteBatch b;
  b.Put(kRegistryKs, "group/ghost/g", orphan.SerializeAsString());
  ASSERT_TRUE(engine_->Write(b).ok());
  auto r = Registry::Open(config_.get());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
}

std::string TempDir() {
  std::random_device rd;
  auto p = std::filesystem::temp_directory_path() /
           absl::StrCat("kosh_registry_test_", rd(), "_", rd());
  std::filesystem::remove_all(p);
  return p.string();
}

TEST(RegistryRocksDbTest, DefinitionsSurviveReopen) {
  const std::string dir = TempDir();
  storage::RocksDbOptions options;
  options.path = dir;
  options.sync_writes = false;
  options.block_cache_bytes = 1 << 20;
  options.write_buffer_bytes = 1 << 20;
  std::string dump;
  uint32_t profile_id = 0, affinity_id = 0, created_id = 0;
  {
    auto engine = storage::OpenRocksDb(options, RegistryKeyspaces());
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto config = storage::NewEngineConfigStore(engine->get(), kRegistryKs);
    auto reg = Registry::Open(config.get());
    ASSERT_TRUE(reg.ok()) << reg.status();
    ASSERT_TRUE((*reg)->Apply(BaseSchema()).ok());
    ASSERT_TRUE((*reg)->AddVersion(VersionReq("user", "profile", {Feature("x", v1::BOOL)})).ok());
    ASSERT_TRUE((*reg)->CreateEntity(MakeEntity("item", {"item_id"})).ok());
    auto g = (*reg)->CreateFeatureGroup(GroupReq("item", "price", {Feature("p", v1::FLOAT64)}, 30));
    ASSERT_TRUE(g.ok());
    created_id = g->id();
    profile_id = (*reg)->GetFeatureGroup("user", "profile")->id();
    affinity_id = (*reg)->GetFeatureGroup("pair", "affinity")->id();
    dump = Dump(**reg);
  }
  {
    auto engine = storage::OpenRocksDb(options, RegistryKeyspaces());
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto config = storage::NewEngineConfigStore(engine->get(), kRegistryKs);
    auto reg = Registry::Open(config.get());
    ASSERT_TRUE(reg.ok()) << reg.status();
    EXPECT_EQ(Dump(**reg), dump);
    EXPECT_EQ((*reg)->GetFeatureGroup("user", "profile")->id(), profile_id);
    EXPECT_EQ((*reg)->GetFeatureGroup("pair", "affinity")->id(), affinity_id);
    EXPECT_EQ((*reg)->GetFeatureGroup("item", "price")->id(), created_id);
    EXPECT_EQ((*reg)->GetFeatureGroup("item", "price")->ttl_seconds(), 30);
    const GroupInfo& info = *(*reg)->snapshot()->FindEntity("user")->groups.at("profile");
    EXPECT_EQ(info.layouts.size(), 2u);
    EXPECT_EQ(info.latest_names, std::vector<std::string>({"x"}));
    // Re-applying the schema on the reopened store is a no-op.
    auto again = (*reg)->Apply(BaseSchema());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->entities_created() + again->groups_created() + again->versions_added(), 0u);
    auto g = (*reg)->CreateFeatureGroup(GroupReq("item", "stock", {Feature("n", v1::INT32)}));
    ASSERT_TRUE(g.ok());
    EXPECT_GT(g->id(), std::max({profile_id, affinity_id, created_id}));
  }
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Concurrency

TEST_F(RegistryTest, ConcurrentCreatesGetDistinctIds) {
  CreateUser();
  constexpr int kThreads = 4, kPerThread = 10;
  std::vector<std::thread> threads;
  std::vector<std::vector<uint32_t>> ids(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto g = reg_->CreateFeatureGroup(
            GroupReq("user", absl::StrCat("g", t, "_", i), {Feature("f", v1::BOOL)}));
        if (g.ok()) ids[t].push_back(g->id());
        // Readers never block on writers.
        auto snap = reg_->snapshot();
        (void)snap->FindEntity("user");
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<uint32_t> unique;
  for (const auto& v : ids) unique.insert(v.begin(), v.end());
  EXPECT_EQ(unique.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(reg_->ListFeatureGroups("user")->size(), static_cast<size_t>(kThreads * kPerThread));
}

}  // namespace
}  // namespace kosh::features
