// The server side of datasets: the versions of every dataset on this node, their loads, the atomic
// swap of the current version, rollback, retention and recovery after a restart.
//
// On disk (docs/formats.md, "Dataset versions on the server"):
//   <root>/<dataset>/CURRENT                the number of the current version; replaced atomically
//   <root>/<dataset>/NEXT                   the next version number to assign
//   <root>/<dataset>/v00000007/state.json   building | loading | ready | failed, reason, sizes
//   <root>/<dataset>/v00000007/manifest.json  the (merged) build manifest
//   <root>/<dataset>/v00000007/db/          a SortedStore that ingested the build's files (hard links)
//
// Readers never lock and never wait for a load: every read takes one immutable View (an atomic
// shared_ptr load), and from it one Version for the whole request, so a MultiGet sees exactly one
// version and finishes on it even if the current version changes meanwhile. A load verifies, links
// and opens the new version without touching the current one; only then is CURRENT replaced
// (write temp + fsync + rename + fsync dir) and the View swapped. A version dropped from the View is
// closed and deleted by a background thread once the last reader has released it.
//
// Whole-file checksums (VerifyMode): checking them is the one O(size) step, so by default it runs
// after the swap, on a background thread, and the swap itself is O(files). A version whose check
// fails, or whose pending check is overtaken by a read that meets a corrupt block, is marked FAILED
// and an older version that has served is made current again (FallbackFor); such a read is retried
// on it, so a corrupt push costs its readers neither an error nor a wrong value (block CRCs are
// checked on every read).
//
// Thread-safe. Mutations (load state changes, swaps, rollback, delete) are serialised by one mutex,
// which is never held during I/O of a load; loads of different datasets run concurrently, a second
// load of the same dataset is ABORTED.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/metrics.h"
#include "base/thread_pool.h"
#include "datasets/manifest.h"
#include "datasets/value_codec.h"
#include "kosh/v1/datasets.pb.h"
#include "storage/sorted_files.h"
#include "yaml-cpp/yaml.h"

namespace kosh::datasets {

// A dataset declared in the configuration: loads of other kinds (or fields) are rejected.
struct DatasetDecl {
  std::string name;
  ValueSchema schema;
};

// When a load compares each file's CRC-32C with the manifest (datasets.verify; VerifyMode in
// datasets.proto says what each means).
enum class VerifyMode { kBeforeSwap, kAfterSwap, kStructureOnly };

struct DatasetsOptions {
  std::string root;                      // default <storage.path>/datasets
  uint32_t backups = 2;                  // previous versions kept loaded for rollback
  uint32_t keep_failed = 5;              // failed versions listed (their data is deleted at once)
  uint64_t load_rate_limit = 0;          // bytes/s for a load's reads and copies; 0 = unlimited
  // bytes/s for an after-swap checksum check; 0 = unlimited. Paced by default: at full speed
  // (1.1-1.4 GB/s here) the check lifted readers' p99 to 1.4-1.8x idle while it ran; at 200 MiB/s
  // (13 s per 2.8 GB) the whole window was 1.10x and 1.12x (docs/benchmarks.md, "Datasets").
  // The price: a push that is intact block by block but not what was built serves that much
  // longer.
  uint64_t check_rate_limit = 200ull << 20;
  bool warm_up = false;                  // read a loaded version's files once before it serves
  uint32_t max_keys_per_request = 1000;  // MultiGet
  uint32_t max_key_bytes = 4096;
  uint64_t block_cache_bytes = 256ull << 20;  // shared by every version
  uint32_t verify_threads = 2;           // files verified in parallel by a check before the swap
  VerifyMode verify = VerifyMode::kAfterSwap;
  std::vector<DatasetDecl> declared;
};

// Parses the `datasets:` section (a null node gives the defaults). Errors name the path, e.g.
// "datasets.backups: expected a non-negative integer".
absl::StatusOr<DatasetsOptions> ParseDatasetsOptions(const YAML::Node& node, const std::string& storage_path);

// [A-Za-z0-9_][A-Za-z0-9_.-]*, at most 64 characters (it names a directory).
bool IsValidDatasetName(absl::string_view name);

class DatasetManager {
 public:
  // Opens every dataset under options.root (creating it if needed) and recovers: CURRENT's version
  // serves; versions left building or loading by a crash are marked failed and their data removed.
  static absl::StatusOr<std::unique_ptr<DatasetManager>> Open(DatasetsOptions options,
                                                             base::MetricsRegistry* metrics);
  ~DatasetManager();

