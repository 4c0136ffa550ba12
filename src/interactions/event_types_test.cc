// The event-type registry, the payload codec and the `interactions:` configuration section.
#include "interactions/event_types.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"
#include "interactions/options.h"
#include "interactions/payload.h"

namespace kosh::interactions {
namespace {

v1::FeatureSpec Field(const std::string& name, v1::FeatureType type, uint32_t len = 0) {
  v1::FeatureSpec f;
  f.set_name(name);
  f.set_type(type);
  f.set_vector_length(len);
  return f;
}

v1::EventType Type(const std::string& name, uint32_t cap = 0, int64_t retention_s = 0,
                   std::vector<v1::FeatureSpec> payload = {}) {
  v1::EventType t;
  t.set_name(name);
  t.set_cap(cap);
  t.set_retention_seconds(retention_s);
  for (auto& f : payload) *t.add_payload() = f;
  return t;
}

class EventTypesTest : public ::testing::Test {
 protected:
  EventTypesTest() : engine_(storage::NewMemoryEngine({{"interaction_types", nullptr, nullptr}})) {}
  std::unique_ptr<EventTypeRegistry> Open(EventTypeLimits limits = {}) {
    slot_ = std::make_shared<TypeTableSlot>();
    auto r = EventTypeRegistry::Open(engine_.get(), 0, limits, slot_);
    EXPECT_TRUE(r.ok()) << r.status();
    return std::move(*r);
  }
  std::unique_ptr<storage::Engine> engine_;
  std::shared_ptr<TypeTableSlot> slot_;
};

TEST_F(EventTypesTest, RegistersAssignsIdsAndDefaultsAndIsDurable) {
  auto reg = Open();
  auto click = reg->Register(Type("click"), "event_type");
  ASSERT_TRUE(click.ok()) << click.status();
  EXPECT_TRUE(click->created());
  EXPECT_EQ(click->event_type().id(), 1u);
  EXPECT_EQ(click->event_type().cap(), 500u);  // the default cap
  auto order = reg->Register(Type("order", 200, 86400, {Field("price", v1::FLOAT32)}), "event_type");
  ASSERT_TRUE(order.ok()) << order.status();
  EXPECT_EQ(order->event_type().id(), 2u);
  // The table is published to the slot the merge function reads.
  ASSERT_NE(slot_->Load()->Find("order"), nullptr);
  EXPECT_EQ(slot_->Load()->FindId(2)->cap, 200u);
  EXPECT_EQ(slot_->Load()->FindId(2)->retention_ms, 86400000);
  ASSERT_NE(slot_->Load()->FindId(2)->payload, nullptr);

  // Idempotent: registering the same definition changes nothing.
  auto again = reg->Register(Type("click"), "event_type");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created());
  EXPECT_FALSE(again->changed());
  EXPECT_EQ(again->event_type().id(), 1u);
  // Cap and retention may change; the id stays.
  auto changed = reg->Register(Type("click", 50, 3600), "event_type");
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(changed->changed());
  EXPECT_EQ(changed->event_type().id(), 1u);
  EXPECT_EQ(slot_->Load()->Find("click")->cap, 50u);

  // Reopening on the same engine restores every type with its id.
  reg.reset();
  auto reopened = Open();
  auto list = reopened->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name(), "click");
  EXPECT_EQ(list[0].cap(), 50u);
  EXPECT_EQ(list[1].name(), "order");
  EXPECT_EQ(list[1].id(), 2u);
  auto third = reopened->Register(Type("share"), "event_type");
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->event_type().id(), 3u);
}

