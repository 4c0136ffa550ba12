// The interaction store over the in-memory engine with an injected clock: writes, last-k, windows,
// counts, caps, retention, duplicates, out-of-order arrival, payloads, deletes, trims, bad input,
// hot-tier transitions, and the property that matters most: with the hot tier disabled, tiny or
// large, every read returns exactly the same events.
#include "interactions/interaction_store.h"

#include <atomic>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kosh::interactions {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kT0 = 1700000000000;  // the test clock's start, ms
constexpr int64_t kHour = 3600000;

v1::Event Ev(const std::string& user, const std::string& type, const std::string& item, int64_t ts) {
  v1::Event e;
  e.set_user_id(user);
  e.set_type(type);
  e.set_item_id(item);
  e.set_timestamp_ms(ts);
  return e;
}

v1::EventType Type(const std::string& name, uint32_t cap = 0, int64_t retention_s = 0) {
  v1::EventType t;
  t.set_name(name);
  t.set_cap(cap);
  t.set_retention_seconds(retention_s);
  return t;
}

// One store on its own in-memory engine (or on a given one) with a manual clock.
class Env {
 public:
  explicit Env(InteractionOptions o, std::shared_ptr<std::atomic<int64_t>> now = nullptr,
               storage::Engine* shared_engine = nullptr)
      : now_(now ? now : std::make_shared<std::atomic<int64_t>>(kT0)) {
    auto n = now_;
    ClockMs clock = [n] { return n->load(); };
    storage::Engine* engine = shared_engine;
    if (engine == nullptr) {
      engine_ = storage::NewMemoryEngine(
          {{"interaction_types", nullptr, nullptr},
           {"interactions", HistoryExpired, HistoryMergeFn(slot_, clock, o.types.max_cap)}});
      engine = engine_.get();
    }
    auto s = InteractionStore::Open(engine, 0, 1, std::move(o), slot_, &metrics_, clock, /*start_sweeper=*/false);
    EXPECT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  InteractionStore* store() { return store_.get(); }
  storage::Engine* engine() { return engine_.get(); }
  void Advance(int64_t ms) { *now_ += ms; }
  int64_t now() const { return *now_; }
  const std::shared_ptr<std::atomic<int64_t>>& clock() const { return now_; }
  std::string Metrics() const { return metrics_.RenderPrometheus(); }

  void Register(const v1::EventType& t) {
    v1::RegisterEventTypeRequest req;
    *req.mutable_event_type() = t;
    v1::RegisterEventTypeResponse resp;
    ASSERT_TRUE(store_->RegisterEventType(req, &resp).ok());
  }
  absl::Status Write(const std::vector<v1::Event>& events) {
    v1::WriteRequest req;
    for (const auto& e : events) *req.add_events() = e;
    v1::WriteResponse resp;
    absl::Status s = store_->Write(req, &resp);
    if (s.ok()) {
      EXPECT_EQ(resp.events_written(), events.size());
    }
    return s;
  }
  v1::HistoriesResponse LastK(const std::vector<std::string>& users, const std::vector<std::string>& types,
                              uint32_t k, bool merge = false) {
    v1::LastKRequest req;
    for (const auto& u : users) req.add_user_ids(u);
    for (const auto& t : types) req.add_types(t);
    req.set_k(k);
    req.set_merge_types(merge);
    v1::HistoriesResponse resp;
    absl::Status s = store_->LastK(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }
  v1::HistoriesResponse Window(const std::vector<std::string>& users, const std::vector<std::string>& types,
                               int64_t since, int64_t until, int64_t within, uint32_t limit, bool merge = false) {
    v1::WindowRequest req;
    for (const auto& u : users) req.add_user_ids(u);
    for (const auto& t : types) req.add_types(t);
    req.mutable_range()->set_since_ms(since);
    req.mutable_range()->set_until_ms(until);
    req.mutable_range()->set_within_ms(within);
    req.set_limit(limit);
    req.set_merge_types(merge);
    v1::HistoriesResponse resp;
    absl::Status s = store_->Window(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }
  v1::CountResponse Count(const std::vector<std::string>& users, const std::vector<std::string>& types,
                          int64_t within = 0) {
    v1::CountRequest req;
    for (const auto& u : users) req.add_user_ids(u);
    for (const auto& t : types) req.add_types(t);
    req.mutable_range()->set_within_ms(within);
    v1::CountResponse resp;
    absl::Status s = store_->Count(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }

 private:
  std::shared_ptr<std::atomic<int64_t>> now_;
  std::shared_ptr<TypeTableSlot> slot_ = std::make_shared<TypeTableSlot>();
  std::unique_ptr<storage::Engine> engine_;
  base::MetricsRegistry metrics_;
  std::unique_ptr<InteractionStore> store_;
};

// "item@offset" for each event of a history, offsets relative to kT0 in ms.
std::vector<std::string> Items(const v1::History& h) {
  std::vector<std::string> out;
  for (int i = 0; i < h.item_ids_size(); ++i) {
    out.push_back(h.item_ids(i) + "@" + std::to_string(h.timestamps_ms(i) - kT0));
  }
  return out;
}

InteractionOptions Opts(uint64_t hot_budget = 1 << 20) {
  InteractionOptions o;
  o.hot_budget_bytes = hot_budget;
  o.inactivity_ms = 60000;
  return o;
}

class StoreTest : public ::testing::TestWithParam<uint64_t> {};  // parameter: the hot budget

TEST_P(StoreTest, LastKIsNewestFirstWhateverTheArrivalOrderAndStoresDuplicatesOnce) {
  Env env(Opts(GetParam()));
  env.Register(Type("click"));
  env.Register(Type("order"));
  ASSERT_TRUE(env.Write({Ev("u1", "click", "p1", kT0 - 3000), Ev("u1", "click", "p2", kT0 - 1000)}).ok());
  // Late, out of order, with an exact duplicate (within and across batches) and another user.
  ASSERT_TRUE(env.Write({Ev("u1", "click", "p3", kT0 - 2000), Ev("u1", "click", "p2", kT0 - 1000),
                         Ev("u1", "click", "p3", kT0 - 2000), Ev("u1", "order", "o1", kT0 - 500),
                         Ev("u2", "click", "p9", kT0 - 100)})
                  .ok());
  auto r = env.LastK({"u1"}, {"click", "order"}, 10);
  ASSERT_EQ(r.users_size(), 1);
  ASSERT_EQ(r.users(0).histories_size(), 2);
  EXPECT_EQ(r.users(0).histories(0).type(), "click");
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("p2@-1000", "p3@-2000", "p1@-3000"));
  EXPECT_THAT(Items(r.users(0).histories(1)), ElementsAre("o1@-500"));
  // k limits each history; merged types interleave by time.
  r = env.LastK({"u1"}, {"click", "order"}, 2);
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("p2@-1000", "p3@-2000"));
  r = env.LastK({"u1"}, {}, 3, /*merge=*/true);
  ASSERT_EQ(r.users(0).histories_size(), 1);
  EXPECT_EQ(r.users(0).histories(0).type(), "");
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("o1@-500", "p2@-1000", "p3@-2000"));
  EXPECT_THAT(r.users(0).histories(0).types(), ElementsAre("order", "click", "click"));
  // Several users in one call, in request order; an unknown user has empty histories.
  r = env.LastK({"u2", "nobody", "u1"}, {"click"}, 1);
  ASSERT_EQ(r.users_size(), 3);
  EXPECT_EQ(r.users(0).user_id(), "u2");
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("p9@-100"));
  EXPECT_EQ(r.users(1).histories(0).item_ids_size(), 0);
  EXPECT_THAT(Items(r.users(2).histories(0)), ElementsAre("p2@-1000"));
}

