#include "datasets/dataset_manager.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "base/config.h"
#include "base/status.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kosh::datasets {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Puts the calling thread in the SCHED_IDLE class (falling back to nice 19): it runs only when no
// other thread wants the core, and a thread that wakes up to serve a read preempts it at once. Used
// for the O(size) work of a load (checksums, warm-up) and for closing retired versions, so that a
// push on a busy node does not take CPU from reads.
void BackgroundPriority() {
  sched_param p{};
  p.sched_priority = 0;
  if (::pthread_setschedparam(::pthread_self(), SCHED_IDLE, &p) != 0) {
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
  }
  // And the idle I/O class (honoured by the bfq and mq-deadline schedulers): its reads wait while
  // reads of serving threads are queued. Best effort; failure changes nothing else.
  constexpr int kIoprioWhoProcess = 1, kIoprioClassIdle = 3, kIoprioClassShift = 13;
  (void)::syscall(SYS_ioprio_set, kIoprioWhoProcess, static_cast<int>(::gettid()),
                  kIoprioClassIdle << kIoprioClassShift);
}

enum class State { kBuilding, kLoading, kReady, kFailed };

const char* StateName(State s) {
  switch (s) {
    case State::kBuilding: return "building";
    case State::kLoading: return "loading";
    case State::kReady: return "ready";
    case State::kFailed: return "failed";
  }
  return "failed";
}

std::optional<State> ParseState(absl::string_view s) {
  if (s == "building") return State::kBuilding;
  if (s == "loading") return State::kLoading;
  if (s == "ready") return State::kReady;
  if (s == "failed") return State::kFailed;
  return std::nullopt;
}

// "current", "backup", ... for metrics labels.
std::string StateLabel(v1::VersionState s) {
  return absl::AsciiStrToLower(absl::StripPrefix(v1::VersionState_Name(s), "VERSION_"));
}

const char* ChecksumName(v1::ChecksumState c) {
  switch (c) {
    case v1::CHECKSUMS_VERIFIED: return "verified";
    case v1::CHECKSUMS_PENDING: return "pending";
    case v1::CHECKSUMS_NOT_CHECKED: return "not_checked";
    case v1::CHECKSUMS_MISMATCH: return "mismatch";
    default: return "";
  }
}

v1::ChecksumState ParseChecksums(absl::string_view s) {
  for (v1::ChecksumState c : {v1::CHECKSUMS_VERIFIED, v1::CHECKSUMS_PENDING, v1::CHECKSUMS_NOT_CHECKED,
                              v1::CHECKSUMS_MISMATCH}) {
    if (s == ChecksumName(c)) return c;
  }
  return v1::CHECKSUMS_UNSPECIFIED;
}

absl::StatusOr<VerifyMode> ParseVerifyMode(absl::string_view s) {
  if (s == "before_swap") return VerifyMode::kBeforeSwap;
  if (s == "after_swap") return VerifyMode::kAfterSwap;
  if (s == "structure_only") return VerifyMode::kStructureOnly;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", s, "\" is not one of before_swap, after_swap, structure_only"));
}

// A file's size and CRC-32C as read, against what the manifest lists for it.
absl::Status MatchManifest(const ManifestFile& f, const storage::FileDigest& d, absl::string_view shown_name) {
  if (d.bytes != f.bytes) {
    return absl::DataLossError(absl::StrCat(shown_name, ": size mismatch: the manifest says ", f.bytes,
                                            " bytes, read ", d.bytes));
  }
  if (d.crc32c != f.crc32c) {
    return absl::DataLossError(absl::StrCat(shown_name, ": checksum mismatch: the manifest says ", FormatCrc(f.crc32c),
                                            ", the file has ", FormatCrc(d.crc32c)));
  }
  return absl::OkStatus();
}

// The manifest's file whose key range is the stored file's (the partitions do not overlap, so at
// most one); null if none.
const ManifestFile* ListedFile(const Manifest& m, const storage::StoredFile& f) {
  for (const auto& mf : m.files) {
    if (mf.first_key == UserKey(f.smallest_key) && mf.last_key == UserKey(f.largest_key)) return &mf;
  }
  return nullptr;
}

// The mode a load asks for (`verify`, or its older spelling `verify_checksums`), else `fallback`.
VerifyMode RequestedMode(const v1::LoadVersionRequest& req, VerifyMode fallback) {
  if (req.has_verify_checksums()) return req.verify_checksums() ? VerifyMode::kBeforeSwap : VerifyMode::kStructureOnly;
  switch (req.verify()) {
    case v1::VERIFY_BEFORE_SWAP: return VerifyMode::kBeforeSwap;
    case v1::VERIFY_AFTER_SWAP: return VerifyMode::kAfterSwap;
    case v1::VERIFY_STRUCTURE_ONLY: return VerifyMode::kStructureOnly;
    default: return fallback;
  }
}

std::string VersionDirName(uint64_t n) { return absl::StrFormat("v%08u", n); }

bool ParseVersionDirName(absl::string_view name, uint64_t* n) {
  return absl::ConsumePrefix(&name, "v") && name.size() >= 8 && absl::SimpleAtoi(name, n) && *n > 0;
}

// Reads a small text file holding one number ("" or missing: nullopt).
std::optional<uint64_t> ReadNumberFile(const std::string& path) {
  auto text = base::ReadFile(path);
  if (!text.ok()) return std::nullopt;
  uint64_t v;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &v)) return std::nullopt;
  return v;
}

absl::Status Errno(absl::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == ENOENT) return absl::FailedPreconditionError(msg);
  return absl::InternalError(msg);
}

// A std::filesystem error: disk full (or over quota) is RESOURCE_EXHAUSTED like every other
// disk-full error of a load.
absl::Status FsError(absl::string_view what, const std::string& path, const std::error_code& ec) {
  if (ec.category() == std::generic_category() || ec.category() == std::system_category()) {
    return Errno(what, path, ec.value());
  }
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", ec.message()));
}

// Copies src to dst (created), computing the CRC-32C of what it reads; fsyncs dst.
absl::StatusOr<storage::FileDigest> CopyFile(const std::string& src, const std::string& dst,
                                             storage::IoThrottle* throttle, const storage::CancelFn& cancelled) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Errno("opening", src, errno);
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    int err = errno;
    ::close(in);
    return Errno("creating", dst, err);
  }
  // Like the checksum pass: 1 MiB reads without readahead, so the copy never queues megabytes
  // ahead of the readers; and the copy is written back as it goes (at most 8 MiB dirty), rather than
  // in one burst at the fsync.
  ::posix_fadvise(in, 0, 0, POSIX_FADV_RANDOM);
  const size_t chunk = throttle != nullptr && throttle->rate() > 0
                           ? std::clamp<size_t>(throttle->rate() / 16, 16 << 10, 1 << 20)
                           : 1 << 20;
  constexpr uint64_t kWriteBackBytes = 8 << 20;
  uint64_t written_back = 0;
  std::unique_ptr<char[]> buf(new char[chunk]);
  storage::FileDigest d;
  absl::Status st;
  while (st.ok()) {
    if (cancelled && cancelled()) {
      st = absl::CancelledError("the load was cancelled");
      break;
    }
    ssize_t r = ::read(in, buf.get(), chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      st = Errno("reading", src, errno);
      break;
    }
    if (r == 0) break;
    if (throttle) throttle->Acquire(static_cast<uint64_t>(r));
    d.crc32c = storage::Crc32c(d.crc32c, buf.get(), static_cast<size_t>(r));
    d.bytes += static_cast<uint64_t>(r);
    size_t done = 0;
    while (done < static_cast<size_t>(r)) {
      ssize_t w = ::write(out, buf.get() + done, static_cast<size_t>(r) - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        st = Errno("writing", dst, errno);
        break;
      }
      done += static_cast<size_t>(w);
    }
    if (st.ok() && d.bytes - written_back >= kWriteBackBytes) {
      // Start writing this step back, and wait for the previous one, so dirty pages stay bounded
      // (an error here, e.g. ENOSPC on a thin device, is reported by the fsync below).
      if (written_back > 0) {
        (void)::sync_file_range(out, 0, static_cast<off_t>(written_back),
                                SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      }
      (void)::sync_file_range(out, static_cast<off_t>(written_back), static_cast<off_t>(d.bytes - written_back),
                              SYNC_FILE_RANGE_WRITE);
      written_back = d.bytes;
    }
  }
  if (st.ok() && ::fsync(out) != 0) st = Errno("syncing", dst, errno);
  ::close(in);
  ::close(out);
  if (!st.ok()) return st;
  return d;
}

}  // namespace

// --- internal types ------------------------------------------------------------------------------

