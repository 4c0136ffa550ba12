// End-to-end tests of the interaction store through the real `kosh serve` binary, over gRPC and
// HTTP/JSON: batched writes and the Ingest stream, last-k, windows, counts, caps, out-of-order
// arrival, duplicates, payloads, multi-user reads, deletes, retention and Trim, restarts, auth,
// bad input; and the hot tier's transitions (load on first read, in-place updates, inactivity
// eviction, LRU eviction under a small budget) with every read compared to an all-cold server.
#include <signal.h>

#include <algorithm>
#include <map>
#include <random>
#include <thread>

#include "e2e_interactions_util.h"

namespace kosh::e2e {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kMin = 60000;

constexpr const char* kConfig = R"(interactions:
  max_events_per_write: 50
  max_future_skew: 1m
  max_payload_bytes: 32
  event_types:
    - {name: click, cap: 5}
    - name: order
      retention: 180d
      payload:
        - {name: price, type: float32}
        - {name: quantity, type: int32}
    - {name: add_to_cart}
    - {name: wishlist}
    - {name: share}
    - name: review
      payload:
        - {name: text, type: string}
)";

class InteractionsE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    KoshServer::Options opts;
    opts.config_yaml = kConfig;
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
    stub_ = v1::Interactions::NewStub(server_->NewChannel());
  }

  void Write(const std::vector<v1::Event>& events) {
    v1::WriteResponse resp;
    ASSERT_TRUE(IsOk(Invoke(stub_.get(), &IS::Write, MakeWrite(events), &resp)));
    EXPECT_EQ(resp.events_written(), events.size());
  }
  // LastK over both protocols; asserts they agree and returns the gRPC answer.
  v1::HistoriesResponse LastKBoth(const v1::LastKRequest& req) {
    v1::HistoriesResponse g, h;
    EXPECT_TRUE(IsOk(Invoke(stub_.get(), &IS::LastK, req, &g)));
    EXPECT_TRUE(HttpRpc(*server_, "/v1/interactions/last_k", req, &h));
    EXPECT_TRUE(ProtoEqual(g, h)) << "gRPC and HTTP disagree";
    return g;
  }
  v1::HistoriesResponse WindowBoth(const v1::WindowRequest& req) {
    v1::HistoriesResponse g, h;
    EXPECT_TRUE(IsOk(Invoke(stub_.get(), &IS::Window, req, &g)));
    EXPECT_TRUE(HttpRpc(*server_, "/v1/interactions/window", req, &h));
    EXPECT_TRUE(ProtoEqual(g, h)) << "gRPC and HTTP disagree";
    return g;
  }
  uint64_t Total(const std::string& user) {
    v1::CountResponse c;
    EXPECT_TRUE(IsOk(Invoke(stub_.get(), &IS::Count, MakeCount({user}, {}), &c)));
    return c.users_size() == 1 ? c.users(0).total() : ~0ull;
  }

  static KoshServer* server_;
  static std::string start_error_;
  std::unique_ptr<IS> stub_;
};
KoshServer* InteractionsE2E::server_ = nullptr;
std::string InteractionsE2E::start_error_;

