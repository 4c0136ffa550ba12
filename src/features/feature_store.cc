#include "features/feature_store.h"

#include <chrono>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace kosh::features {

int64_t SystemNowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// StorageKey over any range of parts (strings or views).
template <typename Parts>
std::string StorageKeyOf(uint32_t group_id, const Parts& parts) {
  std::string out;
  size_t total = 4;
  for (const auto& p : parts) total += p.size() + 2;
  out.reserve(total);
  out.push_back(static_cast<char>(group_id >> 24));
  out.push_back(static_cast<char>(group_id >> 16));
  out.push_back(static_cast<char>(group_id >> 8));
  out.push_back(static_cast<char>(group_id));
  for (const auto& p : parts) {
    uint64_t n = p.size();
    while (n >= 0x80) {
      out.push_back(static_cast<char>(n | 0x80));
      n >>= 7;
    }
    out.push_back(static_cast<char>(n));
    out.append(p.data(), p.size());
  }
  return out;
}

}  // namespace

std::string StorageKey(uint32_t group_id, const v1::EntityKey& key) { return StorageKeyOf(group_id, key.parts()); }

// The keys of a read: a request's EntityKeys, or text views with a fixed number of parts per key.
class FeatureStore::KeyList {
 public:
  explicit KeyList(const google::protobuf::RepeatedPtrField<v1::EntityKey>& keys) : proto_(&keys) {}
  // Views: the number of parts per key is the entity's, known once the plan has found it (Bind).
  explicit KeyList(absl::Span<const absl::string_view> parts) : views_(parts) {}

  // Views only: cuts the parts into keys of `per_key`; false if they do not divide evenly.
  bool Bind(size_t per_key) {
    if (proto_ != nullptr) return true;
    per_key_ = per_key;
    return per_key != 0 && views_.size() % per_key == 0;
  }
  size_t total_parts() const { return views_.size(); }

  size_t size() const {
    if (proto_ != nullptr) return static_cast<size_t>(proto_->size());
    return per_key_ == 0 ? 0 : views_.size() / per_key_;
  }
  size_t parts(size_t i) const { return proto_ != nullptr ? static_cast<size_t>((*proto_)[static_cast<int>(i)].parts_size()) : per_key_; }
  size_t part_size(size_t i, size_t p) const {
    return proto_ != nullptr ? (*proto_)[static_cast<int>(i)].parts(static_cast<int>(p)).size() : views_[i * per_key_ + p].size();
  }
  std::string StorageKey(uint32_t group_id, size_t i) const {
    if (proto_ != nullptr) return StorageKeyOf(group_id, (*proto_)[static_cast<int>(i)].parts());
    return StorageKeyOf(group_id, views_.subspan(i * per_key_, per_key_));
  }

 private:
  const google::protobuf::RepeatedPtrField<v1::EntityKey>* proto_ = nullptr;
  absl::Span<const absl::string_view> views_;
  size_t per_key_ = 0;
};

bool FeatureStore::RowExpired(absl::string_view value, int64_t now_unix_s) {
  uint32_t expiry;
  if (!PeekExpiry(value, &expiry)) return false;  // never drop what we cannot read
  return expiry != 0 && now_unix_s >= static_cast<int64_t>(expiry);
}

