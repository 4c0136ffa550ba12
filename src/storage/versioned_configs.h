// VersionedConfigs: a durable, versioned set of named configs (flows, pipelines) kept in a
// ConfigStore and served compiled from an immutable snapshot that is swapped atomically on every
// change: a new version takes effect for the next request without a restart, and in-flight
// requests finish on the version they started with.
//
// Storage: key = id, 0x00, version as 4 bytes big-endian (so a scan returns an id's versions in
// order); value = the serialized record (Traits::Record: id, version, config, created_unix_ms).
// Versions are numbered 1, 2, ... per id and never rewritten.
//
// Several servers may share the store (ZooKeeper): a Put re-reads the id's stored versions first
// (the scan also records the store's generation, so the store refuses a write decided on a stale
// read with ABORTED) and retries with the next number when another server won the race; the
// store's watch makes every server reload what the others wrote. A reload recompiles every version
// when what configs compile against may have changed outside the store (flows: the feature schema;
// `Policy::recompile_on_reload`), else only versions it has not compiled yet. A version that does
// not compile is kept with its error (it was valid when stored) and logged once per distinct error.
//
// Use: a kind's registry derives from VersionedConfigs<Traits>, constructs it with its compile
// function and Policy, and calls Start() (see flows/flow_registry.h, pipelines/pipeline_registry.h).
//
// Traits:
//   using Record = v1::FlowRecord;   // has version(), config(), set_* and the id field
//   using Compiled = CompiledFlow;   // has `plan` (the Put response's)
//   using PutRequest = v1::PutFlowRequest;    // config(), validate_only(), the id field
//   using PutResponse = v1::PutFlowResponse;  // the id field, version, created, plan
//   using Summary = v1::FlowSummary;          // the id field, latest_version, num_versions
//   static constexpr const char* kSingular = "flow", *kPlural = "flows", *kIdField = "model_id";
//   // The id field of a record, put request and response, or summary (all named kIdField):
//   template <typename M> static const std::string& Id(const M&);
//   template <typename M> static void SetId(M*, const std::string&);
//
// Thread-safe: Put and reloads are serialised by a mutex; reads take the snapshot.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/config.h"
#include "base/metrics.h"
#include "base/status.h"
#include "spdlog/spdlog.h"
#include "storage/config_store.h"

namespace kosh::storage {

// The storage key of (id, version).
inline std::string VersionedConfigKey(const std::string& id, uint32_t version) {
  std::string k = id;
  k.push_back('\0');
  k.push_back(static_cast<char>(version >> 24));
  k.push_back(static_cast<char>(version >> 16));
  k.push_back(static_cast<char>(version >> 8));
  k.push_back(static_cast<char>(version));
  return k;
}

template <typename Traits>
class VersionedConfigs {
 public:
  using Record = typename Traits::Record;
  using Compiled = typename Traits::Compiled;
  using PutRequest = typename Traits::PutRequest;
  using PutResponse = typename Traits::PutResponse;
  using Summary = typename Traits::Summary;

  // Every version of one id.
  struct Entry {
    std::vector<Record> records;  // records[v-1] is version v
    // compiled[v-1]: null when that version does not compile now; compile_errors[v-1] says why.
    std::vector<std::shared_ptr<const Compiled>> compiled;
    std::vector<std::string> compile_errors;
  };
  struct Snapshot {
    absl::flat_hash_map<std::string, std::shared_ptr<const Entry>> entries;
  };
  // Compiles a config as its version `version`. `submitted`: a Put, which checks everything
  // (e.g. the references a config makes); false: a stored version being loaded again.
  using CompileFn = std::function<absl::StatusOr<std::shared_ptr<const Compiled>>(
      const std::string& config, uint32_t version, bool submitted)>;

  // How often a Put is tried while other servers keep winning the race for the next version.
  static constexpr int kPutAttempts = 5;

  struct Policy {
    // Reload compiles every version again (what they compile against may have changed); false:
    // a version keeps its compiled form while its config is unchanged.
    bool recompile_on_reload = false;
    // Ends the log line of a version that does not compile (e.g. " against the current feature
    // schema").
    std::string compile_context;
    // Counts reloads after the first load (may be null; must outlive the object).
    base::Counter* reloads = nullptr;
    // Find's FAILED_PRECONDITION says a version "<not_compiling>: <error>".
    std::string not_compiling = "does not compile";
    // A submitted config larger than this is refused before it is parsed (0: no limit here), naming
    // the option that sets it.
    uint64_t max_config_bytes = 0;
    std::string max_config_bytes_option;
  };

  ~VersionedConfigs() {
    absl::MutexLock g(&guard_->mu);  // waits for a reload in progress on another thread
    guard_->self = nullptr;
  }
  VersionedConfigs(const VersionedConfigs&) = delete;
  VersionedConfigs& operator=(const VersionedConfigs&) = delete;

