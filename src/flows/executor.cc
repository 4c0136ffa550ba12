#include "flows/executor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/status.h"
#include "datasets/dataset_manager.h"
#include "features/codec.h"
#include "interactions/interaction_store.h"

namespace kosh::flows {

Executor::Executor(Sources sources, const FlowsOptions& options)
    : sources_(sources), options_(options), pool_(options.threads) {}

namespace {

using v1::ValueStatus;

// Values of one column: one (broadcast) or one per row.
// Values point into the fetch responses (kept alive by the Run), the flow's defaults, or the Run's
// arena (inputs and computed columns): columns never copy a fetched value.
struct ColData {
  std::vector<const v1::Value*> values;
  std::vector<ValueStatus> statuses;
};

double Number(const v1::Value& v) {
  switch (v.kind_case()) {
    case v1::Value::kBoolValue: return v.bool_value() ? 1 : 0;
    case v1::Value::kInt32Value: return v.int32_value();
    case v1::Value::kInt64Value: return static_cast<double>(v.int64_value());
    case v1::Value::kFloat32Value: return v.float32_value();
    case v1::Value::kFloat64Value: return v.float64_value();
    default: return 0;
  }
}

// The key-part text of a STRING/INT32/INT64 value in *out: a STRING is viewed in place, a number is
// written to *buf first. False if the value has none.
bool KeyText(const v1::Value& v, std::string* buf, absl::string_view* out) {
  switch (v.kind_case()) {
    case v1::Value::kStringValue: *out = v.string_value(); return !out->empty();
    case v1::Value::kInt32Value: *buf = absl::StrCat(v.int32_value()); break;
    case v1::Value::kInt64Value: *buf = absl::StrCat(v.int64_value()); break;
    default: return false;
  }
  *out = *buf;
  return true;
}

// Copies a value into a message of the response: scalars and strings directly, lists generically.
void CopyValue(const v1::Value& from, v1::Value* to) {
  switch (from.kind_case()) {
    case v1::Value::kBoolValue: to->set_bool_value(from.bool_value()); break;
    case v1::Value::kInt32Value: to->set_int32_value(from.int32_value()); break;
    case v1::Value::kInt64Value: to->set_int64_value(from.int64_value()); break;
    case v1::Value::kFloat32Value: to->set_float32_value(from.float32_value()); break;
    case v1::Value::kFloat64Value: to->set_float64_value(from.float64_value()); break;
    case v1::Value::kStringValue: to->set_string_value(from.string_value()); break;
    case v1::Value::KIND_NOT_SET: break;
    default: to->CopyFrom(from);
  }
}

bool KindMatches(v1::FeatureType t, const v1::Value& v) {
  switch (t) {
    case v1::BOOL: return v.has_bool_value();
    case v1::INT32: return v.has_int32_value();
    case v1::INT64: return v.has_int64_value();
    case v1::FLOAT32: return v.has_float32_value();
    case v1::FLOAT64: return v.has_float64_value();
    case v1::STRING: return v.has_string_value();
    default: return false;
  }
}

// Appends the dense float32 form of a value: exactly `width` floats (vectors truncated or padded
// with zeros). `out` is a RepeatedField<float> or a std::vector<float>.
template <typename Floats>
void AppendFloats(const v1::Value& v, uint32_t width, Floats* out) {
  uint32_t added = 0;
  auto add = [&](float f) {
    if (added++ < width) out->Add(f);
  };
  switch (v.kind_case()) {
    case v1::Value::kFloatList:
      for (float f : v.float_list().values()) add(f);
      break;
    case v1::Value::kInt32List:
      for (int32_t x : v.int32_list().values()) add(static_cast<float>(x));
      break;
    case v1::Value::kInt64List:
      for (int64_t x : v.int64_list().values()) add(static_cast<float>(x));
      break;
    default:
      add(static_cast<float>(Number(v)));
  }
  for (; added < width; ++added) out->Add(0.0f);
}

// std::vector with RepeatedField's Add, for AppendFloats.
struct FloatVec {
  std::vector<float> v;
  void Add(float f) { v.push_back(f); }
};

// Arena blocks for one fetch: a 100-key Retrieve response is a few hundred Value messages.
google::protobuf::ArenaOptions FetchArenaOptions(char* initial_block = nullptr, size_t initial_size = 0) {
  google::protobuf::ArenaOptions o;
  o.start_block_size = 16 << 10;
  o.max_block_size = 256 << 10;
  o.initial_block = initial_block;
  o.initial_block_size = initial_size;
  return o;
}

// One lookup of a component (features, interactions or a dataset), prepared on the request
// thread, executed on a pool thread or inline, and applied on the request thread. Its messages live
// on its own arena, so the request's columns can point at the fetched values instead of copying
// them. Shared (shared_ptr) with the worker so an abandoned (timed-out) fetch can finish on its own
// after the request has returned.
struct FetchJob {
  FetchJob() : arena(FetchArenaOptions(first_block, sizeof(first_block))) {}
  virtual ~FetchJob() = default;
  // Runs the lookup and adds its time to `work`.
  void Execute() {
    const absl::Time start = absl::Now();
    if (delay_ms > 0) absl::SleepFor(absl::Milliseconds(delay_ms));
    status = Do();
    work += absl::Now() - start;
  }
  virtual absl::Status Do() = 0;
  // Adds one distinct key (its parts) to the request.
  virtual void AddKey(absl::Span<const absl::string_view> parts) = 0;
  template <typename M>
  M* New() {
    return google::protobuf::Arena::CreateMessage<M>(&arena);
  }
  // A copy of `text` that lives as long as the job.
  absl::string_view Keep(absl::string_view text) {
    char* p = google::protobuf::Arena::CreateArray<char>(&arena, text.size());
    std::memcpy(p, text.data(), text.size());
    return absl::string_view(p, text.size());
  }

