#include "features/registry.h"

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "spdlog/spdlog.h"
#include "google/protobuf/util/message_differencer.h"

namespace kosh::features {
namespace {

constexpr absl::string_view kEntityPrefix = "entity/";
constexpr absl::string_view kGroupPrefix = "group/";
constexpr absl::string_view kNextIdKey = "meta/next_group_id";

std::string EntityKey(const std::string& name) { return absl::StrCat(kEntityPrefix, name); }
std::string GroupKey(const std::string& entity, const std::string& name) {
  return absl::StrCat(kGroupPrefix, entity, "/", name);
}

bool SameFeatures(const google::protobuf::RepeatedPtrField<FeatureSpec>& a,
                  const google::protobuf::RepeatedPtrField<FeatureSpec>& b) {
  if (a.size() != b.size()) return false;
  for (int i = 0; i < a.size(); ++i) {
    if (!google::protobuf::util::MessageDifferencer::Equals(a[i], b[i])) return false;
  }
  return true;
}

std::string Prefixed(const std::string& where, absl::string_view field) {
  return where.empty() ? std::string(field) : absl::StrCat(where, ".", field);
}

}  // namespace

bool IsValidName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

std::shared_ptr<const GroupInfo> CompileGroup(const v1::FeatureGroup& def) {
  auto g = std::make_shared<GroupInfo>();
  g->def = def;
  for (const auto& v : def.versions()) {
    g->layouts.push_back(std::make_shared<const Layout>(
        v.version(), std::vector<FeatureSpec>(v.features().begin(), v.features().end())));
    for (const auto& f : v.features()) g->all_features[f.name()] = f;  // later versions win
  }
  if (!def.versions().empty()) {
    for (const auto& f : def.versions().rbegin()->features()) g->latest_names.push_back(f.name());
  }
  return g;
}

struct Registry::Draft {
  std::map<std::string, v1::Entity> entities;
  std::map<std::pair<std::string, std::string>, v1::FeatureGroup> groups;
  std::set<std::string> dirty_entities;
  std::set<std::pair<std::string, std::string>> dirty_groups;
  uint32_t next_id = 1;
  v1::ApplySchemaResponse counts;
};

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(storage::ConfigStore* store, RegistryLimits limits) {
  std::unique_ptr<Registry> r(new Registry(store, limits));
  {
    absl::MutexLock lock(&r->mu_);
    RETURN_IF_ERROR(r->ReloadLocked());
  }
  {
    absl::MutexLock g(&r->guard_->mu);
    r->guard_->self = r.get();
  }
  store->Watch([guard = r->guard_] {
    absl::MutexLock g(&guard->mu);
    if (guard->self == nullptr) return;
    absl::Status s = guard->self->Reload();
    if (s.ok()) {
      spdlog::info("registry: reloaded the definitions another server changed");
    } else {
      spdlog::error("registry: reloading after a change by another server failed (serving the previous "
                    "definitions): {}",
                    s.ToString());
    }
  });
  return r;
}

Registry::~Registry() {
  absl::MutexLock g(&guard_->mu);  // waits for a reload in progress on the store's thread
  guard_->self = nullptr;
}

absl::Status Registry::Reload() {
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(ReloadLocked());
  }
  NotifyListeners();
  return absl::OkStatus();
}

void Registry::AddListener(std::function<void()> fn) {
  absl::MutexLock l(&listeners_mu_);
  listeners_.push_back(std::move(fn));
}

void Registry::NotifyListeners() {
  std::vector<std::function<void()>> fns;
  {
    absl::MutexLock l(&listeners_mu_);
    fns = listeners_;
  }
  for (auto& fn : fns) fn();
}

