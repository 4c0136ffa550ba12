// End-to-end tests of datasets through the real binaries: `kosh dataset build` (no server) writes
// version directories; `kosh serve` loads them (CLI and gRPC), swaps, rolls back, restarts, and
// survives kill -9 in the middle of a load; corrupt and truncated builds are rejected with the
// reason while the current version keeps serving; readers hammering MultiGet during repeated swaps
// see no error and never a mix of versions; the build reports bad rows by file and line and sorts
// far more input than its memory budget.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "e2e_test_util.h"
#include "google/protobuf/util/json_util.h"
#include "kosh/v1/datasets.grpc.pb.h"

namespace kosh::e2e {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using DS = v1::Datasets::Stub;

CommandResult Kosh(std::vector<std::string> args, Millis timeout = Millis(60000)) {
  args.insert(args.begin(), KoshBinary());
  return RunCommand(args, timeout);
}

// A BYTES dataset of keys k0..k<n-1> whose values are "<tag>:k<i>", so that every read shows which
// build it came from.
std::string WriteBytesCsv(const std::string& path, const std::string& tag, int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "k" + std::to_string(i) + "," + tag + ":k" + std::to_string(i) + "\n";
  WriteFile(path, text);
  return path;
}

::testing::AssertionResult BuildOk(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"dataset", "build"};
  all.insert(all.end(), args.begin(), args.end());
  CommandResult r = Kosh(all);
  if (r.status.exited && r.status.code == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "kosh dataset build " << r.status.ToString() << "\nstdout: " << r.out
                                       << "\nstderr: " << r.err;
}

std::string BuildBytes(const TempDir& dir, const std::string& name, const std::string& tag, int n,
                       const std::string& dataset = "ds") {
  std::string csv = WriteBytesCsv(dir.File(name + ".csv"), tag, n);
  EXPECT_TRUE(BuildOk({"--dataset", dataset, "--kind", "bytes", "--partitions", "4", "--output", dir.File(name), csv}));
  return dir.File(name);
}

CommandResult Load(const KoshServer& s, const std::string& dataset, const std::string& path,
                   std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"dataset", "load", "--server", s.grpc_target(), "--dataset", dataset};
  args.insert(args.end(), extra.begin(), extra.end());
  args.push_back(path);
  return Kosh(args);
}

v1::DatasetInfo List(const KoshServer& s, const std::string& dataset) {
  auto stub = v1::Datasets::NewStub(s.NewChannel());
  v1::ListVersionsRequest req;
  req.set_dataset(dataset);
  v1::ListVersionsResponse resp;
  grpc::Status st = Invoke(stub.get(), &DS::ListVersions, req, &resp);
  EXPECT_TRUE(IsOk(st));
  if (resp.datasets_size() == 0) return v1::DatasetInfo();
  return resp.datasets(0);
}

v1::VersionInfo VersionOf(const v1::DatasetInfo& d, uint64_t v) {
  for (const auto& x : d.versions()) {
    if (x.version() == v) return x;
  }
  return v1::VersionInfo();
}

// The value of one key of dataset "ds" ("" when not found; "ERROR ..." on an error).
std::string ReadBytes(const KoshServer& s, const std::string& key, uint64_t version = 0) {
  auto stub = v1::Datasets::NewStub(s.NewChannel());
  v1::DatasetGetRequest req;
  req.set_dataset("ds");
  req.set_key(key);
  req.set_version(version);
  v1::DatasetGetResponse resp;
  grpc::Status st = Invoke(stub.get(), &DS::Get, req, &resp);
  if (!st.ok()) return "ERROR " + st.error_message();
  return resp.entry().status() == v1::FOUND ? resp.entry().value().bytes_value() : "";
}

