#include "datasets/dataset_manager.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "datasets/test_util.h"
#include "gtest/gtest.h"
#include "small_tmpfs.h"

namespace kosh::datasets {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteText;

class DatasetManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen(DatasetsOptions o = {}) {
    manager_.reset();
    metrics_ = std::make_unique<base::MetricsRegistry>();
    if (o.root.empty()) o.root = dir_.File("root");
    auto m = DatasetManager::Open(o, metrics_.get());
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
  }

  // A BYTES build of keys k0..k<n-1> whose values are "<tag>:<key>".
  std::string BuildBytes(const std::string& name, const std::string& tag, int n = 500,
                         const std::string& dataset = "ds") {
    std::string text;
    for (int i = 0; i < n; ++i) absl::StrAppend(&text, "k", i, ",", tag, ":k", i, "\n");
    std::string in = dir_.File(name + ".csv");
    WriteText(in, text);
    auto o = testing::BytesBuild(dataset, {in}, dir_.File(name));
    o.partitions = 4;
    BuildReport r;
    absl::Status s = Build(o, &r);
    EXPECT_TRUE(s.ok()) << s;
    return dir_.File(name);
  }

  absl::Status Load(const std::string& path, const std::string& dataset = "ds", bool activate = true,
                    v1::LoadVersionResponse* out = nullptr, v1::VerifyMode verify = v1::VERIFY_DEFAULT) {
    v1::LoadVersionRequest req;
    req.set_dataset(dataset);
    req.set_path(path);
    req.set_activate(activate);
    req.set_verify(verify);
    v1::LoadVersionResponse resp;
    absl::Status s = manager_->Load(req, nullptr, &resp);
    if (out) *out = resp;
    return s;
  }

  // The value of `key` as served now (or at `version`), "" when not found.
  std::string Read(const std::string& key, uint64_t version = 0, uint64_t* served = nullptr) {
    v1::DatasetGetRequest req;
    req.set_dataset("ds");
    req.set_key(key);
    req.set_version(version);
    v1::DatasetGetResponse resp;
    absl::Status s = manager_->Get(req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    if (served) *served = resp.version();
    return resp.entry().status() == v1::FOUND ? resp.entry().value().bytes_value() : "";
  }

  v1::DatasetInfo Info(const std::string& dataset = "ds") {
    v1::ListVersionsRequest req;
    req.set_dataset(dataset);
    v1::ListVersionsResponse resp;
    EXPECT_TRUE(manager_->ListVersions(req, &resp).ok());
    if (resp.datasets_size() == 0) return v1::DatasetInfo();
    return resp.datasets(0);
  }

  v1::VersionState StateOf(uint64_t v) {
    const v1::DatasetInfo info = Info();
    for (const auto& vi : info.versions()) {
      if (vi.version() == v) return vi.state();
    }
    return v1::VERSION_STATE_UNSPECIFIED;
  }

  std::string FailureOf(uint64_t v) {
    const v1::DatasetInfo info = Info();
    for (const auto& vi : info.versions()) {
      if (vi.version() == v) return vi.failure();
    }
    return "(no version " + std::to_string(v) + ")";
  }

  // Overwrites bytes inside the first data block of a sorted file. Ingesting it reads the file's
  // first key, so a load notices in every mode.
  static void CorruptFirstBlock(const std::string& path) { CorruptAt(path, 100); }
  // Overwrites bytes in a data block in the middle of a file of many blocks (BuildBytes of 20000
  // keys): its footer, metadata and first and last blocks stay intact, so only a checksum pass or
  // a read of that block notices.
  static void CorruptMiddleBlock(const std::string& path) { CorruptAt(path, fs::file_size(path) * 2 / 5); }
  static void CorruptAt(const std::string& path, uint64_t offset) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(offset));
    f.write("\x01\x02\x03", 3);
  }

  v1::VersionInfo InfoOf(uint64_t v, const std::string& dataset = "ds") {
    const v1::DatasetInfo info = Info(dataset);
    for (const auto& vi : info.versions()) {
      if (vi.version() == v) return vi;
    }
    return v1::VersionInfo();
  }

  TempDir dir_;
  std::unique_ptr<base::MetricsRegistry> metrics_;
  std::unique_ptr<DatasetManager> manager_;
};