  // Reads. INVALID_ARGUMENT names the field (dataset, keys[i], version); RESOURCE_EXHAUSTED for
  // too many keys; FAILED_PRECONDITION when nothing is current; DATA_LOSS for a corrupt value.
  absl::Status Get(const v1::DatasetGetRequest& req, v1::DatasetGetResponse* resp);
  absl::Status MultiGet(const v1::DatasetMultiGetRequest& req, v1::DatasetMultiGetResponse* resp);

  // Loads the build at req.path() as a new version (see the class comment). A load that fails
  // after it was accepted leaves a FAILED version whose `failure` starts with the status code, and
  // returns that status: FAILED_PRECONDITION (no or bad manifest, missing file, wrong dataset or
  // schema), DATA_LOSS (size or checksum mismatch), RESOURCE_EXHAUSTED (disk full: copying, linking,
  // RocksDB's own files or the version's state), CANCELLED (`cancelled` returned true). A request
  // rejected before a version number was taken (bad arguments, another load of the dataset in
  // progress: ABORTED, NEXT not writable) changes nothing. The current version keeps serving
  // throughout.
  //
  // req.wait() false: returns as soon as the version exists (resp->version() in state BUILDING);
  // the load continues on a thread of the manager's, ignores `cancelled`, and is cancelled only when
  // the manager closes. Its outcome shows in ListVersions (READY/CURRENT, or FAILED with the reason)
  // and in the metrics. Errors returned are those of the request itself.
  absl::Status Load(const v1::LoadVersionRequest& req, const storage::CancelFn& cancelled,
                    v1::LoadVersionResponse* resp);
  absl::Status ListVersions(const v1::ListVersionsRequest& req, v1::ListVersionsResponse* resp);
  // NOT_FOUND for an unknown dataset or version; FAILED_PRECONDITION if it is not loaded.
  absl::Status Rollback(const v1::RollbackRequest& req, v1::RollbackResponse* resp);
  absl::Status DeleteVersion(const v1::DeleteVersionRequest& req, v1::DeleteVersionResponse* resp);

  const DatasetsOptions& options() const { return options_; }

  // Blocks until every version dropped so far has been closed and deleted (tests).
  void WaitForRetired();
  // Blocks until every after-swap checksum check queued so far has ended (tests).
  void WaitForChecksums();
  // Holds after-swap checks back until called with false (tests of reads that overtake a check).
  void PauseChecksumsForTest(bool paused);

 private:
  struct Version;
  struct VersionRecord;
  struct Dataset;
  struct DatasetView;
  struct View;
  struct Counters;