FeatureStore::FeatureStore(storage::Engine* engine, storage::Keyspace ks, Registry* registry,
                           FeatureStoreOptions options, base::MetricsRegistry* metrics, Clock clock)
    : engine_(engine),
      ks_(ks),
      registry_(registry),
      options_(options),
      clock_(std::move(clock)),
      cache_(options.cache_bytes) {
  const char* names[5] = {"unspecified", "present", "default", "expired", "missing"};
  for (int i = 0; i < 5; ++i) {
    values_by_status_[i] = metrics->GetCounter(
        "kosh_feature_values_total", "Feature values served, by status.", {{"status", names[i]}});
  }
  corrupt_rows_ = metrics->GetCounter("kosh_feature_corrupt_rows_total",
                                      "Stored rows that failed to decode and were served as errors.");
  metrics->AddGauge("kosh_feature_cache_bytes", "Bytes held by the hot row cache.", [this] {
    return std::vector<std::pair<base::Labels, double>>{{{}, double(cache_.bytes())}};
  });
  metrics->AddGauge("kosh_feature_cache_capacity_bytes", "Capacity of the hot row cache.", [this] {
    return std::vector<std::pair<base::Labels, double>>{{{}, double(cache_.capacity_bytes())}};
  });
  metrics->AddGauge("kosh_feature_cache_entries", "Rows held by the hot row cache.", [this] {
    return std::vector<std::pair<base::Labels, double>>{{{}, double(cache_.entries())}};
  });
  metrics->AddGauge("kosh_feature_cache_lookups_total", "Hot row cache lookups by result.", [this] {
    return std::vector<std::pair<base::Labels, double>>{
        {{{"result", "hit"}}, double(cache_.hits())}, {{{"result", "miss"}}, double(cache_.misses())}};
  });
  metrics->AddGauge("kosh_feature_cache_hit_ratio", "Hot row cache hits / lookups since start.", [this] {
    double h = double(cache_.hits()), m = double(cache_.misses());
    return std::vector<std::pair<base::Labels, double>>{{{}, h + m > 0 ? h / (h + m) : 0.0}};
  });
  metrics->AddGauge("kosh_feature_cache_evictions_total", "Rows evicted from the hot row cache.", [this] {
    return std::vector<std::pair<base::Labels, double>>{{{}, double(cache_.evictions())}};
  });
}

// A resolved read request: the groups involved and, per output column, where it comes from.
struct FeatureStore::Plan {
  std::shared_ptr<const Snapshot> snap;
  const EntityInfo* entity = nullptr;
  struct GroupRead {
    const GroupInfo* group;
    // The encoded rows back to back, and per key its (offset, size) in row_data; size 0 = absent.
    // One buffer rather than a string per key: a read of 100 keys would otherwise make 100 heap
    // allocations on the hot path.
    std::string row_data;
    std::vector<std::pair<size_t, size_t>> row_spans;
    absl::string_view row(int k) const {
      return absl::string_view(row_data).substr(row_spans[k].first, row_spans[k].second);
    }
    // Per stored version (index v-1): for each of this group's columns, the field index in that
    // version's layout, or -1 when the version lacks the feature. Filled lazily.
    std::vector<std::vector<int>> field_of_column;
  };
  std::vector<GroupRead> groups;
  struct ColumnRef {
    int group;            // index into groups
    int group_column;     // index among the group's columns
    // The column's definition (latest version that has it); owned by `snap`.
    const FeatureSpec* spec;
  };
  std::vector<ColumnRef> columns;
  std::vector<std::vector<int>> group_columns;  // per group: indices into columns
  int64_t now = 0;
};

absl::Status FeatureStore::MakePlan(const v1::RetrieveRequest& req, KeyList* key_list, Plan* plan) {
  plan->snap = registry_->snapshot();
  plan->entity = plan->snap->FindEntity(req.entity());
  if (plan->entity == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("entity: unknown entity \"", req.entity(), "\""));
  }
  const size_t key_parts = static_cast<size_t>(plan->entity->def.key_columns_size());
  if (!key_list->Bind(key_parts)) {
    return absl::InvalidArgumentError(absl::StrCat("keys: ", key_list->total_parts(), " key parts for entity \"",
                                                   req.entity(), "\", which has ", key_parts, " key columns"));
  }
  const KeyList& keys = *key_list;
  if (keys.size() > options_.max_keys_per_request) {
    return absl::ResourceExhaustedError(absl::StrCat("keys: ", keys.size(),
                                                     " keys exceeds the limit of ",
                                                     options_.max_keys_per_request, " per request"));
  }
  if (req.features().empty()) {
    return absl::InvalidArgumentError("features: name at least one feature (\"group.feature\" or \"group.*\")");
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys.parts(i) != key_parts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "keys[", i, "]: entity \"", req.entity(), "\" is keyed by (",
          absl::StrJoin(plan->entity->def.key_columns(), ", "), "): expected ", key_parts,
          " part", key_parts == 1 ? "" : "s", ", got ", keys.parts(i)));
    }
    for (size_t p = 0; p < key_parts; ++p) {
      if (keys.part_size(i, p) > options_.max_key_part_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("keys[", i, "].parts[", p, "]: ", keys.part_size(i, p),
                                                       " bytes exceeds the limit of ",
                                                       options_.max_key_part_bytes));
      }
    }
  }
  absl::flat_hash_map<const GroupInfo*, int> group_index;
  auto add_column = [&](const GroupInfo* g, const FeatureSpec& spec) {
    auto [it, inserted] = group_index.try_emplace(g, static_cast<int>(plan->groups.size()));
    if (inserted) {
      plan->groups.push_back({g, {}, {}, {}});
      plan->group_columns.emplace_back();
    }
    int gi = it->second;
    int gc = static_cast<int>(plan->group_columns[gi].size());
    plan->group_columns[gi].push_back(static_cast<int>(plan->columns.size()));
    plan->columns.push_back({gi, gc, &spec});
  };
  for (int j = 0; j < req.features_size(); ++j) {
    const std::string& ref = req.features(j);
    size_t dot = ref.find('.');
    if (dot == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("features[", j, "]: \"", ref,
                                                     "\" is not \"group.feature\" or \"group.*\""));
    }
    absl::string_view gname = absl::string_view(ref).substr(0, dot);
    absl::string_view fname = absl::string_view(ref).substr(dot + 1);
    auto git = plan->entity->groups.find(gname);
    if (git == plan->entity->groups.end()) {
      return absl::InvalidArgumentError(absl::StrCat("features[", j, "]: unknown feature group \"", gname,
                                                     "\" of entity \"", req.entity(), "\""));
    }
    const GroupInfo* g = git->second.get();
    if (fname == "*") {
      for (const auto& name : g->latest_names) add_column(g, g->all_features.at(name));
      continue;
    }
    auto fit = g->all_features.find(fname);
    if (fit == g->all_features.end()) {
      return absl::InvalidArgumentError(absl::StrCat("features[", j, "]: unknown feature \"", fname,
                                                     "\" in group \"", gname, "\""));
    }
    add_column(g, fit->second);
  }
  plan->now = clock_();
  return absl::OkStatus();
}