  // A callback that reloads (logging `why`) for as long as this object lives, for the store's
  // watch and for listeners of what the configs compile against. Safe to call on any thread,
  // during and after destruction.
  std::function<void()> ReloadCallback(std::string why) {
    return [guard = guard_, why = std::move(why)] {
      absl::MutexLock g(&guard->mu);
      if (guard->self == nullptr) return;
      absl::Status s = guard->self->Reload();
      if (s.ok()) {
        spdlog::info("{}: reloaded ({})", Traits::kPlural, why);
      } else {
        spdlog::error("{}: reloading failed ({}); serving the previous {}: {}", Traits::kPlural, why,
                      Traits::kPlural, s.ToString());
      }
    };
  }

  // Re-reads every stored version and recompiles it. On error the current snapshot stays.
  absl::Status Reload() {
    absl::MutexLock l(&mu_);
    if (policy_.reloads != nullptr) policy_.reloads->Inc();
    return ReloadLocked();
  }

  // Validates and compiles req.config (submitted = true); unless validate_only, stores it as the id's
  // version latest+1 and publishes it. The id is the config's kIdField, or the request's when the
  // config has none; when both are given they must agree. A config identical to the latest version
  // stores nothing (created = false, version = the latest). INVALID_ARGUMENT for a missing or
  // disagreeing id, RESOURCE_EXHAUSTED over Policy::max_config_bytes, the compiler's error for a bad
  // config; ABORTED when other servers won the race for the next version number kPutAttempts times.
  // A rejected config changes nothing.
  absl::StatusOr<PutResponse> Put(const PutRequest& req) {
    if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
    if (policy_.max_config_bytes != 0 && req.config().size() > policy_.max_config_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("config: ", req.config().size(), " bytes exceeds the limit of ",
                                                       policy_.max_config_bytes, " (", policy_.max_config_bytes_option,
                                                       ")"));
    }
    ASSIGN_OR_RETURN(YAML::Node root, base::ParseConfigText(req.config()));
    std::string id;
    RETURN_IF_ERROR(base::YamlReader(root, "").GetString(Traits::kIdField, &id));
    const std::string& asked = Traits::Id(req);
    if (id.empty()) id = asked;
    if (!asked.empty() && asked != id) {
      return absl::InvalidArgumentError(absl::StrCat(Traits::kIdField, ": \"", asked, "\" differs from the config's ",
                                                     Traits::kIdField, " \"", id, "\""));
    }
    if (id.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(Traits::kIdField, ": required (in the config or the request)"));
    }
    ASSIGN_OR_RETURN(PutResult put, PutConfig(id, req.config(), req.validate_only()));
    PutResponse resp;
    Traits::SetId(&resp, id);
    *resp.mutable_plan() = put.compiled->plan;
    resp.mutable_plan()->set_version(put.version);
    resp.set_version(put.version);
    resp.set_created(put.created);
    return resp;
  }

  // Version 0 = the latest. NOT_FOUND for an unknown id or version.
  absl::StatusOr<Record> Get(const std::string& id, uint32_t version) const {
    ASSIGN_OR_RETURN(Found f, FindVersion(id, version));
    return f.entry->records[f.version - 1];
  }

  // The compiled version to run (0 = the latest). NOT_FOUND for an unknown id or version;
  // FAILED_PRECONDITION (Policy::not_compiling and the error) when that version does not compile now.
  absl::StatusOr<std::shared_ptr<const Compiled>> Find(const std::string& id, uint32_t version) const {
    ASSIGN_OR_RETURN(Found f, FindVersion(id, version));
    const Entry& e = *f.entry;
    const uint32_t v = f.version;
    if (e.compiled[v - 1] == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(Traits::kSingular, " \"", id, "\" version ", v, " ",
                                                        policy_.not_compiling, ": ", e.compile_errors[v - 1]));
    }
    return e.compiled[v - 1];
  }

  // One summary (the id field, latest_version, num_versions) per id, sorted by id.
  std::vector<Summary> List() const {
    auto snap = snapshot();
    std::vector<Summary> out;
    for (const auto& [id, e] : snap->entries) {
      Summary& sum = out.emplace_back();
      Traits::SetId(&sum, id);
      sum.set_latest_version(static_cast<uint32_t>(e->records.size()));
      sum.set_num_versions(static_cast<uint32_t>(e->records.size()));
    }
    std::sort(out.begin(), out.end(), [](const Summary& a, const Summary& b) { return Traits::Id(a) < Traits::Id(b); });
    return out;
  }

  std::shared_ptr<const Snapshot> snapshot() const {
    return std::atomic_load_explicit(&snapshot_, std::memory_order_acquire);
  }

 protected:
  // `store` must outlive the object. Start() must follow.
  VersionedConfigs(ConfigStore* store, CompileFn compile, Policy policy)
      : store_(store),
        compile_(std::move(compile)),
        policy_(std::move(policy)),
        snapshot_(std::make_shared<const Snapshot>()) {}

  // Loads and compiles every stored version, then watches the store for other servers' writes.
  absl::Status Start() {
    {
      absl::MutexLock l(&mu_);
      RETURN_IF_ERROR(ReloadLocked());
    }
    {
      absl::MutexLock g(&guard_->mu);
      guard_->self = this;
    }
    store_->Watch(ReloadCallback(absl::StrCat("a ", Traits::kSingular, " changed on another server")));
    return absl::OkStatus();
  }

 private:
  struct PutResult {
    uint32_t version = 0;  // 0 for validate_only
    bool created = false;  // false: validate_only, or the config equals the latest version
    std::shared_ptr<const Compiled> compiled;  // the submitted config, compiled
  };
  // Put once the id is known: compiles `config` as the id's next version and, unless
  // validate_only, stores and publishes it.
  absl::StatusOr<PutResult> PutConfig(const std::string& id, const std::string& config, bool validate_only) {
    if (validate_only) {
      // Nothing is stored, so nothing is read either: a check works while the store is away.
      auto snap = snapshot();
      auto it = snap->entries.find(id);
      const uint32_t next = it == snap->entries.end() ? 1 : static_cast<uint32_t>(it->second->records.size()) + 1;
      PutResult result;
      ASSIGN_OR_RETURN(result.compiled, compile_(config, next, /*submitted=*/true));
      return result;
    }
    absl::MutexLock l(&mu_);
    for (int attempt = 1;; ++attempt) {
      ASSIGN_OR_RETURN(std::vector<Record> recs, ScanVersions(id));
      const uint32_t version = static_cast<uint32_t>(recs.size()) + 1;
      PutResult result;
      ASSIGN_OR_RETURN(result.compiled, compile_(config, version, /*submitted=*/true));
      auto cur = snapshot();
      auto it = cur->entries.find(id);
      const Entry* old = it == cur->entries.end() ? nullptr : it->second.get();
      if (!recs.empty() && recs.back().config() == config) {
        result.version = recs.back().version();
        if (old == nullptr || old->records.size() != recs.size()) {
          // Written by another server and not seen here yet: catch up.
          Publish(id, BuildEntry(id, std::move(recs), old, /*reuse=*/true));
        }
        return result;
      }
      Record rec;
      Traits::SetId(&rec, id);
      rec.set_version(version);
      rec.set_config(config);
      rec.set_created_unix_ms(
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
              .count());
      absl::Status written = store_->Write({{VersionedConfigKey(id, version), rec.SerializeAsString()}});
      if (absl::IsAborted(written)) {
        if (attempt < kPutAttempts) continue;  // another server wrote first: re-read and renumber
        return absl::AbortedError(absl::StrCat(Traits::kPlural, " were changed by other servers during each of ",
                                               kPutAttempts, " attempts; nothing was stored, try again (",
                                               written.message(), ")"));
      }
      RETURN_IF_ERROR(written);
      std::shared_ptr<Entry> entry = BuildEntry(id, std::move(recs), old, /*reuse=*/true);
      entry->records.push_back(std::move(rec));
      entry->compiled.push_back(result.compiled);
      entry->compile_errors.emplace_back();
      Publish(id, std::move(entry));
      result.version = version;
      result.created = true;
      return result;
    }
  }

  // Shared with the callbacks given to the store and to listeners, which may run on their threads
  // until they are destroyed: the destructor clears `self`, waiting for one in progress.
  struct Guard {
    absl::Mutex mu;
    VersionedConfigs* self ABSL_GUARDED_BY(mu) = nullptr;
  };

  struct Found {
    std::shared_ptr<const Snapshot> snap;  // keeps `entry` alive
    const Entry* entry;
    uint32_t version;  // 1-based, resolved from 0 = the latest
  };
  absl::StatusOr<Found> FindVersion(const std::string& id, uint32_t version) const {
    auto snap = snapshot();
    auto it = snap->entries.find(id);
    if (it == snap->entries.end()) {
      return absl::NotFoundError(absl::StrCat(Traits::kIdField, ": no ", Traits::kSingular, " \"", id, "\""));
    }
    const Entry* e = it->second.get();
    if (version == 0) version = static_cast<uint32_t>(e->records.size());
    if (version > e->records.size()) {
      return absl::NotFoundError(absl::StrCat("version: ", Traits::kSingular, " \"", id, "\" has versions 1 to ",
                                              e->records.size()));
    }
    return Found{std::move(snap), e, version};
  }

  // Parses a stored record; DATA_LOSS (naming what) if it cannot be parsed or breaks the numbering.
  static absl::Status ParseRecord(absl::string_view key, absl::string_view value, size_t expected_version,
                                  Record* rec) {
    if (!rec->ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      return absl::DataLossError(absl::StrCat(Traits::kPlural, ": a stored ", Traits::kSingular,
                                              " record cannot be parsed (key of ", key.size(), " bytes)"));
    }
    if (rec->version() != expected_version) {
      return absl::DataLossError(absl::StrCat(Traits::kPlural, ": ", Traits::kSingular, " \"", Traits::Id(*rec),
                                              "\" is missing version ", expected_version));
    }
    return absl::OkStatus();
  }

  // The stored records under `prefix` ("" = all), by id, each id's versions in order.
  absl::StatusOr<std::map<std::string, std::vector<Record>>> ScanRecords(absl::string_view prefix) {
    std::map<std::string, std::vector<Record>> loaded;
    absl::Status bad;
    RETURN_IF_ERROR(store_->Scan(prefix, [&](absl::string_view key, absl::string_view value) {
      // Keys sort by (id, version): an id's versions arrive in order. The id is the key up to its
      // 0x00, so a record is checked against the versions of its own key.
      auto& recs = loaded[std::string(key.substr(0, key.find('\0')))];
      Record rec;
      bad = ParseRecord(key, value, recs.size() + 1, &rec);
      if (!bad.ok()) return false;
      recs.push_back(std::move(rec));
      return true;
    }));
    RETURN_IF_ERROR(bad);
    return loaded;
  }

  // The stored versions of one id, in order.
  absl::StatusOr<std::vector<Record>> ScanVersions(const std::string& id) {
    std::string prefix = id;
    prefix.push_back('\0');
    ASSIGN_OR_RETURN(auto loaded, ScanRecords(prefix));
    return std::move(loaded[id]);
  }

  // The entry of one id from its stored records. With `reuse`, a version whose config equals the
  // one `old` (may be null) holds keeps its compiled form; otherwise every version is compiled.
  std::shared_ptr<Entry> BuildEntry(const std::string& id, std::vector<Record> records, const Entry* old,
                                    bool reuse) {
    auto e = std::make_shared<Entry>();
    for (size_t i = 0; i < records.size(); ++i) {
      const Record& rec = records[i];
      const bool had = old != nullptr && i < old->records.size() && old->records[i].config() == rec.config();
      if (reuse && had) {
        e->compiled.push_back(old->compiled[i]);
        e->compile_errors.push_back(old->compile_errors[i]);
        continue;
      }
      auto c = compile_(rec.config(), rec.version(), /*submitted=*/false);
      if (c.ok()) {
        e->compiled.push_back(*std::move(c));
        e->compile_errors.emplace_back();
        continue;
      }
      std::string error(c.status().message());
      // Log a version's failure once, not on every reload. With a shared store a new version can
      // arrive before what it needs (e.g. a schema change): it compiles when that reload comes.
      if (!had || old->compile_errors[i] != error) {
        spdlog::warn("{} {} version {} does not compile{}: {}", Traits::kSingular, id, rec.version(),
                     policy_.compile_context, error);
      }
      e->compiled.push_back(nullptr);
      e->compile_errors.push_back(std::move(error));
    }
    e->records = std::move(records);
    return e;
  }

  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ASSIGN_OR_RETURN(auto loaded, ScanRecords(""));
    auto cur = snapshot();
    auto next = std::make_shared<Snapshot>();
    for (auto& [id, recs] : loaded) {
      auto it = cur->entries.find(id);
      next->entries[id] = BuildEntry(id, std::move(recs), it == cur->entries.end() ? nullptr : it->second.get(),
                                     /*reuse=*/!policy_.recompile_on_reload);
    }
    SetSnapshot(std::move(next));
    return absl::OkStatus();
  }

  void SetSnapshot(std::shared_ptr<const Snapshot> next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::atomic_store_explicit(&snapshot_, std::move(next), std::memory_order_release);
  }

  // Publishes a snapshot with `entry` as the versions of `id`.
  void Publish(const std::string& id, std::shared_ptr<const Entry> entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto next = std::make_shared<Snapshot>(*snapshot());
    next->entries[id] = std::move(entry);
    SetSnapshot(std::move(next));
  }

  ConfigStore* store_;
  CompileFn compile_;
  Policy policy_;
  absl::Mutex mu_;  // serialises Put and reloads
  std::shared_ptr<const Snapshot> snapshot_;
  std::shared_ptr<Guard> guard_ = std::make_shared<Guard>();
};

}  // namespace kosh::storage