struct DatasetManager::Version {
  std::string dataset;
  uint64_t number = 0;
  ValueSchema schema;
  std::unique_ptr<storage::SortedStore> store;
  // Its after-swap checksum check has not ended: a read that meets a corrupt block fails the
  // version (FailCorruptVersion) instead of only the read.
  mutable std::atomic<bool> checksums_pending{false};
  mutable std::atomic<bool> dropped{false};  // retired: a running check of it stops
};

struct DatasetManager::VersionRecord {
  uint64_t number = 0;
  State state = State::kBuilding;
  bool activated = false;  // has been current at some point (so it is a backup when not current)
  std::string source;
  std::string loaded_at;
  std::string failure;
  v1::ChecksumState checksums = v1::CHECKSUMS_UNSPECIFIED;
  double checksum_seconds = 0;
  Manifest manifest;  // summary fields only are used (rows, files, schema, label, keys)
  bool has_manifest = false;
  std::shared_ptr<const Version> open;  // READY
};

struct DatasetManager::Counters {
  base::Counter* found;
  base::Counter* not_found;
  base::Counter* loads_ok;
  base::Counter* loads_failed;
  base::Counter* swaps;
  base::Counter* rollbacks;
  base::Counter* checksum_failures;
  base::Histogram* load_seconds;
  base::Histogram* swap_seconds;
};

struct DatasetManager::Dataset {
  std::string name;
  std::string dir;
  std::optional<ValueSchema> declared;
  uint64_t next = 1;
  uint64_t current = 0;
  bool loading = false;
  std::map<uint64_t, VersionRecord> versions;
  Counters* counters = nullptr;

  std::string VersionDir(uint64_t n) const { return dir + "/" + VersionDirName(n); }
  // The schema loads must match: the declaration, else the current version's.
  std::optional<ValueSchema> Expected() const {
    if (declared.has_value()) return declared;
    auto it = versions.find(current);
    if (current != 0 && it != versions.end() && it->second.open) return it->second.open->schema;
    return std::nullopt;
  }
};

struct DatasetManager::DatasetView {
  std::shared_ptr<const Version> current;
  absl::flat_hash_map<uint64_t, std::shared_ptr<const Version>> readable;
  Counters* counters = nullptr;
};

struct DatasetManager::View {
  absl::flat_hash_map<std::string, std::shared_ptr<const DatasetView>> datasets;
};

// --- options ------------------------------------------------------------------------------------------

bool IsValidDatasetName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              (i > 0 && (c == '-' || c == '.'));
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<DatasetsOptions> ParseDatasetsOptions(const YAML::Node& node, const std::string& storage_path) {
  DatasetsOptions o;
  o.root = (storage_path.empty() ? std::string(".") : storage_path) + "/datasets";
  if (!node || node.IsNull()) return o;
  if (!node.IsMap()) return absl::InvalidArgumentError("datasets: expected a mapping");
  base::YamlReader r(node, "datasets");
  RETURN_IF_ERROR(r.CheckKeys({"root", "backups", "keep_failed", "load_rate_limit", "check_rate_limit", "warm_up",
                               "max_keys_per_request", "max_key_bytes", "block_cache", "verify_threads",
                               "verify", "verify_checksums", "declare"}));
  RETURN_IF_ERROR(r.GetString("root", &o.root));
  uint64_t v = o.backups;
  RETURN_IF_ERROR(r.GetUint("backups", &v));
  if (v > 100) return absl::InvalidArgumentError("datasets.backups: expected 0 to 100");
  o.backups = static_cast<uint32_t>(v);
  v = o.keep_failed;
  RETURN_IF_ERROR(r.GetUint("keep_failed", &v));
  if (v > 1000) return absl::InvalidArgumentError("datasets.keep_failed: expected 0 to 1000");
  o.keep_failed = static_cast<uint32_t>(v);
  RETURN_IF_ERROR(r.GetBytes("load_rate_limit", &o.load_rate_limit));
  RETURN_IF_ERROR(r.GetBytes("check_rate_limit", &o.check_rate_limit));
  RETURN_IF_ERROR(r.GetBool("warm_up", &o.warm_up));
  if (r.Has("verify")) {
    std::string mode;
    RETURN_IF_ERROR(r.GetString("verify", &mode));
    auto m = ParseVerifyMode(mode);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat("datasets.verify: ", m.status().message()));
    o.verify = *m;
  }
  if (r.Has("verify_checksums")) {  // the older spelling: true = before_swap, false = structure_only
    if (r.Has("verify")) {
      return absl::InvalidArgumentError("datasets.verify_checksums: give datasets.verify or verify_checksums, not both");
    }
    bool on = true;
    RETURN_IF_ERROR(r.GetBool("verify_checksums", &on));
    o.verify = on ? VerifyMode::kBeforeSwap : VerifyMode::kStructureOnly;
  }
  v = o.max_keys_per_request;
  RETURN_IF_ERROR(r.GetUint("max_keys_per_request", &v));
  if (v == 0 || v > 1000000) return absl::InvalidArgumentError("datasets.max_keys_per_request: expected 1 to 1000000");
  o.max_keys_per_request = static_cast<uint32_t>(v);
  v = o.max_key_bytes;
  RETURN_IF_ERROR(r.GetBytes("max_key_bytes", &v));
  if (v == 0 || v > (1u << 20)) return absl::InvalidArgumentError("datasets.max_key_bytes: expected 1 to 1MiB");
  o.max_key_bytes = static_cast<uint32_t>(v);
  RETURN_IF_ERROR(r.GetBytes("block_cache", &o.block_cache_bytes));
  v = o.verify_threads;
  RETURN_IF_ERROR(r.GetUint("verify_threads", &v));
  if (v == 0 || v > 64) return absl::InvalidArgumentError("datasets.verify_threads: expected 1 to 64");
  o.verify_threads = static_cast<uint32_t>(v);
  if (r.Has("declare")) {
    const YAML::Node& cnode = node;
    const YAML::Node list = cnode["declare"];
    if (!list.IsSequence()) return absl::InvalidArgumentError("datasets.declare: expected a list");
    for (size_t i = 0; i < list.size(); ++i) {
      std::string where = absl::StrCat("datasets.declare[", i, "]");
      base::YamlReader d(list[i], where);
      RETURN_IF_ERROR(d.CheckKeys({"name", "kind", "schema", "fields"}));
      DatasetDecl decl;
      std::string kind, schema_file;
      RETURN_IF_ERROR(d.GetString("name", &decl.name));
      RETURN_IF_ERROR(d.GetString("kind", &kind));
      RETURN_IF_ERROR(d.GetString("schema", &schema_file));
      if (!IsValidDatasetName(decl.name)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", decl.name,
                                                       "\" is not a valid dataset name ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 64)"));
      }
      for (const auto& other : o.declared) {
        if (other.name == decl.name) return absl::InvalidArgumentError(absl::StrCat(where, ".name: declared twice"));
      }
      auto k = ParseKind(kind);
      if (!k.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".kind: ", k.status().message()));
      std::vector<v1::FeatureSpec> fields;
      if (!schema_file.empty()) {
        auto f = LoadRecordFields(schema_file);
        if (!f.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".schema: ", f.status().message()));
        fields = std::move(*f);
      } else if (d.Has("fields")) {
        const YAML::Node& dn = list[i];
        ASSIGN_OR_RETURN(fields, ParseRecordFields(dn["fields"], where + ".fields"));
      }
      auto s = MakeSchema(*k, std::move(fields));
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.status().message()));
      decl.schema = std::move(*s);
      o.declared.push_back(std::move(decl));
    }
  }
  return o;
}

// --- open and recovery --------------------------------------------------------------------------

DatasetManager::DatasetManager(DatasetsOptions options, base::MetricsRegistry* metrics)
    : options_(std::move(options)), metrics_(metrics) {
  cache_ = storage::BlockCache::New(options_.block_cache_bytes);
  view_.store(std::make_shared<const View>());
}

absl::StatusOr<std::unique_ptr<DatasetManager>> DatasetManager::Open(DatasetsOptions options,
                                                                    base::MetricsRegistry* metrics) {
  std::unique_ptr<DatasetManager> m(new DatasetManager(std::move(options), metrics));
  m->corrupt_values_ = metrics->GetCounter("kosh_dataset_corrupt_values_total",
                                           "Stored dataset values that could not be decoded.");
  RETURN_IF_ERROR(m->Recover());
  m->RegisterMetrics();
  m->reaper_ = std::thread([p = m.get()] { p->ReaperLoop(); });
  m->checker_ = std::thread([p = m.get()] { p->ChecksumLoop(); });
  return m;
}