namespace {

// Looks up every key of one group through the cache, then the engine for the misses.
template <typename Keys>
absl::Status FetchGroup(storage::Engine* engine, storage::Keyspace ks, RowCache* cache, uint32_t group_id,
                        const Keys& keys, std::string* data, std::vector<std::pair<size_t, size_t>>* spans) {
  const size_t n = keys.size();
  data->clear();
  spans->assign(n, {0, 0});
  std::vector<std::string> skeys(n);
  std::vector<size_t> miss;
  std::vector<RowCache::Ticket> tickets;
  std::string row;
  for (size_t i = 0; i < n; ++i) {
    skeys[i] = keys.StorageKey(group_id, i);
    RowCache::Ticket t;
    if (cache->Lookup(skeys[i], &row, &t)) {
      if (data->empty()) data->reserve(n * (row.size() + 8));
      (*spans)[i] = {data->size(), row.size()};
      data->append(row);
    } else {
      miss.push_back(i);
      tickets.push_back(t);
    }
  }
  if (miss.empty()) return absl::OkStatus();
  std::vector<absl::string_view> mkeys(miss.size());
  for (size_t m = 0; m < miss.size(); ++m) mkeys[m] = skeys[miss[m]];
  std::vector<std::optional<std::string>> values;
  RETURN_IF_ERROR(engine->MultiGet(ks, mkeys, &values));
  for (size_t m = 0; m < miss.size(); ++m) {
    absl::string_view v = values[m].has_value() ? absl::string_view(*values[m]) : absl::string_view();
    (*spans)[miss[m]] = {data->size(), v.size()};
    data->append(v.data(), v.size());
    cache->Insert(mkeys[m], v, tickets[m]);
  }
  return absl::OkStatus();
}

// Maps a group's columns onto the fields of the layout of version `v`.
const std::vector<int>& ColumnFields(const GroupInfo& g, uint32_t v, const std::vector<const FeatureSpec*>& specs,
                                     std::vector<std::vector<int>>* cache) {
  if (cache->size() < g.layouts.size()) cache->resize(g.layouts.size());
  std::vector<int>& m = (*cache)[v - 1];
  if (m.empty() && !specs.empty()) {
    const Layout& layout = *g.layouts[v - 1];
    m.resize(specs.size());
    for (size_t c = 0; c < specs.size(); ++c) {
      int idx = layout.IndexOf(specs[c]->name());
      // A feature retyped since that version reads as its default: the stored bytes are of
      // another type than the column promises.
      if (idx >= 0 && (layout.spec(idx).type() != specs[c]->type() ||
                       layout.spec(idx).vector_length() != specs[c]->vector_length())) {
        idx = -2;
      }
      m[c] = idx;
    }
  }
  return m;
}

}  // namespace