  // The arena's first block, in the job's own allocation: most fetches need no other.
  alignas(16) char first_block[8 << 10];
  google::protobuf::Arena arena;
  std::vector<int> row_map;  // row -> key index, -1 when a key part is missing
  int num_keys = 0;
  absl::Status status;
  int64_t delay_ms = 0;
  absl::Time deadline = absl::InfiniteFuture();  // of this fetch: min(request deadline, its timeout)
  // The component's own time (its `micros`): building its keys and request, then its lookup; not
  // the time it waited for a thread. Written before and by Execute, read once it is done.
  absl::Duration work;
  // Set by whoever runs the fetch: a pool thread, or the request thread when the pool has not
  // started it yet (work stealing: no queueing delay and no wake-up for the request).
  std::atomic<bool> claimed{false};
};

struct FeatureFetch final : FetchJob {
  explicit FeatureFetch(features::FeatureStore* s) : store(s), req(New<v1::RetrieveRequest>()),
                                                     resp(New<v1::RetrieveResponse>()) {}
  absl::Status Do() override { return store->Retrieve(*req, parts, resp); }
  // The parts are copied to the job's arena: a fetch that timed out runs on after its request
  // (and the cells its keys came from) are gone.
  void AddKey(absl::Span<const absl::string_view> key) override {
    for (absl::string_view p : key) parts.push_back(Keep(p));
  }
  features::FeatureStore* store;
  v1::RetrieveRequest* req;  // entity and features; the keys are `parts`
  std::vector<absl::string_view> parts;
  v1::RetrieveResponse* resp;
};

struct InteractionFetch final : FetchJob {
  explicit InteractionFetch(interactions::InteractionStore* s) : store(s) {}
  absl::Status Do() override {
    if (store == nullptr) return absl::FailedPreconditionError("this server has no interaction store");
    if (count_req != nullptr) RETURN_IF_ERROR(store->Count(*count_req, count_resp));
    if (window_req != nullptr) RETURN_IF_ERROR(store->Window(*window_req, window_resp));
    return absl::OkStatus();
  }
  void AddKey(absl::Span<const absl::string_view> parts) override {
    if (count_req != nullptr) count_req->add_user_ids(parts[0].data(), parts[0].size());
    if (window_req != nullptr) window_req->add_user_ids(parts[0].data(), parts[0].size());
  }
  interactions::InteractionStore* store;
  v1::CountRequest* count_req = nullptr;  // when the component outputs `count`
  v1::CountResponse* count_resp = nullptr;
  v1::WindowRequest* window_req = nullptr;  // when it outputs `target_count`
  v1::HistoriesResponse* window_resp = nullptr;
};

struct DatasetFetch final : FetchJob {
  explicit DatasetFetch(datasets::DatasetManager* m) : manager(m), req(New<v1::DatasetMultiGetRequest>()),
                                                       resp(New<v1::DatasetMultiGetResponse>()) {}
  absl::Status Do() override {
    if (manager == nullptr) return absl::FailedPreconditionError("this server serves no datasets");
    return manager->MultiGet(*req, resp);
  }
  void AddKey(absl::Span<const absl::string_view> parts) override { req->add_keys(parts[0].data(), parts[0].size()); }
  datasets::DatasetManager* manager;
  v1::DatasetMultiGetRequest* req;
  v1::DatasetMultiGetResponse* resp;
};

// A call to an external model server: the dense rows of the component's inputs -> one score each.
struct ModelFetch final : FetchJob {
  explicit ModelFetch(std::shared_ptr<const ModelClient> c) : client(std::move(c)) {}
  absl::Status Do() override {
    ASSIGN_OR_RETURN(scores, client->Score(data.v.data(), static_cast<size_t>(num_keys), width, deadline));
    return absl::OkStatus();
  }
  void AddKey(absl::Span<const absl::string_view>) override {}
  std::shared_ptr<const ModelClient> client;
  FloatVec data;
  size_t width = 0;
  std::vector<float> scores;
};

// The fetches of one stage: which are done and when, for the request thread waiting on them.
struct StageSync {
  explicit StageSync(size_t n) : done(n, false), finished(n, absl::InfinitePast()) {}
  // Fetch j is done (its result or error is in its job).
  void Finish(size_t j) {
    absl::MutexLock l(&mu);
    done[j] = true;
    finished[j] = absl::Now();
    cv.SignalAll();
  }
  absl::Mutex mu;
  absl::CondVar cv;
  std::vector<bool> done ABSL_GUARDED_BY(mu);
  std::vector<absl::Time> finished ABSL_GUARDED_BY(mu);
};

struct Outcome {
  v1::ComponentStatus status = v1::COMPONENT_STATUS_UNSPECIFIED;
  std::string error;
  int64_t micros = 0;
  uint32_t keys = 0;
};

class Run {
 public:
  // `shared`: the response's arena, if it has one and the matrix may refer to the run's values
  // (see WriteMatrix); otherwise the run allocates on an arena of its own.
  Run(const CompiledFlow& flow, const v1::InferRequest& req, size_t rows, google::protobuf::Arena* shared)
      : own_arena_(FetchArenaOptions()), arena_(shared != nullptr ? shared : &own_arena_), f_(flow), req_(req),
        n_(rows), cols_(flow.columns.size()), outcomes_(flow.components.size()) {}

  google::protobuf::Arena own_arena_;
  google::protobuf::Arena* const arena_;  // inputs and computed values
  const CompiledFlow& f_;
  const v1::InferRequest& req_;
  const size_t n_;
  std::vector<ColData> cols_;
  std::vector<Outcome> outcomes_;
  std::vector<std::shared_ptr<FetchJob>> fetched_;  // owners of the values columns point at

  const v1::Value& V(int c, size_t r) const {
    const auto& d = cols_[c].values;
    return *(d.size() == 1 ? d[0] : d[r]);
  }
  ValueStatus S(int c, size_t r) const {
    const auto& d = cols_[c].statuses;
    return d.size() == 1 ? d[0] : d[r];
  }
  size_t Rows(const Component& c) const { return c.per_row ? n_ : 1; }
  v1::Value* NewValue() { return google::protobuf::Arena::CreateMessage<v1::Value>(arena_); }

  // Columns of a component that did not run (or whose results were discarded): defaults.
  void FillDefaults(const Component& c, ValueStatus status = v1::DEFAULT) {
    for (int col : c.out_cols) {
      ColData& d = cols_[col];
      d.values.assign(Rows(c), &f_.columns[col].default_value);
      d.statuses.assign(Rows(c), status);
    }
  }