TEST_P(StoreTest, CapKeepsTheNewestEventsInStorageAndOnRead) {
  Env env(Opts(GetParam()));
  env.Register(Type("view", 3));
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(env.Write({Ev("u", "view", std::to_string(i), kT0 - 1000 * i)}).ok());
  // A late event older than everything kept is trimmed at once.
  ASSERT_TRUE(env.Write({Ev("u", "view", "late", kT0 - 100000)}).ok());
  EXPECT_THAT(Items(env.LastK({"u"}, {"view"}, 100).users(0).histories(0)),
              ElementsAre("0@0", "1@-1000", "2@-2000"));
  // A late event newer than the oldest kept one pushes that one out.
  ASSERT_TRUE(env.Write({Ev("u", "view", "mid", kT0 - 500)}).ok());
  EXPECT_THAT(Items(env.LastK({"u"}, {"view"}, 100).users(0).histories(0)),
              ElementsAre("0@0", "mid@-500", "1@-1000"));
  // The cold tier stores no more than the cap (the merge function trims).
  std::vector<std::optional<std::string>> values;
  std::string key = HistoryKey("u", 1);
  std::vector<absl::string_view> keys = {key};
  ASSERT_TRUE(env.engine()->MultiGet(1, keys, &values).ok());
  ASSERT_TRUE(values[0].has_value());
  EXPECT_EQ(BlockReader(*values[0]).count(), 3u);
}