absl::Status FeatureStore::ResolveRow(const GroupInfo& g, absl::string_view enc, int k, int64_t now,
                                      std::string* scratch, v1::ValueStatus* status, RowView* view,
                                      const Layout** layout) {
  *status = v1::MISSING;
  *layout = nullptr;
  if (enc.empty()) return absl::OkStatus();
  auto parsed = ParseRow(enc, scratch);
  if (parsed.ok()) *layout = g.layout(parsed->version);
  if (!parsed.ok() || *layout == nullptr || !CheckPayload(**layout, *parsed).ok()) {
    corrupt_rows_->Inc();
    return absl::DataLossError(
        absl::StrCat("keys[", k, "]: the stored row of group \"", g.def.name(), "\" cannot be decoded"));
  }
  *view = *parsed;
  *status = view->Expired(now) ? v1::EXPIRED : v1::PRESENT;
  return absl::OkStatus();
}

absl::Status FeatureStore::Retrieve(const v1::RetrieveRequest& req, v1::RetrieveResponse* resp) {
  return RetrieveKeys(req, KeyList(req.keys()), resp);
}

absl::Status FeatureStore::Retrieve(const v1::RetrieveRequest& req, absl::Span<const absl::string_view> parts,
                                    v1::RetrieveResponse* resp) {
  return RetrieveKeys(req, KeyList(parts), resp);
}

absl::Status FeatureStore::RetrieveKeys(const v1::RetrieveRequest& req, KeyList keys, v1::RetrieveResponse* resp) {
  Plan plan;
  RETURN_IF_ERROR(MakePlan(req, &keys, &plan));
  for (const auto& c : plan.columns) {
    auto* col = resp->add_columns();
    col->set_group(plan.groups[c.group].group->def.name());
    col->set_feature(c.spec->name());
    col->set_type(c.spec->type());
    col->set_vector_length(c.spec->vector_length());
  }
  const int nkeys = static_cast<int>(keys.size());
  const int ncols = static_cast<int>(plan.columns.size());
  // Column defaults, made on first use: most reads find every value present.
  std::vector<std::unique_ptr<Value>> defaults(ncols);
  auto default_value = [&](int c) -> const Value& {
    if (defaults[c] == nullptr) defaults[c] = std::make_unique<Value>(DefaultValue(*plan.columns[c].spec));
    return *defaults[c];
  };
  for (int k = 0; k < nkeys; ++k) {
    auto* row = resp->add_rows();
    row->mutable_values()->Reserve(ncols);
    for (int c = 0; c < ncols; ++c) row->add_values();
    row->mutable_statuses()->Resize(ncols, v1::MISSING);
  }
  uint64_t counts[5] = {0, 0, 0, 0, 0};
  std::string scratch;
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    auto& gr = plan.groups[gi];
    RETURN_IF_ERROR(FetchGroup(engine_, ks_, &cache_, gr.group->def.id(), keys, &gr.row_data, &gr.row_spans));
    const std::vector<int>& cols = plan.group_columns[gi];
    std::vector<const FeatureSpec*> specs;
    for (int c : cols) specs.push_back(plan.columns[c].spec);
    for (int k = 0; k < nkeys; ++k) {
      auto* row = resp->mutable_rows(k);
      absl::string_view enc = gr.row(k);
      v1::ValueStatus row_status;
      RowView view;
      const Layout* layout;
      RETURN_IF_ERROR(ResolveRow(*gr.group, enc, k, plan.now, &scratch, &row_status, &view, &layout));
      const std::vector<int>* fields =
          row_status == v1::PRESENT ? &ColumnFields(*gr.group, view.version, specs, &gr.field_of_column)
                                    : nullptr;
      for (size_t gc = 0; gc < cols.size(); ++gc) {
        int c = cols[gc];
        v1::ValueStatus st = row_status;
        if (st == v1::PRESENT) {
          int f = (*fields)[gc];
          if (f >= 0 && view.Present(f)) {
            DecodeValue(*layout, view, f, row->mutable_values(c));
          } else {
            st = v1::DEFAULT;
          }
        }
        if (st != v1::PRESENT) *row->mutable_values(c) = default_value(c);
        row->set_statuses(c, st);
        ++counts[st];
      }
    }
  }
  for (int s = 0; s < 5; ++s) {
    if (counts[s] != 0) values_by_status_[s]->Inc(counts[s]);
  }
  return absl::OkStatus();
}

