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

absl::StatusOr<std::unique_ptr<FlowRegistry>> FlowRegistry::Open(storage::Engine* engine, storage::Keyspace ks,
                                                                 features::Registry* features, FlowsOptions options,
                                                                 base::MetricsRegistry* metrics) {
  std::unique_ptr<FlowRegistry> r(new FlowRegistry(engine, ks, features, std::move(options), metrics));
  absl::flat_hash_map<std::string, std::shared_ptr<FlowEntry>> loaded;
  absl::Status bad;
  RETURN_IF_ERROR(engine->Scan(ks, "", [&](absl::string_view key, absl::string_view value) {
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
  auto fsnap = features->snapshot();
  auto snap = std::make_shared<FlowSnapshot>();
  for (auto& [id, e] : loaded) {
    for (const auto& rec : e->records) {
      auto c = CompileFlow(rec.config(), rec.version(), *fsnap, r->options_, metrics);
      if (c.ok()) {
        e->compiled.push_back(*c);
        e->compile_errors.emplace_back();
      } else {
        spdlog::error("flow {} version {} no longer compiles: {}", id, rec.version(), std::string(c.status().message()));
        e->compiled.push_back(nullptr);
        e->compile_errors.emplace_back(c.status().message());
      }
    }
    snap->flows[id] = e;
  }
  r->snapshot_ = std::move(snap);
  return r;
}

absl::StatusOr<v1::PutFlowResponse> FlowRegistry::Put(const v1::PutFlowRequest& req) {
  if (req.config().empty()) return absl::InvalidArgumentError("config: empty");
  absl::MutexLock l(&mu_);
  auto cur = snapshot();
  std::string model_id;
  uint32_t version = 1;
  {
    ASSIGN_OR_RETURN(model_id, ConfigModelId(req.config()));
    if (model_id.empty()) model_id = req.model_id();
    if (!req.model_id().empty() && req.model_id() != model_id) {
      return absl::InvalidArgumentError(absl::StrCat("model_id: \"", req.model_id(),
                                                     "\" differs from the config's model_id \"", model_id, "\""));
    }
    auto it = cur->flows.find(model_id);
    if (it != cur->flows.end()) version = static_cast<uint32_t>(it->second->records.size()) + 1;
  }
  ASSIGN_OR_RETURN(auto compiled, CompileFlow(req.config(), version, *features_->snapshot(), options_, metrics_));
  v1::PutFlowResponse resp;
  resp.set_model_id(model_id);
  *resp.mutable_plan() = compiled->plan;
  if (req.validate_only()) {
    resp.mutable_plan()->set_version(0);
    return resp;
  }
  auto it = cur->flows.find(model_id);
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
  storage::WriteBatch batch;
  batch.Put(ks_, FlowKey(model_id, version), rec.SerializeAsString());
  RETURN_IF_ERROR(engine_->Write(batch));
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
