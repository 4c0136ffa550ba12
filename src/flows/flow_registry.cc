#include "flows/flow_registry.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "spdlog/spdlog.h"

namespace kosh::flows {

std::string FlowKey(const std::string& model_id, uint32_t version) {
  std::string k = model_id;
  k.push_back('\0');
  k.push_back(static_cast<char>(version >> 24));
  k.push_back(static_cast<char>(version >> 16));
  k.push_back(static_cast<char>(version >> 8));
  k.push_back(static_cast<char>(version));
  return k;
}

absl::StatusOr<std::unique_ptr<FlowRegistry>> FlowRegistry::Open(storage::ConfigStore* store,
                                                                 features::Registry* features, FlowsOptions options,
                                                                 base::MetricsRegistry* metrics) {
  std::unique_ptr<FlowRegistry> r(new FlowRegistry(store, features, std::move(options), metrics));
  {
    absl::MutexLock l(&r->mu_);
    RETURN_IF_ERROR(r->ReloadLocked());
  }
  {
    absl::MutexLock g(&r->guard_->mu);
    r->guard_->self = r.get();
  }
  auto reload = [guard = r->guard_](const char* why) {
    absl::MutexLock g(&guard->mu);
    if (guard->self == nullptr) return;
    absl::Status s = guard->self->Reload();
    if (s.ok()) {
      spdlog::info("flows: reloaded ({})", why);
    } else {
      spdlog::error("flows: reloading failed ({}); serving the previous flows: {}", why, s.ToString());
    }
  };
  store->Watch([reload] { reload("a flow changed on another server"); });
  // After the feature registry reloaded a schema from another server: flows that referred to
  // features this server did not know yet compile now.
  features->AddListener([reload] { reload("the feature schema changed on another server"); });
  return r;
}

FlowRegistry::~FlowRegistry() {
  absl::MutexLock g(&guard_->mu);  // waits for a reload in progress on another thread
  guard_->self = nullptr;
}

absl::Status FlowRegistry::Reload() {
  absl::MutexLock l(&mu_);
  return ReloadLocked();
}

absl::Status FlowRegistry::ReloadLocked() {
  absl::flat_hash_map<std::string, std::shared_ptr<FlowEntry>> loaded;
  absl::Status bad;
  RETURN_IF_ERROR(store_->Scan("", [&](absl::string_view key, absl::string_view value) {
    v1::FlowRecord rec;
    if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = absl::DataLossError(absl::StrCat("flows: a stored flow record cannot be parsed (key of ", key.size(),
                                             " bytes)"));
      return false;
    }
    auto& e = loaded[rec.model_id()];
    if (e == nullptr) e = std::make_shared<FlowEntry>();
    // Keys sort by (model_id, version), so versions arrive in order.
    if (rec.version() != e->records.size() + 1) {
      bad = absl::DataLossError(absl::StrCat("flows: model \"", rec.model_id(), "\" is missing version ",
                                             e->records.size() + 1));
      return false;
    }
    e->records.push_back(std::move(rec));
    return true;
  }));
  RETURN_IF_ERROR(bad);
  auto fsnap = features_->snapshot();
  auto old = snapshot();
  auto snap = std::make_shared<FlowSnapshot>();
  for (auto& [id, e] : loaded) {
    const FlowEntry* prev = nullptr;
    if (auto it = old->flows.find(id); it != old->flows.end()) prev = it->second.get();
    for (size_t i = 0; i < e->records.size(); ++i) {
      const v1::FlowRecord& rec = e->records[i];
      auto c = CompileFlow(rec.config(), rec.version(), *fsnap, options_, metrics_);
      if (c.ok()) {
        e->compiled.push_back(*c);
        e->compile_errors.emplace_back();
        continue;
      }
      std::string error(c.status().message());
      // Log a version's failure once, not on every reload. With a shared registry a new flow can
      // arrive before the schema change it needs: it compiles when that reload comes.
      if (prev == nullptr || i >= prev->compile_errors.size() || prev->compile_errors[i] != error) {
        spdlog::warn("flow {} version {} does not compile against the current feature schema: {}", id,
                     rec.version(), error);
      }
      e->compiled.push_back(nullptr);
      e->compile_errors.push_back(std::move(error));
    }
    snap->flows[id] = e;
  }
  std::atomic_store_explicit(&snapshot_, std::shared_ptr<const FlowSnapshot>(std::move(snap)),
                             std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<v1::PutFlowResponse> FlowRegistry::Put(const v1::PutFlowRequest& req) {
  if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
  ASSIGN_OR_RETURN(std::string model_id, ConfigModelId(req.config()));
  if (model_id.empty()) model_id = req.model_id();
  if (!req.model_id().empty() && req.model_id() != model_id) {
    return absl::InvalidArgumentError(absl::StrCat("model_id: \"", req.model_id(),
                                                   "\" differs from the config's model_id \"", model_id, "\""));
  }
  absl::MutexLock l(&mu_);
  for (int attempt = 1;; ++attempt) {
    auto cur = snapshot();
    auto it = cur->flows.find(model_id);
    const uint32_t version = it == cur->flows.end() ? 1 : static_cast<uint32_t>(it->second->records.size()) + 1;
    ASSIGN_OR_RETURN(auto compiled, CompileFlow(req.config(), version, *features_->snapshot(), options_, metrics_));
    v1::PutFlowResponse resp;
    resp.set_model_id(model_id);
    *resp.mutable_plan() = compiled->plan;
    if (req.validate_only()) {
      resp.mutable_plan()->set_version(0);
      return resp;
    }
    if (it != cur->flows.end() && it->second->records.back().config() == req.config()) {
      resp.set_version(it->second->records.back().version());
      resp.mutable_plan()->set_version(resp.version());
      resp.set_created(false);
      return resp;
    }
    v1::FlowRecord rec;
    rec.set_model_id(model_id);
    rec.set_version(version);
    rec.set_config(req.config());
    rec.set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
    absl::Status st = store_->Write({{FlowKey(model_id, version), rec.SerializeAsString()}});
    if (st.code() == absl::StatusCode::kAborted) {
      if (attempt == kPutAttempts) {
        return absl::AbortedError(absl::StrCat("flows were changed by other servers during each of ", kPutAttempts,
                                               " attempts; nothing was stored, try again (", st.message(), ")"));
      }
      // Another server stored a flow first: take its versions and number this one after them.
      RETURN_IF_ERROR(ReloadLocked());
      continue;
    }
    RETURN_IF_ERROR(st);
    auto entry = it != cur->flows.end() ? std::make_shared<FlowEntry>(*it->second) : std::make_shared<FlowEntry>();
    entry->records.push_back(std::move(rec));
    entry->compiled.push_back(compiled);
    entry->compile_errors.emplace_back();
    auto next = std::make_shared<FlowSnapshot>(*cur);
    next->flows[model_id] = std::move(entry);
    std::atomic_store_explicit(&snapshot_, std::shared_ptr<const FlowSnapshot>(std::move(next)),
                               std::memory_order_release);
    resp.set_version(version);
    resp.set_created(true);
    return resp;
  }
}

absl::StatusOr<v1::FlowRecord> FlowRegistry::Get(const std::string& model_id, uint32_t version) const {
  auto snap = snapshot();
  auto it = snap->flows.find(model_id);
  if (it == snap->flows.end()) return absl::NotFoundError(absl::StrCat("model_id: no flow \"", model_id, "\""));
  const auto& recs = it->second->records;
  if (version == 0) return recs.back();
  if (version > recs.size()) {
    return absl::NotFoundError(absl::StrCat("version: flow \"", model_id, "\" has versions 1 to ", recs.size()));
  }
  return recs[version - 1];
}

std::vector<v1::FlowSummary> FlowRegistry::List() const {
  auto snap = snapshot();
  std::vector<v1::FlowSummary> out;
  for (const auto& [id, e] : snap->flows) {
    v1::FlowSummary s;
    s.set_model_id(id);
    s.set_latest_version(static_cast<uint32_t>(e->records.size()));
    s.set_num_versions(static_cast<uint32_t>(e->records.size()));
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.model_id() < b.model_id(); });
  return out;
}

absl::StatusOr<std::shared_ptr<const CompiledFlow>> FlowRegistry::Find(const std::string& model_id,
                                                                       uint32_t version) const {
  auto snap = snapshot();
  auto it = snap->flows.find(model_id);
  if (it == snap->flows.end()) return absl::NotFoundError(absl::StrCat("model_id: no flow \"", model_id, "\""));
  const FlowEntry& e = *it->second;
  if (version == 0) version = static_cast<uint32_t>(e.records.size());
  if (version > e.records.size()) {
    return absl::NotFoundError(absl::StrCat("version: flow \"", model_id, "\" has versions 1 to ", e.records.size()));
  }
  if (e.compiled[version - 1] == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("flow \"", model_id, "\" version ", version,
                                                      " no longer compiles against the schema: ",
                                                      e.compile_errors[version - 1]));
  }
  return e.compiled[version - 1];
}

}  // namespace kosh::flows