  // Fills the de-duplicated key list of a fetch; job->row_map[r] is the key index of row r, or -1
  // when a key part is missing (its source cell is missing or expired, or empty). The
  // de-duplication map holds views: a one-part STRING key is the cell's own text (it outlives the
  // preparation); a number or composite key is copied to the job's arena once per distinct key.
  // AddKey gives the job its own copy of what its store call needs, once per distinct key.
  void BuildKeys(const Component& c, FetchJob* job) {
    const size_t rows = Rows(c);
    const size_t nk = c.key_cols.size();
    job->row_map.assign(rows, -1);
    absl::flat_hash_map<absl::string_view, int> seen;
    seen.reserve(rows);
    absl::InlinedVector<absl::string_view, 4> parts(nk);
    absl::InlinedVector<std::string, 4> bufs(nk);
    std::string composite;
    for (size_t r = 0; r < rows; ++r) {
      bool ok = true;
      bool in_place = nk == 1;
      for (size_t k = 0; k < nk && ok; ++k) {
        const int col = c.key_cols[k];
        const ValueStatus st = S(col, r);
        const v1::Value& v = V(col, r);
        ok = (st == v1::PRESENT || st == v1::DEFAULT) && KeyText(v, &bufs[k], &parts[k]);
        in_place &= v.kind_case() == v1::Value::kStringValue;
      }
      if (!ok) continue;
      absl::string_view key = nk > 0 ? parts[0] : absl::string_view();
      if (nk > 1) {
        // Each part after its length (4 bytes, this machine's order: the text only de-duplicates
        // keys within this fetch), so ("a|b", "c") and ("a", "b|c") differ.
        composite.clear();
        for (absl::string_view p : parts) {
          const uint32_t len = static_cast<uint32_t>(p.size());
          composite.append(reinterpret_cast<const char*>(&len), sizeof(len));
          composite.append(p.data(), p.size());
        }
        key = composite;
      }
      auto it = seen.find(key);
      if (it == seen.end()) {
        it = seen.emplace(in_place ? key : job->Keep(key), job->num_keys).first;
        job->AddKey(parts);
        ++job->num_keys;
      }
      job->row_map[r] = it->second;
    }
  }

  // Prepares the fetch of a features, interactions or dataset component.
  std::shared_ptr<FetchJob> Prepare(const Component& c, const Sources& src) {
    std::shared_ptr<FetchJob> job;
    switch (c.kind) {
      case Component::Kind::kFeatures: {
        auto f = std::make_shared<FeatureFetch>(src.features);
        f->req->set_entity(c.entity);
        for (const auto& ref : c.feature_refs) f->req->add_features(ref);
        for (int m : c.merged) {
          for (const auto& ref : f_.components[m].feature_refs) f->req->add_features(ref);
        }
        f->parts.reserve(Rows(c) * c.key_cols.size());
        job = f;
        break;
      }
      case Component::Kind::kInteractions: {
        auto f = std::make_shared<InteractionFetch>(src.interactions);
        if (c.count_col >= 0) {
          f->count_req = f->New<v1::CountRequest>();
          f->count_resp = f->New<v1::CountResponse>();
          for (const auto& t : c.event_types) f->count_req->add_types(t);
          if (c.window_ms > 0) f->count_req->mutable_range()->set_within_ms(c.window_ms);
        }
        if (c.target_count_col >= 0) {
          f->window_req = f->New<v1::WindowRequest>();
          f->window_resp = f->New<v1::HistoriesResponse>();
          for (const auto& t : c.event_types) f->window_req->add_types(t);
          if (c.window_ms > 0) f->window_req->mutable_range()->set_within_ms(c.window_ms);
        }
        job = f;
        break;
      }
      case Component::Kind::kDataset: {
        auto f = std::make_shared<DatasetFetch>(src.datasets);
        f->req->set_dataset(c.dataset);
        job = f;
        break;
      }
      case Component::Kind::kModel: {
        // Every row is one input row of the model (no keys to de-duplicate).
        auto f = std::make_shared<ModelFetch>(c.model_client);
        const size_t rows = Rows(c);
        f->width = c.model_width;
        f->data.v.reserve(rows * c.model_width);
        f->row_map.resize(rows);
        for (size_t r = 0; r < rows; ++r) {
          for (int col : c.model_inputs) {
            const ColumnDef& cd = f_.columns[col];
            AppendFloats(V(col, r), features::IsVectorType(cd.type) ? cd.vector_length : 1, &f->data);
          }
          f->row_map[r] = static_cast<int>(r);
        }
        f->num_keys = static_cast<int>(rows);
        return f;
      }
      default:
        return nullptr;
    }
    BuildKeys(c, job.get());
    return job;
  }

  // Applies a completed fetch to the component's columns.
  absl::Status Apply(const Component& c, const FetchJob& job) {
    switch (c.kind) {
      case Component::Kind::kFeatures: return Scatter(c, static_cast<const FeatureFetch&>(job));
      case Component::Kind::kInteractions: return ApplyInteractions(c, static_cast<const InteractionFetch&>(job));
      case Component::Kind::kDataset: return ApplyDataset(c, static_cast<const DatasetFetch&>(job));
      case Component::Kind::kModel: return ApplyModel(c, static_cast<const ModelFetch&>(job));
      default: return absl::InternalError("not a fetch");
    }
  }

  // Sizes the component's columns for its rows.
  void Size(const Component& c) {
    for (int col : c.out_cols) {
      cols_[col].values.resize(Rows(c));
      cols_[col].statuses.resize(Rows(c));
    }
  }
  void SetCell(int col, size_t r, const v1::Value* v, ValueStatus st) {
    cols_[col].values[r] = v;
    cols_[col].statuses[r] = st;
  }
  const std::string& Target(size_t r) const { return V(f_.target_col, r).string_value(); }