TEST_F(InteractionsE2E, LastKWindowsAndCountsNewestFirstWithCapsAndDuplicates) {
  const int64_t t = NowMs();
  // Clicks p1 (newest) .. p7, one minute apart, arriving out of order over two batches, with an
  // exact duplicate; an order with a payload; other users and types.
  Write({Event("h1", "click", "p4", t - 4 * kMin), Event("h1", "click", "p7", t - 7 * kMin),
         Event("h1", "click", "p1", t - 1 * kMin), Event("h1", "click", "p6", t - 6 * kMin)});
  v1::Event order = Event("h1", "order", "p2", t - 30000);
  (*order.mutable_payload())["price"].set_float32_value(12.5f);
  (*order.mutable_payload())["quantity"].set_int32_value(3);
  Write({Event("h1", "click", "p3", t - 3 * kMin), Event("h1", "click", "p5", t - 5 * kMin),
         Event("h1", "click", "p2", t - 2 * kMin), Event("h1", "click", "p4", t - 4 * kMin), order,
         Event("h2", "add_to_cart", "991", t - 2 * kMin), Event("h2", "wishlist", "992", t - 3 * kMin)});

  // Cap 5: the five newest, newest first; the duplicate p4 is stored once.
  auto r = LastKBoth(MakeLastK({"h1"}, {"click"}, 10));
  ASSERT_EQ(r.users_size(), 1);
  ASSERT_EQ(r.users(0).histories_size(), 1);
  EXPECT_THAT(ItemIds(r.users(0).histories(0)), ElementsAre("p1", "p2", "p3", "p4", "p5"));
  EXPECT_EQ(r.users(0).histories(0).timestamps_ms(0), t - kMin);
  // Last 2 per type, for several users and types in one call.
  r = LastKBoth(MakeLastK({"h2", "h1", "nobody"}, {"click", "add_to_cart", "order"}, 2));
  ASSERT_EQ(r.users_size(), 3);
  EXPECT_EQ(r.users(0).user_id(), "h2");
  EXPECT_EQ(r.users(0).histories(0).item_ids_size(), 0);
  EXPECT_THAT(ItemIds(r.users(0).histories(1)), ElementsAre("991"));
  EXPECT_THAT(ItemIds(r.users(1).histories(0)), ElementsAre("p1", "p2"));
  const v1::History& orders = r.users(1).histories(2);
  ASSERT_EQ(orders.payloads_size(), 1);
  EXPECT_FLOAT_EQ(orders.payloads(0).fields().at("price").float32_value(), 12.5f);
  EXPECT_EQ(orders.payloads(0).fields().at("quantity").int32_value(), 3);
  for (const auto& h : r.users(2).histories()) EXPECT_EQ(h.item_ids_size(), 0);
  // All types merged, newest first.
  r = LastKBoth(MakeLastK({"h1"}, {}, 3, true));
  ASSERT_EQ(r.users(0).histories_size(), 1);
  EXPECT_THAT(ItemIds(r.users(0).histories(0)), ElementsAre("p2", "p1", "p2"));
  EXPECT_THAT(r.users(0).histories(0).types(), ElementsAre("order", "click", "click"));

  // The last 3.5 minutes (server clock), newest first, with and without a limit.
  auto w = WindowBoth(MakeWindow({"h1"}, {"click"}, 3 * kMin + kMin / 2));
  EXPECT_THAT(ItemIds(w.users(0).histories(0)), ElementsAre("p1", "p2", "p3"));
  w = WindowBoth(MakeWindow({"h1", "h2"}, {}, 3 * kMin + kMin / 2, 2, true));
  EXPECT_THAT(ItemIds(w.users(0).histories(0)), ElementsAre("p2", "p1"));
  EXPECT_THAT(ItemIds(w.users(1).histories(0)), ElementsAre("991", "992"));
  // An absolute range [since, until).
  v1::WindowRequest abs = MakeWindow({"h1"}, {"click"}, 0);
  abs.mutable_range()->set_since_ms(t - 4 * kMin);
  abs.mutable_range()->set_until_ms(t - 2 * kMin);
  EXPECT_THAT(ItemIds(WindowBoth(abs).users(0).histories(0)), ElementsAre("p3", "p4"));

  // Server-side counts per type over a window.
  v1::CountResponse c, ch;
  auto creq = MakeCount({"h1", "h2"}, {"click", "order", "wishlist"}, 2 * kMin + kMin / 2);
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &IS::Count, creq, &c)));
  ASSERT_TRUE(HttpRpc(*server_, "/v1/interactions/count", creq, &ch));
  EXPECT_TRUE(ProtoEqual(c, ch));
  ASSERT_EQ(c.users_size(), 2);
  EXPECT_EQ(c.users(0).counts(0).count(), 2u);  // p1, p2
  EXPECT_EQ(c.users(0).counts(1).count(), 1u);
  EXPECT_EQ(c.users(0).total(), 3u);
  EXPECT_EQ(c.users(1).total(), 0u);  // h2's wishlist is 3 minutes old
}