TEST_F(DatasetManagerTest, LoadSwapRollbackAndPinnedReads) {
  std::string a = BuildBytes("a", "A");
  std::string b = BuildBytes("b", "B");
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(Load(a, "ds", true, &resp).ok());
  EXPECT_EQ(resp.version().version(), 1u);
  EXPECT_EQ(resp.version().state(), v1::VERSION_CURRENT);
  EXPECT_EQ(resp.version().rows(), 500u);
  EXPECT_TRUE(resp.linked());
  EXPECT_EQ(Read("k7"), "A:k7");
  EXPECT_EQ(Read("nope"), "");

  ASSERT_TRUE(Load(b).ok());
  uint64_t served = 0;
  EXPECT_EQ(Read("k7", 0, &served), "B:k7");
  EXPECT_EQ(served, 2u);
  EXPECT_EQ(Read("k7", 1), "A:k7") << "a backup can be pinned";
  EXPECT_EQ(StateOf(1), v1::VERSION_BACKUP);
  EXPECT_EQ(StateOf(2), v1::VERSION_CURRENT);

  v1::RollbackRequest rb;
  rb.set_dataset("ds");
  v1::RollbackResponse rr;
  ASSERT_TRUE(manager_->Rollback(rb, &rr).ok());
  EXPECT_EQ(rr.previous_version(), 2u);
  EXPECT_EQ(rr.version().version(), 1u);
  EXPECT_EQ(Read("k7"), "A:k7");
  EXPECT_EQ(StateOf(2), v1::VERSION_BACKUP);
  // And forward again, by number.
  rb.set_version(2);
  ASSERT_TRUE(manager_->Rollback(rb, &rr).ok());
  EXPECT_EQ(Read("k7"), "B:k7");

  // A version loaded without activation is READY, readable pinned, not current.
  ASSERT_TRUE(Load(a, "ds", false).ok());
  EXPECT_EQ(StateOf(3), v1::VERSION_READY);
  EXPECT_EQ(Read("k1"), "B:k1");
  EXPECT_EQ(Read("k1", 3), "A:k1");

  std::string metrics = metrics_->RenderPrometheus();
  EXPECT_NE(metrics.find("kosh_dataset_versions{dataset=\"ds\",state=\"current\"} 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("kosh_dataset_version_rows{dataset=\"ds\",version=\"3\",state=\"ready\"} 500"),
            std::string::npos);
  EXPECT_NE(metrics.find("kosh_dataset_rollbacks_total{dataset=\"ds\"} 2"), std::string::npos);
  EXPECT_NE(metrics.find("kosh_dataset_current_version{dataset=\"ds\"} 2"), std::string::npos);
}

TEST_F(DatasetManagerTest, CopiesAcrossFilesystemsAndWarmsWhenAsked) {
  // /dev/shm is a tmpfs: a build there cannot be hard-linked into a root under /tmp.
  struct stat shm, tmp;
  if (::stat("/dev/shm", &shm) != 0 || ::stat(dir_.path().c_str(), &tmp) != 0 || shm.st_dev == tmp.st_dev) {
    GTEST_SKIP() << "no second filesystem to build on";
  }
  std::string text;
  for (int i = 0; i < 300; ++i) absl::StrAppend(&text, "k", i, ",S:k", i, "\n");
  std::string shm_dir = "/dev/shm/kosh-ds-test-" + std::to_string(::getpid());
  fs::remove_all(shm_dir);
  fs::create_directories(shm_dir);
  WriteText(shm_dir + "/in.csv", text);
  BuildReport r;
  ASSERT_TRUE(Build(testing::BytesBuild("ds", {shm_dir + "/in.csv"}, shm_dir + "/out"), &r).ok());
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(shm_dir + "/out");
  req.set_warm(true);
  v1::LoadVersionResponse resp;
  absl::Status s = manager_->Load(req, nullptr, &resp);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_FALSE(resp.linked());
  EXPECT_EQ(resp.warm_seconds(), 0) << "a verified load is warmed by its checksum pass";
  EXPECT_EQ(Read("k299"), "S:k299");
  // Without verification, warming is a pass of its own.
  req.set_verify_checksums(false);
  s = manager_->Load(req, nullptr, &resp);
  fs::remove_all(shm_dir);  // the versions hold their own copies
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GT(resp.warm_seconds(), 0);
  EXPECT_EQ(Read("k299"), "S:k299");
}

TEST_F(DatasetManagerTest, RetentionKeepsNBackupsAndDeletesOlderFiles) {
  DatasetsOptions o;
  o.backups = 1;
  Reopen(o);
  std::string a = BuildBytes("a", "A");
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Load(a).ok());
  manager_->WaitForRetired();
  auto info = Info();
  ASSERT_EQ(info.versions_size(), 2);
  EXPECT_EQ(info.versions(0).version(), 4u);
  EXPECT_EQ(info.versions(1).version(), 3u);
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000001")));
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000002")));
  EXPECT_TRUE(fs::exists(dir_.File("root/ds/v00000003")));
  // The build directory is untouched: versions hold their own links.
  EXPECT_TRUE(ReadBuildManifest(a).ok());
  EXPECT_EQ(Read("k3"), "A:k3");
}