TEST_P(StoreTest, RetentionHidesOldEventsAndTrimRemovesThem) {
  Env env(Opts(GetParam()));
  env.Register(Type("click", 100, 3600));  // one hour
  env.Register(Type("order"));
  ASSERT_TRUE(env.Write({Ev("u", "click", "old", kT0 - 2 * kHour), Ev("u", "click", "a", kT0 - kHour / 2),
                         Ev("u", "click", "b", kT0 - kHour / 4), Ev("u", "order", "o", kT0 - 2 * kHour),
                         Ev("v", "click", "c", kT0 - kHour / 2)})
                  .ok());
  EXPECT_THAT(Items(env.LastK({"u"}, {"click"}, 10).users(0).histories(0)),
              ElementsAre("b@-900000", "a@-1800000"));
  env.Advance(kHour / 2 + 1000);  // "a" is now older than an hour
  EXPECT_THAT(Items(env.LastK({"u"}, {"click"}, 10).users(0).histories(0)), ElementsAre("b@-900000"));
  EXPECT_EQ(env.Count({"u"}, {"click", "order"}).users(0).total(), 2u);

  v1::TrimRequest treq;
  v1::TrimResponse tresp;
  ASSERT_TRUE(env.store()->Trim(treq, &tresp).ok());
  EXPECT_EQ(tresp.histories_scanned(), 3u);  // u/click, u/order, v/click
  EXPECT_EQ(tresp.histories_trimmed(), 2u);  // u/click and v/click
  // "a" and "c"; "old" was past its retention on arrival and the merge dropped it at once.
  EXPECT_EQ(tresp.events_dropped(), 2u);
  EXPECT_EQ(tresp.histories_removed(), 1u);  // v/click
  std::string vkey = HistoryKey("v", 1);
  std::vector<absl::string_view> keys = {vkey};
  std::vector<std::optional<std::string>> values;
  ASSERT_TRUE(env.engine()->MultiGet(1, keys, &values).ok());
  EXPECT_FALSE(values[0].has_value()) << "an emptied history is dropped by compaction";
  EXPECT_THAT(Items(env.LastK({"u"}, {"click", "order"}, 10).users(0).histories(1)), ElementsAre("o@-7200000"));
  // Nothing left to trim.
  ASSERT_TRUE(env.store()->Trim(treq, &tresp).ok());
  EXPECT_EQ(tresp.events_dropped(), 0u);
}

