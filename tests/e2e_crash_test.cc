// End-to-end durability tests of the real `kosh serve` binary:
//  - kill -9 under write load, restart on the same data directory, and every acknowledged row is
//    there with exactly the written values (and every unacknowledged batch is all-or-nothing);
//  - graceful shutdown under load: SIGTERM makes readiness false, in-flight calls finish, no call
//    that got an answer got anything but OK / UNAVAILABLE / CANCELLED, the process exits 0 within
//    the grace period, and acknowledged writes survive the restart.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>

#include "e2e_test_util.h"

namespace kosh::e2e {
namespace {

using ::testing::HasSubstr;
using FS = v1::FeatureStore::Stub;
using Reg = v1::Registry::Stub;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kCrashSchema = R"(entities:
  - {name: crash, key_columns: [id]}
feature_groups:
  - entity: crash
    name: cg
    features:
      - {name: a, type: int64}
      - {name: b, type: float64}
      - {name: s, type: string}
      - {name: v, type: int32_vector, length: 3}
)";

// One written row: its key and the parameters its values derive from.
struct RowId {
  int cycle;
  int writer;
  int seq;
  std::string Key() const {
    return "c" + std::to_string(cycle) + "-w" + std::to_string(writer) + "-" + std::to_string(seq);
  }
  std::vector<v1::Value> Values() const {
    const int64_t a = int64_t{cycle} * 1000000007 + int64_t{writer} * 100003 + seq;
    v1::Value v;
    for (int x : {seq, writer, cycle}) v.mutable_int32_list()->add_values(x);
    return {I64(a), F64(seq * 0.25 + writer), Str(Key() + "/" + std::to_string(int64_t{seq} * seq)), v};
  }
};
using Batch = std::vector<RowId>;

struct WriterResult {
  std::vector<Batch> acked;
  std::vector<Batch> unacked;  // sent, but the answer was not OK (or never came)
  std::map<std::string, int> failures;
};

// Writes batches of `batch_size` fresh rows until `stop` is set or a call fails (the server is
// gone). Each call has a deadline so the loop ends even if the server hangs.
void WriteLoop(KoshServer* server, int cycle, int writer, int batch_size, std::atomic<bool>* stop,
               WriterResult* out) {
  auto store = server->FeatureStore();
  int seq = 0;
  while (!stop->load()) {
    Batch b;
    for (int i = 0; i < batch_size; ++i) b.push_back({cycle, writer, seq++});
    std::vector<RowSpec> rows;
    for (const auto& r : b) rows.push_back({{r.Key()}, r.Values()});
    v1::PersistResponse resp;
    grpc::Status s = Invoke(store.get(), &FS::Persist, MakePersist("crash", "cg", rows), &resp, "", Millis(3000));
    if (s.ok() && resp.rows_written() == b.size()) {
      out->acked.push_back(std::move(b));
      continue;
    }
    out->unacked.push_back(std::move(b));
    out->failures[std::string(CodeName(s.error_code())) + ": " + s.error_message()]++;
    break;
  }
}

// Reads every row of `batches` (chunks of 500 keys) and counts rows that are missing or differ.
struct Verification {
  size_t checked = 0;
  size_t missing = 0;
  size_t wrong = 0;
  std::vector<std::string> examples;
  std::string error;
};
Verification Verify(KoshServer* server, const std::vector<Batch>& batches,
                    std::vector<size_t>* present_per_batch = nullptr) {
  Verification v;
  auto store = server->FeatureStore();
  std::vector<std::pair<size_t, RowId>> rows;  // (batch index, row)
  for (size_t i = 0; i < batches.size(); ++i) {
    for (const auto& r : batches[i]) rows.push_back({i, r});
  }
  if (present_per_batch) present_per_batch->assign(batches.size(), 0);
  for (size_t start = 0; start < rows.size(); start += 500) {
    size_t end = std::min(rows.size(), start + 500);
    std::vector<std::vector<std::string>> keys;
    for (size_t i = start; i < end; ++i) keys.push_back({rows[i].second.Key()});
    v1::RetrieveResponse resp;
    grpc::Status s =
        Invoke(store.get(), &FS::Retrieve, MakeRetrieve("crash", keys, {"cg.*"}), &resp, "", Millis(10000));
    if (!s.ok() || resp.rows_size() != static_cast<int>(end - start)) {
      v.error = std::string("Retrieve failed: ") + CodeName(s.error_code()) + ": " + s.error_message();
      return v;
    }
    for (size_t i = start; i < end; ++i) {
      const RowId& id = rows[i].second;
      const v1::Row& row = resp.rows(static_cast<int>(i - start));
      ++v.checked;
      bool all_present = true, any_present = false;
      for (auto st : row.statuses()) {
        all_present = all_present && st == v1::PRESENT;
        any_present = any_present || st == v1::PRESENT;
      }
      if (!any_present) {
        ++v.missing;
        if (v.examples.size() < 5) v.examples.push_back(id.Key() + " missing");
        continue;
      }
      auto want = id.Values();
      bool same = all_present && row.values_size() == static_cast<int>(want.size());
      for (size_t c = 0; same && c < want.size(); ++c) {
        same = ProtoEqual(want[c], row.values(static_cast<int>(c)));
      }
      if (!same) {
        ++v.wrong;
        if (v.examples.size() < 5) v.examples.push_back(id.Key() + " differs: " + ToJson(row));
        continue;
      }
      if (present_per_batch) ++(*present_per_batch)[rows[i].first];
    }
  }
  return v;
}

TEST(CrashE2E, KillNineUnderWriteLoadLosesNoAcknowledgedWrite) {
  TempDir dir("crash");
  ASSERT_TRUE(WriteFile(dir.File("schema.yaml"), kCrashSchema));
  KoshServer::Options opts;
  opts.data_dir = dir.File("data");
  opts.schema_files = {dir.File("schema.yaml")};
  opts.extra_flags = {"--log-level", "warn"};  // sync_writes stays at its default (true)
  KoshServer server(opts);

  constexpr int kCycles = 3;
  constexpr int kWriters = 2;
  constexpr int kBatch = 8;
  std::vector<Batch> acked, unacked;
  std::vector<std::string> groups_created;  // registry changes acknowledged before a kill
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    ASSERT_TRUE(server.Start());
    // A registry change acknowledged just before the load must survive the kill too.
    auto reg = server.Registry();
    v1::FeatureGroup g;
    std::string gname = "extra_" + std::to_string(cycle);
    ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::CreateFeatureGroup, MakeGroup("crash", gname, {Spec("n", v1::INT32)}),
                            &g)));
    groups_created.push_back(gname);

    std::atomic<bool> stop{false};
    std::vector<WriterResult> results(kWriters);
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back(WriteLoop, &server, cycle, w, kBatch, &stop, &results[w]);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    ExitStatus killed = server.Kill();  // kill -9 while the writers are mid-call
    stop = true;
    for (auto& t : writers) t.join();
    EXPECT_EQ(killed.signal, SIGKILL) << killed.ToString();

    size_t cycle_rows = 0;
    for (auto& r : results) {
      for (auto& b : r.acked) {
        cycle_rows += b.size();
        acked.push_back(std::move(b));
      }
      for (auto& b : r.unacked) unacked.push_back(std::move(b));
      // The only failures are the ones the kill caused.
      for (const auto& [what, n] : r.failures) {
        EXPECT_THAT(what, ::testing::AnyOf(HasSubstr("UNAVAILABLE"), HasSubstr("CANCELLED"),
                                           HasSubstr("DEADLINE_EXCEEDED")))
            << n << " x " << what;
      }
    }
    // Enough load for the test to mean something (fsync per batch on a shared 2-core machine
    // still manages hundreds of rows per second).
    EXPECT_GE(cycle_rows, 40u) << "too few acknowledged rows in cycle " << cycle;

    // Restart on the same data directory and check everything acknowledged so far, all cycles.
    ASSERT_TRUE(server.Start()) << "restart after kill -9";
    Verification v = Verify(&server, acked);
    ASSERT_TRUE(v.error.empty()) << v.error;
    size_t total = 0;
    for (const auto& b : acked) total += b.size();
    EXPECT_EQ(v.checked, total);
    EXPECT_EQ(v.missing + v.wrong, 0u) << v.missing << " of " << total << " acknowledged rows missing and "
                                       << v.wrong << " with wrong values after kill -9 #" << cycle + 1
                                       << "; e.g. " << ::testing::PrintToString(v.examples);
    // Unacknowledged batches were in flight: each is written completely or not at all.
    std::vector<size_t> present;
    Verification u = Verify(&server, unacked, &present);
    ASSERT_TRUE(u.error.empty()) << u.error;
    EXPECT_EQ(u.wrong, 0u) << ::testing::PrintToString(u.examples);
    for (size_t i = 0; i < unacked.size(); ++i) {
      EXPECT_TRUE(present[i] == 0 || present[i] == unacked[i].size())
          << "batch " << unacked[i].front().Key() << ".. is partially written: " << present[i] << " of "
          << unacked[i].size() << " rows";
    }
    // Registry changes survived.
    reg = server.Registry();
    v1::ListFeatureGroupsRequest lr;
    lr.set_entity("crash");
    v1::ListFeatureGroupsResponse groups;
    ASSERT_TRUE(IsOk(Invoke(reg.get(), &Reg::ListFeatureGroups, lr, &groups)));
    std::vector<std::string> names;
    for (const auto& gr : groups.groups()) names.push_back(gr.name());
    for (const auto& want : groups_created) {
      EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want << " lost";
    }
    // The server takes new writes after recovery.
    v1::PersistResponse pr;
    EXPECT_TRUE(IsOk(Invoke(server.FeatureStore().get(), &FS::Persist,
                            MakePersist("crash", gname, {{{"after-" + std::to_string(cycle)}, {I32(cycle)}}}), &pr)));
    // Kill the recovered server too, so the next cycle starts from another crash.
    server.Kill();
  }
  size_t total = 0;
  for (const auto& b : acked) total += b.size();
  RecordProperty("acknowledged_rows", static_cast<int>(total));
  std::printf("crash test: %zu acknowledged rows over %d kill -9 cycles, %zu unacknowledged batches\n", total,
              kCycles, unacked.size());
}