DatasetManager::~DatasetManager() {
  // Asynchronous loads see stopping_ (their cancel test) and end, failed as cancelled.
  stopping_.store(true);
  {
    absl::MutexLock lock(&async_mu_);
    for (auto& job : async_loads_) job->thread.join();
    async_loads_.clear();
  }
  {
    absl::MutexLock lock(&checks_mu_);
    checks_stop_ = true;  // a running check sees stopping_ and ends; it is queued again at the next start
  }
  if (checker_.joinable()) checker_.join();
  {
    absl::MutexLock lock(&retired_mu_);
    stop_ = true;
  }
  if (reaper_.joinable()) reaper_.join();
  view_.store(std::make_shared<const View>());
  absl::MutexLock lock(&mu_);
  datasets_.clear();
  absl::MutexLock rl(&retired_mu_);
  retired_.clear();  // closes without deleting: they are deleted at the next start
}

DatasetManager::Counters* DatasetManager::CountersFor(const std::string& name) {
  absl::MutexLock lock(&counters_mu_);
  auto& c = counters_[name];
  if (!c) {
    c = std::make_unique<Counters>();
    base::Labels l = {{"dataset", name}};
    auto with = [&](const char* k, const char* v) {
      base::Labels x = l;
      x.push_back({k, v});
      return x;
    };
    c->found = metrics_->GetCounter("kosh_dataset_keys_total", "Keys looked up by Get and MultiGet, by result.",
                                    with("result", "found"));
    c->not_found = metrics_->GetCounter("kosh_dataset_keys_total", "Keys looked up by Get and MultiGet, by result.",
                                        with("result", "not_found"));
    c->loads_ok = metrics_->GetCounter("kosh_dataset_loads_total", "Version loads by result.", with("result", "ok"));
    c->loads_failed =
        metrics_->GetCounter("kosh_dataset_loads_total", "Version loads by result.", with("result", "failed"));
    c->swaps = metrics_->GetCounter("kosh_dataset_swaps_total", "Changes of the current version (loads and rollbacks).", l);
    c->rollbacks = metrics_->GetCounter("kosh_dataset_rollbacks_total", "Rollbacks (asked for, or after a corrupt version).", l);
    c->checksum_failures = metrics_->GetCounter(
        "kosh_dataset_checksum_failures_total",
        "Versions found corrupt after their swap (by the after-swap check or a read during it).", l);
    c->load_seconds = metrics_->GetHistogram(
        "kosh_dataset_load_duration_seconds", "Duration of successful loads (verify, ingest, warm, swap).", l,
        {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800});
    c->swap_seconds = metrics_->GetHistogram("kosh_dataset_swap_duration_seconds",
                                             "Making a version current: CURRENT written and synced, pointer swapped.", l);
  }
  return c.get();
}

DatasetManager::Dataset* DatasetManager::FindOrCreate(const std::string& name, Counters* counters) {
  auto& d = datasets_[name];
  if (!d) {
    d = std::make_unique<Dataset>();
    d->name = name;
    d->dir = options_.root + "/" + name;
    d->counters = counters;
    for (const auto& decl : options_.declared) {
      if (decl.name == name) d->declared = decl.schema;
    }
  }
  return d.get();
}

absl::Status DatasetManager::Recover() {
  std::error_code ec;
  fs::create_directories(options_.root, ec);
  if (ec) return absl::InternalError(absl::StrCat("datasets.root ", options_.root, ": ", ec.message()));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(options_.root, ec)) {
    std::string name = e.path().filename().string();
    if (!e.is_directory()) continue;
    if (!IsValidDatasetName(name)) {
      spdlog::warn("datasets: ignoring {}: not a dataset directory", e.path().string());
      continue;
    }
    names.push_back(name);
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", options_.root, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) RETURN_IF_ERROR(RecoverDataset(n));
  std::vector<Counters*> declared;
  for (const auto& decl : options_.declared) declared.push_back(CountersFor(decl.name));
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < declared.size(); ++i) FindOrCreate(options_.declared[i].name, declared[i]);
  Publish();
  return absl::OkStatus();
}

absl::Status DatasetManager::RecoverDataset(const std::string& name) {
  Counters* counters = CountersFor(name);  // before mu_: the metrics registry calls gauges under its lock
  absl::MutexLock lock(&mu_);
  Dataset* ds = FindOrCreate(name, counters);
  ds->next = ReadNumberFile(ds->dir + "/NEXT").value_or(1);
  const uint64_t named_current = ReadNumberFile(ds->dir + "/CURRENT").value_or(0);
  std::error_code ec;
  std::vector<uint64_t> numbers;
  for (const auto& e : fs::directory_iterator(ds->dir, ec)) {
    uint64_t n;
    if (e.is_directory() && ParseVersionDirName(e.path().filename().string(), &n)) numbers.push_back(n);
  }
  std::sort(numbers.begin(), numbers.end());
  for (uint64_t n : numbers) {
    const std::string vdir = ds->VersionDir(n);
    VersionRecord r;
    r.number = n;
    ds->next = std::max(ds->next, n + 1);
    auto text = base::ReadFile(vdir + "/state.json");
    Json st = text.ok() ? Json::parse(*text, nullptr, false) : Json();
    std::optional<State> state;
    if (st.is_object()) {
      state = ParseState(st.value("state", ""));
      r.activated = st.value("activated", false);
      r.source = st.value("source", "");
      r.loaded_at = st.value("loaded_at", "");
      r.failure = st.value("failure", "");
      r.checksums = ParseChecksums(st.value("checksums", ""));
      r.checksum_seconds = st.value("checksum_seconds", 0.0);
    }
    if (auto mt = base::ReadFile(vdir + "/manifest.json"); mt.ok()) {
      auto m = ManifestFromJson(*mt, vdir + "/manifest.json");
      if (m.ok()) {
        r.manifest = std::move(*m);
        r.has_manifest = true;
      }
    }
    if (!state.has_value()) {
      r.state = State::kFailed;
      r.failure = "state file missing or unreadable";
    } else if (*state == State::kBuilding || *state == State::kLoading) {
      r.state = State::kFailed;
      r.failure = absl::StrCat("interrupted: the server stopped while this version was ", StateName(*state));
    } else if (*state == State::kReady) {
      if (!r.has_manifest) {
        r.state = State::kFailed;
        r.failure = "manifest.json missing or unreadable";
      } else {
        absl::StatusOr<std::unique_ptr<storage::SortedStore>> store;
        OnStoreThread([&] {
          store = storage::SortedStore::Open(vdir + "/db", {cache_, static_cast<int>(r.manifest.bloom_bits)});
        });
        if (!store.ok()) {
          r.state = State::kFailed;
          r.failure = absl::StrCat("cannot open after restart: ", store.status().message());
        } else {
          auto v = std::make_shared<Version>();
          v->dataset = name;
          v->number = n;
          v->schema = r.manifest.schema;
          v->store = std::move(*store);
          if (r.checksums == v1::CHECKSUMS_PENDING) {
            // The check did not end before the stop: run it again.
            v->checksums_pending.store(true);
            QueueChecksums(name, n, options_.check_rate_limit);
          }
          r.open = std::move(v);
          r.state = State::kReady;
        }
      }
    } else {
      r.state = State::kFailed;
    }
    if (r.state == State::kFailed) {
      // (A version failed while it served is closed and removed in the background; a stop before
      // that leaves its files.)
      fs::remove_all(vdir + "/db", ec);
      fs::remove_all(vdir + "/staging", ec);
    }
    if (r.state == State::kFailed && state != State::kFailed) {
      spdlog::warn("dataset {} version {}: marked failed at start-up: {}", name, n, r.failure);
      (void)PersistState(*ds, r);
    }
    ds->versions[n] = std::move(r);
  }
  // Serve what CURRENT names; if it cannot be served, the newest version that was current before.
  auto it = ds->versions.find(named_current);
  if (named_current != 0 && it != ds->versions.end() && it->second.open) {
    ds->current = named_current;
  } else if (named_current != 0) {
    uint64_t fallback = 0;
    for (auto& [n, r] : ds->versions) {
      if (r.open && r.activated && r.checksums != v1::CHECKSUMS_MISMATCH) fallback = n;
    }
    spdlog::error("dataset {}: CURRENT names version {}, which cannot be served; {}", name, named_current,
                  fallback ? absl::StrCat("serving version ", fallback, " instead") : "nothing is served");
    ds->current = 0;
    if (fallback != 0) {
      absl::Status s = Activate(ds, fallback);
      if (!s.ok()) spdlog::error("dataset {}: {}", name, s.ToString());
    }
  }
  if (ds->current != 0 && ds->declared.has_value() && !(*ds->declared == ds->versions[ds->current].open->schema)) {
    spdlog::warn("dataset {}: the current version is {} but the configuration declares {}", name,
                 ds->versions[ds->current].open->schema.Describe(), ds->declared->Describe());
  }
  // Retention of failed records.
  Retain(ds);
  spdlog::info("dataset {}: {} version(s), current {}", name, ds->versions.size(), ds->current);
  return absl::OkStatus();
}

// --- state changes -------------------------------------------------------------------------------