TEST_P(StoreTest, WindowsSelectByTimeWithALimit) {
  Env env(Opts(GetParam()));
  env.Register(Type("click"));
  env.Register(Type("cart"));
  std::vector<v1::Event> evs;
  for (int i = 0; i < 10; ++i) evs.push_back(Ev("u", "click", "c" + std::to_string(i), kT0 - i * kHour));
  evs.push_back(Ev("u", "cart", "k", kT0 - 90 * 60000));
  ASSERT_TRUE(env.Write(evs).ok());
  // The last 3 hours (relative to the server clock), newest first.
  auto r = env.Window({"u"}, {"click"}, 0, 0, 3 * kHour, 0);
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("c0@0", "c1@-3600000", "c2@-7200000", "c3@-10800000"));
  // An absolute range [since, until) with a limit.
  r = env.Window({"u"}, {"click"}, kT0 - 8 * kHour, kT0 - 2 * kHour, 0, 3);
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("c3@-10800000", "c4@-14400000", "c5@-18000000"));
  // Merged across types.
  r = env.Window({"u"}, {}, 0, 0, 2 * kHour, 0, true);
  EXPECT_THAT(Items(r.users(0).histories(0)), ElementsAre("c0@0", "c1@-3600000", "k@-5400000", "c2@-7200000"));
  auto c = env.Count({"u"}, {"click", "cart"}, 2 * kHour);
  EXPECT_EQ(c.users(0).counts(0).type(), "click");
  EXPECT_EQ(c.users(0).counts(0).count(), 3u);
  EXPECT_EQ(c.users(0).counts(1).count(), 1u);
  EXPECT_EQ(c.users(0).total(), 4u);

  v1::WindowRequest bad;
  bad.add_user_ids("u");
  bad.mutable_range()->set_since_ms(kT0);
  bad.mutable_range()->set_until_ms(kT0 - 1);
  v1::HistoriesResponse resp;
  absl::Status s = env.store()->Window(bad, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("range: until_ms"));
  bad.mutable_range()->set_until_ms(0);
  bad.mutable_range()->set_within_ms(1000);
  EXPECT_THAT(std::string(env.store()->Window(bad, &resp).message()), HasSubstr("not both"));
}

TEST_P(StoreTest, PayloadsRoundTrip) {
  Env env(Opts(GetParam()));
  v1::EventType order = Type("order");
  auto* f = order.add_payload();
  f->set_name("price");
  f->set_type(v1::FLOAT32);
  f = order.add_payload();
  f->set_name("quantity");
  f->set_type(v1::INT32);
  env.Register(order);
  env.Register(Type("click"));
  v1::Event e = Ev("u", "order", "p1", kT0 - 10);
  (*e.mutable_payload())["price"].set_float32_value(99.5f);
  (*e.mutable_payload())["quantity"].set_int32_value(2);
  v1::Event partial = Ev("u", "order", "p2", kT0 - 20);
  (*partial.mutable_payload())["quantity"].set_int32_value(1);
  ASSERT_TRUE(env.Write({e, partial, Ev("u", "order", "p3", kT0 - 30), Ev("u", "click", "p1", kT0 - 5)}).ok());
  auto r = env.LastK({"u"}, {"order"}, 10);
  const v1::History& h = r.users(0).histories(0);
  ASSERT_EQ(h.payloads_size(), 3);
  EXPECT_FLOAT_EQ(h.payloads(0).fields().at("price").float32_value(), 99.5f);
  EXPECT_EQ(h.payloads(0).fields().at("quantity").int32_value(), 2);
  EXPECT_EQ(h.payloads(1).fields().size(), 1u);
  EXPECT_EQ(h.payloads(1).fields().at("quantity").int32_value(), 1);
  EXPECT_TRUE(h.payloads(2).fields().empty());
  // Types without payloads return none; merged histories carry one (maybe empty) per event.
  EXPECT_EQ(env.LastK({"u"}, {"click"}, 10).users(0).histories(0).payloads_size(), 0);
  r = env.LastK({"u"}, {}, 10, true);
  ASSERT_EQ(r.users(0).histories(0).payloads_size(), 4);
  EXPECT_TRUE(r.users(0).histories(0).payloads(0).fields().empty());  // the click
  EXPECT_EQ(r.users(0).histories(0).payloads(1).fields().size(), 2u);
}

