#include "pipelines/pipeline_registry.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "spdlog/spdlog.h"

namespace kosh::pipelines {

namespace {
constexpr int kPutAttempts = 5;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
}  // namespace

// The store may call its watch at any time on its own thread; the token lets the destructor cut
// the link (and wait for a reload in progress) before the registry goes away.
struct PipelineRegistry::WatchToken {
  absl::Mutex mu;
  PipelineRegistry* registry ABSL_GUARDED_BY(mu) = nullptr;
};

std::string PipelineKey(const std::string& pipeline_id, uint32_t version) {
  std::string k = pipeline_id;
  k.push_back('\0');
  k.push_back(static_cast<char>(version >> 24));
  k.push_back(static_cast<char>(version >> 16));
  k.push_back(static_cast<char>(version >> 8));
  k.push_back(static_cast<char>(version));
  return k;
}

PipelineRegistry::PipelineRegistry(storage::ConfigStore* store, const NodeRegistry* nodes, NodeEnv env,
                                   base::MetricsRegistry* metrics)
    : store_(store),
      nodes_(nodes),
      env_(env),
      metrics_(metrics),
      snapshot_(std::make_shared<PipelineSnapshot>()),
      watch_(std::make_shared<WatchToken>()) {
  if (metrics_ != nullptr) {
    reloads_ = metrics_->GetCounter("kosh_pipeline_registry_reloads_total",
                                    "Reloads of the stored pipelines after another server changed them.");
  }
}

PipelineRegistry::~PipelineRegistry() {
  absl::MutexLock l(&watch_->mu);
  watch_->registry = nullptr;
}

absl::StatusOr<std::unique_ptr<PipelineRegistry>> PipelineRegistry::Open(storage::ConfigStore* store,
                                                                         const NodeRegistry* nodes, NodeEnv env,
                                                                         base::MetricsRegistry* metrics) {
  if (env.options == nullptr) return absl::InternalError("PipelineRegistry: NodeEnv::options is not set");
  std::unique_ptr<PipelineRegistry> r(new PipelineRegistry(store, nodes, env, metrics));
  {
    absl::MutexLock l(&r->mu_);
    RETURN_IF_ERROR(r->ReloadLocked());
  }
  {
    absl::MutexLock l(&r->watch_->mu);
    r->watch_->registry = r.get();
  }
  store->Watch([token = r->watch_] {
    absl::MutexLock l(&token->mu);
    if (token->registry == nullptr) return;
    absl::Status s = token->registry->Reload();
    if (!s.ok()) spdlog::error("pipelines: reload after a change by another server failed: {}", s.ToString());
  });
  return r;
}

void PipelineRegistry::Publish(std::shared_ptr<const PipelineSnapshot> snap) {
  std::atomic_store_explicit(&snapshot_, std::move(snap), std::memory_order_release);
}

std::shared_ptr<const PipelineEntry> PipelineRegistry::BuildEntry(std::vector<v1::PipelineRecord> records,
                                                                  const PipelineEntry* old) {
  auto e = std::make_shared<PipelineEntry>();
  NodeEnv env = env_;
  env.check_references = false;
  for (const auto& rec : records) {
    const size_t v = rec.version() - 1;
    if (old != nullptr && v < old->records.size() && old->records[v].config() == rec.config()) {
      e->compiled.push_back(old->compiled[v]);
      e->compile_errors.push_back(old->compile_errors[v]);
      continue;
    }
    auto c = CompilePipeline(rec.config(), rec.version(), *nodes_, env, metrics_);
    if (c.ok()) {
      e->compiled.push_back(*c);
      e->compile_errors.emplace_back();
    } else {
      spdlog::error("pipeline {} version {} does not compile: {}", rec.pipeline_id(), rec.version(),
                    std::string(c.status().message()));
      e->compiled.push_back(nullptr);
      e->compile_errors.emplace_back(c.status().message());
    }
  }
  e->records = std::move(records);
  return e;
}

absl::Status PipelineRegistry::Reload() {
  absl::MutexLock l(&mu_);
  if (reloads_ != nullptr) reloads_->Inc();
  return ReloadLocked();
}

absl::Status PipelineRegistry::ReloadLocked() {
  std::map<std::string, std::vector<v1::PipelineRecord>> loaded;
  absl::Status bad;
  RETURN_IF_ERROR(store_->Scan("", [&](absl::string_view key, absl::string_view value) {
    v1::PipelineRecord rec;
    if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = absl::DataLossError(
          absl::StrCat("pipelines: a stored pipeline record cannot be parsed (key of ", key.size(), " bytes)"));
      return false;
    }
    auto& recs = loaded[rec.pipeline_id()];
    // Keys sort by (pipeline_id, version), so versions arrive in order.
    if (rec.version() != recs.size() + 1) {
      bad = absl::DataLossError(
          absl::StrCat("pipelines: pipeline \"", rec.pipeline_id(), "\" is missing version ", recs.size() + 1));
      return false;
    }
    recs.push_back(std::move(rec));
    return true;
  }));
  RETURN_IF_ERROR(bad);
  auto cur = snapshot();
  auto next = std::make_shared<PipelineSnapshot>();
  for (auto& [id, recs] : loaded) {
    auto it = cur->pipelines.find(id);
    const PipelineEntry* old = it == cur->pipelines.end() ? nullptr : it->second.get();
    if (old != nullptr && old->records.size() == recs.size() && old->records.back().config() == recs.back().config()) {
      next->pipelines[id] = it->second;  // unchanged (versions are never rewritten)
      continue;
    }
    next->pipelines[id] = BuildEntry(std::move(recs), old);
  }
  Publish(std::move(next));
  return absl::OkStatus();
}