absl::Status Registry::ReloadLocked() {
  // One Scan of the whole namespace: a shared store checks later writes against the generation
  // this read saw, so the snapshot and that generation must come from the same read.
  std::map<std::string, std::shared_ptr<EntityInfo>> entities;
  std::vector<std::pair<std::string, v1::FeatureGroup>> groups;  // (key, definition)
  std::string next;
  absl::Status parse_error;
  RETURN_IF_ERROR(store_->Scan("", [&](absl::string_view k, absl::string_view v) {
    if (absl::StartsWith(k, kEntityPrefix)) {
      v1::Entity e;
      if (!e.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
        parse_error = absl::DataLossError(absl::StrCat("registry record ", k, " is corrupt"));
        return false;
      }
      auto info = std::make_shared<EntityInfo>();
      info->def = e;
      entities[e.name()] = info;
    } else if (absl::StartsWith(k, kGroupPrefix)) {
      v1::FeatureGroup g;
      if (!g.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
        parse_error = absl::DataLossError(absl::StrCat("registry record ", k, " is corrupt"));
        return false;
      }
      groups.emplace_back(std::string(k), std::move(g));
    } else if (k == kNextIdKey) {
      next = std::string(v);
    }
    return true;
  }));
  RETURN_IF_ERROR(parse_error);
  uint32_t max_id = 0;
  for (const auto& [k, g] : groups) {
    auto it = entities.find(g.entity());
    if (it == entities.end()) {
      return absl::DataLossError(absl::StrCat("registry record ", k, " names unknown entity"));
    }
    max_id = std::max(max_id, g.id());
    it->second->groups[g.name()] = CompileGroup(g);
  }
  uint32_t next_id = 1;
  if (!next.empty() && !absl::SimpleAtoi(next, &next_id)) {
    return absl::DataLossError("registry record meta/next_group_id is corrupt");
  }
  auto snap = std::make_shared<Snapshot>();
  for (auto& [name, info] : entities) snap->entities[name] = info;
  next_group_id_ = std::max(next_id, max_id + 1);
  std::atomic_store_explicit(&snapshot_, std::shared_ptr<const Snapshot>(std::move(snap)),
                             std::memory_order_release);
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<T> Registry::Mutate(const BuildFn<T>& build) {
  bool reloaded = false;
  absl::StatusOr<T> result = absl::InternalError("no attempt");
  {
    absl::MutexLock lock(&mu_);
    for (int attempt = 1;; ++attempt) {
      Draft d;
      d.next_id = next_group_id_;
      result = build(*snapshot(), &d);
      if (!result.ok()) break;
      absl::Status st = Commit(d);
      if (st.ok()) break;
      if (st.code() != absl::StatusCode::kAborted) {
        result = st;
        break;
      }
      if (attempt == kMutationAttempts) {
        result = absl::AbortedError(absl::StrCat("the registry was changed by other servers during each of ",
                                                 kMutationAttempts, " attempts; nothing was applied, try again (",
                                                 st.message(), ")"));
        break;
      }
      // Another server wrote first: read its definitions and decide again on those (the request
      // may now conflict with them, or be a no-op).
      absl::Status reload = ReloadLocked();
      if (!reload.ok()) {
        result = reload;
        break;
      }
      reloaded = true;
    }
  }
  if (reloaded) NotifyListeners();
  return result;
}

absl::Status Registry::ValidateEntity(const v1::Entity& e, const std::string& where) const {
  if (!IsValidName(e.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        Prefixed(where, "name"), ": \"", e.name(),
        "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
  }
  if (e.key_columns().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Prefixed(where, "key_columns"), ": entity \"", e.name(), "\" needs at least one key column"));
  }
  if (static_cast<uint32_t>(e.key_columns_size()) > limits_.max_key_columns) {
    return absl::InvalidArgumentError(absl::StrCat(Prefixed(where, "key_columns"), ": at most ",
                                                   limits_.max_key_columns, " key columns"));
  }
  std::set<std::string> seen;
  for (int i = 0; i < e.key_columns_size(); ++i) {
    const std::string& c = e.key_columns(i);
    std::string field = Prefixed(where, absl::StrCat("key_columns[", i, "]"));
    if (!IsValidName(c)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": \"", c, "\" is not a valid name"));
    }
    if (!seen.insert(c).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": duplicate key column \"", c, "\""));
    }
  }
  return absl::OkStatus();
}