// Waits up to 30 s for version `v` of "ds" to reach `state`.
bool WaitForState(const KoshServer& s, uint64_t v, v1::VersionState state) {
  for (int i = 0; i < 3000; ++i) {
    if (VersionOf(List(s, "ds"), v).state() == state) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// --- build -> load -> swap -> rollback ---------------------------------------------------------------

TEST(DatasetsE2E, BuildLoadSwapRollbackRestart) {
  TempDir dir("ds-e2e");
  // Recommendation lists whose item ids say which push they came from: 1xxx then 2xxx.
  auto write_recs = [&](const std::string& path, int base) {
    std::string text;
    for (int i = 0; i < 300; ++i) {
      text += "u" + std::to_string(i) + "," + std::to_string(base + i) + ":0.9|" + std::to_string(base + i + 1) +
              ":0.5|sku-" + std::to_string(i) + ":0.25\n";
    }
    WriteFile(path, text);
  };
  write_recs(dir.File("a.csv"), 1000);
  write_recs(dir.File("b.csv"), 2000);
  CommandResult built = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--label", "push-a",
                              "--output", dir.File("a"), dir.File("a.csv")});
  ASSERT_TRUE(built.status.exited && built.status.code == 0) << built.err;
  EXPECT_THAT(built.out, HasSubstr("\"rows\":300"));
  EXPECT_TRUE(fs::exists(dir.File("a/manifest.json")));
  ASSERT_TRUE(BuildOk({"--dataset", "recs", "--kind", "recs", "--label", "push-b", "--output", dir.File("b"),
                       dir.File("b.csv")}));

  KoshServer server;
  ASSERT_TRUE(server.Start());
  CommandResult loaded = Load(server, "recs", dir.File("a"));
  ASSERT_TRUE(loaded.status.exited && loaded.status.code == 0) << loaded.err;
  EXPECT_THAT(loaded.out, HasSubstr("VERSION_CURRENT"));
  EXPECT_THAT(loaded.out, HasSubstr("\"label\": \"push-a\""));

  // Typed reads over gRPC: per-key status, recommendation lists as (item_id, score).
  auto stub = v1::Datasets::NewStub(server.NewChannel());
  v1::DatasetMultiGetRequest mg;
  mg.set_dataset("recs");
  for (const char* k : {"u7", "nobody", "u299"}) mg.add_keys(k);
  v1::DatasetMultiGetResponse mr;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::MultiGet, mg, &mr)));
  EXPECT_EQ(mr.version(), 1u);
  EXPECT_EQ(mr.kind(), v1::DATASET_KIND_RECS);
  EXPECT_EQ(mr.found(), 2u);
  ASSERT_EQ(mr.entries_size(), 3);
  EXPECT_EQ(mr.entries(0).status(), v1::FOUND);
  EXPECT_EQ(mr.entries(1).status(), v1::NOT_FOUND);
  ASSERT_EQ(mr.entries(0).value().recs().items_size(), 3);
  EXPECT_EQ(mr.entries(0).value().recs().items(0).item_id(), "1007");
  EXPECT_FLOAT_EQ(mr.entries(0).value().recs().items(0).score(), 0.9f);
  EXPECT_EQ(mr.entries(0).value().recs().items(2).item_id(), "sku-7");

  // The same over HTTP/JSON.
  HttpResponse h = server.Post("/v1/datasets/multi_get", R"({"dataset": "recs", "keys": ["u7", "nobody"]})");
  ASSERT_TRUE(IsHttpOk(h));
  EXPECT_THAT(h.body, HasSubstr(R"("item_id":"1007")"));
  EXPECT_THAT(h.body, HasSubstr(R"("status":"NOT_FOUND")"));
  h = server.Get("/v1/datasets/list_versions");
  ASSERT_TRUE(IsHttpOk(h));
  EXPECT_THAT(h.body, HasSubstr("VERSION_CURRENT"));

  // Push b: it becomes current and a is kept as a backup.
  ASSERT_EQ(Load(server, "recs", dir.File("b")).status.code, 0);
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::MultiGet, mg, &mr)));
  EXPECT_EQ(mr.version(), 2u);
  EXPECT_EQ(mr.entries(0).value().recs().items(0).item_id(), "2007");
  CommandResult listed = Kosh({"dataset", "list", "--server", server.grpc_target(), "--dataset", "recs"});
  ASSERT_EQ(listed.status.code, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr("VERSION_BACKUP"));
  EXPECT_THAT(listed.out, HasSubstr("\"rows\": \"300\""));

  // A pinned read of the backup, through the CLI.
  CommandResult pinned = Kosh({"dataset", "get", "--server", server.grpc_target(), "--dataset", "recs", "--version",
                               "1", "u7"});
  ASSERT_EQ(pinned.status.code, 0) << pinned.err;
  EXPECT_THAT(pinned.out, HasSubstr("\"item_id\": \"1007\""));

  // Rollback is a pointer swap.
  CommandResult rolled = Kosh({"dataset", "rollback", "--server", server.grpc_target(), "--dataset", "recs"});
  ASSERT_EQ(rolled.status.code, 0) << rolled.err;
  EXPECT_THAT(rolled.out, HasSubstr("\"previous_version\": \"2\""));
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::MultiGet, mg, &mr)));
  EXPECT_EQ(mr.version(), 1u);
  EXPECT_EQ(mr.entries(0).value().recs().items(0).item_id(), "1007");

  // Versions, sizes and row counts in /metrics.
  HttpResponse m = server.Get("/metrics");
  bool found = false;
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_current_version{dataset="recs"})", &found), 1);
  EXPECT_TRUE(found);
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_version_rows{dataset="recs",version="2",state="backup"})", &found), 300);
  EXPECT_TRUE(found);
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_rollbacks_total{dataset="recs"})", &found), 1);
  EXPECT_GE(MetricValue(m.body, R"(kosh_dataset_keys_total{dataset="recs",result="found"})", &found), 4);

  // A restart serves the version that was current before it.
  ASSERT_TRUE(server.Stop().exited);
  ASSERT_TRUE(server.Start());
  stub = v1::Datasets::NewStub(server.NewChannel());
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::MultiGet, mg, &mr)));
  EXPECT_EQ(mr.version(), 1u);
  EXPECT_EQ(mr.entries(0).value().recs().items(0).item_id(), "1007");
  EXPECT_EQ(VersionOf(List(server, "recs"), 2).state(), v1::VERSION_BACKUP);
}