absl::Status DatasetManager::PersistState(const Dataset& ds, const VersionRecord& r) {
  Json j = {{"version", r.number},
            {"state", StateName(r.state)},
            {"activated", r.activated},
            {"source", r.source},
            {"loaded_at", r.loaded_at},
            {"failure", r.failure},
            {"checksums", ChecksumName(r.checksums)},
            {"checksum_seconds", r.checksum_seconds}};
  return WriteFileAtomic(ds.VersionDir(r.number) + "/state.json",
                         j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n");
}

void DatasetManager::Publish() {
  auto v = std::make_shared<View>();
  for (const auto& [name, ds] : datasets_) {
    auto dv = std::make_shared<DatasetView>();
    dv->counters = ds->counters;
    for (const auto& [n, r] : ds->versions) {
      if (r.open) dv->readable[n] = r.open;
    }
    auto it = ds->versions.find(ds->current);
    if (ds->current != 0 && it != ds->versions.end()) dv->current = it->second.open;
    v->datasets[name] = std::move(dv);
  }
  view_.store(std::shared_ptr<const View>(std::move(v)), std::memory_order_release);
}

absl::Status DatasetManager::Activate(Dataset* ds, uint64_t number) {
  const auto start = Clock::now();
  VersionRecord& r = ds->versions.at(number);
  RETURN_IF_ERROR(WriteFileAtomic(ds->dir + "/CURRENT", absl::StrCat(number, "\n")));
  ds->current = number;
  Publish();
  ds->counters->swaps->Inc();
  ds->counters->swap_seconds->Observe(Since(start));
  if (!r.activated) {
    r.activated = true;
    absl::Status s = PersistState(*ds, r);
    if (!s.ok()) spdlog::warn("dataset {} version {}: {}", ds->name, number, s.ToString());
  }
  return absl::OkStatus();
}

void DatasetManager::Retire(Dataset* ds, uint64_t number) {
  auto it = ds->versions.find(number);
  if (it == ds->versions.end()) return;
  std::string vdir = ds->VersionDir(number);
  std::shared_ptr<const Version> open = std::move(it->second.open);
  ds->versions.erase(it);
  if (open) {
    RetireStore(std::move(open), vdir);
  } else {
    std::error_code ec;
    fs::remove_all(vdir, ec);
  }
}

void DatasetManager::RetireStore(std::shared_ptr<const Version> open, std::string dir) {
  open->dropped.store(true);  // a running check of it stops
  absl::MutexLock lock(&retired_mu_);
  retired_.emplace_back(std::move(open), std::move(dir));
}

void DatasetManager::Retain(Dataset* ds, uint64_t keep) {
  std::vector<uint64_t> loaded, failed;
  for (const auto& [n, r] : ds->versions) {
    if (n == ds->current) continue;
    if (r.state == State::kReady && n != keep) loaded.push_back(n);
    if (r.state == State::kFailed) failed.push_back(n);
  }
  std::sort(loaded.rbegin(), loaded.rend());
  std::sort(failed.rbegin(), failed.rend());
  bool changed = false;
  for (size_t i = options_.backups; i < loaded.size(); ++i) {
    spdlog::info("dataset {}: dropping version {} (keeping {} backups)", ds->name, loaded[i], options_.backups);
    Retire(ds, loaded[i]);
    changed = true;
  }
  for (size_t i = options_.keep_failed; i < failed.size(); ++i) Retire(ds, failed[i]);
  if (changed) Publish();
}

void DatasetManager::ReaperLoop() {
  // Closing a store frees its table readers and cache entries: background work, like a load's.
  BackgroundPriority();
  while (true) {
    std::vector<std::pair<std::shared_ptr<const Version>, std::string>> done;
    {
      absl::MutexLock lock(&retired_mu_);
      if (stop_) return;
      for (auto it = retired_.begin(); it != retired_.end();) {
        if (it->first.use_count() == 1) {
          done.push_back(std::move(*it));
          it = retired_.erase(it);
          ++reaping_;
        } else {
          ++it;
        }
      }
    }
    for (auto& [v, dir] : done) {
      v.reset();  // closes the store
      std::error_code ec;
      fs::remove_all(dir, ec);
      if (ec) spdlog::warn("datasets: removing {}: {}", dir, ec.message());
    }
    absl::MutexLock lock(&retired_mu_);
    reaping_ -= done.size();
    retired_mu_.AwaitWithTimeout(absl::Condition(+[](bool* s) { return *s; }, &stop_), absl::Milliseconds(100));
  }
}

void DatasetManager::OnStoreThread(const std::function<void()>& fn) {
  absl::Notification done;
  store_thread_.Schedule([&] {
    fn();
    done.Notify();
  });
  done.WaitForNotification();
}

void DatasetManager::WaitForRetired() {
  for (int i = 0; i < 600; ++i) {
    {
      absl::MutexLock lock(&retired_mu_);
      if (retired_.empty() && reaping_ == 0) return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// --- after-swap checksum checks ---------------------------------------------------------------------

void DatasetManager::QueueChecksums(const std::string& dataset, uint64_t number, uint64_t rate) {
  absl::MutexLock lock(&checks_mu_);
  ChecksumJob job;
  job.dataset = dataset;
  job.number = number;
  job.rate = rate;
  checks_.push_back(std::move(job));
  ++checks_queued_;
}

void DatasetManager::ChecksumLoop() {
  // (Normal priority: this thread takes mu_ and writes state under it. Only the reading runs at
  // idle priority, on a thread of its own: see CheckAfterSwap.)
  while (true) {
    ChecksumJob job;
    {
      absl::MutexLock lock(&checks_mu_);
      checks_mu_.Await(absl::Condition(
          +[](DatasetManager* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->checks_mu_) {
            return m->checks_stop_ || (!m->checks_.empty() && !m->checks_paused_);
          },
          this));
      if (checks_stop_) return;
      const absl::Time now = absl::Now();
      auto due = std::find_if(checks_.begin(), checks_.end(), [&](const ChecksumJob& j) { return j.not_before <= now; });
      if (due == checks_.end()) {
        // Only retries, none due yet: wait for the first, a new job or the stop.
        absl::Time next = absl::InfiniteFuture();
        for (const auto& j : checks_) next = std::min(next, j.not_before);
        struct Wake {
          DatasetManager* m;
          uint64_t queued;
        } wake{this, checks_queued_};
        checks_mu_.AwaitWithDeadline(absl::Condition(
                                         +[](Wake* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                           return w->m->checks_stop_ || w->m->checks_queued_ != w->queued;
                                         },
                                         &wake),
                                     next);
        continue;
      }
      job = std::move(*due);
      checks_.erase(due);
      checking_ = true;
    }
    absl::Status st = CheckAfterSwap(job);
    absl::MutexLock lock(&checks_mu_);
    checking_ = false;
    if (!st.ok() && !checks_stop_) {
      ++job.attempts;
      const absl::Duration wait = std::min(absl::Seconds(10) * (1 << std::min(job.attempts - 1, 6)), absl::Minutes(10));
      spdlog::warn("dataset {}: version {}: the after-swap checksum check could not read the files ({}); "
                   "trying again in {}", job.dataset, job.number, st.ToString(), absl::FormatDuration(wait));
      job.not_before = absl::Now() + wait;
      checks_.push_back(std::move(job));
    }
  }
}

absl::Status DatasetManager::CheckAfterSwap(const ChecksumJob& job) {
  std::shared_ptr<const Version> v;
  Manifest m;
  {
    absl::MutexLock lock(&mu_);
    auto dit = datasets_.find(job.dataset);
    if (dit == datasets_.end()) return absl::OkStatus();
    auto it = dit->second->versions.find(job.number);
    if (it == dit->second->versions.end() || !it->second.open || it->second.checksums != v1::CHECKSUMS_PENDING) {
      return absl::OkStatus();
    }
    v = it->second.open;
    m = it->second.manifest;
  }
  const auto start = Clock::now();
  // The pass of a check before the swap (storage::DigestFile: no readahead, one 256 KiB disk read
  // at a time), but every read with O_DIRECT, on the files the version serves from, at idle CPU
  // and I/O priority. The store's files are hard links of the build's, matched to the manifest by
  // their key ranges (checked equal when the version was ingested).
  storage::IoThrottle throttle(job.rate);
  const storage::CancelFn cancelled = [&] { return stopping_.load() || v->dropped.load(); };
  absl::Status st;
  std::thread reader([&] {
    BackgroundPriority();
    for (const storage::StoredFile& f : v->store->Files()) {
      const ManifestFile* listed = ListedFile(m, f);
      if (listed == nullptr) {
        st = absl::DataLossError(absl::StrCat(f.name, ": no file of the manifest spans its keys"));
        return;
      }
      // O_DIRECT even where pages are cached: readers are reading these files now, and a pass
      // through their cached pages raised their p99 2-3x (docs/benchmarks.md, "Datasets").
      auto d =
          storage::DigestFile(v->store->dir() + "/" + f.name, &throttle, cancelled, storage::ReadMode::kDirectOnly);
      st = d.ok() ? MatchManifest(*listed, *d, absl::StrCat(listed->name, " (served as ", f.name, ")")) : d.status();
      if (!st.ok()) return;
    }
  });
  reader.join();
  if (cancelled()) return absl::OkStatus();  // stopping (a restart queues it again) or dropped
  if (st.code() == absl::StatusCode::kDataLoss) {
    FailCorruptVersion(job.dataset, job.number,
                       absl::DataLossError(absl::StrCat("the after-swap checksum check: ", st.message())), Since(start));
    return absl::OkStatus();
  }
  if (!st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto dit = datasets_.find(job.dataset);
  if (dit == datasets_.end()) return absl::OkStatus();
  auto it = dit->second->versions.find(job.number);
  if (it == dit->second->versions.end() || it->second.checksums != v1::CHECKSUMS_PENDING) return absl::OkStatus();
  VersionRecord& r = it->second;
  r.checksums = v1::CHECKSUMS_VERIFIED;
  r.checksum_seconds = Since(start);
  v->checksums_pending.store(false);
  absl::Status ps = PersistState(*dit->second, r);
  if (!ps.ok()) spdlog::warn("dataset {} version {}: {}", job.dataset, job.number, ps.ToString());
  spdlog::info("dataset {}: version {}: every file matches its checksum ({:.3f} s after the swap)", job.dataset,
               job.number, r.checksum_seconds);
  return absl::OkStatus();
}

uint64_t DatasetManager::FallbackFor(const Dataset& ds, uint64_t failed) const {
  uint64_t older = 0, older_pending = 0, newer = 0, newer_pending = 0;
  for (const auto& [n, o] : ds.versions) {  // ascending: the last assignment is the newest
    if (n == failed || !o.open || !o.activated || o.checksums == v1::CHECKSUMS_MISMATCH) continue;
    if (ds.declared.has_value() && !(*ds.declared == o.open->schema)) continue;
    const bool pending = o.checksums == v1::CHECKSUMS_PENDING;
    (n < failed ? (pending ? older_pending : older) : (pending ? newer_pending : newer)) = n;
  }
  for (uint64_t n : {older, newer, older_pending, newer_pending}) {
    if (n != 0) return n;
  }
  return 0;
}

void DatasetManager::FailCorruptVersion(const std::string& dataset, uint64_t number, const absl::Status& why,
                                        double checked_seconds) {
  absl::MutexLock lock(&mu_);
  auto dit = datasets_.find(dataset);
  if (dit == datasets_.end()) return;
  Dataset* ds = dit->second.get();
  auto it = ds->versions.find(number);
  if (it == ds->versions.end() || it->second.state != State::kReady || it->second.checksums != v1::CHECKSUMS_PENDING) {
    return;  // already handled (another read, or the check)
  }
  VersionRecord& r = it->second;
  const std::string reason = absl::StrCat(absl::StatusCodeToString(why.code()), ": ", why.message());
  ds->counters->checksum_failures->Inc();
  r.open->checksums_pending.store(false);
  r.checksums = v1::CHECKSUMS_MISMATCH;
  r.checksum_seconds = checked_seconds;
  r.failure = reason;
  if (ds->current == number) {
    const uint64_t target = FallbackFor(*ds, number);
    absl::Status swapped = target == 0 ? absl::NotFoundError("no other loaded version has served")
                                       : Activate(ds, target);
    if (!swapped.ok()) {
      // Nothing to go back to (or CURRENT cannot be written): it keeps serving, marked.
      absl::Status ps = PersistState(*ds, r);
      if (!ps.ok()) spdlog::warn("dataset {} version {}: {}", dataset, number, ps.ToString());
      spdlog::error("dataset {}: current version {} is corrupt ({}) and keeps serving: {}", dataset, number, reason,
                    std::string(swapped.message()));
      return;
    }
    ds->counters->rollbacks->Inc();
    spdlog::error("dataset {}: version {} is corrupt ({}); version {} is current again", dataset, number, reason,
                  target);
  } else {
    spdlog::error("dataset {}: version {} is corrupt ({}); it was not current", dataset, number, reason);
  }
  r.state = State::kFailed;
  absl::Status ps = PersistState(*ds, r);
  if (!ps.ok()) spdlog::warn("dataset {} version {}: {}", dataset, number, ps.ToString());
  // Readers still on it finish; the reaper closes it and removes its data (the record stays).
  RetireStore(std::move(r.open), ds->VersionDir(number) + "/db");
  Publish();
  Retain(ds);
}

void DatasetManager::WaitForChecksums() {
  absl::MutexLock lock(&checks_mu_);
  checks_mu_.Await(absl::Condition(
      +[](DatasetManager* m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m->checks_mu_) {
        return m->checks_stop_ || (m->checks_.empty() && !m->checking_);
      },
      this));
}

void DatasetManager::PauseChecksumsForTest(bool paused) {
  absl::MutexLock lock(&checks_mu_);
  checks_paused_ = paused;
}

// --- reads ------------------------------------------------------------------------------------------

absl::Status DatasetManager::MultiGet(const v1::DatasetMultiGetRequest& req, v1::DatasetMultiGetResponse* resp) {
  if (req.dataset().empty()) return absl::InvalidArgumentError("dataset: a dataset name is required");
  const size_t n = static_cast<size_t>(req.keys_size());
  if (n > options_.max_keys_per_request) {
    return absl::ResourceExhaustedError(absl::StrCat("keys: ", n, " keys exceed the limit of ",
                                                     options_.max_keys_per_request,
                                                     " per request (datasets.max_keys_per_request)"));
  }
  for (size_t i = 0; i < n; ++i) {
    const std::string& k = req.keys(static_cast<int>(i));
    if (k.empty()) return absl::InvalidArgumentError(absl::StrCat("keys[", i, "]: empty key"));
    if (k.size() > options_.max_key_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("keys[", i, "]: ", k.size(), " bytes exceed the limit of ",
                                                     options_.max_key_bytes, " (datasets.max_key_bytes)"));
    }
  }
  for (int attempt = 0;; ++attempt) {
    std::shared_ptr<const View> v = view();
    auto dit = v->datasets.find(req.dataset());
    if (dit == v->datasets.end()) {
      return absl::InvalidArgumentError(absl::StrCat("dataset: unknown dataset \"", req.dataset(), "\""));
    }
    const DatasetView& dv = *dit->second;
    const Version* version = nullptr;
    if (req.version() == 0) {
      version = dv.current.get();
      if (version == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat("dataset \"", req.dataset(), "\" has no current version"));
      }
    } else {
      auto it = dv.readable.find(req.version());
      if (it == dv.readable.end()) {
        std::vector<uint64_t> have;
        for (const auto& [num, _] : dv.readable) have.push_back(num);
        std::sort(have.begin(), have.end());
        return absl::InvalidArgumentError(absl::StrCat("version: dataset \"", req.dataset(),
                                                       "\" has no loaded version ", req.version(), " (loaded: ",
                                                       have.empty() ? "none" : absl::StrJoin(have, ", "), ")"));
      }
      version = it->second.get();
    }
    // (Taken before the read: another reader, or the check, may fail the version meanwhile.)
    const bool pending = version->checksums_pending.load();
    bool store_error = false;
    absl::Status s = ReadVersion(*version, dv, req, resp, &store_error);
    // A corrupt block in a version whose after-swap check had not ended: the push was corrupt. Fail
    // the version (a no-op if that is done already); the one before it serves again, and the read
    // is answered by it instead. A pinned read asked for this version and gets the error.
    if (store_error && s.code() == absl::StatusCode::kDataLoss && pending && attempt == 0) {
      FailCorruptVersion(version->dataset, version->number,
                         absl::DataLossError(absl::StrCat("a read met a corrupt block before the after-swap check ended: ",
                                                          s.message())));
      if (req.version() == 0) {
        std::shared_ptr<const View> now = view();
        auto nit = now->datasets.find(req.dataset());
        if (nit != now->datasets.end() && nit->second->current && nit->second->current.get() != version) {
          resp->Clear();
          continue;
        }
      }
    }
    return s;
  }
}

absl::Status DatasetManager::ReadVersion(const Version& version, const DatasetView& dv,
                                         const v1::DatasetMultiGetRequest& req, v1::DatasetMultiGetResponse* resp,
                                         bool* store_error) {
  const size_t n = static_cast<size_t>(req.keys_size());
  resp->set_dataset(req.dataset());
  resp->set_version(version.number);
  resp->set_kind(version.schema.kind);
  for (const auto& f : version.schema.fields) *resp->add_fields() = f;
  std::vector<std::string> skeys(n);
  std::vector<absl::string_view> views(n);
  auto* entries = resp->mutable_entries();
  entries->Reserve(static_cast<int>(n));
  for (size_t i = 0; i < n; ++i) {
    MakeStorageKey(req.keys(static_cast<int>(i)), &skeys[i]);
    views[i] = skeys[i];
    auto* e = entries->Add();
    e->set_key(req.keys(static_cast<int>(i)));
    e->set_status(v1::NOT_FOUND);
  }
  absl::Status decode_error;
  uint32_t found = 0;
  absl::Status read = version.store->MultiGet(views, [&](size_t i, absl::string_view value) {
    auto* e = entries->Mutable(static_cast<int>(i));
    absl::Status s = DecodeValue(version.schema, value, e->mutable_value());
    if (!s.ok()) {
      if (decode_error.ok()) decode_error = absl::Status(s.code(), absl::StrCat("keys[", i, "]: ", s.message()));
      return;
    }
    e->set_status(v1::FOUND);
    ++found;
  });
  if (!read.ok()) {
    *store_error = true;
    return read;
  }
  if (!decode_error.ok()) {
    corrupt_values_->Inc();
    return decode_error;
  }
  resp->set_found(found);
  if (dv.counters != nullptr) {
    dv.counters->found->Inc(found);
    dv.counters->not_found->Inc(n - found);
  }
  return absl::OkStatus();
}

absl::Status DatasetManager::Get(const v1::DatasetGetRequest& req, v1::DatasetGetResponse* resp) {
  if (req.key().empty()) return absl::InvalidArgumentError("key: empty key");
  v1::DatasetMultiGetRequest mreq;
  mreq.set_dataset(req.dataset());
  mreq.set_version(req.version());
  mreq.add_keys(req.key());
  v1::DatasetMultiGetResponse mresp;
  absl::Status s = MultiGet(mreq, &mresp);
  if (!s.ok()) {
    if (absl::StartsWith(s.message(), "keys[0]")) {
      return absl::Status(s.code(), absl::StrCat("key", s.message().substr(7)));
    }
    return s;
  }
  resp->set_dataset(mresp.dataset());
  resp->set_version(mresp.version());
  resp->set_kind(mresp.kind());
  *resp->mutable_fields() = std::move(*mresp.mutable_fields());
  *resp->mutable_entry() = std::move(*mresp.mutable_entries(0));
  return absl::OkStatus();
}

// --- load ---------------------------------------------------------------------------------------------

absl::Status DatasetManager::Load(const v1::LoadVersionRequest& req, const storage::CancelFn& cancelled,
                                  v1::LoadVersionResponse* resp) {
  const auto start = Clock::now();
  if (!IsValidDatasetName(req.dataset())) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: \"", req.dataset(),
                                                   "\" is not a valid dataset name ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most 64 characters)"));
  }
  if (req.path().empty() || req.path()[0] != '/') {
    return absl::InvalidArgumentError("path: the absolute path of a build directory on the server is required");
  }
  if (req.has_verify_checksums() && req.verify() != v1::VERIFY_DEFAULT) {
    return absl::InvalidArgumentError("verify_checksums: set either verify_checksums or verify, not both");
  }
  const bool wait = !req.has_wait() || req.wait();
  uint64_t number = 0;
  std::string vdir;
  absl::Status prepared;
  Counters* counters = CountersFor(req.dataset());  // before mu_ (see RecoverDataset)
  {
    absl::MutexLock lock(&mu_);
    if (stopping_.load()) return absl::UnavailableError("the server is shutting down");
    Dataset* ds = FindOrCreate(req.dataset(), counters);
    if (ds->loading) {
      return absl::AbortedError(absl::StrCat("dataset \"", req.dataset(), "\": another load is in progress"));
    }
    std::error_code ec;
    fs::create_directories(ds->dir, ec);
    if (ec) return FsError("creating", ds->dir, ec);
    number = ds->next;
    // Until NEXT is durable the number is not taken: a failure here (e.g. a full disk) rejects the
    // request and changes nothing.
    RETURN_IF_ERROR(WriteFileAtomic(ds->dir + "/NEXT", absl::StrCat(number + 1, "\n")));
    ds->next = number + 1;
    vdir = ds->VersionDir(number);
    VersionRecord r;
    r.number = number;
    r.state = State::kBuilding;
    r.source = req.path();
    r.loaded_at = NowRfc3339();
    ds->versions[number] = std::move(r);
    ds->loading = true;
    // From here on the version exists: a failure marks it failed with the reason.
    fs::remove_all(vdir, ec);
    fs::create_directories(vdir, ec);
    prepared = ec ? FsError("creating", vdir, ec) : PersistState(*ds, ds->versions.at(number));
    Publish();
    if (!wait && prepared.ok()) FillInfo(*ds, ds->versions.at(number), resp->mutable_version());
  }
  if (!prepared.ok()) {
    return Complete(req, number, vdir, counters, start, prepared, cancelled, resp);
  }
  spdlog::info("dataset {}: loading version {} from {}{}", req.dataset(), number, req.path(),
               wait ? "" : " (asynchronously)");
  if (wait) return Complete(req, number, vdir, counters, start, absl::OkStatus(), cancelled, resp);

  // Asynchronous: the load continues on a thread of the manager's, not tied to the call (its caller
  // polls ListVersions); it stops only when the manager closes.
  absl::MutexLock lock(&async_mu_);
  for (auto it = async_loads_.begin(); it != async_loads_.end();) {
    if ((*it)->done.load()) {
      (*it)->thread.join();
      it = async_loads_.erase(it);
    } else {
      ++it;
    }
  }
  auto job = std::make_unique<AsyncLoad>();
  AsyncLoad* j = job.get();
  j->thread = std::thread([this, j, req, number, vdir, counters, start] {
    v1::LoadVersionResponse r;
    (void)Complete(req, number, vdir, counters, start, absl::OkStatus(), [this] { return stopping_.load(); }, &r);
    j->done.store(true);
  });
  async_loads_.push_back(std::move(job));
  return absl::OkStatus();
}