TEST_P(StoreTest, DeleteUserRemovesEveryHistoryOfOnlyThatUser) {
  Env env(Opts(GetParam()));
  env.Register(Type("click"));
  env.Register(Type("order"));
  ASSERT_TRUE(env.Write({Ev("u", "click", "1", kT0), Ev("u", "order", "2", kT0), Ev("w", "click", "3", kT0)}).ok());
  EXPECT_EQ(env.Count({"u", "w"}, {}).users(0).total(), 2u);  // loads u into the hot tier
  v1::DeleteUserRequest req;
  req.add_user_ids("u");
  v1::DeleteUserResponse resp;
  ASSERT_TRUE(env.store()->DeleteUser(req, &resp).ok());
  EXPECT_EQ(resp.users_deleted(), 1u);
  auto c = env.Count({"u", "w"}, {});
  EXPECT_EQ(c.users(0).total(), 0u);
  EXPECT_EQ(c.users(1).total(), 1u);
  int remaining = 0;
  ASSERT_TRUE(env.engine()->Scan(1, HistoryKeyPrefix("u"), [&](absl::string_view, absl::string_view) {
    ++remaining;
    return true;
  }).ok());
  EXPECT_EQ(remaining, 0);
  // New events after the delete start a new history.
  ASSERT_TRUE(env.Write({Ev("u", "click", "4", kT0 + 1)}).ok());
  EXPECT_THAT(Items(env.LastK({"u"}, {"click"}, 10).users(0).histories(0)), ElementsAre("4@1"));
}

TEST_P(StoreTest, BadWritesAreRejectedWholeNamingEachEvent) {
  InteractionOptions o = Opts(GetParam());
  o.max_events_per_write = 5;
  o.max_payload_bytes = 16;
  Env env(o);
  v1::EventType order = Type("order");
  auto* f = order.add_payload();
  f->set_name("note");
  f->set_type(v1::STRING);
  env.Register(order);
  env.Register(Type("click"));
  v1::Event big = Ev("u", "order", "p", kT0);
  (*big.mutable_payload())["note"].set_string_value(std::string(100, 'x'));
  v1::Event wrong = Ev("u", "order", "p", kT0);
  (*wrong.mutable_payload())["note"].set_int32_value(3);
  std::vector<v1::Event> batch = {Ev("u", "click", "ok", kT0),        Ev("u", "clik", "p", kT0),
                                  Ev("", "click", "p", kT0),          Ev("u", "click", "", kT0 + 10 * 60000)};
  absl::Status s = env.Write(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  std::string m(s.message());
  EXPECT_THAT(m, HasSubstr("3 of 4 events are invalid; the batch was rejected and nothing was written"));
  EXPECT_THAT(m, HasSubstr("events[1].type: unknown event type \"clik\""));
  EXPECT_THAT(m, HasSubstr("events[2].user_id: missing"));
  EXPECT_THAT(m, HasSubstr("events[3].item_id: missing"));
  EXPECT_THAT(m, HasSubstr("events[3].timestamp_ms: 1700000600000 is 600000 ms ahead of the server clock"));
  EXPECT_THAT(m, Not(HasSubstr("events[0]")));
  // The valid event of the rejected batch was not written.
  EXPECT_EQ(env.Count({"u"}, {}).users(0).total(), 0u);

  s = env.Write({Ev("u", "click", "p", 0), Ev("u", "click", "p", -5), big, wrong});
  m = std::string(s.message());
  EXPECT_THAT(m, HasSubstr("events[0].timestamp_ms: missing"));
  EXPECT_THAT(m, HasSubstr("events[1].timestamp_ms: -5 is negative"));
  EXPECT_THAT(m, HasSubstr("events[2].payload[\"note\"]: length 100 exceeds the limit of 16 bytes"));
  EXPECT_THAT(m, HasSubstr("events[3].payload[\"note\"]: expected STRING, got int32_value"));

  // At most 10 errors are listed.
  s = env.Write(std::vector<v1::Event>(4, Ev("", "", "", kT0)));
  EXPECT_THAT(std::string(s.message()), HasSubstr("4 of 4 events are invalid"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("events[3].user_id: missing; and 2 more errors"));

  s = env.Write(std::vector<v1::Event>(6, Ev("u", "click", "p", kT0)));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), HasSubstr("events: 6 events exceeds the limit of 5"));

  // Within the skew is fine.
  EXPECT_TRUE(env.Write({Ev("u", "click", "soon", kT0 + 60000)}).ok());
  EXPECT_EQ(env.Count({"u"}, {}).users(0).total(), 1u);
}