// --- readers during repeated swaps -------------------------------------------------------------------

TEST(DatasetsE2E, ReadersNeverFailNorSeeAMixOfVersionsDuringSwaps) {
  TempDir dir("ds-swap");
  std::string a = BuildBytes(dir, "a", "A", 5000);
  std::string b = BuildBytes(dir, "b", "B", 5000);
  KoshServer server;
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "ds", a).status.code, 0);

  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, errors{0}, mixed{0};
  std::mutex mu;
  std::map<uint64_t, std::set<std::string>> tags_by_version;  // version -> tags its responses carried
  std::string first_error;
  auto grpc_reader = [&](int seed) {
    auto stub = v1::Datasets::NewStub(server.NewChannel());
    v1::DatasetMultiGetRequest req;
    req.set_dataset("ds");
    for (int i = 0; i < 100; ++i) req.add_keys("k" + std::to_string((i * 97 + seed * 13) % 5000));
    while (!stop.load()) {
      v1::DatasetMultiGetResponse resp;
      grpc::Status st = Invoke(stub.get(), &DS::MultiGet, req, &resp);
      if (!st.ok()) {
        errors++;
        std::lock_guard<std::mutex> l(mu);
        if (first_error.empty()) first_error = st.error_message();
        continue;
      }
      reads++;
      std::set<std::string> tags;
      for (const auto& e : resp.entries()) {
        tags.insert(e.status() == v1::FOUND ? e.value().bytes_value().substr(0, 1) : "missing");
      }
      if (tags.size() != 1) mixed++;
      std::lock_guard<std::mutex> l(mu);
      tags_by_version[resp.version()].insert(tags.begin(), tags.end());
    }
  };
  auto http_reader = [&] {
    while (!stop.load()) {
      HttpResponse r = server.Post("/v1/datasets/multi_get", R"({"dataset":"ds","keys":["k1","k2","k3","k4999"]})");
      if (!r.ok() || r.status != 200) {
        errors++;
        continue;
      }
      reads++;
      bool a_tag = r.body.find("\"bytes_value\":\"QTpr") != std::string::npos;  // base64 of "A:k"
      bool b_tag = r.body.find("\"bytes_value\":\"Qjpr") != std::string::npos;  // base64 of "B:k"
      if (a_tag == b_tag) mixed++;
    }
  };
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) readers.emplace_back(grpc_reader, i);
  readers.emplace_back(http_reader);

  auto stub = v1::Datasets::NewStub(server.NewChannel());
  std::map<uint64_t, std::string> tag_of_version = {{1, "A"}};
  for (int i = 0; i < 8; ++i) {
    v1::LoadVersionRequest req;
    req.set_dataset("ds");
    req.set_path(i % 2 == 0 ? b : a);
    v1::LoadVersionResponse resp;
    ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::LoadVersion, req, &resp, "", Millis(60000))));
    tag_of_version[resp.version().version()] = i % 2 == 0 ? "B" : "A";
    std::this_thread::sleep_for(Millis(100));
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_GT(reads.load(), 50);
  EXPECT_EQ(errors.load(), 0) << first_error;
  EXPECT_EQ(mixed.load(), 0);
  EXPECT_GE(tags_by_version.size(), 3u) << "the readers saw several versions";
  for (const auto& [v, tags] : tags_by_version) {
    EXPECT_EQ(tags, std::set<std::string>{tag_of_version[v]}) << "version " << v;
  }
  // Retention: the current version and two backups; older ones are deleted with their files.
  v1::DatasetInfo info = List(server, "ds");
  EXPECT_EQ(info.current_version(), 9u);
  EXPECT_EQ(info.versions_size(), 3);
  for (int i = 0; i < 100 && fs::exists(server.data_dir() + "/datasets/ds/v00000006"); ++i) {
    std::this_thread::sleep_for(Millis(50));
  }
  EXPECT_FALSE(fs::exists(server.data_dir() + "/datasets/ds/v00000006"));
  EXPECT_TRUE(fs::exists(server.data_dir() + "/datasets/ds/v00000007"));
}