absl::Status Registry::ValidateFeatures(const google::protobuf::RepeatedPtrField<FeatureSpec>& features,
                                        const std::string& where) const {
  if (features.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Prefixed(where, "features"), ": a feature group needs at least one feature"));
  }
  if (static_cast<uint32_t>(features.size()) > limits_.max_features_per_group) {
    return absl::InvalidArgumentError(absl::StrCat(Prefixed(where, "features"), ": ", features.size(),
                                                   " features exceeds the limit of ",
                                                   limits_.max_features_per_group));
  }
  std::set<std::string> seen;
  for (int i = 0; i < features.size(); ++i) {
    const FeatureSpec& f = features[i];
    std::string field = Prefixed(where, absl::StrCat("features[", i, "]"));
    if (!IsValidName(f.name())) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".name: \"", f.name(), "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
    }
    if (!seen.insert(f.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: duplicate feature \"", f.name(), "\""));
    }
    if (f.type() == v1::FEATURE_TYPE_UNSPECIFIED || !v1::FeatureType_IsValid(f.type())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".type: feature \"", f.name(), "\" needs a type"));
    }
    if (IsVectorType(f.type())) {
      if (f.vector_length() == 0 || f.vector_length() > limits_.max_vector_length) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".vector_length: ", TypeName(f.type()),
                                                       " feature \"", f.name(), "\" needs a vector_length from 1 to ",
                                                       limits_.max_vector_length));
      }
    } else if (f.vector_length() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".vector_length: only vector types take a length"));
    }
    if (f.max_length() != 0) {
      if (!IsVariableWidth(f.type())) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".max_length: only STRING and BYTES take a max_length"));
      }
      if (f.max_length() > limits_.max_string_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".max_length: exceeds the server limit of ",
                                                       limits_.max_string_bytes, " bytes"));
      }
    }
    if (f.has_default_value()) {
      absl::Status s = ValidateValue(f, f.default_value(), limits_.max_string_bytes);
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ".default_value: ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Registry::Commit(Draft& draft) {
  std::vector<std::pair<std::string, std::string>> puts;
  for (const auto& name : draft.dirty_entities) {
    puts.emplace_back(EntityKey(name), draft.entities.at(name).SerializeAsString());
  }
  for (const auto& key : draft.dirty_groups) {
    puts.emplace_back(GroupKey(key.first, key.second), draft.groups.at(key).SerializeAsString());
  }
  if (puts.empty()) return absl::OkStatus();
  puts.emplace_back(std::string(kNextIdKey), absl::StrCat(draft.next_id));
  RETURN_IF_ERROR(store_->Write(puts));
  next_group_id_ = draft.next_id;

  auto old = snapshot();
  auto snap = std::make_shared<Snapshot>(*old);
  for (const auto& name : draft.dirty_entities) {
    auto info = std::make_shared<EntityInfo>();
    info->def = draft.entities.at(name);
    if (auto it = old->entities.find(name); it != old->entities.end()) info->groups = it->second->groups;
    snap->entities[name] = info;
  }
  for (const auto& key : draft.dirty_groups) {
    auto cur = snap->entities.at(key.first);
    auto info = std::make_shared<EntityInfo>(*cur);
    info->groups[key.second] = CompileGroup(draft.groups.at(key));
    snap->entities[key.first] = info;
  }
  std::atomic_store_explicit(&snapshot_, std::shared_ptr<const Snapshot>(snap),
                             std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<v1::Entity> Registry::CreateEntity(const v1::Entity& entity) {
  RETURN_IF_ERROR(ValidateEntity(entity, ""));
  return Mutate<v1::Entity>([&](const Snapshot& snap, Draft* d) -> absl::StatusOr<v1::Entity> {
    if (snap.FindEntity(entity.name()) != nullptr) {
      return absl::AlreadyExistsError(absl::StrCat("entity \"", entity.name(), "\" already exists"));
    }
    d->entities[entity.name()] = entity;
    d->dirty_entities.insert(entity.name());
    return entity;
  });
}

absl::StatusOr<v1::FeatureGroup> Registry::CreateFeatureGroup(const v1::CreateFeatureGroupRequest& req) {
  if (!IsValidName(req.name())) {
    return absl::InvalidArgumentError(absl::StrCat("name: \"", req.name(), "\" is not a valid name"));
  }
  if (req.ttl_seconds() < 0) {
    return absl::InvalidArgumentError("ttl_seconds: must be 0 (never) or positive");
  }
  RETURN_IF_ERROR(ValidateFeatures(req.features(), ""));
  return Mutate<v1::FeatureGroup>([&](const Snapshot& snap, Draft* d) -> absl::StatusOr<v1::FeatureGroup> {
    const EntityInfo* e = snap.FindEntity(req.entity());
    if (e == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("entity: unknown entity \"", req.entity(), "\""));
    }
    if (e->groups.contains(req.name())) {
      return absl::AlreadyExistsError(absl::StrCat("feature group \"", req.name(), "\" of entity \"",
                                                   req.entity(), "\" already exists"));
    }
    v1::FeatureGroup g;
    g.set_entity(req.entity());
    g.set_name(req.name());
    g.set_ttl_seconds(req.ttl_seconds());
    g.set_description(req.description());
    g.set_id(d->next_id++);
    auto* v = g.add_versions();
    v->set_version(1);
    *v->mutable_features() = req.features();
    d->groups[{req.entity(), req.name()}] = g;
    d->dirty_groups.insert({req.entity(), req.name()});
    return g;
  });
}

absl::StatusOr<v1::FeatureGroup> Registry::AddVersion(const v1::AddFeatureGroupVersionRequest& req) {
  RETURN_IF_ERROR(ValidateFeatures(req.features(), ""));
  return Mutate<v1::FeatureGroup>([&](const Snapshot& snap, Draft* d) -> absl::StatusOr<v1::FeatureGroup> {
    const EntityInfo* e = snap.FindEntity(req.entity());
    if (e == nullptr) {
      return absl::NotFoundError(absl::StrCat("entity: unknown entity \"", req.entity(), "\""));
    }
    auto it = e->groups.find(req.group());
    if (it == e->groups.end()) {
      return absl::NotFoundError(absl::StrCat("group: unknown feature group \"", req.group(),
                                              "\" of entity \"", req.entity(), "\""));
    }
    v1::FeatureGroup g = it->second->def;
    const auto& latest = g.versions(g.versions_size() - 1);
    if (SameFeatures(latest.features(), req.features())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "features: identical to version ", latest.version(), " of \"", req.group(), "\"; nothing to add"));
    }
    auto* v = g.add_versions();
    v->set_version(latest.version() + 1);
    *v->mutable_features() = req.features();
    d->groups[{req.entity(), req.group()}] = g;
    d->dirty_groups.insert({req.entity(), req.group()});
    return g;
  });
}

