// Crash test of the interaction store: kill -9 the real `kosh serve` under write load (unary
// Write batches and Ingest streams) while readers keep users hot, restart on the same data
// directory, and check that every acknowledged event is served, exactly once, and that each
// unacknowledged Write batch is all there or not there at all.
#include <signal.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "e2e_interactions_util.h"

namespace kosh::e2e {
namespace {

constexpr int kUsers = 40;  // per cycle and writer
constexpr const char* kConfig = R"(interactions:
  hot_budget: 64KiB
  inactivity: 500ms
  event_types:
    - {name: click, cap: 10000}
    - {name: order, cap: 10000}
)";

// Events are identified by (user, type, item); the item encodes everything needed to recreate them.
struct EventId {
  std::string user, type, item;
  int64_t ts;
  bool operator<(const EventId& o) const { return std::tie(user, type, item) < std::tie(o.user, o.type, o.item); }
};
using Batch = std::vector<EventId>;

v1::WriteRequest ToWrite(const Batch& b) {
  v1::WriteRequest r;
  for (const auto& e : b) *r.add_events() = Event(e.user, e.type, e.item, e.ts);
  return r;
}

struct WriterResult {
  std::vector<Batch> acked;
  std::vector<Batch> unacked_unary;   // a Write batch without an answer: all or nothing
  std::vector<Batch> unacked_stream;  // batches of a stream that never got its summary
  std::map<std::string, int> failures;
};

// Writes batches of 20 events until stopped or the server is gone; even writers use unary Write,
// odd ones Ingest streams of 4 batches (acknowledged together by the stream's summary).
void WriteLoop(KoshServer* server, int cycle, int writer, int64_t base_ts, std::atomic<bool>* stop,
               WriterResult* out) {
  auto stub = v1::Interactions::NewStub(server->NewChannel());
  int seq = 0;
  auto next_batch = [&] {
    Batch b;
    for (int i = 0; i < 20; ++i, ++seq) {
      b.push_back({"c" + std::to_string(cycle) + "w" + std::to_string(writer) + "u" + std::to_string(seq % kUsers),
                   seq % 3 == 0 ? "order" : "click", std::to_string(seq),
                   // out of order within a user, all in the recent past
                   base_ts - (seq * 7919) % 600000});
    }
    return b;
  };
  while (!stop->load()) {
    if (writer % 2 == 0) {
      Batch b = next_batch();
      v1::WriteResponse resp;
      grpc::Status s = Invoke(stub.get(), &IS::Write, ToWrite(b), &resp, "", Millis(3000));
      if (s.ok() && resp.events_written() == b.size()) {
        out->acked.push_back(std::move(b));
        continue;
      }
      out->unacked_unary.push_back(std::move(b));
      out->failures[std::string(CodeName(s.error_code())) + ": " + s.error_message()]++;
      return;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + Millis(3000));
    v1::IngestResponse summary;
    auto stream = stub->Ingest(&ctx, &summary);
    std::vector<Batch> sent;
    for (int k = 0; k < 4; ++k) {
      sent.push_back(next_batch());
      if (!stream->Write(ToWrite(sent.back()))) break;
    }
    stream->WritesDone();
    grpc::Status s = stream->Finish();
    if (s.ok() && summary.batches() == sent.size()) {
      for (auto& b : sent) out->acked.push_back(std::move(b));
      continue;
    }
    for (auto& b : sent) out->unacked_stream.push_back(std::move(b));
    out->failures[std::string(CodeName(s.error_code())) + ": " + s.error_message()]++;
    return;
  }
}

// Every stored (user, type, item) of `users`, via LastK with k above any history's size.
std::map<EventId, int> ReadAll(KoshServer* server, const std::set<std::string>& users, std::string* error) {
  std::map<EventId, int> seen;
  auto stub = v1::Interactions::NewStub(server->NewChannel());
  std::vector<std::string> list(users.begin(), users.end());
  for (size_t start = 0; start < list.size(); start += 100) {
    std::vector<std::string> chunk(list.begin() + static_cast<long>(start),
                                   list.begin() + static_cast<long>(std::min(list.size(), start + 100)));
    v1::HistoriesResponse resp;
    grpc::Status s = Invoke(stub.get(), &IS::LastK, MakeLastK(chunk, {"click", "order"}, 10000), &resp, "", Millis(10000));
    if (!s.ok()) {
      *error = std::string(CodeName(s.error_code())) + ": " + s.error_message();
      return seen;
    }
    for (const auto& u : resp.users()) {
      for (const auto& h : u.histories()) {
        for (int i = 0; i < h.item_ids_size(); ++i) seen[{u.user_id(), h.type(), h.item_ids(i), h.timestamps_ms(i)}]++;
      }
    }
  }
  return seen;
}

TEST(InteractionCrashE2E, KillNineUnderWriteLoadLosesNoAcknowledgedEvent) {
  TempDir dir("interactions-crash");
  KoshServer::Options opts;
  opts.data_dir = dir.File("data");
  opts.config_yaml = kConfig;
  opts.extra_flags = {"--log-level", "warn"};  // storage.sync_writes stays at its default (true)
  KoshServer server(opts);

  constexpr int kCycles = 3;
  constexpr int kWriters = 4;
  std::vector<Batch> acked, unacked_unary, unacked_stream;
  std::set<std::string> users;
  const int64_t base_ts = NowMs();
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    ASSERT_TRUE(server.Start());
    std::atomic<bool> stop{false};
    std::vector<WriterResult> results(kWriters);
    std::vector<std::thread> threads;
    for (int w = 0; w < kWriters; ++w) {
      threads.emplace_back(WriteLoop, &server, cycle, w, base_ts, &stop, &results[w]);
      for (int u = 0; u < kUsers; ++u) users.insert("c" + std::to_string(cycle) + "w" + std::to_string(w) + "u" + std::to_string(u));
    }
    // A reader keeps loading this cycle's users into the hot tier, so writes also take the
    // hot-tier path when the kill lands.
    std::thread reader([&] {
      auto stub = v1::Interactions::NewStub(server.NewChannel());
      int i = 0;
      while (!stop.load()) {
        v1::HistoriesResponse resp;
        std::string u = "c" + std::to_string(cycle) + "w" + std::to_string(i % kWriters) + "u" + std::to_string(i % kUsers);
        if (!Invoke(stub.get(), &IS::LastK, MakeLastK({u}, {}, 5), &resp, "", Millis(2000)).ok()) break;
        ++i;
      }
    });
    std::this_thread::sleep_for(Millis(1000));
    ExitStatus killed = server.Kill();  // kill -9 mid-write
    stop = true;
    for (auto& t : threads) t.join();
    reader.join();
    EXPECT_EQ(killed.signal, SIGKILL) << killed.ToString();

    size_t cycle_events = 0;
    for (auto& r : results) {
      for (auto& b : r.acked) {
        cycle_events += b.size();
        acked.push_back(std::move(b));
      }
      for (auto& b : r.unacked_unary) unacked_unary.push_back(std::move(b));
      for (auto& b : r.unacked_stream) unacked_stream.push_back(std::move(b));
      for (const auto& [what, n] : r.failures) {
        EXPECT_THAT(what, ::testing::AnyOf(::testing::HasSubstr("UNAVAILABLE"), ::testing::HasSubstr("CANCELLED"),
                                           ::testing::HasSubstr("DEADLINE_EXCEEDED")))
            << n << " x " << what;
      }
    }
    EXPECT_GE(cycle_events, 200u) << "too little load for the test to mean something";

    ASSERT_TRUE(server.Start()) << "restart after kill -9";
    std::string error;
    std::map<EventId, int> seen = ReadAll(&server, users, &error);
    ASSERT_TRUE(error.empty()) << error;
    size_t missing = 0, total = 0;
    std::vector<std::string> examples;
    for (const auto& b : acked) {
      for (const auto& e : b) {
        ++total;
        auto it = seen.find(e);
        if (it == seen.end() || it->first.ts != e.ts) {
          ++missing;
          if (examples.size() < 5) examples.push_back(e.user + "/" + e.type + "/" + e.item);
        }
      }
    }
    EXPECT_EQ(missing, 0u) << missing << " of " << total << " acknowledged events lost after kill -9 #" << cycle + 1
                           << ", e.g. " << ::testing::PrintToString(examples);
    for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id.user << "/" << id.item << " served " << n << " times";
    // Unacknowledged unary batches are atomic.
    for (const auto& b : unacked_unary) {
      size_t present = 0;
      for (const auto& e : b) present += seen.count(e);
      EXPECT_TRUE(present == 0 || present == b.size()) << "a Write batch is partially present: " << present << " of "
                                                       << b.size();
    }
    std::printf("cycle %d: %zu acknowledged events checked, %zu unacknowledged batches\n", cycle, total,
                unacked_unary.size() + unacked_stream.size());
    server.Kill();
  }
}

}  // namespace
}  // namespace kosh::e2e