// --- crash in the middle of a load -------------------------------------------------------------------

TEST(DatasetsE2E, KillDuringALoadServesThePreviousVersionAfterRestart) {
  TempDir dir("ds-crash");
  std::string a = BuildBytes(dir, "a", "A", 1000);
  std::string big = BuildBytes(dir, "big", "G", 200000);  // a few MB: at 512 KiB/s the load takes seconds
  TempDir data("ds-crash-data");
  KoshServer::Options opts;
  opts.data_dir = data.path();
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "ds", a).status.code, 0);

  Child loader;
  std::string error;
  // Checked before the swap: the rate-limited checksum pass keeps the load running for seconds (a
  // default load does only O(files) work before its swap and could finish before the kill).
  ASSERT_TRUE(loader.Spawn({KoshBinary(), "dataset", "load", "--server", server.grpc_target(), "--dataset", "ds",
                            "--rate-limit", "512KiB", "--verify", "before-swap", big},
                           dir.File("load.out"), dir.File("load.err"), &error))
      << error;
  v1::VersionState state = v1::VERSION_STATE_UNSPECIFIED;
  for (int i = 0; i < 400; ++i) {
    state = VersionOf(List(server, "ds"), 2).state();
    if (state == v1::VERSION_BUILDING || state == v1::VERSION_LOADING) break;
    std::this_thread::sleep_for(Millis(10));
  }
  ASSERT_TRUE(state == v1::VERSION_BUILDING || state == v1::VERSION_LOADING) << v1::VersionState_Name(state);
  EXPECT_EQ(ReadBytes(server, "k5"), "A:k5") << "the current version serves during the load";
  server.Kill();
  loader.Wait(Millis(10000));

  ASSERT_TRUE(server.Start());
  EXPECT_EQ(ReadBytes(server, "k5"), "A:k5");
  v1::DatasetInfo info = List(server, "ds");
  EXPECT_EQ(info.current_version(), 1u);
  v1::VersionInfo v2 = VersionOf(info, 2);
  EXPECT_EQ(v2.state(), v1::VERSION_FAILED);
  EXPECT_THAT(v2.failure(), HasSubstr("interrupted"));
  EXPECT_FALSE(fs::exists(data.path() + "/datasets/ds/v00000002/db"));
  // The build itself is intact: loading it again works.
  CommandResult again = Load(server, "ds", big);
  ASSERT_EQ(again.status.code, 0) << again.err;
  EXPECT_EQ(ReadBytes(server, "k5"), "G:k5");
  EXPECT_EQ(List(server, "ds").current_version(), 3u);
}

// --- corrupt, truncated and incomplete builds -----------------------------------------------------------