absl::Status DatasetManager::Complete(const v1::LoadVersionRequest& req, uint64_t number, const std::string& vdir,
                                      Counters* counters, Clock::time_point start, absl::Status st,
                                      const storage::CancelFn& cancelled, v1::LoadVersionResponse* resp) {
  std::shared_ptr<const Version> version;
  std::string note;
  if (st.ok()) st = DoLoad(req.dataset(), number, vdir, req, cancelled, &version, resp, &note);

  absl::MutexLock lock(&mu_);
  Dataset* ds = datasets_.at(req.dataset()).get();
  VersionRecord& r = ds->versions.at(number);
  ds->loading = false;
  if (st.ok()) {
    r.state = State::kReady;
    r.open = version;
    st = PersistState(*ds, r);
    bool activate = !req.has_activate() || req.activate();
    if (st.ok() && activate) {
      const auto swap_start = Clock::now();
      st = Activate(ds, number);
      resp->set_swap_seconds(Since(swap_start));
    }
    if (!st.ok()) r.open.reset();
  }
  if (!st.ok()) {
    r.state = State::kFailed;
    r.failure = absl::StrCat(absl::StatusCodeToString(st.code()), ": ", st.message());
    r.checksums = v1::CHECKSUMS_UNSPECIFIED;  // (a check that was going to run after the swap will not)
    r.checksum_seconds = 0;
    r.open.reset();
    version.reset();  // closes the store (if it was opened) before its files are removed
    std::error_code ec;
    fs::remove_all(vdir + "/db", ec);
    fs::remove_all(vdir + "/staging", ec);
    absl::Status ps = PersistState(*ds, r);
    if (!ps.ok()) spdlog::warn("dataset {} version {}: {}", ds->name, number, ps.ToString());
    counters->loads_failed->Inc();
    spdlog::warn("dataset {}: version {} failed: {}", ds->name, number, r.failure);
    Publish();
    Retain(ds, number);
    return absl::Status(st.code(), absl::StrCat("dataset \"", ds->name, "\" version ", number, " failed: ", st.message()));
  }
  Publish();
  Retain(ds, number);
  if (r.checksums == v1::CHECKSUMS_PENDING) {
    QueueChecksums(ds->name, number,
                   req.has_rate_limit_bytes_per_second() ? req.rate_limit_bytes_per_second() : options_.check_rate_limit);
  }
  resp->set_total_seconds(Since(start));
  counters->loads_ok->Inc();
  counters->load_seconds->Observe(resp->total_seconds());
  FillInfo(*ds, ds->versions.at(number), resp->mutable_version());
  spdlog::info("dataset {}: version {} {} ({} rows, {} files, {:.3f} s: verify {:.3f}, ingest {:.3f}, warm {:.3f}, swap {:.4f}){}",
               ds->name, number, ds->current == number ? "is current" : "is ready", r.manifest.rows,
               r.manifest.files.size(), resp->total_seconds(), resp->verify_seconds(), resp->ingest_seconds(),
               resp->warm_seconds(), resp->swap_seconds(), note);
  return absl::OkStatus();
}