absl::StatusOr<v1::ApplySchemaResponse> Registry::Apply(const v1::ApplySchemaRequest& req) {
  return Mutate<v1::ApplySchemaResponse>([&](const Snapshot& snap,
                                             Draft* dp) -> absl::StatusOr<v1::ApplySchemaResponse> {
    Draft& d = *dp;
    for (const auto& [name, info] : snap.entities) {
      d.entities[name] = info->def;
      for (const auto& [gname, g] : info->groups) d.groups[{name, gname}] = g->def;
    }
    for (int i = 0; i < req.entities_size(); ++i) {
      const v1::Entity& e = req.entities(i);
      std::string where = absl::StrCat("entities[", i, "]");
      RETURN_IF_ERROR(ValidateEntity(e, where));
      auto it = d.entities.find(e.name());
      if (it == d.entities.end()) {
        d.entities[e.name()] = e;
        d.dirty_entities.insert(e.name());
        d.counts.set_entities_created(d.counts.entities_created() + 1);
        continue;
      }
      if (!std::equal(it->second.key_columns().begin(), it->second.key_columns().end(),
                      e.key_columns().begin(), e.key_columns().end())) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": entity \"", e.name(), "\" exists with key columns [",
            absl::StrJoin(it->second.key_columns(), ", "), "], the schema says [",
            absl::StrJoin(e.key_columns(), ", "), "]; changing key columns is not supported"));
      }
    }
    for (int i = 0; i < req.groups_size(); ++i) {
      const v1::FeatureGroup& g = req.groups(i);
      std::string where = absl::StrCat("groups[", i, "]");
      if (!IsValidName(g.name())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", g.name(), "\" is not a valid name"));
      }
      if (!d.entities.contains(g.entity())) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".entity: unknown entity \"", g.entity(), "\" (group \"", g.name(), "\")"));
      }
      if (g.ttl_seconds() < 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".ttl_seconds: must be 0 (never) or positive"));
      }
      if (g.versions().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".versions: group \"", g.name(), "\" has no versions"));
      }
      for (int j = 0; j < g.versions_size(); ++j) {
        std::string vwhere = absl::StrCat(where, ".versions[", j, "]");
        if (g.versions(j).version() != static_cast<uint32_t>(j + 1)) {
          return absl::InvalidArgumentError(absl::StrCat(vwhere, ".version: expected ", j + 1, ", got ",
                                                         g.versions(j).version(), " (versions count from 1 without gaps)"));
        }
        RETURN_IF_ERROR(ValidateFeatures(g.versions(j).features(), vwhere));
      }
      std::pair<std::string, std::string> key{g.entity(), g.name()};
      auto it = d.groups.find(key);
      if (it == d.groups.end()) {
        // As for versions appended to an existing group (below) and AddVersion: a version identical
        // to the one before it is refused.
        for (int j = 1; j < g.versions_size(); ++j) {
          if (SameFeatures(g.versions(j - 1).features(), g.versions(j).features())) {
            return absl::InvalidArgumentError(absl::StrCat(where, ".versions[", j, "]: identical to version ", j));
          }
        }
        v1::FeatureGroup ng = g;
        ng.set_id(d.next_id++);
        d.groups[key] = ng;
        d.dirty_groups.insert(key);
        d.counts.set_groups_created(d.counts.groups_created() + 1);
        continue;
      }
      v1::FeatureGroup& cur = it->second;
      if (cur.ttl_seconds() != g.ttl_seconds()) {
        return absl::FailedPreconditionError(absl::StrCat(where, ": group \"", g.name(), "\" exists with ttl_seconds ",
                                                          cur.ttl_seconds(), ", the schema says ", g.ttl_seconds()));
      }
      for (int j = 0; j < g.versions_size(); ++j) {
        if (j < cur.versions_size()) {
          if (!SameFeatures(cur.versions(j).features(), g.versions(j).features())) {
            return absl::FailedPreconditionError(absl::StrCat(
                where, ".versions[", j, "]: version ", j + 1, " of group \"", g.name(),
                "\" is registered with different features; add a new version instead of changing one"));
          }
        } else {
          if (SameFeatures(cur.versions(j - 1).features(), g.versions(j).features())) {
            return absl::InvalidArgumentError(absl::StrCat(where, ".versions[", j, "]: identical to version ", j));
          }
          *cur.add_versions() = g.versions(j);
          d.dirty_groups.insert(key);
          d.counts.set_versions_added(d.counts.versions_added() + 1);
        }
      }
      // Fewer versions in the schema than registered is fine: the schema is a prefix of history.
    }
    return d.counts;
  });
}