TEST_F(InteractionsE2E, HttpJsonWritesAndReadsWithPayloads) {
  const int64_t t = NowMs();
  std::string body = "{\"events\": [{\"user_id\": \"j1\", \"type\": \"order\", \"item_id\": \"sku-1\", \"timestamp_ms\": " +
                     std::to_string(t - 1000) +
                     ", \"payload\": {\"price\": {\"float32_value\": 99.5}, \"quantity\": {\"int32_value\": 1}}},"
                     "{\"userId\": \"j1\", \"type\": \"share\", \"itemId\": \"sku-1\", \"timestampMs\": \"" +
                     std::to_string(t - 2000) + "\"}]}";
  HttpResponse w = server_->Post("/v1/interactions/write", body);
  ASSERT_TRUE(IsHttpOk(w));
  EXPECT_THAT(w.body, HasSubstr("\"events_written\":2"));
  HttpResponse r = server_->Post("/v1/interactions/last_k", R"({"user_ids": ["j1"], "k": 5, "merge_types": true})");
  ASSERT_TRUE(IsHttpOk(r));
  v1::HistoriesResponse resp;
  ASSERT_TRUE(ParseJson(r.body, &resp));
  ASSERT_EQ(resp.users(0).histories(0).item_ids_size(), 2);
  EXPECT_THAT(resp.users(0).histories(0).types(), ElementsAre("order", "share"));
  EXPECT_FLOAT_EQ(resp.users(0).histories(0).payloads(0).fields().at("price").float32_value(), 99.5f);
  EXPECT_TRUE(resp.users(0).histories(0).payloads(1).fields().empty());
  // Read methods also answer GET with the request as the body; ListEventTypes needs none.
  HttpResponse types = server_->Get("/v1/interactions/list_event_types");
  ASSERT_TRUE(IsHttpOk(types));
  v1::ListEventTypesResponse lt;
  ASSERT_TRUE(ParseJson(types.body, &lt));
  ASSERT_GE(lt.event_types_size(), 6);
  EXPECT_EQ(lt.event_types(0).name(), "click");
  EXPECT_EQ(lt.event_types(0).cap(), 5u);
  EXPECT_EQ(lt.event_types(1).retention_seconds(), 180 * 86400);
  EXPECT_EQ(lt.event_types(2).cap(), 500u);  // the default cap
}

TEST_F(InteractionsE2E, IngestStreamWritesEveryBatchAndNamesTheFailingOne) {
  const int64_t t = NowMs();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + Millis(5000));
    v1::IngestResponse summary;
    auto stream = stub_->Ingest(&ctx, &summary);
    for (int b = 0; b < 4; ++b) {
      std::vector<v1::Event> evs;
      for (int i = 0; i < 10; ++i) {
        evs.push_back(Event("s" + std::to_string(i % 3), "click", std::to_string(b * 10 + i), t - (b * 10 + i) * 1000));
      }
      ASSERT_TRUE(stream->Write(MakeWrite(evs)));
    }
    stream->WritesDone();
    ASSERT_TRUE(IsOk(stream->Finish()));
    EXPECT_EQ(summary.batches(), 4u);
    EXPECT_EQ(summary.events_written(), 40u);
  }
  EXPECT_EQ(Total("s0"), 5u);  // capped at 5 of 14
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + Millis(5000));
    v1::IngestResponse summary;
    auto stream = stub_->Ingest(&ctx, &summary);
    ASSERT_TRUE(stream->Write(MakeWrite({Event("g1", "share", "a", t), Event("g1", "share", "b", t - 1)})));
    // The second batch has a bad event: it and everything after it are not written.
    stream->Write(MakeWrite({Event("g2", "share", "c", t), Event("g2", "share", "d", t), Event("g2", "shar", "e", t)}));
    stream->Write(MakeWrite({Event("g3", "share", "f", t)}));
    stream->WritesDone();
    grpc::Status s = stream->Finish();
    EXPECT_TRUE(IsError(s, grpc::StatusCode::INVALID_ARGUMENT, "batch 1: 1 of 3 events is invalid"));
    EXPECT_THAT(s.error_message(), HasSubstr("events[2].type: unknown event type \"shar\""));
    EXPECT_THAT(s.error_message(), HasSubstr("the 1 batches before it (2 events) were written and are durable"));
  }
  EXPECT_EQ(Total("g1"), 2u);
  EXPECT_EQ(Total("g2"), 0u);
  EXPECT_EQ(Total("g3"), 0u);
}