absl::StatusOr<v1::PutPipelineResponse> PipelineRegistry::Put(const v1::PutPipelineRequest& req) {
  if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
  if (req.config().size() > env_.options->max_config_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("config: ", req.config().size(), " bytes exceeds the limit of ",
                                                     env_.options->max_config_bytes, " (pipelines.max_config_bytes)"));
  }
  ASSIGN_OR_RETURN(std::string id, ConfigPipelineId(req.config()));
  if (id.empty()) id = req.pipeline_id();
  if (!req.pipeline_id().empty() && req.pipeline_id() != id) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline_id: \"", req.pipeline_id(), "\" differs from the config's pipeline_id \"", id, "\""));
  }
  if (id.empty()) return absl::InvalidArgumentError("pipeline_id: required (in the config or the request)");
  absl::MutexLock l(&mu_);
  for (int attempt = 1;; ++attempt) {
    // This pipeline's stored versions (the Scan also records the store's generation, so a write
    // decided on a stale read is refused).
    std::vector<v1::PipelineRecord> recs;
    absl::Status bad;
    std::string prefix = id;
    prefix.push_back('\0');
    RETURN_IF_ERROR(store_->Scan(prefix, [&](absl::string_view, absl::string_view value) {
      v1::PipelineRecord rec;
      if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size())) || rec.version() != recs.size() + 1) {
        bad = absl::DataLossError(absl::StrCat("pipelines: the stored versions of \"", id, "\" are corrupt"));
        return false;
      }
      recs.push_back(std::move(rec));
      return true;
    }));
    RETURN_IF_ERROR(bad);
    const uint32_t version = static_cast<uint32_t>(recs.size()) + 1;
    NodeEnv env = env_;
    env.check_references = true;
    ASSIGN_OR_RETURN(auto compiled, CompilePipeline(req.config(), version, *nodes_, env, metrics_));
    v1::PutPipelineResponse resp;
    resp.set_pipeline_id(id);
    *resp.mutable_plan() = compiled->plan;
    if (req.validate_only()) {
      resp.mutable_plan()->set_version(0);
      return resp;
    }
    auto cur = snapshot();
    auto it = cur->pipelines.find(id);
    const PipelineEntry* old = it == cur->pipelines.end() ? nullptr : it->second.get();
    if (!recs.empty() && recs.back().config() == req.config()) {
      resp.set_version(recs.back().version());
      resp.mutable_plan()->set_version(resp.version());
      resp.set_created(false);
      if (old == nullptr || old->records.size() != recs.size()) {
        // Written by another server and not yet seen here: catch up.
        auto next = std::make_shared<PipelineSnapshot>(*cur);
        next->pipelines[id] = BuildEntry(std::move(recs), old);
        Publish(std::move(next));
      }
      return resp;
    }
    v1::PipelineRecord rec;
    rec.set_pipeline_id(id);
    rec.set_version(version);
    rec.set_config(req.config());
    rec.set_created_unix_ms(NowUnixMs());
    absl::Status written = store_->Write({{PipelineKey(id, version), rec.SerializeAsString()}});
    if (absl::IsAborted(written) && attempt < kPutAttempts) continue;  // another server wrote: re-read
    RETURN_IF_ERROR(written);
    std::shared_ptr<const PipelineEntry> entry;
    if (old != nullptr && old->records.size() == recs.size()) {
      auto e = std::make_shared<PipelineEntry>(*old);
      e->records.push_back(std::move(rec));
      e->compiled.push_back(compiled);
      e->compile_errors.emplace_back();
      entry = std::move(e);
    } else {
      recs.push_back(std::move(rec));
      auto e = BuildEntry(std::vector<v1::PipelineRecord>(recs.begin(), recs.end() - 1), old);
      auto full = std::make_shared<PipelineEntry>(*e);
      full->records.push_back(recs.back());
      full->compiled.push_back(compiled);
      full->compile_errors.emplace_back();
      entry = std::move(full);
    }
    auto next = std::make_shared<PipelineSnapshot>(*cur);
    next->pipelines[id] = std::move(entry);
    Publish(std::move(next));
    resp.set_version(version);
    resp.mutable_plan()->set_version(version);
    resp.set_created(true);
    return resp;
  }
}