absl::StatusOr<v1::Entity> Registry::GetEntity(const std::string& name) const {
  auto snap = snapshot();
  const EntityInfo* e = snap->FindEntity(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("unknown entity \"", name, "\""));
  return e->def;
}

absl::StatusOr<v1::FeatureGroup> Registry::GetFeatureGroup(const std::string& entity,
                                                           const std::string& name) const {
  auto snap = snapshot();
  const EntityInfo* e = snap->FindEntity(entity);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("unknown entity \"", entity, "\""));
  auto it = e->groups.find(name);
  if (it == e->groups.end()) {
    return absl::NotFoundError(
        absl::StrCat("unknown feature group \"", name, "\" of entity \"", entity, "\""));
  }
  return it->second->def;
}

std::vector<v1::Entity> Registry::ListEntities() const {
  auto snap = snapshot();
  std::map<std::string, v1::Entity> sorted;
  for (const auto& [name, e] : snap->entities) sorted[name] = e->def;
  std::vector<v1::Entity> out;
  for (auto& [name, e] : sorted) out.push_back(std::move(e));
  return out;
}

absl::StatusOr<std::vector<v1::FeatureGroup>> Registry::ListFeatureGroups(const std::string& entity) const {
  auto snap = snapshot();
  std::map<std::pair<std::string, std::string>, v1::FeatureGroup> sorted;
  if (!entity.empty() && snap->FindEntity(entity) == nullptr) {
    return absl::NotFoundError(absl::StrCat("unknown entity \"", entity, "\""));
  }
  for (const auto& [name, e] : snap->entities) {
    if (!entity.empty() && name != entity) continue;
    for (const auto& [gname, g] : e->groups) sorted[{name, gname}] = g->def;
  }
  std::vector<v1::FeatureGroup> out;
  for (auto& [k, g] : sorted) out.push_back(std::move(g));
  return out;
}

}  // namespace kosh::features