TEST_F(InteractionsE2E, BadInputIsRejectedWholeWithTheEventNamed) {
  const int64_t t = NowMs();
  struct Case {
    std::string body;
    int status;
    std::string code;
    std::string message;
  };
  auto ev = [&](const std::string& extra) {
    return "{\"events\": [{\"user_id\": \"bad0\", \"type\": \"click\", \"item_id\": \"ok\", \"timestamp_ms\": " +
           std::to_string(t) + "}, {" + extra + "}]}";
  };
  const std::string ts = std::to_string(t);
  std::vector<Case> cases = {
      {ev("\"user_id\": \"b\", \"type\": \"clik\", \"item_id\": \"i\", \"timestamp_ms\": " + ts), 400,
       "INVALID_ARGUMENT", "events[1].type: unknown event type \"clik\""},
      {ev("\"type\": \"click\", \"item_id\": \"i\", \"timestamp_ms\": " + ts), 400, "INVALID_ARGUMENT",
       "events[1].user_id: missing"},
      {ev("\"user_id\": \"b\", \"type\": \"click\", \"timestamp_ms\": " + ts), 400, "INVALID_ARGUMENT",
       "events[1].item_id: missing"},
      {ev("\"user_id\": \"b\", \"type\": \"click\", \"item_id\": \"i\""), 400, "INVALID_ARGUMENT",
       "events[1].timestamp_ms: missing"},
      {ev("\"user_id\": \"b\", \"type\": \"click\", \"item_id\": \"i\", \"timestamp_ms\": " +
          std::to_string(t + 3600000)),
       400, "INVALID_ARGUMENT", "events[1].timestamp_ms: " + std::to_string(t + 3600000) + " is"},
      {ev("\"user_id\": \"b\", \"type\": \"review\", \"item_id\": \"i\", \"timestamp_ms\": " + ts +
          ", \"payload\": {\"text\": {\"string_value\": \"" + std::string(100, 'x') + "\"}}"),
       400, "INVALID_ARGUMENT", "events[1].payload[\"text\"]: length 100 exceeds the limit of 32 bytes"},
      {ev("\"user_id\": \"b\", \"type\": \"order\", \"item_id\": \"i\", \"timestamp_ms\": " + ts +
          ", \"payload\": {\"price\": {\"string_value\": \"cheap\"}}"),
       400, "INVALID_ARGUMENT", "events[1].payload[\"price\"]: expected FLOAT32, got string_value"},
      {ev("\"user_id\": \"b\", \"type\": \"click\", \"item_id\": \"i\", \"timestamp_ms\": " + ts +
          ", \"payload\": {\"price\": {\"float32_value\": 1}}"),
       400, "INVALID_ARGUMENT", "events[1].payload[\"price\"]: unknown payload field"},
      {ev("\"user_id\": \"b\", \"typo\": \"click\""), 400, "INVALID_ARGUMENT", "body: invalid JSON"},
      {"{\"events\": [", 400, "INVALID_ARGUMENT", "body: invalid JSON"},
  };
  for (const Case& c : cases) {
    HttpResponse r = server_->Post("/v1/interactions/write", c.body);
    EXPECT_TRUE(IsHttpError(r, c.status, c.code, c.message)) << c.body;
  }
  // The valid first event of each rejected batch was not written.
  EXPECT_EQ(Total("bad0"), 0u);

  // Oversize batch: 413 over HTTP, RESOURCE_EXHAUSTED over gRPC.
  std::vector<v1::Event> many(51, Event("bad1", "click", "i", t));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/interactions/write", ToJson(MakeWrite(many))), 413,
                          "RESOURCE_EXHAUSTED", "events: 51 events exceeds the limit of 50"));
  v1::WriteResponse wr;
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &IS::Write, MakeWrite(many), &wr), grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "interactions.max_events_per_write"));
  EXPECT_EQ(Total("bad1"), 0u);

  // Reads.
  v1::HistoriesResponse hr;
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &IS::LastK, MakeLastK({"u"}, {"click"}, 0), &hr),
                      grpc::StatusCode::INVALID_ARGUMENT, "k: must be at least 1"));
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &IS::LastK, MakeLastK({"u"}, {"click", "clicks"}, 5), &hr),
                      grpc::StatusCode::INVALID_ARGUMENT, "types[1]: unknown event type \"clicks\""));
  EXPECT_TRUE(IsError(Invoke(stub_.get(), &IS::LastK, MakeLastK({}, {"click"}, 5), &hr),
                      grpc::StatusCode::INVALID_ARGUMENT, "user_ids: name at least one user"));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/interactions/window",
                                        R"({"user_ids": ["u"], "range": {"since_ms": 10, "until_ms": 5}})"),
                          400, "INVALID_ARGUMENT", "range: until_ms"));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/interactions/count", R"({"user_ids": ["u"], "range": {"within_ms": -1}})"),
                          400, "INVALID_ARGUMENT", "range:"));
  // Event types.
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/interactions/register_event_type",
                                        R"({"event_type": {"name": "order", "payload": [{"name": "price", "type": "FLOAT64"}]}})"),
                          400, "FAILED_PRECONDITION", "payloads cannot change"));
  EXPECT_TRUE(IsHttpError(server_->Post("/v1/interactions/register_event_type", R"({"event_type": {"name": "bad name"}})"),
                          400, "INVALID_ARGUMENT", "event_type.name"));
  // Wrong verb, unknown path.
  HttpResponse get_write = server_->Get("/v1/interactions/write");
  EXPECT_EQ(get_write.status, 405);
  EXPECT_EQ(server_->Post("/v1/interactions/ingest", "{}").status, 404) << "Ingest is gRPC only";
  // Still serving.
  v1::ListEventTypesResponse lt;
  EXPECT_TRUE(IsOk(Invoke(stub_.get(), &IS::ListEventTypes, v1::ListEventTypesRequest(), &lt)));
}