TEST_P(StoreTest, BadReadsNameTheField) {
  InteractionOptions o = Opts(GetParam());
  o.max_users_per_request = 2;
  o.max_events_per_read = 100;
  Env env(o);
  env.Register(Type("click"));
  v1::HistoriesResponse resp;
  v1::LastKRequest req;
  req.add_user_ids("u");
  req.set_k(0);
  EXPECT_THAT(std::string(env.store()->LastK(req, &resp).message()), HasSubstr("k: must be at least 1"));
  req.set_k(101);
  EXPECT_EQ(env.store()->LastK(req, &resp).code(), absl::StatusCode::kResourceExhausted);
  req.set_k(5);
  req.add_types("clicks");
  EXPECT_THAT(std::string(env.store()->LastK(req, &resp).message()), HasSubstr("types[0]: unknown event type"));
  req.clear_types();
  req.add_user_ids("");
  EXPECT_THAT(std::string(env.store()->LastK(req, &resp).message()), HasSubstr("user_ids[1]: empty"));
  req.add_user_ids("x");
  EXPECT_EQ(env.store()->LastK(req, &resp).code(), absl::StatusCode::kResourceExhausted);
  req.clear_user_ids();
  EXPECT_THAT(std::string(env.store()->LastK(req, &resp).message()), HasSubstr("user_ids: name at least one"));
}

INSTANTIATE_TEST_SUITE_P(HotBudgets, StoreTest, ::testing::Values(0, 2048, 1 << 20),
                         [](const ::testing::TestParamInfo<uint64_t>& i) {
                           return i.param == 0 ? std::string("ColdOnly")
                                               : i.param < 4096 ? std::string("TinyHot") : std::string("Hot");
                         });

TEST(StoreTiers, LoadOnReadUpdateInPlaceEvictOnInactivity) {
  Env env(Opts(1 << 20));
  env.Register(Type("click"));
  const InteractionStore* s = env.store();
  ASSERT_TRUE(env.Write({Ev("a", "click", "1", kT0), Ev("b", "click", "2", kT0)}).ok());
  EXPECT_EQ(s->hot().users(), 0u) << "writes for users who are not hot do not load them";
  env.LastK({"a"}, {"click"}, 5);
  EXPECT_EQ(s->hot().users(), 1u);
  EXPECT_EQ(s->hot().loads(), 1u);
  env.LastK({"a"}, {"click"}, 5);
  EXPECT_EQ(s->hot().hits(), 1u);
  ASSERT_TRUE(env.Write({Ev("a", "click", "3", kT0 + 1)}).ok());  // updates the hot copy in place
  EXPECT_THAT(Items(env.LastK({"a"}, {"click"}, 5).users(0).histories(0)), ElementsAre("3@1", "1@0"));
  EXPECT_EQ(s->hot().loads(), 1u);
  EXPECT_EQ(s->hot().hits(), 2u);
  env.Advance(30000);
  env.LastK({"b"}, {"click"}, 5);
  env.Advance(40000);  // a: idle 70 s > 60 s; b: idle 40 s
  EXPECT_EQ(env.store()->SweepIdle(), 1u);
  EXPECT_EQ(s->hot().users(), 1u);
  EXPECT_EQ(s->hot().evictions_idle(), 1u);
  // Reloading after eviction serves the same events: eviction loses nothing.
  EXPECT_THAT(Items(env.LastK({"a"}, {"click"}, 5).users(0).histories(0)), ElementsAre("3@1", "1@0"));
  EXPECT_EQ(s->hot().loads(), 3u);
  std::string m = env.Metrics();
  EXPECT_THAT(m, HasSubstr("kosh_interactions_hot_users 2"));
  EXPECT_THAT(m, HasSubstr("kosh_interactions_hot_loads_total 3"));
  EXPECT_THAT(m, HasSubstr("kosh_interactions_hot_evictions_total{reason=\"inactive\"} 1"));
  EXPECT_THAT(m, HasSubstr("kosh_interactions_hot_lookups_total{result=\"hit\"} 2"));
  EXPECT_THAT(m, HasSubstr("kosh_interactions_events_written_total 3"));
}