TEST(DatasetsE2E, CorruptTruncatedAndIncompleteBuildsAreRejectedWithTheReason) {
  TempDir dir("ds-corrupt");
  std::string a = BuildBytes(dir, "a", "A", 2000);
  KoshServer server;
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "ds", a).status.code, 0);
  auto first_file = [](const std::string& build) {
    for (const auto& e : fs::directory_iterator(build)) {
      if (e.path().extension() == ".sst") return e.path().string();
    }
    return std::string();
  };

  std::string c = BuildBytes(dir, "c", "C", 2000);
  {
    std::fstream f(first_file(c), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64);
    f.write("garbage!", 8);
  }
  CommandResult r = Load(server, "ds", c, {"--verify", "before-swap"});
  EXPECT_EQ(r.status.code, 1);
  EXPECT_THAT(r.err, HasSubstr("DATA_LOSS"));
  EXPECT_THAT(r.err, HasSubstr("checksum mismatch"));

  std::string t = BuildBytes(dir, "t", "T", 2000);
  fs::resize_file(first_file(t), 100);
  r = Load(server, "ds", t);
  EXPECT_THAT(r.err, HasSubstr("truncated"));

  std::string x = BuildBytes(dir, "x", "X", 2000);
  std::string gone = first_file(x);
  fs::remove(gone);
  r = Load(server, "ds", x);
  EXPECT_THAT(r.err, HasSubstr("missing file " + fs::path(gone).filename().string()));

  std::string u = BuildBytes(dir, "u", "U", 2000);
  fs::remove(u + "/manifest.json");
  r = Load(server, "ds", u);
  EXPECT_THAT(r.err, HasSubstr("the build did not finish"));

  std::string w = BuildBytes(dir, "w", "W", 10, "other_dataset");
  r = Load(server, "ds", w);
  EXPECT_THAT(r.err, HasSubstr("wrong dataset"));

  // Nothing of that disturbed the current version; every failure is listed with its reason.
  EXPECT_EQ(ReadBytes(server, "k1"), "A:k1");
  v1::DatasetInfo info = List(server, "ds");
  EXPECT_EQ(info.current_version(), 1u);
  EXPECT_THAT(VersionOf(info, 2).failure(), HasSubstr("checksum mismatch"));
  EXPECT_THAT(VersionOf(info, 3).failure(), HasSubstr("truncated"));
  EXPECT_EQ(VersionOf(info, 4).state(), v1::VERSION_FAILED);
  HttpResponse m = server.Get("/metrics");
  bool found = false;
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_loads_total{dataset="ds",result="failed"})", &found), 5);
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_versions{dataset="ds",state="failed"})", &found), 5);

  // With the default (the check after the swap), a corrupt block that every check before the swap
  // passes (a data block inside the file) serves until the check ends; then the version fails and
  // version 1 serves again.
  std::string d = BuildBytes(dir, "d", "D", 60000);
  std::string bad = first_file(d);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(bad) * 2 / 5));
    f.write("garbage!", 8);
  }
  r = Load(server, "ds", d);
  EXPECT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("CHECKSUMS_PENDING"));
  ASSERT_TRUE(WaitForState(server, 7, v1::VERSION_FAILED));
  info = List(server, "ds");
  EXPECT_EQ(info.current_version(), 1u);
  EXPECT_EQ(VersionOf(info, 7).checksums(), v1::CHECKSUMS_MISMATCH);
  EXPECT_THAT(VersionOf(info, 7).failure(),
              HasSubstr("DATA_LOSS: the after-swap checksum check: " + fs::path(bad).filename().string()));
  EXPECT_THAT(VersionOf(info, 7).failure(), HasSubstr("checksum mismatch"));
  EXPECT_EQ(ReadBytes(server, "k1"), "A:k1");
  m = server.Get("/metrics");
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_checksum_failures_total{dataset="ds"})", &found), 1);
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_rollbacks_total{dataset="ds"})", &found), 1);
  EXPECT_EQ(MetricValue(m.body, R"(kosh_dataset_versions{dataset="ds",state="failed"})", &found), 5)
      << "six failures, of which datasets.keep_failed (5) lists the newest";
  EXPECT_EQ(VersionOf(info, 2).version(), 0u) << "the oldest failure record is trimmed";
}

// --- the build: bad rows, duplicates, external sort ---------------------------------------------------

TEST(DatasetsE2E, BuildReportsBadRowsByFileAndLine) {
  TempDir dir("ds-bad");
  WriteFile(dir.File("in.csv"), "u1,1:0.5\nu2,2:0.5\nu3\nu4,4:x\nu5,5:0.5\n");
  CommandResult r = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--output", dir.File("out"),
                          dir.File("in.csv")});
  EXPECT_EQ(r.status.code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("in.csv:3: expected at least 2 columns, got 1"));
  EXPECT_THAT(r.err, HasSubstr("in.csv:4: value: item 0: score \"x\" is not a finite number"));
  EXPECT_FALSE(fs::exists(dir.File("out/manifest.json")));

  r = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--max-bad-rows", "2", "--output",
            dir.File("out"), dir.File("in.csv")});
  ASSERT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"bad_rows_skipped\":2"));
  EXPECT_THAT(r.out, HasSubstr("\"rows\":3"));
  EXPECT_THAT(r.err, HasSubstr("2 malformed rows skipped"));

  WriteFile(dir.File("dup.csv"), "u1,1:0.5\nu2,2:0.5\nu1,3:0.5\n");
  r = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--output", dir.File("dup"),
            dir.File("dup.csv")});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("dup.csv:3: duplicate key \"u1\" (first at " + dir.File("dup.csv") + ":1)"));
  r = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--on-duplicate", "last", "--output",
            dir.File("dup"), dir.File("dup.csv")});
  EXPECT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"duplicate_rows\":1"));

  // Usage errors are exit code 2 with the reason.
  r = Kosh({"dataset", "build", "--dataset", "recs", "--output", dir.File("x"), dir.File("in.csv")});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--kind"));
}