TEST_F(InteractionsE2E, DeleteUserAndRetentionTrim) {
  const int64_t t = NowMs();
  // A type with a one-second retention, registered through the API.
  v1::RegisterEventTypeRequest reg;
  reg.mutable_event_type()->set_name("flash");
  reg.mutable_event_type()->set_retention_seconds(1);
  v1::RegisterEventTypeResponse rr;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &IS::RegisterEventType, reg, &rr)));
  EXPECT_TRUE(rr.created());
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &IS::RegisterEventType, reg, &rr)));
  EXPECT_FALSE(rr.created() || rr.changed()) << "registering is idempotent";

  Write({Event("d1", "flash", "x", t - 200), Event("d1", "click", "y", t), Event("d2", "click", "z", t)});
  EXPECT_EQ(Total("d1"), 2u);
  std::this_thread::sleep_for(Millis(1300));
  EXPECT_EQ(Total("d1"), 1u) << "the flash event is past its retention";
  v1::TrimRequest treq;
  treq.add_user_ids("d1");
  v1::TrimResponse tr;
  ASSERT_TRUE(IsOk(Invoke(stub_.get(), &IS::Trim, treq, &tr, "", Millis(20000))));
  EXPECT_GE(tr.histories_scanned(), 2u);
  EXPECT_EQ(tr.histories_removed(), 1u) << ToJson(tr);
  EXPECT_EQ(Total("d1"), 1u);

  // Delete over HTTP (a privacy request): every history of d1 goes, d2 stays.
  HttpResponse del = server_->Post("/v1/interactions/delete_user", R"({"user_ids": ["d1"]})");
  ASSERT_TRUE(IsHttpOk(del));
  EXPECT_THAT(del.body, HasSubstr("\"users_deleted\":1"));
  EXPECT_EQ(Total("d1"), 0u);
  EXPECT_EQ(Total("d2"), 1u);
}