absl::StatusOr<v1::PipelineRecord> PipelineRegistry::Get(const std::string& pipeline_id, uint32_t version) const {
  auto snap = snapshot();
  auto it = snap->pipelines.find(pipeline_id);
  if (it == snap->pipelines.end()) {
    return absl::NotFoundError(absl::StrCat("pipeline_id: no pipeline \"", pipeline_id, "\""));
  }
  const auto& recs = it->second->records;
  if (version == 0) return recs.back();
  if (version > recs.size()) {
    return absl::NotFoundError(absl::StrCat("version: pipeline \"", pipeline_id, "\" has versions 1 to ", recs.size()));
  }
  return recs[version - 1];
}

std::vector<v1::PipelineSummary> PipelineRegistry::List() const {
  auto snap = snapshot();
  std::vector<v1::PipelineSummary> out;
  for (const auto& [id, e] : snap->pipelines) {
    v1::PipelineSummary s;
    s.set_pipeline_id(id);
    s.set_latest_version(static_cast<uint32_t>(e->records.size()));
    s.set_num_versions(static_cast<uint32_t>(e->records.size()));
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.pipeline_id() < b.pipeline_id(); });
  return out;
}

absl::StatusOr<std::shared_ptr<const CompiledPipeline>> PipelineRegistry::Find(const std::string& pipeline_id,
                                                                               uint32_t version) const {
  auto snap = snapshot();
  auto it = snap->pipelines.find(pipeline_id);
  if (it == snap->pipelines.end()) {
    return absl::NotFoundError(absl::StrCat("pipeline_id: no pipeline \"", pipeline_id, "\""));
  }
  const PipelineEntry& e = *it->second;
  if (version == 0) version = static_cast<uint32_t>(e.records.size());
  if (version > e.records.size()) {
    return absl::NotFoundError(
        absl::StrCat("version: pipeline \"", pipeline_id, "\" has versions 1 to ", e.records.size()));
  }
  if (e.compiled[version - 1] == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("pipeline \"", pipeline_id, "\" version ", version,
                     " does not compile in this server: ", e.compile_errors[version - 1]));
  }
  return e.compiled[version - 1];
}

}  // namespace kosh::pipelines
