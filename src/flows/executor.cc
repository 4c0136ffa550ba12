#include "flows/executor.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/status.h"
#include "features/codec.h"

namespace kosh::flows {

ThreadPool::ThreadPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  for (auto& t : threads_) t.join();
}

void ThreadPool::Schedule(std::function<void()> fn) {
  absl::MutexLock l(&mu_);
  queue_.push_back(std::move(fn));
}

void ThreadPool::Work() {
  while (true) {
    std::function<void()> fn;
    {
      absl::MutexLock l(&mu_);
      mu_.Await(absl::Condition(
          +[](ThreadPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stopping_ || !p->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // stopping and drained
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
}

Executor::Executor(features::FeatureStore* store, const FlowsOptions& options)
    : store_(store), options_(options), pool_(options.threads) {}

namespace {

using v1::ValueStatus;

// Values of one column: one (broadcast) or one per row.
struct ColData {
  std::vector<v1::Value> values;
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

// The key-part text of a STRING/INT32/INT64 value; false if it has none.
bool KeyText(const v1::Value& v, std::string* out) {
  switch (v.kind_case()) {
    case v1::Value::kStringValue: *out = v.string_value(); return !out->empty();
    case v1::Value::kInt32Value: *out = absl::StrCat(v.int32_value()); return true;
    case v1::Value::kInt64Value: *out = absl::StrCat(v.int64_value()); return true;
    default: return false;
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

// Appends the dense float32 form of a value (width floats).
void AppendFloats(const ColumnDef& c, const v1::Value& v, uint32_t width, google::protobuf::RepeatedField<float>* out) {
  size_t before = static_cast<size_t>(out->size());
  switch (v.kind_case()) {
    case v1::Value::kFloatList:
      for (float f : v.float_list().values()) out->Add(f);
      break;
    case v1::Value::kInt32List:
      for (int32_t x : v.int32_list().values()) out->Add(static_cast<float>(x));
      break;
    case v1::Value::kInt64List:
      for (int64_t x : v.int64_list().values()) out->Add(static_cast<float>(x));
      break;
    default:
      out->Add(static_cast<float>(Number(v)));
  }
  (void)c;
  size_t added = static_cast<size_t>(out->size()) - before;
  if (added > width) out->Truncate(static_cast<int>(before + width));
  for (size_t i = added; i < width; ++i) out->Add(0.0f);
}

// One feature fetch dispatched to the pool. Shared with the worker so an abandoned (timed-out)
// fetch can finish on its own after the request has returned.
struct FetchJob {
  v1::RetrieveRequest req;
  v1::RetrieveResponse resp;
  absl::Status status;
  int64_t delay_ms = 0;
};

struct StageSync {
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
  Run(const CompiledFlow& flow, const v1::InferRequest& req, size_t rows)
      : f_(flow), req_(req), n_(rows), cols_(flow.columns.size()), outcomes_(flow.components.size()) {}

  const CompiledFlow& f_;
  const v1::InferRequest& req_;
  const size_t n_;
  std::vector<ColData> cols_;
  std::vector<Outcome> outcomes_;

  const v1::Value& V(int c, size_t r) const {
    const auto& d = cols_[c].values;
    return d.size() == 1 ? d[0] : d[r];
  }
  ValueStatus S(int c, size_t r) const {
    const auto& d = cols_[c].statuses;
    return d.size() == 1 ? d[0] : d[r];
  }
  size_t Rows(const Component& c) const { return c.per_row ? n_ : 1; }

  // Columns of a component that did not run (or whose results were discarded): defaults.
  void FillDefaults(const Component& c) {
    for (int col : c.out_cols) {
      ColData& d = cols_[col];
      d.values.assign(Rows(c), f_.columns[col].default_value);
      d.statuses.assign(Rows(c), v1::DEFAULT);
    }
  }

  // Builds the de-duplicated key list of a fetch; row_map[r] is the key index of row r, or -1
  // when a key part is missing (its source cell is missing or expired, or empty).
  void BuildKeys(const Component& c, v1::RetrieveRequest* rr, std::vector<int>* row_map) {
    rr->set_entity(c.entity);
    for (const auto& ref : c.feature_refs) rr->add_features(ref);
    const size_t rows = Rows(c);
    row_map->assign(rows, -1);
    absl::flat_hash_map<std::string, int> seen;
    std::string key, part;
    std::vector<std::string> parts(c.key_cols.size());
    for (size_t r = 0; r < rows; ++r) {
      key.clear();
      bool ok = true;
      for (size_t k = 0; k < c.key_cols.size() && ok; ++k) {
        int col = c.key_cols[k];
        ValueStatus st = S(col, r);
        ok = (st == v1::PRESENT || st == v1::DEFAULT) && KeyText(V(col, r), &parts[k]);
        // Length-prefixed so ("a|b", "c") and ("a", "b|c") differ.
        absl::StrAppend(&key, parts[k].size(), ":", parts[k]);
      }
      if (!ok) continue;
      auto [it, inserted] = seen.try_emplace(key, rr->keys_size());
      if (inserted) {
        auto* ek = rr->add_keys();
        for (auto& p : parts) ek->add_parts(p);
      }
      (*row_map)[r] = it->second;
    }
  }

  // Moves a completed fetch's values into the component's columns.
  absl::Status Scatter(const Component& c, v1::RetrieveResponse* resp, const std::vector<int>& row_map) {
    if (resp->columns_size() != static_cast<int>(c.out_cols.size())) {
      return absl::InternalError(absl::StrCat("the store returned ", resp->columns_size(), " columns, expected ",
                                              c.out_cols.size()));
    }
    for (size_t j = 0; j < c.out_cols.size(); ++j) {
      const ColumnDef& cd = f_.columns[c.out_cols[j]];
      if (resp->columns(static_cast<int>(j)).type() != cd.type) {
        return absl::FailedPreconditionError(absl::StrCat(
            "column \"", cd.name, "\" is ", features::TypeName(resp->columns(static_cast<int>(j)).type()),
            " in the registry now but ", features::TypeName(cd.type), " when the flow was compiled; resubmit the flow"));
      }
    }
    const size_t rows = row_map.size();
    // A key used by one row only can give its values away; shared keys are copied.
    std::vector<int> uses(static_cast<size_t>(resp->rows_size()), 0);
    for (int k : row_map) {
      if (k >= 0) ++uses[k];
    }
    for (size_t j = 0; j < c.out_cols.size(); ++j) {
      ColData& d = cols_[c.out_cols[j]];
      d.values.resize(rows);
      d.statuses.resize(rows);
      const ColumnDef& cd = f_.columns[c.out_cols[j]];
      for (size_t r = 0; r < rows; ++r) {
        int k = row_map[r];
        if (k < 0) {
          d.values[r] = cd.default_value;
          d.statuses[r] = v1::MISSING;
          continue;
        }
        auto* row = resp->mutable_rows(k);
        if (uses[k] == 1) {
          d.values[r].Swap(row->mutable_values(static_cast<int>(j)));
        } else {
          d.values[r] = row->values(static_cast<int>(j));
        }
        d.statuses[r] = static_cast<ValueStatus>(row->statuses(static_cast<int>(j)));
      }
    }
    return absl::OkStatus();
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
      double v = c.expr->Evaluate(in);
      d.values[r].set_float32_value(std::isfinite(v) ? static_cast<float>(v) : 0.0f);
      d.statuses[r] = all_present ? v1::PRESENT : v1::DEFAULT;
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
      d.values[r].set_float32_value(std::isfinite(s) ? static_cast<float>(s) : 0.0f);
      d.statuses[r] = all_present ? v1::PRESENT : v1::DEFAULT;
    }
  }
};

void Record(const Component& c, Outcome* o, absl::Duration took) {
  o->micros = absl::ToInt64Microseconds(took);
  if (c.latency != nullptr) c.latency->Observe(absl::ToDoubleSeconds(took));
  if (c.results[o->status] != nullptr) c.results[o->status]->Inc();
}

}  // namespace

absl::Status Executor::Run(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp) {
  const absl::Time start = absl::Now();
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
  class Run run(flow, req, n);
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
    run.cols_[col].values.resize(1);
    run.cols_[col].values[0].set_string_value(it->second);
    run.cols_[col].statuses.assign(1, v1::PRESENT);
  }
  {
    ColData& t = run.cols_[flow.target_col];
    t.values.resize(n);
    t.statuses.assign(n, v1::PRESENT);
    for (size_t r = 0; r < n; ++r) {
      const std::string& id = req.targets(static_cast<int>(r));
      if (id.empty()) return absl::InvalidArgumentError(absl::StrCat("targets[", r, "]: empty id"));
      t.values[r].set_string_value(id);
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
    run.cols_[col].values.resize(1);
    if (it == req.request_features().end()) {
      run.cols_[col].values[0] = flow.columns[col].default_value;
      run.cols_[col].statuses.assign(1, v1::DEFAULT);
    } else {
      run.cols_[col].values[0] = it->second;
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
    // Dispatch the fetches first so they overlap with the inline work below.
    std::vector<int> fetches;
    for (int ci : stage) {
      if (flow.components[ci].kind == Component::Kind::kFeatures) fetches.push_back(ci);
    }
    std::vector<std::shared_ptr<FetchJob>> jobs(fetches.size());
    std::vector<std::vector<int>> row_maps(fetches.size());
    auto sync = std::make_shared<StageSync>();
    {
      absl::MutexLock l(&sync->mu);
      sync->done.assign(fetches.size(), false);
      sync->finished.assign(fetches.size(), absl::InfinitePast());
    }
    std::vector<absl::Time> job_deadline(fetches.size());
    for (size_t j = 0; j < fetches.size(); ++j) {
      const Component& c = flow.components[fetches[j]];
      jobs[j] = std::make_shared<FetchJob>();
      run.BuildKeys(c, &jobs[j]->req, &row_maps[j]);
      run.outcomes_[fetches[j]].keys = static_cast<uint32_t>(jobs[j]->req.keys_size());
      jobs[j]->delay_ms = c.test_delay_ms;
      job_deadline[j] = std::min(deadline, absl::Now() + absl::Milliseconds(c.timeout_ms));
      if (jobs[j]->req.keys_size() == 0) {
        // Nothing to look up (every key part missing): complete without a store call.
        absl::MutexLock l(&sync->mu);
        sync->done[j] = true;
        sync->finished[j] = absl::Now();
        continue;
      }
      pool_.Schedule([job = jobs[j], sync, j, store = store_] {
        if (job->delay_ms > 0) absl::SleepFor(absl::Milliseconds(job->delay_ms));
        job->status = store->Retrieve(job->req, &job->resp);
        absl::MutexLock l(&sync->mu);
        sync->done[j] = true;
        sync->finished[j] = absl::Now();
        sync->cv.SignalAll();
      });
    }
    // Wait for each fetch until it completes or its own deadline passes.
    std::vector<bool> completed(fetches.size(), false);
    std::vector<absl::Time> finished(fetches.size());
    {
      absl::MutexLock l(&sync->mu);
      while (true) {
        absl::Time now = absl::Now();
        absl::Time next = absl::InfiniteFuture();
        bool waiting = false;
        for (size_t j = 0; j < fetches.size(); ++j) {
          if (sync->done[j] || now >= job_deadline[j]) continue;
          waiting = true;
          next = std::min(next, job_deadline[j]);
        }
        if (!waiting) break;
        sync->cv.WaitWithDeadline(&sync->mu, next);
      }
      for (size_t j = 0; j < fetches.size(); ++j) {
        completed[j] = sync->done[j] && sync->finished[j] <= job_deadline[j];
        finished[j] = sync->finished[j];
      }
    }
    for (size_t j = 0; j < fetches.size(); ++j) {
      const Component& c = flow.components[fetches[j]];
      Outcome& o = run.outcomes_[fetches[j]];
      if (!completed[j]) {
        o.status = v1::COMPONENT_TIMEOUT;
        o.error = absl::StrCat("no result within ", absl::FormatDuration(job_deadline[j] - stage_start),
                               job_deadline[j] == deadline ? " (the request deadline)" : " (the component timeout)");
        run.FillDefaults(c);
        Record(c, &o, job_deadline[j] - stage_start);
        continue;
      }
      absl::Status st = jobs[j]->status;
      if (st.ok() && jobs[j]->req.keys_size() > 0) st = run.Scatter(c, &jobs[j]->resp, row_maps[j]);
      if (st.ok() && jobs[j]->req.keys_size() == 0) {
        // Every key was missing: defaults with status MISSING.
        for (int col : c.out_cols) {
          run.cols_[col].values.assign(row_maps[j].size(), flow.columns[col].default_value);
          run.cols_[col].statuses.assign(row_maps[j].size(), v1::MISSING);
        }
      }
      if (st.ok()) {
        o.status = v1::COMPONENT_OK;
      } else {
        o.status = v1::COMPONENT_FAILED;
        o.error = std::string(st.message());
        run.FillDefaults(c);
      }
      Record(c, &o, finished[j] - stage_start);
    }
    // Derived columns and models: pure CPU over columns already computed, run inline.
    for (int ci : stage) {
      const Component& c = flow.components[ci];
      if (c.kind == Component::Kind::kFeatures) continue;
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
  std::vector<size_t> order(n);
  for (size_t r = 0; r < n; ++r) order[r] = r;
  if (flow.sort_col >= 0) {
    std::vector<double> key(n);
    for (size_t r = 0; r < n; ++r) key[r] = Number(run.V(flow.sort_col, r));
    if (flow.descending) {
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] > key[b]; });
    } else {
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
    }
    uint32_t k = req.top_k() != 0 ? req.top_k() : flow.top_k;
    if (k != 0 && k < n) order.resize(k);
  } else if (req.top_k() != 0 && req.top_k() < n) {
    order.resize(req.top_k());
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
  resp->mutable_rows()->Reserve(static_cast<int>(order.size()));
  for (size_t r : order) {
    auto* row = resp->add_rows();
    row->set_target(req.targets(static_cast<int>(r)));
    row->mutable_values()->Reserve(ncols);
    row->mutable_statuses()->Reserve(ncols);
    for (int col : flow.output_cols) {
      *row->add_values() = run.V(col, r);
      row->add_statuses(run.S(col, r));
    }
    for (size_t d = 0; d < dense_cols.size(); ++d) {
      AppendFloats(flow.columns[dense_cols[d]], run.V(dense_cols[d], r), dense_width[d], resp->mutable_dense());
    }
  }
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
  resp->set_total_micros(absl::ToInt64Microseconds(absl::Now() - start));
  return absl::OkStatus();
}

}  // namespace kosh::flows