absl::Status DatasetManager::DoLoad(const std::string& name, uint64_t number, const std::string& vdir,
                                    const v1::LoadVersionRequest& req, const storage::CancelFn& cancelled,
                                    std::shared_ptr<const Version>* out, v1::LoadVersionResponse* resp,
                                    std::string* note) {
  auto is_cancelled = [&] { return cancelled && cancelled(); };
  // 1. The manifest, and whether it fits the dataset.
  ASSIGN_OR_RETURN(Manifest m, ReadBuildManifest(req.path()));
  if (m.dataset != name) {
    return absl::FailedPreconditionError(absl::StrCat("wrong dataset: the build at ", req.path(), " is of dataset \"",
                                                      m.dataset, "\""));
  }
  if (!storage::ParseCompression(m.compression).ok()) {
    return absl::FailedPreconditionError(absl::StrCat("manifest: unsupported compression \"", m.compression, "\""));
  }
  {
    absl::MutexLock lock(&mu_);
    Dataset* ds = datasets_.at(name).get();
    std::optional<ValueSchema> expected = ds->Expected();
    if (expected.has_value() && !(*expected == m.schema) && (ds->declared.has_value() || !req.allow_schema_change())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "wrong schema: dataset \"", name, "\" ", ds->declared.has_value() ? "is declared as " : "serves ",
          expected->Describe(), ", the build is ", m.schema.Describe(),
          ds->declared.has_value() ? "" : " (allow_schema_change accepts it)"));
    }
    VersionRecord& r = ds->versions.at(number);
    r.manifest = m;
    r.has_manifest = true;
  }
  RETURN_IF_ERROR(WriteFileAtomic(vdir + "/manifest.json", ManifestToJson(m)));

  // 2. Stage: hard-link each file into the version directory (copy across filesystems), then
  // verify its size and checksum. A hard link shares the build's inode, so the bytes verified are
  // the bytes that will be served.
  const auto verify_start = Clock::now();
  const uint64_t rate = req.has_rate_limit_bytes_per_second() ? req.rate_limit_bytes_per_second()
                                                              : options_.load_rate_limit;
  storage::IoThrottle throttle(rate);
  const VerifyMode mode = RequestedMode(req, options_.verify);
  const bool warm = req.has_warm() ? req.warm() : options_.warm_up;
  // A warm-up reads every file anyway, so with it the check runs before the swap in any mode but
  // structure_only: the checksum pass reads through the page cache and is the warm-up too.
  const bool verify = mode == VerifyMode::kBeforeSwap || (mode == VerifyMode::kAfterSwap && warm);
  const storage::ReadMode verify_mode = warm ? storage::ReadMode::kCached : storage::ReadMode::kDirect;
  const std::string staging = vdir + "/staging";
  std::error_code ec;
  fs::create_directories(staging, ec);
  if (ec) return FsError("creating", staging, ec);
  std::vector<std::string> staged(m.files.size());
  std::vector<absl::Status> results(m.files.size());
  std::atomic<bool> all_linked{true};
  std::atomic<bool> some_unchecked{false};  // linked without a checksum pass (a copy is checked)
  std::atomic<size_t> next{0};
  auto verify_one = [&](size_t i) -> absl::Status {
    const ManifestFile& f = m.files[i];
    const std::string src = req.path() + "/" + f.name;
    const std::string dst = staging + "/" + f.name;
    struct stat sb;
    if (::stat(src.c_str(), &sb) != 0) {
      if (errno == ENOENT) return absl::FailedPreconditionError(absl::StrCat("missing file ", f.name, " (listed in the manifest)"));
      return Errno("stat", src, errno);
    }
    if (static_cast<uint64_t>(sb.st_size) != f.bytes) {
      return absl::DataLossError(absl::StrCat(f.name, ": size mismatch: the manifest says ", f.bytes,
                                              " bytes, the file has ", sb.st_size,
                                              static_cast<uint64_t>(sb.st_size) < f.bytes ? " (truncated)" : ""));
    }
    storage::FileDigest d;
    if (::link(src.c_str(), dst.c_str()) == 0) {
      if (!verify) {
        staged[i] = dst;
        some_unchecked = true;
        return absl::OkStatus();
      }
      // Cached ranges from the page cache, the rest with O_DIRECT (unless warming), without
      // readahead, 256 KiB at a time and one disk read at a time for the whole load (the throttle's
      // gate): the pass leaves the page cache as it found it and never queues more than 256 KiB
      // ahead of the readers' 4 KiB reads. (Buffered sequential reads queued megabytes of readahead
      // and raised the readers' p99 from ~4 ms to 60-270 ms; see docs/benchmarks.md.)
      ASSIGN_OR_RETURN(d, storage::DigestFile(dst, &throttle, cancelled, verify_mode));
    } else if (errno == EXDEV || errno == EPERM || errno == EMLINK || errno == ENOTSUP || errno == EOPNOTSUPP) {
      all_linked = false;
      ASSIGN_OR_RETURN(d, CopyFile(src, dst, &throttle, cancelled));
    } else {
      return Errno("linking", src, errno);
    }
    RETURN_IF_ERROR(MatchManifest(f, d, f.name));
    staged[i] = dst;
    return absl::OkStatus();
  };
  {
    std::vector<std::thread> ts;
    const size_t nthreads = std::min<size_t>(options_.verify_threads, m.files.size());
    for (size_t t = 0; t < nthreads; ++t) {
      ts.emplace_back([&] {
        // Reading and checksumming gigabytes is the one O(size) step of a load.
        BackgroundPriority();
        for (size_t i = next.fetch_add(1); i < m.files.size(); i = next.fetch_add(1)) {
          results[i] = verify_one(i);
          if (!results[i].ok()) next.store(m.files.size());  // stop the others early
        }
      });
    }
    for (auto& t : ts) t.join();
  }
  for (const auto& r : results) RETURN_IF_ERROR(r);
  if (is_cancelled()) return absl::CancelledError("the load was cancelled");
  resp->set_verify_seconds(Since(verify_start));
  resp->set_linked(all_linked.load());
  const bool verified = !some_unchecked.load();
  const bool check_later = !verified && mode == VerifyMode::kAfterSwap;
  if (!all_linked.load()) *note = " (files copied: the build is on another filesystem)";

  // 3. Ingest into a fresh store and check that it holds what the manifest lists.
  {
    absl::MutexLock lock(&mu_);
    Dataset* ds = datasets_.at(name).get();
    VersionRecord& r = ds->versions.at(number);
    r.state = State::kLoading;
    r.checksums = verified ? v1::CHECKSUMS_VERIFIED : check_later ? v1::CHECKSUMS_PENDING : v1::CHECKSUMS_NOT_CHECKED;
    r.checksum_seconds = verified ? resp->verify_seconds() : 0;
    RETURN_IF_ERROR(PersistState(*ds, r));
    Publish();
  }
  const auto ingest_start = Clock::now();
  absl::StatusOr<std::unique_ptr<storage::SortedStore>> created;
  OnStoreThread([&] {
    created = storage::SortedStore::Create(vdir + "/db", staged, {cache_, static_cast<int>(m.bloom_bits)});
  });
  ASSIGN_OR_RETURN(auto store, std::move(created));
  fs::remove_all(staging, ec);
  std::vector<storage::StoredFile> files = store->Files();
  uint64_t entries = 0;
  for (const auto& f : files) entries += f.entries;
  if (files.size() != m.files.size() || entries != m.rows) {
    return absl::DataLossError(absl::StrCat("after ingesting, the version has ", files.size(), " files and ", entries,
                                            " rows; the manifest lists ", m.files.size(), " and ", m.rows));
  }
  // Every file's key range as the store sees it must be one the manifest lists (a file whose
  // blocks went bad after it was checksummed could otherwise be ingested with a wrong range).
  for (const auto& f : files) {
    if (ListedFile(m, f) == nullptr) {
      return absl::DataLossError(absl::StrCat("after ingesting, ", f.name, " spans keys \"", UserKey(f.smallest_key),
                                              "\"..\"", UserKey(f.largest_key), "\", which no file of the manifest does"));
    }
  }
  resp->set_ingest_seconds(Since(ingest_start));
  if (is_cancelled()) return absl::CancelledError("the load was cancelled");

  // 4. Warm the page cache.
  // (A verified load was warmed by its checksum pass.)
  if (warm && !verify) {
    const auto warm_start = Clock::now();
    absl::Status warmed;
    std::thread t([&] {
      BackgroundPriority();
      for (const auto& f : files) {
        auto d = storage::DigestFile(vdir + "/db/" + f.name, &throttle, cancelled);
        if (!d.ok()) {
          warmed = d.status();
          return;
        }
      }
    });
    t.join();
    RETURN_IF_ERROR(warmed);
    resp->set_warm_seconds(Since(warm_start));
  }
  auto v = std::make_shared<Version>();
  v->dataset = name;
  v->number = number;
  v->schema = m.schema;
  v->store = std::move(store);
  v->checksums_pending.store(check_later);
  *out = std::move(v);
  return absl::OkStatus();
}