  absl::Status ApplyInteractions(const Component& c, const InteractionFetch& job) {
    if (job.count_resp != nullptr && job.count_resp->users_size() != job.num_keys) {
      return absl::InternalError("the interaction store answered for the wrong number of users");
    }
    if (job.window_resp != nullptr && job.window_resp->users_size() != job.num_keys) {
      return absl::InternalError("the interaction store answered for the wrong number of users");
    }
    Size(c);
    std::vector<const v1::Value*> counts(static_cast<size_t>(job.num_keys), nullptr);
    // Per user: item id -> events, built on first use.
    std::vector<std::optional<absl::flat_hash_map<absl::string_view, int64_t>>> items(static_cast<size_t>(job.num_keys));
    for (size_t r = 0; r < job.row_map.size(); ++r) {
      const int k = job.row_map[r];
      if (k < 0) {
        for (int col : c.out_cols) SetCell(col, r, &f_.columns[col].default_value, v1::MISSING);
        continue;
      }
      if (c.count_col >= 0) {
        if (counts[k] == nullptr) {
          v1::Value* v = NewValue();
          v->set_int64_value(static_cast<int64_t>(job.count_resp->users(k).total()));
          counts[k] = v;
        }
        SetCell(c.count_col, r, counts[k], v1::PRESENT);
      }
      if (c.target_count_col >= 0) {
        if (!items[k].has_value()) {
          items[k].emplace();
          for (const auto& h : job.window_resp->users(k).histories()) {
            for (const auto& item : h.item_ids()) ++(*items[k])[item];
          }
        }
        auto it = items[k]->find(Target(r));
        v1::Value* v = NewValue();
        v->set_int64_value(it == items[k]->end() ? 0 : it->second);
        SetCell(c.target_count_col, r, v, v1::PRESENT);
      }
    }
    return absl::OkStatus();
  }

  absl::Status ApplyModel(const Component& c, const ModelFetch& job) {
    if (job.scores.size() != job.row_map.size()) {
      return absl::InternalError(absl::StrCat("the model server returned ", job.scores.size(), " scores for ",
                                              job.row_map.size(), " rows"));
    }
    Size(c);
    ColData& d = cols_[c.out_cols[0]];
    for (size_t r = 0; r < job.row_map.size(); ++r) {
      bool all_present = true;
      for (int col : c.model_inputs) all_present &= S(col, r) == v1::PRESENT;
      SetFloat(&d, r, job.scores[r], all_present);
    }
    return absl::OkStatus();
  }

  absl::Status ApplyDataset(const Component& c, const DatasetFetch& job) {
    const v1::DatasetMultiGetResponse& resp = *job.resp;
    if (resp.entries_size() != job.num_keys) {
      return absl::InternalError("the dataset answered for the wrong number of keys");
    }
    const bool recs = c.target_score_col >= 0 || c.target_rank_col >= 0;
    if (recs && resp.kind() != v1::DATASET_KIND_RECS) {
      return absl::FailedPreconditionError(absl::StrCat("dataset \"", c.dataset, "\" (version ", resp.version(),
                                                        ") is not a recommendation list; target_score and "
                                                        "target_rank need one"));
    }
    // Records: the index of each declared field in this version's schema.
    std::vector<int> field_index;
    if (!recs) {
      if (resp.kind() != v1::DATASET_KIND_RECORD) {
        return absl::FailedPreconditionError(absl::StrCat("dataset \"", c.dataset, "\" (version ", resp.version(),
                                                          ") does not hold typed records; fields need them"));
      }
      for (size_t j = 0; j < c.record_fields.size(); ++j) {
        int found = -1;
        for (int i = 0; i < resp.fields_size(); ++i) {
          if (resp.fields(i).name() == c.record_fields[j]) found = i;
        }
        const ColumnDef& cd = f_.columns[c.out_cols[j]];
        if (found < 0) {
          return absl::FailedPreconditionError(absl::StrCat("dataset \"", c.dataset, "\" (version ", resp.version(),
                                                            ") has no field \"", c.record_fields[j], "\""));
        }
        if (resp.fields(found).type() != cd.type) {
          return absl::FailedPreconditionError(absl::StrCat(
              "dataset \"", c.dataset, "\" (version ", resp.version(), ") field \"", c.record_fields[j], "\" is ",
              features::TypeName(resp.fields(found).type()), "; the flow declares ", features::TypeName(cd.type)));
        }
        field_index.push_back(found);
      }
    }
    Size(c);
    // Per key: item id -> position in its list, built on first use.
    std::vector<std::optional<absl::flat_hash_map<absl::string_view, int>>> pos(static_cast<size_t>(job.num_keys));
    for (size_t r = 0; r < job.row_map.size(); ++r) {
      const int k = job.row_map[r];
      if (k < 0 || resp.entries(k).status() != v1::FOUND) {
        for (int col : c.out_cols) SetCell(col, r, &f_.columns[col].default_value, v1::MISSING);
        continue;
      }
      const v1::DatasetValue& value = resp.entries(k).value();
      if (recs) {
        const auto& list = value.recs().items();
        if (!pos[k].has_value()) {
          pos[k].emplace();
          for (int i = list.size() - 1; i >= 0; --i) (*pos[k])[list[i].item_id()] = i;  // first occurrence wins
        }
        auto it = pos[k]->find(Target(r));
        if (it == pos[k]->end()) {
          for (int col : c.out_cols) SetCell(col, r, &f_.columns[col].default_value, v1::DEFAULT);
          continue;
        }
        if (c.target_score_col >= 0) {
          v1::Value* v = NewValue();
          v->set_float32_value(list[it->second].score());
          SetCell(c.target_score_col, r, v, v1::PRESENT);
        }
        if (c.target_rank_col >= 0) {
          v1::Value* v = NewValue();
          v->set_int32_value(it->second + 1);
          SetCell(c.target_rank_col, r, v, v1::PRESENT);
        }
        continue;
      }
      const v1::DatasetRecord& rec = value.record();
      for (size_t j = 0; j < field_index.size(); ++j) {
        const int fi = field_index[j];
        const int col = c.out_cols[j];
        if (fi < rec.values_size() && fi < rec.present_size() && rec.present(fi)) {
          SetCell(col, r, &rec.values(fi), v1::PRESENT);
        } else {
          SetCell(col, r, &f_.columns[col].default_value, v1::DEFAULT);
        }
      }
    }
    return absl::OkStatus();
  }