TEST(StoreTiers, RegisteringAChangedTypeEmptiesTheHotTier) {
  Env env(Opts(1 << 20));
  env.Register(Type("click", 5));
  std::vector<v1::Event> evs;
  for (int i = 0; i < 5; ++i) evs.push_back(Ev("a", "click", std::to_string(i), kT0 - i));
  ASSERT_TRUE(env.Write(evs).ok());
  env.LastK({"a"}, {"click"}, 10);
  EXPECT_EQ(env.store()->hot().users(), 1u);
  env.Register(Type("click", 2));
  EXPECT_EQ(env.store()->hot().users(), 0u);
  EXPECT_EQ(env.LastK({"a"}, {"click"}, 10).users(0).histories(0).item_ids_size(), 2);
}

// Serialises every read a client could make of `users`, for comparing stores.
std::string ReadAll(Env& env, const std::vector<std::string>& users) {
  std::string out;
  out += env.LastK(users, {}, 1000).SerializeAsString();
  out += env.LastK(users, {}, 7, true).SerializeAsString();
  out += env.Window(users, {}, 0, 0, 20000, 0).SerializeAsString();
  out += env.Window(users, {"t0", "t2"}, env.now() - 50000, env.now() - 5000, 0, 3, true).SerializeAsString();
  out += env.Count(users, {}).SerializeAsString();
  out += env.Count(users, {}, 30000).SerializeAsString();
  return out;
}