absl::Status FeatureStore::RetrieveMatrix(const v1::RetrieveRequest& req,
                                          v1::RetrieveMatrixResponse* resp) {
  KeyList keys(req.keys());
  Plan plan;
  RETURN_IF_ERROR(MakePlan(req, &keys, &plan));
  const int ncols = static_cast<int>(plan.columns.size());
  std::vector<uint32_t> col_offset(ncols);
  uint32_t width = 0;
  for (int c = 0; c < ncols; ++c) {
    const FeatureSpec& spec = *plan.columns[c].spec;
    if (!IsNumeric(spec.type())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "features: \"", plan.groups[plan.columns[c].group].group->def.name(), ".", spec.name(),
          "\" is ", TypeName(spec.type()), "; the matrix form takes numeric features only"));
    }
    auto* col = resp->add_columns();
    col->set_group(plan.groups[plan.columns[c].group].group->def.name());
    col->set_feature(spec.name());
    col->set_type(spec.type());
    col->set_vector_length(spec.vector_length());
    col_offset[c] = width;
    width += MatrixWidth(spec);
  }
  const int nkeys = req.keys_size();
  resp->set_num_rows(nkeys);
  resp->set_num_cols(width);
  resp->mutable_values()->Resize(nkeys * width, 0.0f);
  resp->mutable_statuses()->Resize(nkeys * ncols, v1::MISSING);
  float* out = resp->mutable_values()->mutable_data();
  int* statuses = resp->mutable_statuses()->mutable_data();
  // Defaults come from the column's own spec, through a one-feature layout, made on first use:
  // most reads find every value present, and compiling 50 layouts per request is not free.
  std::vector<std::vector<float>> defaults(ncols);
  auto default_floats = [&](int c) -> const std::vector<float>& {
    if (defaults[c].empty()) {
      Layout one(0, {*plan.columns[c].spec});
      auto d = one.DefaultFloats(0);
      defaults[c].assign(d.begin(), d.end());
    }
    return defaults[c];
  };
  uint64_t counts[5] = {0, 0, 0, 0, 0};
  std::string scratch;
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    auto& gr = plan.groups[gi];
    RETURN_IF_ERROR(FetchGroup(engine_, ks_, &cache_, gr.group->def.id(), keys, &gr.row_data, &gr.row_spans));
    const std::vector<int>& cols = plan.group_columns[gi];
    std::vector<const FeatureSpec*> specs;
    for (int c : cols) specs.push_back(plan.columns[c].spec);
    for (int k = 0; k < nkeys; ++k) {
      absl::string_view enc = gr.row(k);
      v1::ValueStatus row_status;
      RowView view;
      const Layout* layout;
      RETURN_IF_ERROR(ResolveRow(*gr.group, enc, k, plan.now, &scratch, &row_status, &view, &layout));
      const std::vector<int>* fields =
          row_status == v1::PRESENT ? &ColumnFields(*gr.group, view.version, specs, &gr.field_of_column)
                                    : nullptr;
      float* row_out = out + static_cast<size_t>(k) * width;
      for (size_t gc = 0; gc < cols.size(); ++gc) {
        int c = cols[gc];
        v1::ValueStatus st = row_status;
        if (st == v1::PRESENT) {
          int f = (*fields)[gc];
          if (f >= 0 && view.Present(f)) {
            DecodeFloats(*layout, view, f, row_out + col_offset[c]);
          } else {
            st = v1::DEFAULT;
          }
        }
        if (st != v1::PRESENT) {
          const std::vector<float>& d = default_floats(c);
          std::copy(d.begin(), d.end(), row_out + col_offset[c]);
        }
        statuses[static_cast<size_t>(k) * ncols + c] = st;
        ++counts[st];
      }
    }
  }
  for (int s = 0; s < 5; ++s) {
    if (counts[s] != 0) values_by_status_[s]->Inc(counts[s]);
  }
  return absl::OkStatus();
}