  DatasetManager(DatasetsOptions options, base::MetricsRegistry* metrics);
  absl::Status Recover();
  absl::Status RecoverDataset(const std::string& name);
  Dataset* FindOrCreate(const std::string& name, Counters* counters) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Creates the dataset's metrics on first use. Never called with mu_ held: the metrics registry
  // runs the scrape-time gauges (which take mu_) under its own lock.
  Counters* CountersFor(const std::string& name) ABSL_LOCKS_EXCLUDED(mu_);
  void Publish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Activate(Dataset* ds, uint64_t number) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops loaded versions beyond `backups` and failed ones beyond `keep_failed`, never the current
  // version nor `keep`.
  void Retain(Dataset* ds, uint64_t keep = 0) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Retire(Dataset* ds, uint64_t number) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands an open version to the reaper, which closes it and removes `dir` once its last reader is
  // done.
  void RetireStore(std::shared_ptr<const Version> open, std::string dir);
  absl::Status PersistState(const Dataset& ds, const VersionRecord& r);
  void FillInfo(const Dataset& ds, const VersionRecord& r, v1::VersionInfo* out) const;
  // The rest of a load once its version exists: DoLoad (unless `st` is already an error), then the
  // state change, the swap, and on failure the FAILED record.
  absl::Status Complete(const v1::LoadVersionRequest& req, uint64_t number, const std::string& vdir,
                        Counters* counters, std::chrono::steady_clock::time_point start, absl::Status st,
                        const storage::CancelFn& cancelled, v1::LoadVersionResponse* resp);
  absl::Status DoLoad(const std::string& name, uint64_t number, const std::string& vdir,
                      const v1::LoadVersionRequest& req, const storage::CancelFn& cancelled,
                      std::shared_ptr<const Version>* out, v1::LoadVersionResponse* resp, std::string* source_note);
  std::shared_ptr<const View> view() const { return view_.load(std::memory_order_acquire); }
  // One read of a version (MultiGet's body once the version is chosen). `store_error` tells a
  // failed read of the files from a value that does not decode.
  absl::Status ReadVersion(const Version& version, const DatasetView& dv, const v1::DatasetMultiGetRequest& req,
                           v1::DatasetMultiGetResponse* resp, bool* store_error);
  // A version whose data turned out corrupt (after-swap check, or a read during it): FAILED with
  // `why`, and if it is current, FallbackFor's version becomes current again. With no such version
  // it keeps serving, marked CHECKSUMS_MISMATCH. No-op unless it is READY with its check pending.
  void FailCorruptVersion(const std::string& dataset, uint64_t number, const absl::Status& why,
                          double checked_seconds = 0) ABSL_LOCKS_EXCLUDED(mu_);
  // The version to serve instead of `failed`: one that has served, is loaded, is not known corrupt
  // and fits the declaration; the newest older than `failed` (as Rollback picks), else the newest
  // newer one; a version whose own check is pending only if no checked one qualifies. 0: none.
  uint64_t FallbackFor(const Dataset& ds, uint64_t failed) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  struct ChecksumJob;
  void QueueChecksums(const std::string& dataset, uint64_t number, uint64_t rate);
  void ChecksumLoop();
  // Runs one check. OK when it ended (verified, failed the version, or nothing left to check); an
  // error that says nothing about the data (e.g. EMFILE, ENOMEM) leaves the version pending, and
  // the caller runs the check again later.
  absl::Status CheckAfterSwap(const ChecksumJob& job);
  void ReaperLoop();
  void RegisterMetrics();
  // Runs `fn` on the manager's store thread and returns when it has run. Every store is created
  // and opened there, so the memory of its table readers (index and filter blocks: ~23 MB for a
  // 9M-key version) comes from that one thread's malloc arena, to which a dropped version returns
  // it; the next load reuses it instead of faulting in fresh pages. (Each load ran on a thread of
  // its own, so its memory came from whichever arena that thread got: each load faulted its 23 MB
  // in again, 5,900 page faults that took ~0.1 s of a 0.14 s ingest on this project's VM, while
  // readers waited longer. `kosh serve` also keeps freed memory from being trimmed; see
  // src/cli/main.cc.)
  void OnStoreThread(const std::function<void()>& fn);

  DatasetsOptions options_;
  base::MetricsRegistry* metrics_;
  std::shared_ptr<storage::BlockCache> cache_;

  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Dataset>> datasets_ ABSL_GUARDED_BY(mu_);
  std::atomic<std::shared_ptr<const View>> view_;

  absl::Mutex counters_mu_;
  std::map<std::string, std::unique_ptr<Counters>> counters_ ABSL_GUARDED_BY(counters_mu_);
  base::Counter* corrupt_values_ = nullptr;

  // Asynchronous loads (LoadVersion with wait false); finished ones are joined by the next one.
  struct AsyncLoad {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::atomic<bool> stopping_{false};
  absl::Mutex async_mu_;
  std::vector<std::unique_ptr<AsyncLoad>> async_loads_ ABSL_GUARDED_BY(async_mu_);

  // After-swap checksum checks, in load order, run by one thread.
  struct ChecksumJob {
    std::string dataset;
    uint64_t number = 0;
    uint64_t rate = 0;  // bytes/s, 0 = unlimited
    int attempts = 0;   // ended in an error that says nothing about the data
    absl::Time not_before = absl::InfinitePast();
  };
  absl::Mutex checks_mu_;
  std::deque<ChecksumJob> checks_ ABSL_GUARDED_BY(checks_mu_);
  bool checking_ ABSL_GUARDED_BY(checks_mu_) = false;  // a job is taken off checks_ and running
  bool checks_paused_ ABSL_GUARDED_BY(checks_mu_) = false;
  bool checks_stop_ ABSL_GUARDED_BY(checks_mu_) = false;
  uint64_t checks_queued_ ABSL_GUARDED_BY(checks_mu_) = 0;  // wakes a checker waiting for a retry's time
  std::thread checker_;

  // The store thread (OnStoreThread).
  base::ThreadPool store_thread_{1};

  // Versions no longer reachable from the View, waiting for their last reader.
  absl::Mutex retired_mu_;
  std::vector<std::pair<std::shared_ptr<const Version>, std::string>> retired_ ABSL_GUARDED_BY(retired_mu_);
  size_t reaping_ ABSL_GUARDED_BY(retired_mu_) = 0;  // taken off retired_, being closed and deleted
  bool stop_ ABSL_GUARDED_BY(retired_mu_) = false;
  std::thread reaper_;
};

}  // namespace kosh::datasets