TEST(DatasetsE2E, ExternalSortFarAboveTheMemoryBudget) {
  TempDir dir("ds-sort");
  // ~12 MB of input (gzip-compressed on disk) against a 1 MiB budget.
  std::string text;
  text.reserve(13 << 20);
  const int n = 120000;
  for (int i = 0; i < n; ++i) {
    int u = (i * 7919) % n;  // not in key order
    text += "user" + std::to_string(u) + ",";
    for (int k = 0; k < 8; ++k) {
      text += (k ? "|" : "") + std::to_string(u * 10 + k) + ":0." + std::to_string(k + 1);
    }
    text += "\n";
  }
  WriteFile(dir.File("in.csv"), text);
  CommandResult gz = RunCommand({"/usr/bin/gzip", "-1", dir.File("in.csv")});
  ASSERT_EQ(gz.status.code, 0) << gz.err;
  CommandResult r = Kosh({"dataset", "build", "--dataset", "recs", "--kind", "recs", "--memory", "1MiB", "--threads",
                          "2", "--output", dir.File("out"), dir.File("in.csv.gz")});
  ASSERT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"rows\":" + std::to_string(n)));
  // Far more runs than fit in memory at once.
  size_t pos = r.out.find("\"runs_spilled\":");
  ASSERT_NE(pos, std::string::npos);
  EXPECT_GT(std::stoi(r.out.substr(pos + 15)), 10) << r.out;

  KoshServer server;
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "recs", dir.File("out")).status.code, 0);
  auto stub = v1::Datasets::NewStub(server.NewChannel());
  v1::DatasetMultiGetRequest req;
  req.set_dataset("recs");
  for (int u = 0; u < n; u += n / 200) req.add_keys("user" + std::to_string(u));
  v1::DatasetMultiGetResponse resp;
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::MultiGet, req, &resp)));
  ASSERT_EQ(resp.found(), static_cast<uint32_t>(req.keys_size()));
  for (const auto& e : resp.entries()) {
    int u = std::stoi(e.key().substr(4));
    ASSERT_EQ(e.value().recs().items_size(), 8) << e.key();
    EXPECT_EQ(e.value().recs().items(3).item_id(), std::to_string(u * 10 + 3)) << e.key();
  }
}

// --- asynchronous loads -------------------------------------------------------------------------------

TEST(DatasetsE2E, AsynchronousLoadsOverTheCliGrpcAndHttp) {
  TempDir dir("ds-async");
  std::string a = BuildBytes(dir, "a", "A", 2000);
  std::string b = BuildBytes(dir, "b", "B", 60000);  // ~1 MB of files: ~4 s at the rate limit below
  KoshServer server;
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "ds", a).status.code, 0);

  // CLI (gRPC): --wait false returns at once with the version BUILDING; the load finishes on the
  // server. A rate limit keeps it running long enough to see the state and a refused second load.
  CommandResult r = Load(server, "ds", b, {"--wait", "false", "--rate-limit", "256KiB", "--verify", "before-swap"});
  ASSERT_EQ(r.status.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"state\": \"VERSION_BUILDING\""));
  EXPECT_THAT(r.out, HasSubstr("\"version\": \"2\""));
  EXPECT_EQ(ReadBytes(server, "k1"), "A:k1");
  CommandResult second = Load(server, "ds", a);
  EXPECT_EQ(second.status.code, 1);
  EXPECT_THAT(second.err, HasSubstr("ABORTED"));
  ASSERT_TRUE(WaitForState(server, 2, v1::VERSION_CURRENT));
  EXPECT_EQ(ReadBytes(server, "k1"), "B:k1");

  // HTTP: "wait": false does not hold the HTTP thread for the load.
  HttpResponse h = server.Post("/v1/datasets/load_version",
                               R"({"dataset": "ds", "path": ")" + a + R"(", "wait": false, "verify": "VERIFY_BEFORE_SWAP"})");
  ASSERT_EQ(h.status, 200) << h.body;
  v1::LoadVersionResponse hr;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(h.body, &hr).ok()) << h.body;
  EXPECT_EQ(hr.version().version(), 3u) << "the refused load took no version number";
  EXPECT_EQ(hr.version().state(), v1::VERSION_BUILDING);
  ASSERT_TRUE(WaitForState(server, 3, v1::VERSION_CURRENT));
  EXPECT_EQ(ReadBytes(server, "k1"), "A:k1");

  // A corrupt build loaded asynchronously: the call succeeds, the version ends FAILED with the
  // reason, and the current version keeps serving (checked before the swap here; after it, see
  // CorruptTruncatedAndIncompleteBuildsAreRejectedWithTheReason).
  std::string c = BuildBytes(dir, "c", "C", 2000);
  for (const auto& e : fs::directory_iterator(c)) {
    if (e.path().extension() != ".sst") continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(64);
    f.write("garbage!", 8);
    break;
  }
  r = Load(server, "ds", c, {"--no-wait", "--verify", "before-swap"});
  ASSERT_EQ(r.status.code, 0) << r.err;
  ASSERT_TRUE(WaitForState(server, 4, v1::VERSION_FAILED));
  EXPECT_THAT(VersionOf(List(server, "ds"), 4).failure(), HasSubstr("DATA_LOSS: "));
  EXPECT_THAT(VersionOf(List(server, "ds"), 4).failure(), HasSubstr("checksum mismatch"));
  EXPECT_EQ(ReadBytes(server, "k1"), "A:k1");
  EXPECT_EQ(List(server, "ds").current_version(), 3u);

  // Bad flag values are refused by the CLI.
  r = Load(server, "ds", a, {"--wait", "maybe"});
  EXPECT_EQ(r.status.code, 2);
  EXPECT_THAT(r.err, HasSubstr("--wait: expected true or false"));
}