// Hot-tier transitions with a small budget and a short inactivity period, against a server with the
// hot tier off: every read of the same workload must be identical.
TEST(InteractionTiersE2E, LoadEvictAndMatchAnAllColdServer) {
  auto config = [](const std::string& budget) {
    return std::string("interactions:\n  hot_budget: ") + budget +
           "\n  inactivity: 600ms\n  event_types:\n    - {name: click, cap: 20}\n    - {name: order}\n"
           "    - {name: share, cap: 3}\n";
  };
  KoshServer::Options hot_opts, cold_opts;
  hot_opts.config_yaml = config("6KiB");
  cold_opts.config_yaml = config("0");
  KoshServer hot(hot_opts), cold(cold_opts);
  ASSERT_TRUE(hot.Start());
  ASSERT_TRUE(cold.Start());
  auto hs = v1::Interactions::NewStub(hot.NewChannel());
  auto cs = v1::Interactions::NewStub(cold.NewChannel());
  auto metric = [&](const std::string& series) {
    bool found = false;
    double v = MetricValue(hot.Get("/metrics").body, series, &found);
    EXPECT_TRUE(found) << series;
    return v;
  };
  auto both_write = [&](const std::vector<v1::Event>& evs) {
    v1::WriteResponse a, b;
    ASSERT_TRUE(IsOk(Invoke(hs.get(), &IS::Write, MakeWrite(evs), &a)));
    ASSERT_TRUE(IsOk(Invoke(cs.get(), &IS::Write, MakeWrite(evs), &b)));
  };
  // Reads the same users from both servers and expects identical answers.
  auto compare = [&](const std::vector<std::string>& users) {
    for (bool merge : {false, true}) {
      v1::HistoriesResponse a, b;
      ASSERT_TRUE(IsOk(Invoke(hs.get(), &IS::LastK, MakeLastK(users, {}, 100, merge), &a)));
      ASSERT_TRUE(IsOk(Invoke(cs.get(), &IS::LastK, MakeLastK(users, {}, 100, merge), &b)));
      ASSERT_TRUE(ProtoEqual(b, a));
      ASSERT_TRUE(IsOk(Invoke(hs.get(), &IS::Window, MakeWindow(users, {"click"}, 20 * kMin, 7), &a)));
      ASSERT_TRUE(IsOk(Invoke(cs.get(), &IS::Window, MakeWindow(users, {"click"}, 20 * kMin, 7), &b)));
      ASSERT_TRUE(ProtoEqual(b, a));
    }
    v1::CountResponse a, b;
    ASSERT_TRUE(IsOk(Invoke(hs.get(), &IS::Count, MakeCount(users, {}, 30 * kMin), &a)));
    ASSERT_TRUE(IsOk(Invoke(cs.get(), &IS::Count, MakeCount(users, {}, 30 * kMin), &b)));
    ASSERT_TRUE(ProtoEqual(b, a));
  };

  const int64_t t = NowMs();
  std::mt19937_64 rng(11);
  std::vector<std::string> users;
  for (int i = 0; i < 30; ++i) users.push_back("t" + std::to_string(i));
  auto random_batch = [&](int n) {
    std::vector<v1::Event> evs;
    const char* types[] = {"click", "order", "share"};
    for (int i = 0; i < n; ++i) {
      evs.push_back(Event(users[std::min(rng() % 30, rng() % 30)], types[rng() % 3], std::to_string(rng() % 50),
                          t - static_cast<int64_t>(rng() % 3600) * 1000));
    }
    return evs;
  };
  both_write(random_batch(200));
  EXPECT_EQ(metric("kosh_interactions_hot_users"), 0) << "writes do not load users";

  // First read of a user loads it (a miss); the next one is a hit.
  compare({"t0"});
  EXPECT_EQ(metric("kosh_interactions_hot_loads_total"), 1);
  EXPECT_EQ(metric("kosh_interactions_hot_users"), 1);
  compare({"t0"});
  EXPECT_GE(metric("kosh_interactions_hot_lookups_total{result=\"hit\"}"), 3);
  // Writes for a hot user update it in place (no reload) and stay consistent.
  both_write({Event("t0", "click", "fresh", t), Event("t0", "share", "fresh", t)});
  compare({"t0"});
  EXPECT_EQ(metric("kosh_interactions_hot_loads_total"), 1);

  // Inactivity: nothing touches t0 for longer than 600 ms, the sweeper evicts it.
  std::this_thread::sleep_for(Millis(1200));
  EXPECT_EQ(metric("kosh_interactions_hot_users"), 0);
  EXPECT_GE(metric("kosh_interactions_hot_evictions_total{reason=\"inactive\"}"), 1);
  compare({"t0"});
  EXPECT_EQ(metric("kosh_interactions_hot_loads_total"), 2);

  // Memory pressure: reading every user through a 6 KiB budget evicts least recently used ones,
  // while writes keep landing; results never differ from the all-cold server.
  for (int round = 0; round < 6; ++round) {
    both_write(random_batch(100));
    std::vector<std::string> some;
    for (int i = 0; i < 10; ++i) some.push_back(users[rng() % users.size()]);
    compare(some);
  }
  compare(users);
  EXPECT_GT(metric("kosh_interactions_hot_evictions_total{reason=\"memory\"}"), 0);
  EXPECT_LE(metric("kosh_interactions_hot_bytes"), 6 * 1024);
  EXPECT_GT(metric("kosh_interactions_hot_hit_ratio"), 0);
}