TEST(GracefulShutdownE2E, SigtermDrainsInFlightCallsAndExitsZero) {
  TempDir dir("graceful");
  ASSERT_TRUE(WriteFile(dir.File("schema.yaml"), kCrashSchema));
  KoshServer::Options opts;
  opts.data_dir = dir.File("data");
  opts.schema_files = {dir.File("schema.yaml")};
  constexpr int kGraceMs = 5000;
  opts.extra_flags = {"--grace-period", std::to_string(kGraceMs) + "ms"};
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());

  // 1000 rows that readers fetch in full on every call (a slow-ish read).
  std::vector<RowSpec> rows;
  std::vector<std::vector<std::string>> keys;
  for (int i = 0; i < 1000; ++i) {
    RowId id{9, 9, i};
    rows.push_back({{id.Key()}, id.Values()});
    keys.push_back({id.Key()});
  }
  v1::PersistResponse pr;
  ASSERT_TRUE(IsOk(Invoke(server.FeatureStore().get(), &FS::Persist, MakePersist("crash", "cg", rows), &pr)));
  const auto read_all = MakeRetrieve("crash", keys, {"cg.*"});

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<std::string, int> grpc_codes;  // code -> count, every answered gRPC call
  std::map<int, int> http_statuses;       // HTTP status -> count
  int http_transport_errors = 0;
  std::atomic<int> ok_calls{0};
  auto grpc_reader = [&] {
    auto store = server.FeatureStore();
    while (!stop) {
      v1::RetrieveResponse resp;
      grpc::Status s = Invoke(store.get(), &FS::Retrieve, read_all, &resp, "", Millis(15000));
      if (s.ok()) {
        ok_calls++;
        if (resp.rows_size() != 1000 || resp.rows(999).statuses(0) != v1::PRESENT) {
          std::lock_guard<std::mutex> l(mu);
          grpc_codes["OK but incomplete"]++;
        }
      } else {
        std::this_thread::sleep_for(Millis(5));
      }
      std::lock_guard<std::mutex> l(mu);
      grpc_codes[CodeName(s.error_code())]++;
    }
  };
  auto http_reader = [&] {
    const std::string body = ToJson(MakeRetrieve("crash", std::vector<std::vector<std::string>>(keys.begin(), keys.begin() + 200),
                                                 {"cg.*"}));
    while (!stop) {
      HttpResponse r = server.Post("/v1/features/retrieve", body, {}, Millis(15000));
      std::lock_guard<std::mutex> l(mu);
      if (r.ok()) {
        http_statuses[r.status]++;
        if (r.status == 200) ok_calls++;
      } else {
        http_transport_errors++;
      }
      if (!r.ok() || r.status != 200) std::this_thread::sleep_for(Millis(5));
    }
  };
  // A writer too: what it got acknowledged before the shutdown must survive it.
  WriterResult written;
  std::thread writer(WriteLoop, &server, 1, 0, 4, &stop, &written);
  std::vector<std::thread> readers;
  readers.emplace_back(grpc_reader);
  readers.emplace_back(grpc_reader);
  readers.emplace_back(http_reader);

  // Let the load run a little (bounded), so that calls are in flight when the signal lands.
  for (int i = 0; i < 500 && ok_calls.load() < 10; ++i) std::this_thread::sleep_for(Millis(10));
  std::this_thread::sleep_for(Millis(200));
  ASSERT_GT(ok_calls.load(), 0) << "the load never got going";
  const auto sent = SteadyClock::now();
  server.Signal(SIGTERM);

  // Readiness turns false (503) or the listener is gone (connection refused).
  bool not_ready = false;
  std::string last;
  while (SteadyClock::now() - sent < std::chrono::seconds(3)) {
    HttpResponse r = server.Get("/readyz", Millis(500));
    last = r.ok() ? std::to_string(r.status) + " " + r.body : r.error;
    if (!r.ok() || r.status == 503) {
      not_ready = true;
      if (r.ok()) {
        EXPECT_EQ(r.body, "not ready\n");
      }
      break;
    }
    std::this_thread::sleep_for(Millis(5));
  }
  EXPECT_TRUE(not_ready) << "/readyz still answers " << last << " 3 s after SIGTERM";

  ExitStatus st = server.WaitExit(Millis(kGraceMs + 5000));
  const auto took = std::chrono::duration_cast<Millis>(SteadyClock::now() - sent);
  stop = true;
  for (auto& t : readers) t.join();
  writer.join();
  ASSERT_FALSE(st.timed_out) << "still running " << took.count() << " ms after SIGTERM; log:\n" << server.Log();
  EXPECT_TRUE(st.exited) << st.ToString();
  EXPECT_EQ(st.code, 0) << server.Log();
  EXPECT_LT(took.count(), kGraceMs + 5000);
  EXPECT_THAT(server.Log(), HasSubstr("received SIGTERM"));
  EXPECT_THAT(server.Log(), HasSubstr("stopped"));

  // Every answered call was OK or a clean refusal because of the shutdown.
  for (const auto& [code, n] : grpc_codes) {
    EXPECT_TRUE(code == "OK" || code == "UNAVAILABLE" || code == "CANCELLED") << n << " gRPC calls got " << code;
  }
  for (const auto& [status, n] : http_statuses) {
    EXPECT_TRUE(status == 200 || status == 503) << n << " HTTP calls got " << status;
  }
  for (const auto& [what, n] : written.failures) {
    EXPECT_THAT(what, ::testing::AnyOf(HasSubstr("UNAVAILABLE"), HasSubstr("CANCELLED"))) << n << " x " << what;
  }
  std::printf("graceful: %d OK reads, gRPC %s, HTTP %s (+%d transport errors), %zu acked write batches, exit after "
              "%lld ms\n",
              ok_calls.load(), ::testing::PrintToString(grpc_codes).c_str(),
              ::testing::PrintToString(http_statuses).c_str(), http_transport_errors, written.acked.size(),
              static_cast<long long>(took.count()));

  // After the exit nothing listens, and a restart finds every acknowledged write.
  EXPECT_FALSE(server.Get("/healthz", Millis(1000)).ok());
  ASSERT_TRUE(server.Start());
  std::vector<Batch> all = written.acked;
  Batch seeded;
  for (int i = 0; i < 1000; ++i) seeded.push_back({9, 9, i});
  all.push_back(seeded);
  Verification v = Verify(&server, all);
  ASSERT_TRUE(v.error.empty()) << v.error;
  EXPECT_EQ(v.missing + v.wrong, 0u) << v.missing << " missing, " << v.wrong << " wrong of " << v.checked
                                     << " acknowledged rows after a graceful restart; e.g. "
                                     << ::testing::PrintToString(v.examples);
  EXPECT_GE(v.checked, 1000u);
  EXPECT_EQ(server.Stop(SIGTERM).code, 0);
}

}  // namespace
}  // namespace kosh::e2e