// An HTTP load that waits for its result runs off the HTTP I/O threads: with one I/O thread, other
// HTTP requests are answered while the load is still going.
TEST(DatasetsE2E, WaitingHttpLoadDoesNotHoldTheHttpThread) {
  TempDir dir("ds-http-load");
  std::string a = BuildBytes(dir, "a", "A", 300);
  std::string b = BuildBytes(dir, "b", "B", 60000);  // ~1 MB of files: seconds at the rate limit below
  KoshServer::Options opts;
  opts.config_yaml = "server:\n  http_threads: 1\n";
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  ASSERT_EQ(Load(server, "ds", a).status.code, 0);

  std::atomic<bool> load_done{false};
  HttpResponse load;
  std::thread loader([&] {
    load = server.Post("/v1/datasets/load_version",
                       R"({"dataset": "ds", "path": ")" + b +
                           R"(", "rate_limit_bytes_per_second": 262144, "verify": "VERIFY_BEFORE_SWAP"})",
                       {}, Millis(60000));
    load_done = true;
  });
  // Version v is listed (over gRPC): the HTTP call is in the server.
  auto listed = [&](uint64_t v) {
    for (int i = 0; i < 1000; ++i) {
      if (VersionOf(List(server, "ds"), v).version() == v) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  ASSERT_TRUE(listed(2));
  // The only HTTP thread is free: a read and a metrics scrape answer while the load runs.
  HttpResponse read = server.Post("/v1/datasets/multi_get", R"({"dataset": "ds", "keys": ["k1"]})", {}, Millis(2000));
  EXPECT_EQ(read.status, 200) << read.body;
  EXPECT_THAT(read.body, HasSubstr("\"version\":\"1\""));
  EXPECT_EQ(server.Get("/metrics", Millis(2000)).status, 200);
  EXPECT_FALSE(load_done.load()) << "the load finished too early to show anything";
  loader.join();
  ASSERT_EQ(load.status, 200) << load.body;
  v1::LoadVersionResponse lr;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(load.body, &lr).ok()) << load.body;
  EXPECT_EQ(lr.version().state(), v1::VERSION_CURRENT);
  EXPECT_EQ(ReadBytes(server, "k1"), "B:k1");

  // Over gRPC, a waiting load whose caller gives up (its deadline passes) stops: the version ends
  // FAILED, CANCELLED, and the current version keeps serving.
  {
    auto stub = v1::Datasets::NewStub(server.NewChannel());
    v1::LoadVersionRequest req;
    req.set_dataset("ds");
    req.set_path(b);
    req.set_rate_limit_bytes_per_second(65536);  // ~16 s for ~1 MB: far past the deadline
    req.set_verify(v1::VERIFY_BEFORE_SWAP);
    v1::LoadVersionResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    EXPECT_EQ(stub->LoadVersion(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    ASSERT_TRUE(WaitForState(server, 3, v1::VERSION_FAILED));
    EXPECT_THAT(VersionOf(List(server, "ds"), 3).failure(), HasSubstr("CANCELLED"));
    EXPECT_EQ(List(server, "ds").current_version(), 2u);
    EXPECT_EQ(ReadBytes(server, "k1"), "B:k1");
  }

  // A shutdown while such a load is running stops the load, and the server exits cleanly.
  std::thread loader2([&] {
    server.Post("/v1/datasets/load_version",
                R"({"dataset": "ds", "path": ")" + b +
                    R"(", "rate_limit_bytes_per_second": 262144, "verify": "VERIFY_BEFORE_SWAP"})",
                {}, Millis(60000));
  });
  ASSERT_TRUE(listed(4));
  const auto t0 = std::chrono::steady_clock::now();
  ExitStatus st = server.Stop();
  EXPECT_TRUE(st.exited && st.code == 0) << st.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  loader2.join();
}