TEST(InteractionRestartE2E, HistoriesAndTypesSurviveARestart) {
  TempDir dir("interactions-restart");
  KoshServer::Options opts;
  opts.data_dir = dir.File("data");
  KoshServer server(opts);  // no interactions section at all: every default
  ASSERT_TRUE(server.Start());
  auto stub = v1::Interactions::NewStub(server.NewChannel());
  v1::RegisterEventTypeRequest reg;
  reg.mutable_event_type()->set_name("click");
  v1::RegisterEventTypeResponse rr;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &IS::RegisterEventType, reg, &rr)));
  const int64_t t = NowMs();
  v1::WriteResponse wr;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &IS::Write, MakeWrite({Event("r", "click", "1", t - 2), Event("r", "click", "2", t)}),
                          &wr)));
  v1::HistoriesResponse before;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &IS::LastK, MakeLastK({"r"}, {}, 10), &before)));
  stub.reset();  // an idle client connection would make the drain wait for it
  ExitStatus st = server.Stop();
  EXPECT_TRUE(st.exited && st.code == 0) << st.ToString();
  ASSERT_TRUE(server.Start());
  stub = v1::Interactions::NewStub(server.NewChannel());
  v1::HistoriesResponse after;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &IS::LastK, MakeLastK({"r"}, {}, 10), &after)));
  EXPECT_TRUE(ProtoEqual(before, after));
  EXPECT_THAT(ItemIds(after.users(0).histories(0)), ElementsAre("2", "1"));
}