TEST_F(EventTypesTest, RejectsBadDefinitionsNamingTheField) {
  auto reg = Open();
  ASSERT_TRUE(reg->Register(Type("order", 0, 0, {Field("price", v1::FLOAT32)}), "event_type").ok());
  struct Case {
    v1::EventType type;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases = {
      {Type("1click"), absl::StatusCode::kInvalidArgument, "event_type.name: \"1click\" is not a valid name"},
      {Type(""), absl::StatusCode::kInvalidArgument, "event_type.name"},
      {Type("big", 20000), absl::StatusCode::kInvalidArgument, "event_type.cap: 20000 exceeds the limit of 10000"},
      {Type("neg", 0, -1), absl::StatusCode::kInvalidArgument, "event_type.retention_seconds"},
      {Type("p", 0, 0, {Field("a", v1::INT32), Field("a", v1::INT64)}), absl::StatusCode::kInvalidArgument,
       "event_type.payload[1].name: duplicate field \"a\""},
      {Type("p", 0, 0, {Field("v", v1::FLOAT32_VECTOR)}), absl::StatusCode::kInvalidArgument,
       "event_type.payload[0].vector_length"},
      {Type("p", 0, 0, {Field("t", v1::FEATURE_TYPE_UNSPECIFIED)}), absl::StatusCode::kInvalidArgument,
       "event_type.payload[0].type"},
      {Type("order", 0, 0, {Field("price", v1::FLOAT64)}), absl::StatusCode::kFailedPrecondition,
       "payloads cannot change"},
  };
  for (const auto& c : cases) {
    auto r = reg->Register(c.type, "event_type");
    ASSERT_FALSE(r.ok()) << c.type.ShortDebugString();
    EXPECT_EQ(r.status().code(), c.code) << r.status();
    EXPECT_NE(r.status().message().find(c.message), std::string::npos) << r.status();
  }
  // Nothing changed.
  EXPECT_EQ(reg->List().size(), 1u);
  EXPECT_EQ(reg->List()[0].payload(0).type(), v1::FLOAT32);
}

TEST_F(EventTypesTest, EnforcesTheTypeLimit) {
  EventTypeLimits limits;
  limits.max_types = 2;
  auto reg = Open(limits);
  ASSERT_TRUE(reg->Register(Type("a"), "t").ok());
  ASSERT_TRUE(reg->Register(Type("b"), "t").ok());
  auto r = reg->Register(Type("c"), "t");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(reg->Register(Type("a", 7), "t").ok());  // updating an existing type is fine
}

TEST(PayloadTest, RoundTripsAndRejectsBadFields) {
  features::Layout layout(1, {Field("catalog_id", v1::INT64), Field("price", v1::FLOAT32),
                              Field("tag", v1::STRING), Field("emb", v1::FLOAT16_VECTOR, 2)});
  PayloadMap in;
  in["price"].set_float32_value(12.5f);
  in["catalog_id"].set_int64_value(1234567890123);
  in["tag"].set_string_value("sale");
  std::string enc;
  ASSERT_TRUE(EncodePayload(&layout, in, 1024, "events[0].payload", &enc).ok());
  PayloadMap out;
  ASSERT_TRUE(DecodePayload(layout, enc, &out).ok());
  EXPECT_EQ(out.size(), 3u);  // emb was not set and is absent
  EXPECT_EQ(out["catalog_id"].int64_value(), 1234567890123);
  EXPECT_FLOAT_EQ(out["price"].float32_value(), 12.5f);
  EXPECT_EQ(out["tag"].string_value(), "sale");

  PayloadMap none;
  ASSERT_TRUE(EncodePayload(&layout, none, 1024, "p", &enc).ok());
  EXPECT_TRUE(enc.empty());

  PayloadMap bad;
  bad["price"].set_string_value("cheap");
  absl::Status s = EncodePayload(&layout, bad, 1024, "events[3].payload", &enc);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "events[3].payload[\"price\"]: expected FLOAT32, got string_value");
  PayloadMap unknown;
  unknown["prce"].set_float32_value(1);
  s = EncodePayload(&layout, unknown, 1024, "events[1].payload", &enc);
  EXPECT_NE(s.message().find("events[1].payload[\"prce\"]: unknown payload field"), std::string::npos) << s;
  s = EncodePayload(nullptr, unknown, 1024, "events[2].payload", &enc);
  EXPECT_NE(s.message().find("has no payload"), std::string::npos) << s;
  PayloadMap vec;
  vec["emb"].mutable_float_list()->add_values(1);
  s = EncodePayload(&layout, vec, 1024, "e.payload", &enc);
  EXPECT_NE(s.message().find("e.payload[\"emb\"]: expected 2 elements, got 1"), std::string::npos) << s;
  // A corrupt stored payload is DATA_LOSS, not a crash.
  ASSERT_TRUE(EncodePayload(&layout, in, 1024, "p", &enc).ok());
  EXPECT_EQ(DecodePayload(layout, enc.substr(0, 5), &out).code(), absl::StatusCode::kDataLoss);
}