TEST_F(DatasetManagerTest, FailedLoadsLeaveTheCurrentVersionServing) {
  std::string a = BuildBytes("a", "A");
  ASSERT_TRUE(Load(a).ok());

  // Corrupt byte, checked before the swap (after the swap: AfterSwapCheck... below).
  std::string c = BuildBytes("c", "C");
  auto m = ReadBuildManifest(c);
  CorruptFirstBlock(c + "/" + m->files[0].name);
  absl::Status s = Load(c, "ds", true, nullptr, v1::VERIFY_BEFORE_SWAP);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos) << s;
  EXPECT_NE(s.message().find(m->files[0].name), std::string::npos) << s;
  EXPECT_EQ(Read("k1"), "A:k1");
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000002/db")));

  // Truncated file.
  std::string t = BuildBytes("t", "T");
  m = ReadBuildManifest(t);
  fs::resize_file(t + "/" + m->files[1].name, m->files[1].bytes / 2);
  s = Load(t);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s;

  // Missing file.
  std::string x = BuildBytes("x", "X");
  m = ReadBuildManifest(x);
  fs::remove(x + "/" + m->files[2].name);
  s = Load(x);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("missing file " + m->files[2].name), std::string::npos) << s;

  // No manifest (an unfinished build), a manifest that is not JSON, a wrong dataset, a wrong kind.
  fs::create_directories(dir_.File("empty"));
  EXPECT_NE(Load(dir_.File("empty")).message().find("the build did not finish"), std::string::npos);
  std::string j = BuildBytes("j", "J");
  WriteText(j + "/manifest.json", "{not json");
  EXPECT_NE(Load(j).message().find("not valid JSON"), std::string::npos);
  std::string other = BuildBytes("o", "O", 10, "other");
  EXPECT_NE(Load(other).message().find("wrong dataset"), std::string::npos);
  std::string in = dir_.File("r.csv");
  WriteText(in, "k1,1:0.5\n");
  BuildReport r;
  ASSERT_TRUE(Build(testing::RecsBuild("ds", {in}, dir_.File("r")), &r).ok());
  s = Load(dir_.File("r"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("wrong schema: dataset \"ds\" serves BYTES, the build is RECS"), std::string::npos) << s;

  // Still version 1, and every failure is listed with its reason.
  EXPECT_EQ(Read("k2"), "A:k2");
  auto info = Info();
  EXPECT_EQ(info.current_version(), 1u);
  int failed = 0;
  for (const auto& v : info.versions()) {
    if (v.state() == v1::VERSION_FAILED) {
      ++failed;
      EXPECT_FALSE(v.failure().empty());
    }
  }
  EXPECT_EQ(failed, 5) << "keep_failed trims the oldest failure records";

  // The schema change is accepted when asked for.
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(dir_.File("r"));
  req.set_allow_schema_change(true);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(manager_->Load(req, nullptr, &resp).ok());
  v1::DatasetMultiGetRequest mg;
  mg.set_dataset("ds");
  mg.add_keys("k1");
  v1::DatasetMultiGetResponse mr;
  ASSERT_TRUE(manager_->MultiGet(mg, &mr).ok());
  EXPECT_EQ(mr.kind(), v1::DATASET_KIND_RECS);
  EXPECT_EQ(mr.entries(0).value().recs().items(0).item_id(), "1");
}

// --- whole-file checksums after the swap (the default) ----------------------------------------------------

TEST_F(DatasetManagerTest, AfterSwapCheckFailsACorruptVersionAndTheOneBeforeServesAgain) {
  std::string a = BuildBytes("a", "A", 20000);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(Load(a, "ds", true, &resp).ok());
  manager_->WaitForChecksums();
  EXPECT_EQ(InfoOf(1).checksums(), v1::CHECKSUMS_VERIFIED);
  EXPECT_GT(InfoOf(1).checksum_seconds(), 0);

  // A corrupt data block passes every check made before the swap and serves until the check ends.
  std::string c = BuildBytes("c", "C", 20000);
  auto m = ReadBuildManifest(c);
  CorruptMiddleBlock(c + "/" + m->files[0].name);
  manager_->PauseChecksumsForTest(true);
  ASSERT_TRUE(Load(c, "ds", true, &resp).ok());
  EXPECT_EQ(resp.version().state(), v1::VERSION_CURRENT);
  EXPECT_EQ(resp.version().checksums(), v1::CHECKSUMS_PENDING);
  EXPECT_EQ(InfoOf(2).checksums(), v1::CHECKSUMS_PENDING);
  manager_->PauseChecksumsForTest(false);
  manager_->WaitForChecksums();
  // Then it is failed with the file named, and version 1 serves again (and after a restart).
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(InfoOf(2).checksums(), v1::CHECKSUMS_MISMATCH);
  EXPECT_EQ(FailureOf(2).rfind("DATA_LOSS: the after-swap checksum check: " + m->files[0].name, 0), 0u)
      << FailureOf(2);
  EXPECT_NE(FailureOf(2).find("checksum mismatch"), std::string::npos) << FailureOf(2);
  EXPECT_EQ(Info().current_version(), 1u);
  EXPECT_EQ(Read("k1"), "A:k1");
  manager_->WaitForRetired();
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000002/db")));
  EXPECT_TRUE(fs::exists(dir_.File("root/ds/v00000002/state.json")));
  Reopen();
  EXPECT_EQ(Info().current_version(), 1u);
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(Read("k2"), "A:k2");

  // structure_only never reads the files: the corrupt build serves, and so would its bad block.
  std::string d = BuildBytes("d", "D", 20000);
  CorruptMiddleBlock(d + "/" + ReadBuildManifest(d)->files[0].name);
  ASSERT_TRUE(Load(d, "ds", true, &resp, v1::VERIFY_STRUCTURE_ONLY).ok());
  manager_->WaitForChecksums();
  EXPECT_EQ(StateOf(3), v1::VERSION_CURRENT);
  EXPECT_EQ(InfoOf(3).checksums(), v1::CHECKSUMS_NOT_CHECKED);
}