// The same random workload against the cold tier alone, a tiny hot tier (constant evictions) and a
// large one: every read after every step must be identical.
TEST(StoreTiers, HotAndColdTiersServeIdenticalResults) {
  auto clock = std::make_shared<std::atomic<int64_t>>(kT0);
  std::vector<std::unique_ptr<Env>> envs;
  for (uint64_t budget : {uint64_t{0}, uint64_t{3000}, uint64_t{64} << 20}) {
    envs.push_back(std::make_unique<Env>(Opts(budget), clock));
  }
  for (auto& e : envs) {
    e->Register(Type("t0", 8));
    e->Register(Type("t1", 20, 40));  // 40 s retention
    e->Register(Type("t2"));
  }
  std::mt19937_64 rng(42);
  std::vector<std::string> users;
  for (int i = 0; i < 12; ++i) users.push_back("user" + std::to_string(i));
  for (int step = 0; step < 300; ++step) {
    const int action = static_cast<int>(rng() % 100);
    if (action < 60) {
      std::vector<v1::Event> batch;
      const int n = 1 + static_cast<int>(rng() % 8);
      for (int i = 0; i < n; ++i) {
        // Skewed users, late and out-of-order timestamps, frequent exact duplicates.
        const std::string& u = users[std::min<size_t>(rng() % 12, rng() % 12)];
        batch.push_back(Ev(u, "t" + std::to_string(rng() % 3), std::to_string(rng() % 6),
                           clock->load() - static_cast<int64_t>(rng() % 60) * 1000));
      }
      for (auto& e : envs) ASSERT_TRUE(e->Write(batch).ok());
    } else if (action < 85) {
      std::vector<std::string> some;
      for (int i = 0; i < 3; ++i) some.push_back(users[rng() % users.size()]);
      std::string expected = ReadAll(*envs[0], some);
      for (size_t k = 1; k < envs.size(); ++k) ASSERT_EQ(ReadAll(*envs[k], some), expected) << "step " << step;
    } else if (action < 92) {
      *clock += static_cast<int64_t>(rng() % 20000);
      for (auto& e : envs) e->store()->SweepIdle();
    } else if (action < 96) {
      v1::DeleteUserRequest req;
      req.add_user_ids(users[rng() % users.size()]);
      v1::DeleteUserResponse resp;
      for (auto& e : envs) ASSERT_TRUE(e->store()->DeleteUser(req, &resp).ok());
    } else if (action < 98) {
      v1::TrimRequest req;
      v1::TrimResponse resp;
      for (auto& e : envs) ASSERT_TRUE(e->store()->Trim(req, &resp).ok());
    } else {
      const uint32_t cap = 3 + static_cast<uint32_t>(rng() % 10);
      for (auto& e : envs) e->Register(Type("t0", cap));
    }
  }
  std::string expected = ReadAll(*envs[0], users);
  for (size_t k = 1; k < envs.size(); ++k) EXPECT_EQ(ReadAll(*envs[k], users), expected);
  EXPECT_GT(envs[1]->store()->hot().evictions_memory(), 0u) << "the tiny budget should have forced evictions";
  EXPECT_GT(envs[2]->store()->hot().hits(), 0u);
}

// Readers and writers race on a tiny hot tier (loads, in-place updates and evictions interleave
// with writes); afterwards the hot store and a cold-only store on the same engine agree.
TEST(StoreTiers, ConcurrentReadsAndWritesLeaveTheTiersConsistent) {
  auto clock = std::make_shared<std::atomic<int64_t>>(kT0);
  Env hot(Opts(4096), clock);
  hot.Register(Type("click", 50));
  hot.Register(Type("order", 50));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(w);
      for (int i = 0; i < 400; ++i) {
        std::vector<v1::Event> batch;
        for (int j = 0; j < 5; ++j) {
          batch.push_back(Ev("u" + std::to_string(rng() % 8), rng() % 2 ? "click" : "order",
                             std::to_string(rng() % 1000), kT0 - static_cast<int64_t>(rng() % 100000)));
        }
        EXPECT_TRUE(hot.Write(batch).ok());
      }
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(100 + r);
      while (!stop.load()) {
        v1::LastKRequest req;
        req.add_user_ids("u" + std::to_string(rng() % 8));
        req.set_k(50);
        v1::HistoriesResponse resp;
        EXPECT_TRUE(hot.store()->LastK(req, &resp).ok());
        if (rng() % 16 == 0) hot.store()->SweepIdle();
      }
    });
  }
  threads[0].join();
  threads[1].join();
  stop = true;
  threads[2].join();
  threads[3].join();
  // A second store on the same engine with the hot tier off reads the cold tier only.
  InteractionOptions cold_opts = Opts(0);
  Env cold(cold_opts, clock, hot.engine());
  std::vector<std::string> users;
  for (int i = 0; i < 8; ++i) users.push_back("u" + std::to_string(i));
  EXPECT_EQ(hot.LastK(users, {}, 1000).SerializeAsString(), cold.LastK(users, {}, 1000).SerializeAsString());
  EXPECT_EQ(hot.Count(users, {}).SerializeAsString(), cold.Count(users, {}).SerializeAsString());
  EXPECT_GT(hot.store()->hot().loads(), 0u);
}

}  // namespace
}  // namespace kosh::interactions