absl::Status FeatureStore::Persist(const v1::PersistRequest& req, v1::PersistResponse* resp) {
  auto snap = registry_->snapshot();
  const EntityInfo* entity = snap->FindEntity(req.entity());
  if (entity == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("entity: unknown entity \"", req.entity(), "\""));
  }
  auto git = entity->groups.find(req.group());
  if (git == entity->groups.end()) {
    return absl::InvalidArgumentError(absl::StrCat("group: unknown feature group \"", req.group(),
                                                   "\" of entity \"", req.entity(), "\""));
  }
  const GroupInfo& g = *git->second;
  const Layout* layout = req.version() == 0 ? &g.latest() : g.layout(req.version());
  if (layout == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("version: group \"", req.group(), "\" has versions 1 to ",
                                                   g.layouts.size(), ", not ", req.version()));
  }
  if (req.rows().empty()) {
    return absl::InvalidArgumentError("rows: no rows to write");
  }
  if (static_cast<uint32_t>(req.rows_size()) > options_.max_rows_per_write) {
    return absl::ResourceExhaustedError(absl::StrCat("rows: ", req.rows_size(),
                                                     " rows exceeds the limit of ",
                                                     options_.max_rows_per_write, " per request"));
  }
  std::vector<int> fields;
  if (req.features().empty()) {
    for (size_t i = 0; i < layout->size(); ++i) fields.push_back(static_cast<int>(i));
  } else {
    std::vector<bool> seen(layout->size(), false);
    for (int j = 0; j < req.features_size(); ++j) {
      int idx = layout->IndexOf(req.features(j));
      if (idx < 0) {
        return absl::InvalidArgumentError(absl::StrCat("features[", j, "]: unknown feature \"", req.features(j),
                                                       "\" in version ", layout->version(), " of group \"",
                                                       req.group(), "\""));
      }
      if (seen[idx]) {
        return absl::InvalidArgumentError(
            absl::StrCat("features[", j, "]: feature \"", req.features(j), "\" is named twice"));
      }
      seen[idx] = true;
      fields.push_back(idx);
    }
  }
  const int key_parts = entity->def.key_columns_size();
  const int64_t now = clock_();
  uint32_t expiry = 0;
  if (g.def.ttl_seconds() > 0) {
    // Saturate: now + ttl overflows int64 for huge TTLs (the registry accepts any positive one).
    const int64_t max_expiry = UINT32_MAX;
    int64_t e = g.def.ttl_seconds() >= max_expiry - now ? max_expiry : now + g.def.ttl_seconds();
    expiry = static_cast<uint32_t>(e);
  }
  storage::WriteBatch batch;
  std::vector<const Value*> values;
  for (int r = 0; r < req.rows_size(); ++r) {
    const auto& row = req.rows(r);
    if (row.key().parts_size() != key_parts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rows[", r, "].key: entity \"", req.entity(), "\" is keyed by (",
          absl::StrJoin(entity->def.key_columns(), ", "), "): expected ", key_parts, " part",
          key_parts == 1 ? "" : "s", ", got ", row.key().parts_size()));
    }
    for (int p = 0; p < key_parts; ++p) {
      if (row.key().parts(p).empty()) {
        return absl::InvalidArgumentError(absl::StrCat("rows[", r, "].key.parts[", p, "]: empty key part"));
      }
      if (row.key().parts(p).size() > options_.max_key_part_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("rows[", r, "].key.parts[", p, "]: ",
                                                       row.key().parts(p).size(), " bytes exceeds the limit of ",
                                                       options_.max_key_part_bytes));
      }
    }
    if (static_cast<size_t>(row.values_size()) != fields.size()) {
      return absl::InvalidArgumentError(absl::StrCat("rows[", r, "].values: expected ", fields.size(),
                                                     " values (one per feature), got ", row.values_size()));
    }
    values.clear();
    for (const auto& v : row.values()) values.push_back(&v);
    std::string encoded;
    RETURN_IF_ERROR(EncodeRow(*layout, fields, values, expiry, options_.codec,
                              absl::StrCat("rows[", r, "]"), &encoded));
    batch.Put(ks_, StorageKey(g.def.id(), row.key()), std::move(encoded));
  }
  RETURN_IF_ERROR(engine_->Write(batch));
  for (const auto& op : batch.ops()) cache_.Invalidate(op.key);
  resp->set_rows_written(req.rows_size());
  resp->set_version(layout->version());
  return absl::OkStatus();
}

}  // namespace kosh::features