// --- admin ----------------------------------------------------------------------------------------------

void DatasetManager::FillInfo(const Dataset& ds, const VersionRecord& r, v1::VersionInfo* out) const {
  out->set_dataset(ds.name);
  out->set_version(r.number);
  v1::VersionState s = v1::VERSION_FAILED;
  switch (r.state) {
    case State::kBuilding: s = v1::VERSION_BUILDING; break;
    case State::kLoading: s = v1::VERSION_LOADING; break;
    case State::kFailed: s = v1::VERSION_FAILED; break;
    case State::kReady:
      s = r.number == ds.current ? v1::VERSION_CURRENT : (r.activated ? v1::VERSION_BACKUP : v1::VERSION_READY);
      break;
  }
  out->set_state(s);
  if (r.has_manifest) {
    out->set_kind(r.manifest.schema.kind);
    out->set_rows(r.manifest.rows);
    out->set_bytes(r.manifest.total_bytes());
    out->set_files(static_cast<uint32_t>(r.manifest.files.size()));
    out->set_label(r.manifest.label);
    out->set_built_at(r.manifest.built_at);
    out->set_min_key(r.manifest.min_key);
    out->set_max_key(r.manifest.max_key);
  }
  out->set_source(r.source);
  out->set_loaded_at(r.loaded_at);
  out->set_failure(r.failure);
  out->set_checksums(r.checksums);
  out->set_checksum_seconds(r.checksum_seconds);
}