  // Points the component's columns at a completed fetch's values.
  absl::Status Scatter(const Component& c, const FeatureFetch& job) {
    const v1::RetrieveResponse& resp = *job.resp;
    const std::vector<int>& out_cols = c.fetch_cols;  // its own, then the merged components' (compiled)
    if (resp.columns_size() != static_cast<int>(out_cols.size())) {
      return absl::InternalError(absl::StrCat("the store returned ", resp.columns_size(), " columns, expected ",
                                              out_cols.size()));
    }
    for (size_t j = 0; j < out_cols.size(); ++j) {
      const ColumnDef& cd = f_.columns[out_cols[j]];
      if (resp.columns(static_cast<int>(j)).type() != cd.type) {
        return absl::FailedPreconditionError(absl::StrCat(
            "column \"", cd.name, "\" is ", features::TypeName(resp.columns(static_cast<int>(j)).type()),
            " in the registry now but ", features::TypeName(cd.type), " when the flow was compiled; resubmit the flow"));
      }
    }
    for (const auto& row : resp.rows()) {
      if (row.values_size() != static_cast<int>(out_cols.size()) ||
          row.statuses_size() != static_cast<int>(out_cols.size())) {
        return absl::InternalError("the store returned a row of the wrong width");
      }
    }
    if (resp.rows_size() != job.num_keys) {
      return absl::InternalError(absl::StrCat("the store returned ", resp.rows_size(), " rows for ",
                                              job.num_keys, " keys"));
    }
    const size_t rows = job.row_map.size();
    for (size_t j = 0; j < out_cols.size(); ++j) {
      ColData& d = cols_[out_cols[j]];
      d.values.resize(rows);
      d.statuses.resize(rows);
      const v1::Value* def = &f_.columns[out_cols[j]].default_value;
      const int jj = static_cast<int>(j);
      for (size_t r = 0; r < rows; ++r) {
        int k = job.row_map[r];
        if (k < 0) {
          d.values[r] = def;
          d.statuses[r] = v1::MISSING;
          continue;
        }
        const auto& row = resp.rows(k);
        d.values[r] = &row.values(jj);
        d.statuses[r] = static_cast<ValueStatus>(row.statuses(jj));
      }
    }
    return absl::OkStatus();
  }

  // A float32 result column of `rows` cells.
  void SetFloat(ColData* d, size_t r, double v, bool all_present) {
    v1::Value* out = NewValue();
    out->set_float32_value(std::isfinite(v) ? static_cast<float>(v) : 0.0f);
    d->values[r] = out;
    d->statuses[r] = all_present ? v1::PRESENT : v1::DEFAULT;
  }

  void RunDerived(const Component& c) {
    const size_t rows = Rows(c);
    ColData& d = cols_[c.out_cols[0]];
    d.values.resize(rows);
    d.statuses.resize(rows);
    std::vector<double> in(c.expr_inputs.size());
    for (size_t r = 0; r < rows; ++r) {
      bool all_present = true;
      for (size_t i = 0; i < in.size(); ++i) {
        in[i] = Number(V(c.expr_inputs[i], r));
        all_present &= S(c.expr_inputs[i], r) == v1::PRESENT;
      }
      SetFloat(&d, r, c.expr->Evaluate(in), all_present);
    }
  }