TEST_F(DatasetManagerTest, ReadsThatMeetACorruptBlockBeforeTheCheckAreServedByThePreviousVersion) {
  DatasetsOptions o;
  o.max_keys_per_request = 20000;
  Reopen(o);
  std::string a = BuildBytes("a", "A", 20000);
  ASSERT_TRUE(Load(a).ok());
  manager_->WaitForChecksums();
  manager_->PauseChecksumsForTest(true);
  std::string c = BuildBytes("c", "C", 20000);
  CorruptMiddleBlock(c + "/" + ReadBuildManifest(c)->files[0].name);
  ASSERT_TRUE(Load(c).ok());
  ASSERT_EQ(Info().current_version(), 2u);

  // Every key in one request: some are in the corrupt block. The read fails version 2 and is
  // answered, whole, by version 1.
  v1::DatasetMultiGetRequest req;
  req.set_dataset("ds");
  for (int i = 0; i < 20000; ++i) req.add_keys(absl::StrCat("k", i));
  v1::DatasetMultiGetResponse resp;
  absl::Status s = manager_->MultiGet(req, &resp);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(resp.version(), 1u);
  ASSERT_EQ(resp.entries_size(), 20000);
  EXPECT_EQ(resp.found(), 20000u);
  for (int i = 0; i < 20000; ++i) {
    EXPECT_EQ(resp.entries(i).value().bytes_value(), absl::StrCat("A:k", i));
  }
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_NE(FailureOf(2).find("a read met a corrupt block"), std::string::npos) << FailureOf(2);
  EXPECT_EQ(Info().current_version(), 1u);

  // A read pinned to a version whose check is pending gets the error, and fails that version.
  std::string e = BuildBytes("e", "E", 20000);
  CorruptMiddleBlock(e + "/" + ReadBuildManifest(e)->files[0].name);
  ASSERT_TRUE(Load(e, "ds", /*activate=*/false).ok());
  ASSERT_EQ(StateOf(3), v1::VERSION_READY);
  req.set_version(3);
  resp.Clear();
  s = manager_->MultiGet(req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_EQ(StateOf(3), v1::VERSION_FAILED);
  EXPECT_EQ(Info().current_version(), 1u);
  manager_->PauseChecksumsForTest(false);
  manager_->WaitForChecksums();

  // With nothing to go back to, a corrupt first version keeps serving, marked.
  std::string solo = BuildBytes("solo", "S", 20000, "solo");
  CorruptMiddleBlock(solo + "/" + ReadBuildManifest(solo)->files[0].name);
  ASSERT_TRUE(Load(solo, "solo").ok());
  manager_->WaitForChecksums();
  EXPECT_EQ(Info("solo").current_version(), 1u);
  EXPECT_EQ(InfoOf(1, "solo").state(), v1::VERSION_CURRENT);
  EXPECT_EQ(InfoOf(1, "solo").checksums(), v1::CHECKSUMS_MISMATCH);
  EXPECT_NE(InfoOf(1, "solo").failure().find("checksum mismatch"), std::string::npos);
}

TEST_F(DatasetManagerTest, ConcurrentReadsThatMeetACorruptBlockAllGetThePreviousVersion) {
  DatasetsOptions o;
  o.max_keys_per_request = 20000;
  Reopen(o);
  ASSERT_TRUE(Load(BuildBytes("a", "A", 20000)).ok());
  manager_->WaitForChecksums();
  manager_->PauseChecksumsForTest(true);
  std::string c = BuildBytes("c", "C", 20000);
  CorruptMiddleBlock(c + "/" + ReadBuildManifest(c)->files[0].name);
  ASSERT_TRUE(Load(c).ok());
  // Several readers meet the corrupt block at about the same time: one of them fails the version,
  // and every one (not only that one) is answered by version 1.
  constexpr int kReaders = 4;
  std::atomic<int> ready{0};
  std::vector<absl::Status> status(kReaders);
  std::vector<v1::DatasetMultiGetResponse> resp(kReaders);
  std::vector<std::thread> ts;
  for (int t = 0; t < kReaders; ++t) {
    ts.emplace_back([&, t] {
      v1::DatasetMultiGetRequest req;
      req.set_dataset("ds");
      for (int i = 0; i < 20000; ++i) req.add_keys(absl::StrCat("k", i));
      ready.fetch_add(1);
      while (ready.load() < kReaders) std::this_thread::yield();
      status[t] = manager_->MultiGet(req, &resp[t]);
    });
  }
  for (auto& t : ts) t.join();
  for (int t = 0; t < kReaders; ++t) {
    ASSERT_TRUE(status[t].ok()) << "reader " << t << ": " << status[t];
    EXPECT_EQ(resp[t].version(), 1u) << "reader " << t;
    EXPECT_EQ(resp[t].found(), 20000u) << "reader " << t;
    EXPECT_EQ(resp[t].entries(19999).value().bytes_value(), "A:k19999") << "reader " << t;
  }
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  manager_->PauseChecksumsForTest(false);
}

TEST_F(DatasetManagerTest, ACorruptVersionFallsBackToAnOlderVersionNotToOneRolledBackFrom) {
  ASSERT_TRUE(Load(BuildBytes("a", "A", 20000)).ok());  // 1
  manager_->WaitForChecksums();
  manager_->PauseChecksumsForTest(true);
  std::string c = BuildBytes("c", "C", 20000);
  CorruptMiddleBlock(c + "/" + ReadBuildManifest(c)->files[0].name);
  ASSERT_TRUE(Load(c).ok());  // 2: pending, corrupt
  ASSERT_TRUE(Load(BuildBytes("b", "B", 20000), "ds", true, nullptr, v1::VERIFY_BEFORE_SWAP).ok());  // 3: verified
  // The operator rolls back from 3 to 2; when 2 turns out corrupt, 1 serves, not 3.
  v1::RollbackRequest rb;
  rb.set_dataset("ds");
  rb.set_version(2);
  v1::RollbackResponse rr;
  ASSERT_TRUE(manager_->Rollback(rb, &rr).ok());
  manager_->PauseChecksumsForTest(false);
  manager_->WaitForChecksums();
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(Info().current_version(), 1u);
  EXPECT_EQ(Read("k7"), "A:k7");
}

TEST_F(DatasetManagerTest, AfterSwapCheckInterruptedByAStopRunsAgainAtTheNextStart) {
  // Queued but not started.
  std::string a = BuildBytes("a", "A");
  manager_->PauseChecksumsForTest(true);
  ASSERT_TRUE(Load(a).ok());
  EXPECT_EQ(InfoOf(1).checksums(), v1::CHECKSUMS_PENDING);
  Reopen();
  manager_->WaitForChecksums();
  EXPECT_EQ(InfoOf(1).checksums(), v1::CHECKSUMS_VERIFIED);
  EXPECT_EQ(Read("k1"), "A:k1");

  // Running: a slow check (rate-limited to ~4 s) is cut short by the stop, does not fail the
  // version, and runs again after the restart.
  std::string b = BuildBytes("b", "B", 20000);
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(b);
  req.set_rate_limit_bytes_per_second(100 << 10);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(manager_->Load(req, nullptr, &resp).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  Reopen();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(Info().current_version(), 2u);
  manager_->WaitForChecksums();
  EXPECT_EQ(InfoOf(2).checksums(), v1::CHECKSUMS_VERIFIED);
  EXPECT_EQ(Read("k19999"), "B:k19999");
}

TEST_F(DatasetManagerTest, RestartServesCurrentAndFailsInterruptedLoads) {
  std::string a = BuildBytes("a", "A");
  std::string b = BuildBytes("b", "B");
  ASSERT_TRUE(Load(a).ok());
  ASSERT_TRUE(Load(b).ok());
  v1::RollbackRequest rb;
  rb.set_dataset("ds");
  v1::RollbackResponse rr;
  ASSERT_TRUE(manager_->Rollback(rb, &rr).ok());
  // Simulate a crash in the middle of a load: a version directory left in "loading".
  fs::create_directories(dir_.File("root/ds/v00000003/db"));
  WriteText(dir_.File("root/ds/v00000003/state.json"), R"({"version": 3, "state": "loading"})");
  WriteText(dir_.File("root/ds/NEXT"), "4\n");

  Reopen();
  EXPECT_EQ(Read("k9"), "A:k9") << "the version that was current before the restart";
  EXPECT_EQ(Read("k9", 2), "B:k9");
  EXPECT_EQ(StateOf(2), v1::VERSION_BACKUP);
  EXPECT_EQ(StateOf(3), v1::VERSION_FAILED);
  const v1::DatasetInfo info = Info();
  for (const auto& v : info.versions()) {
    if (v.version() == 3) {
      EXPECT_NE(v.failure().find("interrupted"), std::string::npos) << v.failure();
    }
  }
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000003/db")));
  // Numbers are never reused.
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(Load(b, "ds", true, &resp).ok());
  EXPECT_EQ(resp.version().version(), 4u);
}

TEST_F(DatasetManagerTest, ReadersSeeExactlyOneVersionDuringRepeatedSwaps) {
  std::string a = BuildBytes("a", "A", 2000);
  std::string b = BuildBytes("b", "B", 2000);
  ASSERT_TRUE(Load(a).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> reads{0}, errors{0}, mixed{0}, wrong_tag{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      v1::DatasetMultiGetRequest req;
      req.set_dataset("ds");
      for (int i = 0; i < 50; ++i) req.add_keys(absl::StrCat("k", (i * 37 + t) % 2000));
      while (!stop.load()) {
        v1::DatasetMultiGetResponse resp;
        absl::Status s = manager_->MultiGet(req, &resp);
        if (!s.ok()) {
          errors++;
          continue;
        }
        reads++;
        std::string tag;
        for (const auto& e : resp.entries()) {
          std::string v = e.value().bytes_value();
          std::string t1 = v.substr(0, 1);
          if (tag.empty()) tag = t1;
          if (e.status() != v1::FOUND || t1 != tag) mixed++;
        }
        // Odd versions were loaded from A, even from B.
        if (tag != (resp.version() % 2 == 1 ? "A" : "B")) wrong_tag++;
      }
    });
  }
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(Load(i % 2 == 0 ? b : a).ok());
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mixed.load(), 0);
  EXPECT_EQ(wrong_tag.load(), 0);
  manager_->WaitForRetired();
  EXPECT_EQ(Info().versions_size(), 3) << "current + 2 backups";
}