absl::Status DatasetManager::ListVersions(const v1::ListVersionsRequest& req, v1::ListVersionsResponse* resp) {
  absl::MutexLock lock(&mu_);
  if (!req.dataset().empty() && !datasets_.count(req.dataset())) {
    return absl::NotFoundError(absl::StrCat("dataset \"", req.dataset(), "\" not found"));
  }
  for (const auto& [name, ds] : datasets_) {
    if (!req.dataset().empty() && name != req.dataset()) continue;
    auto* d = resp->add_datasets();
    d->set_dataset(name);
    d->set_current_version(ds->current);
    std::optional<ValueSchema> schema = ds->Expected();
    if (schema.has_value()) {
      d->set_kind(schema->kind);
      for (const auto& f : schema->fields) *d->add_fields() = f;
    }
    for (auto it = ds->versions.rbegin(); it != ds->versions.rend(); ++it) FillInfo(*ds, it->second, d->add_versions());
  }
  return absl::OkStatus();
}

absl::Status DatasetManager::Rollback(const v1::RollbackRequest& req, v1::RollbackResponse* resp) {
  absl::MutexLock lock(&mu_);
  auto it = datasets_.find(req.dataset());
  if (it == datasets_.end()) return absl::NotFoundError(absl::StrCat("dataset \"", req.dataset(), "\" not found"));
  Dataset* ds = it->second.get();
  uint64_t target = req.version();
  if (target == 0) {
    for (const auto& [n, r] : ds->versions) {
      if (n < ds->current && r.open && r.activated && r.checksums != v1::CHECKSUMS_MISMATCH) target = n;
    }
    if (target == 0) {
      return absl::FailedPreconditionError(absl::StrCat("dataset \"", ds->name, "\" has no backup older than version ",
                                                        ds->current, " to roll back to"));
    }
  }
  auto vit = ds->versions.find(target);
  if (vit == ds->versions.end()) {
    return absl::NotFoundError(absl::StrCat("dataset \"", ds->name, "\" has no version ", target));
  }
  if (!vit->second.open) {
    return absl::FailedPreconditionError(absl::StrCat("dataset \"", ds->name, "\" version ", target, " is ",
                                                      StateName(vit->second.state), ", not loaded"));
  }
  if (ds->declared.has_value() && !(*ds->declared == vit->second.open->schema)) {
    return absl::FailedPreconditionError(absl::StrCat("version ", target, " is ", vit->second.open->schema.Describe(),
                                                      " but the dataset is declared as ", ds->declared->Describe()));
  }
  resp->set_previous_version(ds->current);
  if (target != ds->current) {
    RETURN_IF_ERROR(Activate(ds, target));
    ds->counters->rollbacks->Inc();
    spdlog::info("dataset {}: rolled back from version {} to {}", ds->name, resp->previous_version(), target);
  }
  FillInfo(*ds, ds->versions.at(target), resp->mutable_version());
  return absl::OkStatus();
}

absl::Status DatasetManager::DeleteVersion(const v1::DeleteVersionRequest& req, v1::DeleteVersionResponse*) {
  absl::MutexLock lock(&mu_);
  auto it = datasets_.find(req.dataset());
  if (it == datasets_.end()) return absl::NotFoundError(absl::StrCat("dataset \"", req.dataset(), "\" not found"));
  Dataset* ds = it->second.get();
  auto vit = ds->versions.find(req.version());
  if (vit == ds->versions.end()) {
    return absl::NotFoundError(absl::StrCat("dataset \"", ds->name, "\" has no version ", req.version()));
  }
  if (req.version() == ds->current) {
    return absl::FailedPreconditionError(
        absl::StrCat("version ", req.version(), " is current; roll back or load another version first"));
  }
  if (vit->second.state == State::kBuilding || vit->second.state == State::kLoading) {
    return absl::FailedPreconditionError(absl::StrCat("version ", req.version(), " is still loading"));
  }
  Retire(ds, req.version());
  Publish();
  spdlog::info("dataset {}: deleted version {}", ds->name, req.version());
  return absl::OkStatus();
}

// --- metrics ----------------------------------------------------------------------------------------------

void DatasetManager::RegisterMetrics() {
  metrics_->AddGauge("kosh_dataset_versions", "Dataset versions by state.", [this] {
    std::vector<std::pair<base::Labels, double>> out;
    absl::MutexLock lock(&mu_);
    for (const auto& [name, ds] : datasets_) {
      std::map<std::string, double> by_state = {{"building", 0}, {"loading", 0}, {"ready", 0},
                                                {"current", 0},  {"backup", 0},  {"failed", 0}};
      for (const auto& [n, r] : ds->versions) {
        v1::VersionInfo info;
        FillInfo(*ds, r, &info);
        by_state[StateLabel(info.state())] += 1;
      }
      for (const auto& [s, c] : by_state) out.push_back({{{"dataset", name}, {"state", s}}, c});
    }
    return out;
  });
  auto per_version = [this](bool bytes) {
    return [this, bytes] {
      std::vector<std::pair<base::Labels, double>> out;
      absl::MutexLock lock(&mu_);
      for (const auto& [name, ds] : datasets_) {
        for (const auto& [n, r] : ds->versions) {
          v1::VersionInfo info;
          FillInfo(*ds, r, &info);
          out.push_back({{{"dataset", name}, {"version", absl::StrCat(n)}, {"state", StateLabel(info.state())}},
                         static_cast<double>(bytes ? info.bytes() : info.rows())});
        }
      }
      return out;
    };
  };
  metrics_->AddGauge("kosh_dataset_version_rows", "Rows of each dataset version, with its state.", per_version(false));
  metrics_->AddGauge("kosh_dataset_version_bytes", "Data file bytes of each dataset version, with its state.",
                     per_version(true));
  auto current = [this](int what) {
    return [this, what] {
      std::vector<std::pair<base::Labels, double>> out;
      absl::MutexLock lock(&mu_);
      for (const auto& [name, ds] : datasets_) {
        double v = 0;
        auto it = ds->versions.find(ds->current);
        if (ds->current != 0 && it != ds->versions.end()) {
          v = what == 0 ? static_cast<double>(ds->current)
                        : what == 1 ? static_cast<double>(it->second.manifest.rows)
                                    : static_cast<double>(it->second.manifest.total_bytes());
        }
        out.push_back({{{"dataset", name}}, v});
      }
      return out;
    };
  };
  metrics_->AddGauge("kosh_dataset_current_version", "The current version of each dataset (0: none).", current(0));
  metrics_->AddGauge("kosh_dataset_current_rows", "Rows of each dataset's current version.", current(1));
  metrics_->AddGauge("kosh_dataset_current_bytes", "Data file bytes of each dataset's current version.", current(2));
  metrics_->AddGauge("kosh_dataset_block_cache_bytes", "The block cache shared by dataset versions.", [this] {
    return std::vector<std::pair<base::Labels, double>>{
        {{{"figure", "usage"}}, static_cast<double>(cache_->usage())},
        {{{"figure", "capacity"}}, static_cast<double>(cache_->capacity())}};
  });
}

}  // namespace kosh::datasets