  void RunModel(const Component& c) {
    const size_t rows = Rows(c);
    ColData& d = cols_[c.out_cols[0]];
    d.values.resize(rows);
    d.statuses.resize(rows);
    for (size_t r = 0; r < rows; ++r) {
      double s = c.scorer.bias;
      bool all_present = true;
      for (const auto& [col, w] : c.scorer.weights) {
        s += w * Number(V(col, r));
        all_present &= S(col, r) == v1::PRESENT;
      }
      if (c.scorer.kind == Scorer::Kind::kLogistic) s = 1.0 / (1.0 + std::exp(-s));
      SetFloat(&d, r, s, all_present);
    }
  }
};

bool IsFetch(const Component& c) {
  return c.kind == Component::Kind::kFeatures || c.kind == Component::Kind::kInteractions ||
         c.kind == Component::Kind::kDataset || c.model_client != nullptr;
}

void Record(const Component& c, Outcome* o, absl::Duration took) {
  o->micros = absl::ToInt64Microseconds(took);
  if (c.latency != nullptr) c.latency->Observe(absl::ToDoubleSeconds(took));
  if (c.results[o->status] != nullptr) c.results[o->status]->Inc();
}

// The matrix of an Infer response: column headers, rows in `order`, and the dense form if asked.
//
// On a response on an arena (gRPC's), a cell refers to the value it shows instead of copying it
// (a row then costs one pointer per cell, not a message and, for strings, a copy). That needs every
// value it refers to to live as long as the response: the run's own values are on the response's
// arena (Run's `shared`), and the fetches whose values the columns show are handed to the arena,
// which frees them with the response. Anything else a column may show (the flow's defaults) is
// copied once per column onto the arena and that copy is referred to. (Only components' columns
// are shown, never the request's own values, which its caller may change.)
// A response on the heap gets a copy of every cell, as it owns its messages. `resp` has no rows yet.
void WriteMatrix(const CompiledFlow& flow, const Run& run, const v1::InferRequest& req,
                 const std::vector<size_t>& order, v1::InferResponse* resp) {
  for (int col : flow.output_cols) {
    const ColumnDef& cd = flow.columns[col];
    auto* mc = resp->add_columns();
    mc->set_name(cd.name);
    mc->set_type(cd.type);
    mc->set_vector_length(cd.vector_length);
    mc->set_component(flow.components[cd.component].name);
    mc->set_per_row(cd.per_row);
    mc->set_status(run.outcomes_[cd.component].status);
  }
  std::vector<int> dense_cols;
  std::vector<uint32_t> dense_width;
  uint32_t width = 0;
  if (req.dense()) {
    for (int col : flow.output_cols) {
      const ColumnDef& cd = flow.columns[col];
      if (!features::IsNumeric(cd.type)) continue;
      dense_cols.push_back(col);
      uint32_t w = features::IsVectorType(cd.type) ? cd.vector_length : 1;
      dense_width.push_back(w);
      width += w;
      resp->add_dense_columns(cd.name);
    }
    resp->set_dense_width(width);
    resp->mutable_dense()->Reserve(static_cast<int>(order.size() * width));
  }
  const int ncols = static_cast<int>(flow.output_cols.size());
  google::protobuf::Arena* const arena = resp->GetArena();
  const bool refer = arena != nullptr && arena == run.arena_;
  // The arenas whose values a cell may refer to, and per column the last value copied for it.
  absl::InlinedVector<const google::protobuf::Arena*, 8> live;
  struct Copied {
    const v1::Value* from = nullptr;
    v1::Value* copy = nullptr;
  };
  std::vector<Copied> copied;
  absl::InlinedVector<bool, 8> referred;  // live[i] holds a value some cell refers to
  if (refer) {
    live.push_back(arena);
    for (const auto& job : run.fetched_) live.push_back(&job->arena);
    referred.assign(live.size(), false);
    copied.resize(flow.output_cols.size());
  }
  resp->mutable_rows()->Reserve(static_cast<int>(order.size()));
  for (size_t r : order) {
    auto* row = resp->add_rows();
    row->set_target(req.targets(static_cast<int>(r)));
    row->mutable_values()->Reserve(ncols);
    row->mutable_statuses()->Reserve(ncols);
    for (int i = 0; i < ncols; ++i) {
      const int col = flow.output_cols[i];
      const v1::Value& v = run.V(col, r);
      if (refer) {
        const v1::Value* shown = &v;
        const size_t where = static_cast<size_t>(std::find(live.begin(), live.end(), v.GetArena()) - live.begin());
        if (where < live.size()) {
          referred[where] = true;
        } else {
          Copied& c = copied[i];
          if (c.from != &v) {
            c.from = &v;
            c.copy = google::protobuf::Arena::CreateMessage<v1::Value>(arena);
            CopyValue(v, c.copy);
          }
          shown = c.copy;
        }
        row->mutable_values()->UnsafeArenaAddAllocated(const_cast<v1::Value*>(shown));
      } else {
        CopyValue(v, row->add_values());
      }
      row->add_statuses(run.S(col, r));
    }
    for (size_t d = 0; d < dense_cols.size(); ++d) {
      AppendFloats(run.V(dense_cols[d], r), dense_width[d], resp->mutable_dense());
    }
  }
  if (refer) {
    // The fetches some cell refers to live as long as the response; the others (and their model
    // clients, arenas) go with the run.
    auto kept = std::make_unique<std::vector<std::shared_ptr<FetchJob>>>();
    for (size_t j = 0; j < run.fetched_.size(); ++j) {
      if (referred[j + 1]) kept->push_back(run.fetched_[j]);
    }
    if (!kept->empty()) arena->Own(kept.release());
  }
}

// Component results: failed ones always (and `partial`), all of them with return_timings.
void RecordOutcomes(const CompiledFlow& flow, const Run& run, const v1::InferRequest& req, v1::InferResponse* resp) {
  for (size_t ci = 0; ci < flow.components.size(); ++ci) {
    const Outcome& o = run.outcomes_[ci];
    bool failed = o.status != v1::COMPONENT_OK;
    if (failed) {
      resp->set_partial(true);
      resp->add_failed_components(flow.components[ci].name);
    }
    if (failed || req.return_timings()) {
      auto* cr = resp->add_components();
      cr->set_name(flow.components[ci].name);
      cr->set_status(o.status);
      cr->set_error(o.error);
      cr->set_micros(o.micros);
      cr->set_keys(o.keys);
      cr->set_stage(static_cast<uint32_t>(flow.components[ci].stage));
    }
  }
}

}  // namespace

absl::Status Executor::Run(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp) {
  return Evaluate(flow, req, resp, nullptr);
}

absl::Status Executor::Evaluate(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp,
                                v1::RankResponse* ranked) {
  const absl::Time start = absl::Now();
  if (resp->rows_size() != 0) return absl::InternalError("flows: Run needs an empty response");
  resp->set_model_id(flow.model_id);
  resp->set_version(flow.version);
  if (req.dry_run()) {
    *resp->mutable_plan() = flow.plan;
    return absl::OkStatus();
  }
  // --- validate the request and fill the input columns ---
  if (req.targets().empty()) return absl::InvalidArgumentError("targets: at least one target id is required");
  if (static_cast<uint32_t>(req.targets_size()) > options_.max_targets) {
    return absl::ResourceExhaustedError(absl::StrCat("targets: ", req.targets_size(), " targets exceeds the limit of ",
                                                     options_.max_targets, " per request"));
  }
  const size_t n = static_cast<size_t>(req.targets_size());
  // Infer's response on an arena may refer to the run's values instead of copying them.
  class Run run(flow, req, n, ranked == nullptr ? resp->GetArena() : nullptr);
  for (const auto& [name, value] : req.context()) {
    auto it = flow.column_index.find(name);
    if (it == flow.column_index.end() || flow.columns[it->second].source != ColumnDef::Source::kContext) {
      return absl::InvalidArgumentError(absl::StrCat("context: \"", name, "\" is not a context input of flow \"",
                                                     flow.model_id, "\""));
    }
  }
  for (int col : flow.context_cols) {
    const std::string& name = flow.columns[col].name;
    auto it = req.context().find(name);
    if (it == req.context().end() || it->second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("context: missing \"", name, "\""));
    }
    v1::Value* v = run.NewValue();
    v->set_string_value(it->second);
    run.cols_[col].values.assign(1, v);
    run.cols_[col].statuses.assign(1, v1::PRESENT);
  }
  {
    ColData& t = run.cols_[flow.target_col];
    t.values.resize(n);
    t.statuses.assign(n, v1::PRESENT);
    for (size_t r = 0; r < n; ++r) {
      const std::string& id = req.targets(static_cast<int>(r));
      if (id.empty()) return absl::InvalidArgumentError(absl::StrCat("targets[", r, "]: empty id"));
      v1::Value* v = run.NewValue();
      v->set_string_value(id);
      t.values[r] = v;
    }
  }
  for (const auto& [name, value] : req.request_features()) {
    auto it = flow.column_index.find(name);
    if (it == flow.column_index.end() || flow.columns[it->second].source != ColumnDef::Source::kRequest) {
      return absl::InvalidArgumentError(absl::StrCat("request_features: \"", name,
                                                     "\" is not a request feature of flow \"", flow.model_id, "\""));
    }
    if (!KindMatches(flow.columns[it->second].type, value)) {
      return absl::InvalidArgumentError(absl::StrCat("request_features.", name, ": expected ",
                                                     features::TypeName(flow.columns[it->second].type)));
    }
  }
  for (int col : flow.request_cols) {
    auto it = req.request_features().find(flow.columns[col].name);
    if (it == req.request_features().end()) {
      run.cols_[col].values.assign(1, &flow.columns[col].default_value);
      run.cols_[col].statuses.assign(1, v1::DEFAULT);
    } else {
      run.cols_[col].values.assign(1, &it->second);
      run.cols_[col].statuses.assign(1, v1::PRESENT);
    }
  }
  int64_t deadline_ms = flow.deadline_ms;
  if (req.deadline_ms() > 0) deadline_ms = std::min(deadline_ms, req.deadline_ms());
  const absl::Time deadline = start + absl::Milliseconds(deadline_ms);