TEST(InteractionAuthE2E, ScopesApplyToEveryMethodIncludingTheStream) {
  KoshServer::Options opts;
  opts.config_yaml = R"(auth:
  enabled: true
  tokens:
    - {name: ranker, token: reader-token-1, scopes: [read]}
    - {name: ingest, token: writer-token-1, scopes: [write]}
interactions:
  event_types: [{name: click}]
)";
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  auto stub = v1::Interactions::NewStub(server.NewChannel());
  const auto write = MakeWrite({Event("a", "click", "1", NowMs())});
  v1::WriteResponse wr;
  EXPECT_TRUE(IsError(Invoke(stub.get(), &IS::Write, write, &wr), grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_TRUE(IsError(Invoke(stub.get(), &IS::Write, write, &wr, "reader-token-1"), grpc::StatusCode::PERMISSION_DENIED,
                      "lacks the write scope"));
  EXPECT_TRUE(IsOk(Invoke(stub.get(), &IS::Write, write, &wr, "writer-token-1")));
  v1::HistoriesResponse hr;
  EXPECT_TRUE(IsOk(Invoke(stub.get(), &IS::LastK, MakeLastK({"a"}, {}, 1), &hr, "reader-token-1")));
  EXPECT_EQ(hr.users(0).histories(0).item_ids_size(), 1);
  v1::TrimResponse tr;
  EXPECT_TRUE(IsError(Invoke(stub.get(), &IS::Trim, v1::TrimRequest(), &tr, "writer-token-1"),
                      grpc::StatusCode::PERMISSION_DENIED, "admin"));
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer reader-token-1");
    ctx.set_deadline(std::chrono::system_clock::now() + Millis(5000));
    v1::IngestResponse summary;
    auto stream = stub->Ingest(&ctx, &summary);
    stream->Write(write);
    stream->WritesDone();
    EXPECT_TRUE(IsError(stream->Finish(), grpc::StatusCode::PERMISSION_DENIED));
  }
  EXPECT_TRUE(IsHttpError(server.Post("/v1/interactions/delete_user", R"({"user_ids": ["a"]})",
                                      {{"authorization", "Bearer reader-token-1"}}),
                          403, "PERMISSION_DENIED"));
}

TEST(InteractionConfigE2E, TheExampleEventTypesLoad) {
  KoshServer::Options opts;
  opts.config_yaml = "interactions:\n  event_type_files: [" + SourcePath("examples/event_types.yaml") + "]\n";
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  auto stub = v1::Interactions::NewStub(server.NewChannel());
  v1::ListEventTypesResponse lt;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &IS::ListEventTypes, v1::ListEventTypesRequest(), &lt)));
  std::map<std::string, v1::EventType> by_name;
  for (const auto& t : lt.event_types()) by_name[t.name()] = t;
  ASSERT_EQ(by_name.size(), 5u);
  EXPECT_EQ(by_name["order"].payload_size(), 3);
  EXPECT_EQ(by_name["order"].retention_seconds(), 180 * 86400);
  EXPECT_EQ(by_name["wishlist"].cap(), 200u);
}

TEST(InteractionConfigE2E, BadConfigurationStopsStartupNamingThePath) {
  KoshServer::Options opts;
  opts.config_yaml = "interactions:\n  hot_budget: plenty\n";
  KoshServer server(opts);
  auto started = server.Start(Millis(5000));
  EXPECT_FALSE(started);
  EXPECT_THAT(server.Log(), HasSubstr("interactions.hot_budget"));
}

}  // namespace
}  // namespace kosh::e2e