TEST_F(DatasetManagerTest, CancelledLoadFailsAndConcurrentLoadsAreRefused) {
  std::string a = BuildBytes("a", "A");
  ASSERT_TRUE(Load(a).ok());
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(a);
  req.set_verify(v1::VERIFY_BEFORE_SWAP);  // the O(size) step, where a cancel lands
  v1::LoadVersionResponse resp;
  absl::Status s = manager_->Load(req, [] { return true; }, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(Read("k1"), "A:k1");

  // A slow load (rate-limited) holds the dataset; a second one is ABORTED meanwhile.
  std::string big = BuildBytes("big", "G", 20000);
  std::atomic<bool> done{false};
  std::thread slow([&] {
    v1::LoadVersionRequest r2;
    r2.set_dataset("ds");
    r2.set_path(big);
    r2.set_rate_limit_bytes_per_second(256 << 10);
    r2.set_verify(v1::VERIFY_BEFORE_SWAP);
    v1::LoadVersionResponse out;
    EXPECT_EQ(manager_->Load(r2, [&] { return done.load(); }, &out).code(), absl::StatusCode::kCancelled);
  });
  for (int i = 0; i < 200 && StateOf(3) != v1::VERSION_BUILDING; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(StateOf(3), v1::VERSION_BUILDING);
  EXPECT_EQ(Load(a).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Read("k1"), "A:k1");
  done = true;
  slow.join();
}

// --- asynchronous loads -------------------------------------------------------------------------------

TEST_F(DatasetManagerTest, AsynchronousLoadReturnsAtOnceAndFinishesInTheBackground) {
  std::string a = BuildBytes("a", "A");
  ASSERT_TRUE(Load(a).ok());
  std::string big = BuildBytes("big", "G", 20000);
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(big);
  req.set_wait(false);
  req.set_rate_limit_bytes_per_second(512 << 10);  // holds the load for about a second
  req.set_verify(v1::VERIFY_BEFORE_SWAP);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(manager_->Load(req, [] { return true; }, &resp).ok()) << "an async load ignores the caller's cancel";
  EXPECT_EQ(resp.version().version(), 2u);
  EXPECT_EQ(resp.version().state(), v1::VERSION_BUILDING);
  EXPECT_EQ(resp.total_seconds(), 0);
  EXPECT_EQ(Read("k1"), "A:k1") << "the current version serves while the load runs";
  EXPECT_EQ(Load(a).code(), absl::StatusCode::kAborted) << "one load per dataset at a time";
  for (int i = 0; i < 1000 && StateOf(2) != v1::VERSION_CURRENT; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(StateOf(2), v1::VERSION_CURRENT);
  EXPECT_EQ(Read("k19999"), "G:k19999");

  // A failing async load: FAILED with the reason, visible in the list; the current version serves.
  std::string c = BuildBytes("c", "C");
  auto m = ReadBuildManifest(c);
  CorruptFirstBlock(c + "/" + m->files[0].name);
  req.set_path(c);
  req.clear_rate_limit_bytes_per_second();
  ASSERT_TRUE(manager_->Load(req, nullptr, &resp).ok());
  EXPECT_EQ(resp.version().version(), 3u);
  for (int i = 0; i < 1000 && StateOf(3) != v1::VERSION_FAILED; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(StateOf(3), v1::VERSION_FAILED);
  EXPECT_EQ(FailureOf(3).rfind("DATA_LOSS: ", 0), 0u) << FailureOf(3);
  EXPECT_EQ(Read("k1"), "G:k1");
}

TEST_F(DatasetManagerTest, ClosingTheManagerCancelsAsynchronousLoads) {
  std::string a = BuildBytes("a", "A");
  ASSERT_TRUE(Load(a).ok());
  std::string big = BuildBytes("big", "G", 20000);
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(big);
  req.set_wait(false);
  req.set_rate_limit_bytes_per_second(64 << 10);  // would take many seconds
  req.set_verify(v1::VERIFY_BEFORE_SWAP);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(manager_->Load(req, nullptr, &resp).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = std::chrono::steady_clock::now();
  Reopen();  // closes the manager: the load is cancelled, not waited for
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(Read("k1"), "A:k1");
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000002/db")));
}

// --- disk full ------------------------------------------------------------------------------------------

// The tmpfs (tests/small_tmpfs.h) closes the manager before it is unmounted.

TEST_F(DatasetManagerTest, DiskFullWhileCopyingFailsTheVersionAndKeepsServing) {
  kosh::testing::SmallTmpfs tmpfs(dir_.File("small"), 2 << 20, [this] { manager_.reset(); });
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error() << ")";
  DatasetsOptions o;
  o.root = dir_.File("small/root");
  Reopen(o);
  // The builds live on the test directory's filesystem: loading copies them into the tmpfs.
  std::string a = BuildBytes("a", "A", 300);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(Load(a, "ds", true, &resp).ok());
  EXPECT_FALSE(resp.linked());
  std::string big = BuildBytes("big", "G", 300000);  // several MB of files: does not fit
  absl::Status s = Load(big);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("No space left on device"), std::string::npos) << s;
  EXPECT_EQ(StateOf(2), v1::VERSION_FAILED);
  EXPECT_EQ(FailureOf(2).rfind("RESOURCE_EXHAUSTED: ", 0), 0u) << FailureOf(2);
  EXPECT_EQ(Read("k1"), "A:k1");
  EXPECT_EQ(Info().current_version(), 1u);
  // The failed version's copies are gone, so the space is back: a load that fits works.
  EXPECT_FALSE(fs::exists(dir_.File("small/root/ds/v00000002/staging")));
  ASSERT_TRUE(Load(a).ok());
  EXPECT_EQ(Info().current_version(), 3u);
}

TEST_F(DatasetManagerTest, DiskFullAtAnyStepOfALoadFailsItCleanly) {
  kosh::testing::SmallTmpfs tmpfs(dir_.File("small"), 8 << 20, [this] { manager_.reset(); });
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error() << ")";
  DatasetsOptions o;
  o.root = dir_.File("small/root");
  o.keep_failed = 100;
  Reopen(o);
  // Builds on the tmpfs itself, so that a load hard-links them (no data bytes written) and the
  // full disk hits the load's own small files: NEXT, state.json, manifest.json, RocksDB's files.
  fs::create_directories(dir_.File("small/builds"));
  std::string a = BuildBytes("small/builds/a", "A", 300);
  v1::LoadVersionResponse resp;
  ASSERT_TRUE(Load(a, "ds", true, &resp).ok());
  EXPECT_TRUE(resp.linked());
  std::string b = BuildBytes("small/builds/b", "B", 300);

  // Free space from 0 up, one page at a time, until the load fits. Every failure must be
  // RESOURCE_EXHAUSTED, leave version 1 serving, and (once a version number was taken) list the
  // version as FAILED with that reason.
  bool loaded = false, rocksdb_failed = false;
  int failures = 0;
  for (uint64_t free_pages = 0; free_pages <= 64 && !loaded; ++free_pages) {
    ASSERT_TRUE(tmpfs.FillLeaving(free_pages * 4096)) << tmpfs.error();
    absl::Status s = Load(b);
    tmpfs.Release();
    if (s.ok()) {
      loaded = true;
      break;
    }
    ++failures;
    ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << "with " << free_pages << " free pages: " << s;
    EXPECT_EQ(Read("k1"), "A:k1");
    if (s.message().find("/db") != std::string::npos) rocksdb_failed = true;
    const v1::DatasetInfo info = Info();
    EXPECT_EQ(info.current_version(), 1u);
    if (s.message().find("version ") != std::string::npos) {  // a version was allocated: it failed
      ASSERT_GT(info.versions_size(), 0);
      const v1::VersionInfo& newest = info.versions(0);
      EXPECT_EQ(newest.state(), v1::VERSION_FAILED);
      EXPECT_EQ(newest.failure().rfind("RESOURCE_EXHAUSTED: ", 0), 0u) << newest.failure();
    }
  }
  EXPECT_TRUE(loaded) << "64 free pages should be enough for a 300-row version";
  EXPECT_GT(failures, 0);
  EXPECT_TRUE(rocksdb_failed) << "no step failed inside RocksDB (its files)";
  EXPECT_EQ(Read("k1"), "B:k1");
}

TEST_F(DatasetManagerTest, RequestErrorsNameTheField) {
  std::string a = BuildBytes("a", "A");
  ASSERT_TRUE(Load(a).ok());
  v1::DatasetMultiGetRequest req;
  v1::DatasetMultiGetResponse resp;
  EXPECT_NE(manager_->MultiGet(req, &resp).message().find("dataset:"), std::string::npos);
  req.set_dataset("nope");
  req.add_keys("k1");
  EXPECT_NE(manager_->MultiGet(req, &resp).message().find("unknown dataset \"nope\""), std::string::npos);
  req.set_dataset("ds");
  req.add_keys("");
  EXPECT_NE(manager_->MultiGet(req, &resp).message().find("keys[1]: empty key"), std::string::npos);
  req.clear_keys();
  for (int i = 0; i < 1001; ++i) req.add_keys("k");
  EXPECT_EQ(manager_->MultiGet(req, &resp).code(), absl::StatusCode::kResourceExhausted);
  req.clear_keys();
  req.add_keys("k1");
  req.set_version(9);
  absl::Status s = manager_->MultiGet(req, &resp);
  EXPECT_NE(s.message().find("no loaded version 9 (loaded: 1)"), std::string::npos) << s;

  v1::DeleteVersionRequest del;
  del.set_dataset("ds");
  del.set_version(1);
  v1::DeleteVersionResponse dr;
  EXPECT_EQ(manager_->DeleteVersion(del, &dr).code(), absl::StatusCode::kFailedPrecondition);
  del.set_version(5);
  EXPECT_EQ(manager_->DeleteVersion(del, &dr).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Load(a, "ds", false).ok());
  del.set_version(2);
  EXPECT_TRUE(manager_->DeleteVersion(del, &dr).ok());
  manager_->WaitForRetired();
  EXPECT_FALSE(fs::exists(dir_.File("root/ds/v00000002")));

  v1::LoadVersionRequest lr;
  lr.set_dataset("bad/name");
  lr.set_path(a);
  v1::LoadVersionResponse lresp;
  EXPECT_EQ(manager_->Load(lr, nullptr, &lresp).code(), absl::StatusCode::kInvalidArgument);
  lr.set_dataset("ds");
  lr.set_path("relative/path");
  EXPECT_EQ(manager_->Load(lr, nullptr, &lresp).code(), absl::StatusCode::kInvalidArgument);
}

TEST(DatasetsOptionsTest, ParsesAndNamesPathsInErrors) {
  auto o = ParseDatasetsOptions(YAML::Node(), "/data");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->root, "/data/datasets");
  EXPECT_EQ(o->backups, 2u);
  auto y = YAML::Load(R"(
backups: 3
load_rate_limit: 100MiB
warm_up: true
declare:
  - {name: recs, kind: recs}
  - {name: prof, kind: record, fields: [{name: age, type: int32}]}
)");
  o = ParseDatasetsOptions(y, "/data");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->backups, 3u);
  EXPECT_EQ(o->load_rate_limit, 100ull << 20);
  EXPECT_TRUE(o->warm_up);
  ASSERT_EQ(o->declared.size(), 2u);
  EXPECT_EQ(o->declared[1].schema.Describe(), "RECORD(age INT32)");
  auto bad = ParseDatasetsOptions(YAML::Load("backupz: 1"), "/data");
  EXPECT_NE(bad.status().message().find("datasets.backupz"), std::string::npos) << bad.status();
  bad = ParseDatasetsOptions(YAML::Load("declare: [{name: x, kind: table}]"), "/data");
  EXPECT_NE(bad.status().message().find("datasets.declare[0].kind"), std::string::npos) << bad.status();
  bad = ParseDatasetsOptions(YAML::Load("max_keys_per_request: 0"), "/data");
  EXPECT_NE(bad.status().message().find("datasets.max_keys_per_request"), std::string::npos) << bad.status();

  // When checksums are checked: after the swap unless configured; verify_checksums is the older spelling.
  EXPECT_EQ(ParseDatasetsOptions(YAML::Node(), "/data")->verify, VerifyMode::kAfterSwap);
  EXPECT_EQ(ParseDatasetsOptions(YAML::Node(), "/data")->check_rate_limit, 200ull << 20);  // paced by default
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("check_rate_limit: 1GiB"), "/data")->check_rate_limit, 1ull << 30);
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("check_rate_limit: 0"), "/data")->check_rate_limit, 0u);  // unlimited
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("verify: before_swap"), "/data")->verify, VerifyMode::kBeforeSwap);
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("verify: structure_only"), "/data")->verify, VerifyMode::kStructureOnly);
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("verify_checksums: true"), "/data")->verify, VerifyMode::kBeforeSwap);
  EXPECT_EQ(ParseDatasetsOptions(YAML::Load("verify_checksums: false"), "/data")->verify,
            VerifyMode::kStructureOnly);
  bad = ParseDatasetsOptions(YAML::Load("verify: after-swap"), "/data");
  EXPECT_EQ(bad.status().message(),
            "datasets.verify: \"after-swap\" is not one of before_swap, after_swap, structure_only");
  bad = ParseDatasetsOptions(YAML::Load("{verify: after_swap, verify_checksums: true}"), "/data");
  EXPECT_NE(bad.status().message().find("not both"), std::string::npos) << bad.status();
}

TEST_F(DatasetManagerTest, DeclaredDatasetsRejectOtherKinds) {
  DatasetsOptions o;
  o.declared.push_back({"ds", *MakeSchema(v1::DATASET_KIND_RECS, {})});
  Reopen(o);
  EXPECT_EQ(Info().kind(), v1::DATASET_KIND_RECS);
  std::string a = BuildBytes("a", "A");
  v1::LoadVersionRequest req;
  req.set_dataset("ds");
  req.set_path(a);
  req.set_allow_schema_change(true);  // does not override a declaration
  v1::LoadVersionResponse resp;
  absl::Status s = manager_->Load(req, nullptr, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("is declared as RECS"), std::string::npos) << s;
  v1::DatasetGetRequest g;
  g.set_dataset("ds");
  g.set_key("k1");
  v1::DatasetGetResponse gr;
  EXPECT_EQ(manager_->Get(g, &gr).code(), absl::StatusCode::kFailedPrecondition) << "nothing current yet";
}

}  // namespace
}  // namespace kosh::datasets