  // --- stages ---
  for (const auto& stage : flow.stages) {
    const absl::Time stage_start = absl::Now();
    if (stage_start >= deadline) {
      for (int ci : stage) {
        const Component& c = flow.components[ci];
        run.FillDefaults(c);
        Outcome& o = run.outcomes_[ci];
        o.status = v1::COMPONENT_SKIPPED;
        o.error = "the request deadline passed before the component started";
        Record(c, &o, absl::ZeroDuration());
      }
      continue;
    }
    // Fetches: the small ones (at most flows.inline_max_keys keys), then the biggest one, run on
    // this thread. Handing a lookup to a pool thread costs a wake-up, and on a busy machine the woken
    // thread often preempts this one: for a lookup of a few keys that costs more than the lookup.
    // The others go to the pool and are awaited, each until it completes or its own deadline
    // passes; one that no pool thread has started by the time this thread is free runs here. A
    // fetch with a test delay always goes to the pool, so that its timeout can be observed.
    std::vector<int> fetches;
    for (int ci : stage) {
      if (IsFetch(flow.components[ci]) && flow.components[ci].merged_into < 0) fetches.push_back(ci);
    }
    const size_t nf = fetches.size();
    std::vector<std::shared_ptr<FetchJob>> jobs(nf);
    auto sync = std::make_shared<StageSync>(nf);
    std::vector<absl::Time> job_deadline(nf);
    // The biggest lookup (most keys) runs on this thread: the others usually finish first, so the
    // request thread rarely has to wait to be woken.
    int inline_job = -1;
    for (size_t j = 0; j < nf; ++j) {
      const Component& c = flow.components[fetches[j]];
      const absl::Time prepare_start = absl::Now();
      jobs[j] = run.Prepare(c, sources_);
      jobs[j]->work = absl::Now() - prepare_start;
      run.outcomes_[fetches[j]].keys = static_cast<uint32_t>(jobs[j]->num_keys);
      jobs[j]->delay_ms = c.test_delay_ms;
      job_deadline[j] = std::min(deadline, stage_start + absl::Milliseconds(c.timeout_ms));
      jobs[j]->deadline = job_deadline[j];
      if (jobs[j]->num_keys == 0) {
        sync->Finish(j);  // nothing to look up (every key part missing): no store call
        continue;
      }
      if (c.test_delay_ms == 0 && (inline_job < 0 || jobs[j]->num_keys > jobs[inline_job]->num_keys)) {
        inline_job = static_cast<int>(j);
      }
    }
    // A small fetch runs on this thread, before the biggest one: it takes microseconds, so none of
    // them waits for the biggest (and times out behind it), and the biggest starts only a little later.
    auto small = [&](size_t j) {
      return static_cast<int>(j) != inline_job && jobs[j]->num_keys > 0 && jobs[j]->delay_ms == 0 &&
             static_cast<uint32_t>(jobs[j]->num_keys) <= options_.inline_max_keys;
    };
    for (size_t j = 0; j < nf; ++j) {
      if (static_cast<int>(j) == inline_job || jobs[j]->num_keys == 0 || small(j)) continue;
      pool_.Schedule([job = jobs[j], sync, j] {
        if (job->claimed.exchange(true, std::memory_order_acq_rel)) return;  // the request thread took it
        job->Execute();
        sync->Finish(j);
      });
    }
    // Run the chosen fetch here, then every other one that no pool thread has started yet.
    auto run_here = [&](size_t j) {
      jobs[j]->Execute();
      sync->Finish(j);
    };
    for (size_t j = 0; j < nf; ++j) {
      if (!small(j) || absl::Now() >= job_deadline[j]) continue;
      jobs[j]->claimed.store(true, std::memory_order_relaxed);
      run_here(j);
    }
    if (inline_job >= 0) {
      jobs[inline_job]->claimed.store(true, std::memory_order_relaxed);
      run_here(static_cast<size_t>(inline_job));
    }
    for (size_t j = 0; j < nf; ++j) {
      if (static_cast<int>(j) == inline_job || jobs[j]->num_keys == 0 || jobs[j]->delay_ms > 0) continue;
      if (absl::Now() >= job_deadline[j]) continue;  // too late to start: it times out below
      if (!jobs[j]->claimed.exchange(true, std::memory_order_acq_rel)) run_here(j);
    }
    std::vector<bool> completed(nf, false);
    {
      absl::MutexLock l(&sync->mu);
      while (true) {
        absl::Time now = absl::Now();
        absl::Time next = absl::InfiniteFuture();
        bool waiting = false;
        for (size_t j = 0; j < nf; ++j) {
          if (sync->done[j] || now >= job_deadline[j]) continue;
          waiting = true;
          next = std::min(next, job_deadline[j]);
        }
        if (!waiting) break;
        sync->cv.WaitWithDeadline(&sync->mu, next);
      }
      for (size_t j = 0; j < nf; ++j) {
        completed[j] = sync->done[j] && sync->finished[j] <= job_deadline[j];
      }
    }
    for (size_t j = 0; j < nf; ++j) {
      const Component& c = flow.components[fetches[j]];
      Outcome& o = run.outcomes_[fetches[j]];
      // The components that share this fetch (see Component::merged) share its outcome.
      auto fill_defaults = [&](ValueStatus status) {
        run.FillDefaults(c, status);
        for (int m : c.merged) run.FillDefaults(flow.components[m], status);
      };
      absl::Duration took;
      if (!completed[j]) {
        o.status = v1::COMPONENT_TIMEOUT;
        o.error = absl::StrCat("no result within ", absl::FormatDuration(job_deadline[j] - stage_start),
                               job_deadline[j] == deadline ? " (the request deadline)" : " (the component timeout)");
        fill_defaults(v1::DEFAULT);
        took = job_deadline[j] - stage_start;
      } else {
        absl::Status st = jobs[j]->status;
        if (st.ok()) {
          if (jobs[j]->num_keys > 0) {
            st = run.Apply(c, *jobs[j]);
            run.fetched_.push_back(jobs[j]);
          } else {
            fill_defaults(v1::MISSING);  // every key was missing
          }
        }
        if (st.ok()) {
          o.status = v1::COMPONENT_OK;
        } else {
          // A source that gave up at the deadline it was handed (a model server call) timed out.
          o.status = st.code() == absl::StatusCode::kDeadlineExceeded ? v1::COMPONENT_TIMEOUT : v1::COMPONENT_FAILED;
          o.error = std::string(st.message());
          fill_defaults(v1::DEFAULT);
        }
        took = jobs[j]->work;  // its own work; waiting is the executor's
      }
      Record(c, &o, took);
      for (int m : c.merged) {
        Outcome& mo = run.outcomes_[m];
        mo.status = o.status;
        mo.error = o.error;
        mo.keys = o.keys;
        Record(flow.components[m], &mo, took);
      }
    }
    // Derived columns and models: pure CPU over columns already computed, run inline.
    for (int ci : stage) {
      const Component& c = flow.components[ci];
      if (IsFetch(c)) continue;
      absl::Time t0 = absl::Now();
      if (c.test_delay_ms > 0) absl::SleepFor(absl::Milliseconds(c.test_delay_ms));
      Outcome& o = run.outcomes_[ci];
      if (c.kind == Component::Kind::kDerived) {
        run.RunDerived(c);
      } else {
        run.RunModel(c);
      }
      absl::Time t1 = absl::Now();
      if (t1 - t0 > absl::Milliseconds(c.timeout_ms)) {
        // Inline components cannot be interrupted; a late result is discarded all the same, so
        // the timeout means the same thing for every kind.
        o.status = v1::COMPONENT_TIMEOUT;
        o.error = absl::StrCat("took ", absl::FormatDuration(t1 - t0), ", over its timeout of ", c.timeout_ms, "ms");
        run.FillDefaults(c);
      } else {
        o.status = v1::COMPONENT_OK;
      }
      Record(c, &o, t1 - t0);
    }
  }