TEST(OptionsTest, DefaultsWithoutTheSection) {
  auto o = ParseInteractionOptions(YAML::Node());
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->hot_budget_bytes, 256ull << 20);
  EXPECT_EQ(o->types.default_cap, 500u);
  EXPECT_EQ(o->max_future_skew_ms, 300000);
  EXPECT_TRUE(o->event_types.empty());
}

TEST(OptionsTest, ParsesEveryOptionAndEventTypes) {
  auto o = ParseInteractionOptions(YAML::Load(R"(
hot_budget: 64MiB
inactivity: 90s
default_cap: 100
max_cap: 1000
max_events_per_write: 500
max_users_per_request: 50
max_events_per_read: 200
max_payload_bytes: 512
max_id_bytes: 64
max_future_skew: 1m
event_types:
  - {name: click, cap: 500, retention: 180d}
  - name: order
    retention: 24h
    payload:
      - {name: catalog_id, type: int64}
      - {name: emb, type: float16_vector, length: 4}
)"));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->hot_budget_bytes, 64ull << 20);
  EXPECT_EQ(o->inactivity_ms, 90000);
  EXPECT_EQ(o->types.default_cap, 100u);
  EXPECT_EQ(o->types.max_cap, 1000u);
  EXPECT_EQ(o->max_events_per_write, 500u);
  EXPECT_EQ(o->max_users_per_request, 50u);
  EXPECT_EQ(o->max_events_per_read, 200u);
  EXPECT_EQ(o->max_payload_bytes, 512u);
  EXPECT_EQ(o->max_id_bytes, 64u);
  EXPECT_EQ(o->max_future_skew_ms, 60000);
  ASSERT_EQ(o->event_types.size(), 2u);
  EXPECT_EQ(o->event_types[0].retention_seconds(), 180 * 86400);
  EXPECT_EQ(o->event_types[1].retention_seconds(), 86400);
  ASSERT_EQ(o->event_types[1].payload_size(), 2);
  EXPECT_EQ(o->event_types[1].payload(1).type(), v1::FLOAT16_VECTOR);
  EXPECT_EQ(o->event_types[1].payload(1).vector_length(), 4u);
  EXPECT_EQ(o->event_type_sources[1], "interactions.event_types[1]");
}

TEST(OptionsTest, ErrorsNameThePath) {
  struct Case {
    const char* yaml;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {"hot_budget: lots", "interactions.hot_budget: \"lots\" is not a size"},
           {"hot_bugdet: 1MiB", "interactions.hot_bugdet: unknown option"},
           {"inactivity: soon", "interactions.inactivity"},
           {"default_cap: 0", "interactions.default_cap: must be positive"},
           {"max_events_per_write: 0", "interactions.max_events_per_write: must be positive"},
           {"event_types: {name: click}", "interactions.event_types: expected a list"},
           {"event_types: [{name: click, retention: forever}]", "interactions.event_types[0].retention"},
           {"event_types: [{name: click, colour: red}]", "interactions.event_types[0].colour: unknown option"},
           {"event_types: [{cap: 5}]", "interactions.event_types[0].name: missing"},
           {"event_types: [{name: o, payload: [{name: p, type: money}]}]",
            "interactions.event_types[0].payload[0].type: unknown type \"money\""},
           {"event_type_files: [/nonexistent/types.yaml]", "interactions.event_type_files[0]: cannot open"},
           {"[1, 2]", "interactions: expected a mapping"},
       }) {
    auto o = ParseInteractionOptions(YAML::Load(c.yaml));
    ASSERT_FALSE(o.ok()) << c.yaml;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(o.status().message().find(c.message), std::string::npos) << o.status();
  }
}

TEST(OptionsTest, ReadsEventTypeFiles) {
  std::string path = ::testing::TempDir() + "/event_types_test.yaml";
  {
    std::ofstream f(path);
    f << "event_types:\n  - {name: wishlist, cap: 50}\n  - {name: share}\n";
  }
  auto o = ParseInteractionOptions(YAML::Load("event_type_files: [" + path + "]"));
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->event_types.size(), 2u);
  EXPECT_EQ(o->event_types[0].name(), "wishlist");
  EXPECT_EQ(o->event_types[0].cap(), 50u);
  EXPECT_EQ(o->event_type_sources[1], path + ": event_types[1]");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace kosh::interactions