// --- bad requests and auth -------------------------------------------------------------------------------

TEST(DatasetsE2E, BadRequestsAndScopes) {
  TempDir dir("ds-req");
  std::string a = BuildBytes(dir, "a", "A", 100);
  KoshServer::Options opts;
  opts.config_yaml = R"(auth:
  enabled: true
  tokens:
    - {name: reader, token: reader-token-0123, scopes: [read]}
    - {name: loader, token: writer-token-4567, scopes: [write]}
    - {name: ops, token: admin-token-89ab, scopes: [admin]}
datasets:
  max_keys_per_request: 10
  backups: 1
)";
  KoshServer server(opts);
  ASSERT_TRUE(server.Start());
  auto stub = v1::Datasets::NewStub(server.NewChannel());
  v1::LoadVersionRequest lr;
  lr.set_dataset("ds");
  lr.set_path(a);
  v1::LoadVersionResponse lresp;
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::LoadVersion, lr, &lresp, "reader-token-0123"),
                      grpc::PERMISSION_DENIED, "write scope"));
  ASSERT_TRUE(IsOk(Invoke(stub.get(), &DS::LoadVersion, lr, &lresp, "writer-token-4567", Millis(60000))));
  v1::RollbackRequest rb;
  rb.set_dataset("ds");
  v1::RollbackResponse rr;
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::Rollback, rb, &rr, "writer-token-4567"), grpc::PERMISSION_DENIED,
                      "admin scope"));
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::Rollback, rb, &rr, "admin-token-89ab"), grpc::FAILED_PRECONDITION,
                      "no backup"));

  v1::DatasetMultiGetRequest mg;
  v1::DatasetMultiGetResponse mr;
  mg.set_dataset("nope");
  mg.add_keys("k1");
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::MultiGet, mg, &mr), grpc::UNAUTHENTICATED));
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::MultiGet, mg, &mr, "reader-token-0123"), grpc::INVALID_ARGUMENT,
                      "dataset: unknown dataset \"nope\""));
  mg.set_dataset("ds");
  for (int i = 0; i < 10; ++i) mg.add_keys("k" + std::to_string(i));
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::MultiGet, mg, &mr, "reader-token-0123"), grpc::RESOURCE_EXHAUSTED,
                      "keys: 11 keys exceed the limit of 10"));
  mg.clear_keys();
  mg.add_keys("k1");
  mg.add_keys("");
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::MultiGet, mg, &mr, "reader-token-0123"), grpc::INVALID_ARGUMENT,
                      "keys[1]: empty key"));
  mg.clear_keys();
  mg.add_keys("k1");
  mg.set_version(7);
  EXPECT_TRUE(IsError(Invoke(stub.get(), &DS::MultiGet, mg, &mr, "reader-token-0123"), grpc::INVALID_ARGUMENT,
                      "has no loaded version 7 (loaded: 1)"));

  Headers reader = {{"Authorization", "Bearer reader-token-0123"}};
  EXPECT_TRUE(IsHttpError(server.Post("/v1/datasets/multi_get", R"({"dataset": "ds", "keys": ["a","b","c","d","e","f","g","h","i","j","k"]})", reader),
                          413, "RESOURCE_EXHAUSTED", "keys: 11 keys"));
  EXPECT_TRUE(IsHttpError(server.Post("/v1/datasets/multi_get", R"({"dataset": "ds", "keyz": []})", reader), 400,
                          "INVALID_ARGUMENT", "body: invalid JSON"));
  EXPECT_TRUE(IsHttpError(server.Post("/v1/datasets/get", R"({"dataset": "ds"})", reader), 400, "INVALID_ARGUMENT",
                          "key: empty key"));
  HttpResponse ok = server.Post("/v1/datasets/get", R"({"dataset": "ds", "key": "k3"})", reader);
  ASSERT_TRUE(IsHttpOk(ok));
  EXPECT_THAT(ok.body, HasSubstr(R"("status":"FOUND")"));
  EXPECT_TRUE(IsHttpError(server.Post("/v1/datasets/load_version", R"({"dataset": "ds", "path": "relative"})",
                                      {{"Authorization", "Bearer writer-token-4567"}}),
                          400, "INVALID_ARGUMENT", "path:"));

  // A bad datasets section stops start-up with the path of the option.
  KoshServer::Options bad;
  bad.config_yaml = "datasets:\n  backups: many\n";
  KoshServer broken(bad);
  auto started = broken.Start(Millis(5000));
  EXPECT_FALSE(started);
  EXPECT_THAT(broken.Log(), HasSubstr("datasets.backups"));
}

}  // namespace
}  // namespace kosh::e2e