  // --- output ---
  std::vector<size_t> order(n);
  for (size_t r = 0; r < n; ++r) order[r] = r;
  if (flow.sort_col >= 0) {
    std::vector<double> key(n);
    // NaN (a fetched float may be one) sorts last either way, and keeps the comparison a strict
    // weak order, which std::sort needs.
    const double nan_key = flow.descending ? -HUGE_VAL : HUGE_VAL;
    for (size_t r = 0; r < n; ++r) {
      key[r] = Number(run.V(flow.sort_col, r));
      if (std::isnan(key[r])) key[r] = nan_key;
    }
    // Ties keep the request's order (a stable sort, without its buffer).
    if (flow.descending) {
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); });
    } else {
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b] || (key[a] == key[b] && a < b); });
    }
    uint32_t k = req.top_k() != 0 ? req.top_k() : flow.top_k;
    if (k != 0 && k < n) order.resize(k);
  } else if (req.top_k() != 0 && req.top_k() < n) {
    order.resize(req.top_k());
  }
  if (ranked != nullptr) {
    // Rank: the targets and their scores only, no matrix.
    ranked->mutable_ranked()->Reserve(static_cast<int>(order.size()));
    for (size_t r : order) {
      auto* x = ranked->add_ranked();
      x->set_target(req.targets(static_cast<int>(r)));
      x->set_score(Number(run.V(flow.sort_col, r)));
    }
  } else {
    WriteMatrix(flow, run, req, order, resp);
  }
  RecordOutcomes(flow, run, req, resp);
  resp->set_total_micros(absl::ToInt64Microseconds(absl::Now() - start));
  return absl::OkStatus();
}

absl::Status Executor::Rank(const CompiledFlow& flow, const v1::RankRequest& req, v1::RankResponse* resp) {
  if (flow.sort_col < 0) {
    return absl::FailedPreconditionError(absl::StrCat("model_id: flow \"", flow.model_id, "\" version ",
                                                      flow.version, " has no output.sort_by; Rank needs a score"));
  }
  google::protobuf::Arena arena(FetchArenaOptions());
  auto* ireq = google::protobuf::Arena::CreateMessage<v1::InferRequest>(&arena);
  auto* iresp = google::protobuf::Arena::CreateMessage<v1::InferResponse>(&arena);
  ireq->set_model_id(req.model_id());
  ireq->set_version(req.version());
  *ireq->mutable_context() = req.context();
  *ireq->mutable_targets() = req.targets();
  *ireq->mutable_request_features() = req.request_features();
  ireq->set_top_k(req.top_k());
  ireq->set_deadline_ms(req.deadline_ms());
  ireq->set_return_timings(req.return_timings());
  RETURN_IF_ERROR(Evaluate(flow, *ireq, iresp, resp));
  resp->set_model_id(iresp->model_id());
  resp->set_version(iresp->version());
  resp->set_score_column(flow.columns[flow.sort_col].name);
  resp->set_partial(iresp->partial());
  *resp->mutable_failed_components() = iresp->failed_components();
  *resp->mutable_components() = iresp->components();
  resp->set_total_micros(iresp->total_micros());
  return absl::OkStatus();
}

}  // namespace kosh::flows
