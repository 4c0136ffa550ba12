// The built-in node library. Each type is documented in docs/api.md ("Pipelines: node types");
// the comment above each factory lists its params.
#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "base/config.h"
#include "base/status.h"
#include "datasets/dataset_manager.h"
#include "flows/executor.h"
#include "flows/expr.h"
#include "flows/flow_registry.h"
#include "interactions/interaction_store.h"
#include "pipelines/node.h"
#include "pipelines/pipeline.h"

namespace kosh::pipelines {
namespace {

// --- params helpers ------------------------------------------------------------------------------

// Reads one node's params with errors named "<node>.params.<key>".
class Params {
 public:
  explicit Params(const NodeSpec& spec)
      : spec_(spec), path_(absl::StrCat(spec.where, ".params")), r_(spec.params, path_) {}

  const base::YamlReader& r() const { return r_; }
  std::string Where(absl::string_view key) const { return absl::StrCat(path_, ".", key); }
  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(Where(key), ": ", what));
  }
  bool Has(const std::string& key) const { return r_.Has(key); }
  YAML::Node Node(const std::string& key) const {
    if (!spec_.params.IsDefined() || !spec_.params.IsMap()) return YAML::Node();
    const YAML::Node& p = spec_.params;  // const lookups do not insert keys
    return p[key];
  }

  absl::Status RequiredString(const std::string& key, std::string* out) const {
    if (!Has(key)) return Error(key, "required");
    RETURN_IF_ERROR(r_.GetString(key, out));
    if (out->empty()) return Error(key, "must not be empty");
    return absl::OkStatus();
  }
  absl::Status StringList(const std::string& key, std::vector<std::string>* out) const {
    YAML::Node n = Node(key);
    if (!n.IsDefined() || n.IsNull()) return absl::OkStatus();
    if (!n.IsSequence()) return Error(key, "expected a list");
    for (size_t i = 0; i < n.size(); ++i) {
      if (!n[i].IsScalar() || n[i].Scalar().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(Where(key), "[", i, "]: expected a non-empty string"));
      }
      out->push_back(n[i].Scalar());
    }
    return absl::OkStatus();
  }
  // A mapping of name -> number.
  absl::Status NumberMap(const std::string& key, std::vector<std::pair<std::string, double>>* out) const {
    YAML::Node n = Node(key);
    if (!n.IsDefined() || n.IsNull()) return absl::OkStatus();
    if (!n.IsMap()) return Error(key, "expected a mapping of name -> number");
    base::YamlReader wr(n, Where(key));
    for (const auto& kv : n) {
      std::string name = kv.first.as<std::string>();
      double w = 0;
      if (!wr.Has(name)) continue;
      RETURN_IF_ERROR(wr.GetDouble(name, &w));
      if (!std::isfinite(w)) return absl::InvalidArgumentError(absl::StrCat(Where(key), ".", name, ": must be finite"));
      out->emplace_back(std::move(name), w);
    }
    return absl::OkStatus();
  }
  // A candidate limit: 1..max_candidates, default max_candidates.
  absl::Status Limit(const std::string& key, const PipelinesOptions& o, uint32_t* out) const {
    uint64_t v = o.max_candidates;
    RETURN_IF_ERROR(r_.GetUint(key, &v));
    if (v == 0 || v > o.max_candidates) {
      return Error(key, absl::StrCat("must be 1 to ", o.max_candidates, " (pipelines.max_candidates)"));
    }
    *out = static_cast<uint32_t>(v);
    return absl::OkStatus();
  }

 private:
  const NodeSpec& spec_;
  std::string path_;
  base::YamlReader r_;
};

const std::string* ContextValue(const v1::RunPipelineRequest& req, const std::string& key) {
  auto it = req.context().find(key);
  if (it == req.context().end() || it->second.empty()) return nullptr;
  return &it->second;
}

absl::Status MissingContext(const std::string& key) {
  return absl::InvalidArgumentError(absl::StrCat("context: missing \"", key, "\""));
}

// A user's newest `events` events of `types` (merged, newest first), within the last `within_ms`
// when positive, else regardless of age.
absl::Status RecentEvents(interactions::InteractionStore* store, const std::string& user,
                          const std::vector<std::string>& types, int64_t within_ms, uint32_t events,
                          v1::HistoriesResponse* resp) {
  if (within_ms > 0) {
    v1::WindowRequest req;
    req.add_user_ids(user);
    for (const auto& t : types) req.add_types(t);
    req.mutable_range()->set_within_ms(within_ms);
    req.set_limit(events);
    req.set_merge_types(true);
    return store->Window(req, resp);
  }
  v1::LastKRequest req;
  req.add_user_ids(user);
  for (const auto& t : types) req.add_types(t);
  req.set_k(events);
  req.set_merge_types(true);
  return store->LastK(req, resp);
}

// Columns an expression (or a weight list) reads, resolved against one input set. "score" is the
// candidate's score (index -1) unless the set has a column of that name.
absl::StatusOr<std::vector<int>> ResolveColumns(const CandidateSet& in, const std::vector<std::string>& names) {
  std::vector<int> out;
  out.reserve(names.size());
  for (const auto& name : names) {
    int c = in.ColumnIndex(name);
    if (c < 0 && name != kScoreColumn) {
      return absl::FailedPreconditionError(absl::StrCat(
          "unknown column \"", name,
          "\" (the input has: ", in.columns.empty() ? "no columns" : absl::StrJoin(in.columns, ", "), "; and score)"));
    }
    out.push_back(c);
  }
  return out;
}

double ColumnNumber(const CandidateSet& in, size_t i, int col) {
  return col < 0 ? in.items[i].score : NumberOf(in.Get(i, col));
}

absl::Status CheckEventTypes(const NodeEnv& env, const Params& p, const std::string& key,
                             const std::vector<std::string>& types) {
  if (!env.check_references || env.interactions == nullptr) return absl::OkStatus();
  v1::ListEventTypesResponse known;
  RETURN_IF_ERROR(env.interactions->ListEventTypes(v1::ListEventTypesRequest(), &known));
  absl::flat_hash_set<std::string> names;
  for (const auto& t : known.event_types()) names.insert(t.name());
  for (size_t i = 0; i < types.size(); ++i) {
    if (!names.contains(types[i])) {
      return absl::InvalidArgumentError(absl::StrCat(p.Where(key), "[", i, "]: unknown event type \"", types[i], "\""));
    }
  }
  return absl::OkStatus();
}

absl::Status NeedSubsystem(const void* ptr, const NodeSpec& spec, absl::string_view what) {
  if (ptr != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(spec.where, ".type: a ", spec.type, " node needs ", what, ", which this server does not run"));
}

// Adds (item, score) unless the item is already in `out`; false when `limit` is reached.
bool AddUnique(absl::flat_hash_set<std::string>* seen, CandidateSet* out, const std::string& item, double score,
               uint32_t limit) {
  if (out->items.size() >= limit) return false;
  if (!seen->insert(item).second) return true;
  Candidate c;
  c.item_id = item;
  c.score = score;
  out->items.push_back(std::move(c));
  return true;
}

// --- dataset_candidates --------------------------------------------------------------------------
// params: dataset (required; a recs dataset), key (context key whose value is the dataset key;
// default user_id) or key_value (a fixed dataset key, e.g. a "popular items" list), limit
// (candidates taken from the front of the list; default max_candidates).
// Output: the list's items with their scores, in list order, de-duplicated. A key with no entry
// gives no candidates (not an error).

class DatasetCandidates final : public Node {
 public:
  DatasetCandidates(datasets::DatasetManager* ds, std::string dataset, std::string key, std::string key_value,
                    uint32_t limit)
      : ds_(ds), dataset_(std::move(dataset)), key_(std::move(key)), key_value_(std::move(key_value)), limit_(limit) {}
  bool blocking() const override { return true; }
  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const std::string* k = &key_value_;
    if (k->empty()) {
      k = ContextValue(*in.request, key_);
      if (k == nullptr) return MissingContext(key_);
    }
    v1::DatasetGetRequest req;
    req.set_dataset(dataset_);
    req.set_key(*k);
    v1::DatasetGetResponse resp;
    RETURN_IF_ERROR(ds_->Get(req, &resp));
    if (resp.entry().status() != v1::FOUND) return absl::OkStatus();
    if (resp.kind() != v1::DATASET_KIND_RECS) {
      return absl::FailedPreconditionError(
          absl::StrCat("dataset \"", dataset_, "\" holds ", v1::DatasetKind_Name(resp.kind()),
                       " values; dataset_candidates reads recommendation lists (recs)"));
    }
    absl::flat_hash_set<std::string> seen;
    for (const auto& item : resp.entry().value().recs().items()) {
      if (!AddUnique(&seen, &out->candidates, item.item_id(), item.score(), limit_)) break;
    }
    return absl::OkStatus();
  }

 private:
  datasets::DatasetManager* ds_;
  std::string dataset_, key_, key_value_;
  uint32_t limit_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildDatasetCandidates(const NodeSpec& spec, const NodeEnv& env) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"dataset", "key", "key_value", "limit"}));
  std::string dataset, key = "user_id", key_value;
  RETURN_IF_ERROR(p.RequiredString("dataset", &dataset));
  if (p.Has("key") && p.Has("key_value")) return p.Error("key_value", "give key or key_value, not both");
  RETURN_IF_ERROR(p.r().GetString("key", &key));
  if (key.empty()) return p.Error("key", "must not be empty");
  if (p.Has("key_value")) RETURN_IF_ERROR(p.RequiredString("key_value", &key_value));
  uint32_t limit = 0;
  RETURN_IF_ERROR(p.Limit("limit", *env.options, &limit));
  RETURN_IF_ERROR(NeedSubsystem(env.datasets, spec, "datasets"));
  if (env.check_references) {
    bool declared = false;
    for (const auto& d : env.datasets->options().declared) declared |= d.name == dataset;
    v1::ListVersionsRequest lr;
    lr.set_dataset(dataset);
    v1::ListVersionsResponse ls;
    absl::Status st = env.datasets->ListVersions(lr, &ls);
    if (!st.ok() && !declared) {
      return p.Error("dataset", absl::StrCat("unknown dataset \"", dataset,
                                             "\" (load a version first, or declare it under datasets:)"));
    }
    if (st.ok() && ls.datasets_size() == 1 && ls.datasets(0).kind() != v1::DATASET_KIND_UNSPECIFIED &&
        ls.datasets(0).kind() != v1::DATASET_KIND_RECS) {
      return p.Error("dataset",
                     absl::StrCat("dataset \"", dataset, "\" holds ", v1::DatasetKind_Name(ls.datasets(0).kind()),
                                  " values; dataset_candidates reads recommendation lists (recs)"));
    }
  }
  return std::make_unique<DatasetCandidates>(env.datasets, std::move(dataset), std::move(key), std::move(key_value),
                                             limit);
}

// --- interaction_candidates ----------------------------------------------------------------------
// params: user (context key of the user id; default user_id), types (event types; default all),
// within (only events this recent, e.g. 24h; default: the newest `events` events), events (events
// read, newest first; default 100), limit (candidates; default max_candidates), type_weights
// ({type: weight}, default 1 each), half_life (optional: an event's weight halves every
// half_life of age).
// Output: the distinct items of those events; score = sum over the item's events of
// type_weight * decay, ordered by score (then most recent first).

class InteractionCandidates final : public Node {
 public:
  struct Config {
    std::string user = "user_id";
    std::vector<std::string> types;
    int64_t within_ms = 0;
    uint32_t events = 100;
    uint32_t limit = 0;
    absl::flat_hash_map<std::string, double> type_weights;
    int64_t half_life_ms = 0;
  };
  InteractionCandidates(interactions::InteractionStore* store, Config c) : store_(store), c_(std::move(c)) {}
  bool blocking() const override { return true; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const std::string* user = ContextValue(*in.request, c_.user);
    if (user == nullptr) return MissingContext(c_.user);
    v1::HistoriesResponse resp;
    RETURN_IF_ERROR(RecentEvents(store_, *user, c_.types, c_.within_ms, c_.events, &resp));
    if (resp.users_size() == 0 || resp.users(0).histories_size() == 0) return absl::OkStatus();
    const v1::History& h = resp.users(0).histories(0);
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    absl::flat_hash_map<std::string, size_t> index;
    std::vector<Candidate> items;
    for (int e = 0; e < h.item_ids_size(); ++e) {
      double w = 1;
      if (!c_.type_weights.empty() && e < h.types_size()) {
        auto it = c_.type_weights.find(h.types(e));
        if (it != c_.type_weights.end()) w = it->second;
      }
      if (c_.half_life_ms > 0 && e < h.timestamps_ms_size()) {
        double age = static_cast<double>(std::max<int64_t>(0, now_ms - h.timestamps_ms(e)));
        w *= std::exp2(-age / static_cast<double>(c_.half_life_ms));
      }
      auto [it, inserted] = index.try_emplace(h.item_ids(e), items.size());
      if (inserted) {
        Candidate c;
        c.item_id = h.item_ids(e);
        items.push_back(std::move(c));
      }
      items[it->second].score += w;
    }
    // Events arrive newest first, so first appearance is recency: a stable sort keeps it for ties.
    std::stable_sort(items.begin(), items.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
    if (items.size() > c_.limit) items.resize(c_.limit);
    out->candidates.items = std::move(items);
    return absl::OkStatus();
  }

 private:
  interactions::InteractionStore* store_;
  Config c_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildInteractionCandidates(const NodeSpec& spec, const NodeEnv& env) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"user", "types", "within", "events", "limit", "type_weights", "half_life"}));
  InteractionCandidates::Config c;
  RETURN_IF_ERROR(p.r().GetString("user", &c.user));
  if (c.user.empty()) return p.Error("user", "must not be empty");
  RETURN_IF_ERROR(p.StringList("types", &c.types));
  RETURN_IF_ERROR(p.r().GetDurationMs("within", &c.within_ms));
  if (p.Has("within") && c.within_ms <= 0) return p.Error("within", "must be positive");
  uint64_t events = c.events;
  RETURN_IF_ERROR(p.r().GetUint("events", &events));
  if (events == 0 || events > 100000) return p.Error("events", "must be 1 to 100000");
  c.events = static_cast<uint32_t>(events);
  RETURN_IF_ERROR(p.Limit("limit", *env.options, &c.limit));
  std::vector<std::pair<std::string, double>> weights;
  RETURN_IF_ERROR(p.NumberMap("type_weights", &weights));
  for (const auto& [t, w] : weights) {
    if (!c.types.empty() && std::find(c.types.begin(), c.types.end(), t) == c.types.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(p.Where("type_weights"), ".", t, ": \"", t, "\" is not one of params.types"));
    }
    c.type_weights[t] = w;
  }
  RETURN_IF_ERROR(p.r().GetDurationMs("half_life", &c.half_life_ms));
  if (p.Has("half_life") && c.half_life_ms <= 0) return p.Error("half_life", "must be positive");
  RETURN_IF_ERROR(NeedSubsystem(env.interactions, spec, "the interaction store"));
  RETURN_IF_ERROR(CheckEventTypes(env, p, "types", c.types));
  if (env.check_references && c.events > env.interactions->options().max_events_per_read) {
    return p.Error("events", absl::StrCat("exceeds interactions.max_events_per_read (",
                                          env.interactions->options().max_events_per_read, ")"));
  }
  return std::make_unique<InteractionCandidates>(env.interactions, std::move(c));
}

// --- features ------------------------------------------------------------------------------------
// params: model_id (required; a flow), version (default 0 = the latest at run time), context
// ({flow context input: request context key}; default: the same names), prefix (prepended to
// the attached column names; default "<model_id>."), columns (flow columns to attach; default
// all).
// Runs the flow (Infer) with the input's candidates as targets and attaches the matrix columns to
// them (values with status MISSING stay unset). The flow's failed components make the node
// PARTIAL. Input order and scores are kept.

class FeaturesNode final : public Node {
 public:
  struct Config {
    std::string model_id;
    uint32_t version = 0;
    std::vector<std::pair<std::string, std::string>> context;  // flow input -> request key
    std::string prefix;
    std::vector<std::string> columns;
  };
  FeaturesNode(flows::FlowRegistry* reg, flows::Executor* exec, Config c) : reg_(reg), exec_(exec), c_(std::move(c)) {}
  bool blocking() const override { return true; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const CandidateSet& input = *in.inputs[0];
    out->candidates = input;
    if (input.items.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(auto flow, reg_->Find(c_.model_id, c_.version));
    v1::InferRequest req;
    req.set_model_id(c_.model_id);
    req.set_version(flow->version);
    for (int col : flow->context_cols) {
      const std::string& name = flow->columns[col].name;
      std::string key = name;
      for (const auto& [from, to] : c_.context) {
        if (from == name) key = to;
      }
      const std::string* v = ContextValue(*in.request, key);
      if (v == nullptr) return MissingContext(key);
      (*req.mutable_context())[name] = *v;
    }
    req.mutable_targets()->Reserve(static_cast<int>(input.items.size()));
    for (const auto& c : input.items) req.add_targets(c.item_id);
    // Every candidate back: no cut by the flow's own top_k.
    req.set_top_k(static_cast<uint32_t>(input.items.size()));
    absl::Duration left = in.deadline - absl::Now();
    req.set_deadline_ms(std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)))));
    v1::InferResponse resp;
    RETURN_IF_ERROR(exec_->Run(*flow, req, &resp));
    // Matrix columns to attach, and where they go.
    std::vector<std::pair<int, int>> cols;  // (matrix column, candidate column)
    for (int m = 0; m < resp.columns_size(); ++m) {
      const std::string& name = resp.columns(m).name();
      if (!c_.columns.empty() && std::find(c_.columns.begin(), c_.columns.end(), name) == c_.columns.end()) continue;
      cols.emplace_back(m, out->candidates.AddColumn(c_.prefix + name));
    }
    absl::flat_hash_map<absl::string_view, int> row_of;
    for (int r = 0; r < resp.rows_size(); ++r) row_of.try_emplace(resp.rows(r).target(), r);
    CandidateSet& cs = out->candidates;
    for (size_t i = 0; i < cs.items.size(); ++i) {
      auto it = row_of.find(cs.items[i].item_id);
      if (it == row_of.end()) continue;
      const v1::MatrixRow& row = resp.rows(it->second);
      for (const auto& [m, col] : cols) {
        if (m >= row.values_size() || (m < row.statuses_size() && row.statuses(m) == v1::MISSING)) continue;
        cs.Set(i, col, row.values(m));
      }
    }
    if (resp.partial()) {
      out->partial = absl::StrCat("flow \"", c_.model_id, "\" version ", resp.version(),
                                  " is partial: failed components ", absl::StrJoin(resp.failed_components(), ", "));
    }
    return absl::OkStatus();
  }

 private:
  flows::FlowRegistry* reg_;
  flows::Executor* exec_;
  Config c_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildFeatures(const NodeSpec& spec, const NodeEnv& env) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"model_id", "version", "context", "prefix", "columns"}));
  FeaturesNode::Config c;
  RETURN_IF_ERROR(p.RequiredString("model_id", &c.model_id));
  uint64_t version = 0;
  RETURN_IF_ERROR(p.r().GetUint("version", &version));
  if (version > UINT32_MAX) return p.Error("version", "too large");
  c.version = static_cast<uint32_t>(version);
  YAML::Node ctx = p.Node("context");
  if (ctx.IsDefined() && !ctx.IsNull()) {
    if (!ctx.IsMap()) return p.Error("context", "expected a mapping of flow context input -> request context key");
    for (const auto& kv : ctx) {
      std::string from = kv.first.as<std::string>();
      if (!kv.second.IsScalar() || kv.second.Scalar().empty()) {
        return p.Error(absl::StrCat("context.", from), "expected a request context key");
      }
      c.context.emplace_back(from, kv.second.Scalar());
    }
  }
  c.prefix = c.model_id + ".";
  RETURN_IF_ERROR(p.r().GetString("prefix", &c.prefix));
  RETURN_IF_ERROR(p.StringList("columns", &c.columns));
  RETURN_IF_ERROR(NeedSubsystem(env.flow_registry, spec, "flows"));
  RETURN_IF_ERROR(NeedSubsystem(env.flow_executor, spec, "flows"));
  if (env.check_references) {
    auto flow = env.flow_registry->Find(c.model_id, c.version);
    if (!flow.ok()) {
      return p.Error(c.version == 0 ? "model_id" : "version", flow.status().message());
    }
    const flows::CompiledFlow& f = **flow;
    for (const auto& [from, to] : c.context) {
      bool found = false;
      for (int col : f.context_cols) found |= f.columns[col].name == from;
      if (!found) {
        return p.Error(absl::StrCat("context.", from),
                       absl::StrCat("\"", from, "\" is not a context input of flow \"", c.model_id, "\""));
      }
    }
    for (size_t i = 0; i < c.columns.size(); ++i) {
      bool found = false;
      for (int col : f.output_cols) found |= f.columns[col].name == c.columns[i];
      if (!found) {
        return absl::InvalidArgumentError(absl::StrCat(p.Where("columns"), "[", i, "]: flow \"", c.model_id,
                                                       "\" has no column \"", c.columns[i], "\""));
      }
    }
  }
  return std::make_unique<FeaturesNode>(env.flow_registry, env.flow_executor, std::move(c));
}

// --- score ---------------------------------------------------------------------------------------
// params: exactly one of
//   column: NAME            the candidate score becomes that column (e.g. a flow's model score,
//                           "ranker.score"); candidates without a value get `default` (0)
//   weights: {NAME: w, ...} and optional bias: score = bias + sum w * column ("score" is the
//                           current score; missing values count 0)
//   expr: "..."             a flows expression over columns (flows/expr.h)
// Output: the input with new scores, in input order.

class ScoreNode final : public Node {
 public:
  enum class Mode : uint8_t { kColumn, kWeights, kExpr };
  struct Config {
    Mode mode = Mode::kColumn;
    std::vector<std::string> names;  // kColumn: one; kWeights: parallel to weights; kExpr: expr->columns()
    std::vector<double> weights;
    double bias = 0;
    double fallback = 0;
    std::optional<flows::Expr> expr;
  };
  explicit ScoreNode(Config c) : c_(std::move(c)) {}
  bool blocking() const override { return false; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const CandidateSet& input = *in.inputs[0];
    out->candidates = input;
    CandidateSet& cs = out->candidates;
    if (cs.items.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::vector<int> cols, ResolveColumns(input, c_.names));
    std::vector<double> args(cols.size());
    for (size_t i = 0; i < cs.items.size(); ++i) {
      double s = 0;
      switch (c_.mode) {
        case Mode::kColumn: {
          if (cols[0] < 0) {
            s = cs.items[i].score;
          } else {
            bool present = false;
            s = NumberOf(input.Get(i, cols[0]), &present);
            if (!present) s = c_.fallback;
          }
          break;
        }
        case Mode::kWeights:
          s = c_.bias;
          for (size_t k = 0; k < cols.size(); ++k) s += c_.weights[k] * ColumnNumber(input, i, cols[k]);
          break;
        case Mode::kExpr:
          for (size_t k = 0; k < cols.size(); ++k) args[k] = ColumnNumber(input, i, cols[k]);
          s = c_.expr->Evaluate(args);
          break;
      }
      cs.items[i].score = std::isfinite(s) ? s : 0;
    }
    return absl::OkStatus();
  }

 private:
  Config c_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildScore(const NodeSpec& spec, const NodeEnv&) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"column", "weights", "bias", "expr", "default"}));
  ScoreNode::Config c;
  int modes = p.Has("column") + p.Has("weights") + p.Has("expr");
  if (modes != 1) {
    return absl::InvalidArgumentError(absl::StrCat(spec.where, ".params: give exactly one of column, weights, expr"));
  }
  if (p.Has("column")) {
    c.mode = ScoreNode::Mode::kColumn;
    std::string col;
    RETURN_IF_ERROR(p.RequiredString("column", &col));
    c.names.push_back(col);
    RETURN_IF_ERROR(p.r().GetDouble("default", &c.fallback));
  } else if (p.Has("weights")) {
    c.mode = ScoreNode::Mode::kWeights;
    std::vector<std::pair<std::string, double>> w;
    RETURN_IF_ERROR(p.NumberMap("weights", &w));
    if (w.empty()) return p.Error("weights", "name at least one column");
    for (auto& [name, weight] : w) {
      c.names.push_back(name);
      c.weights.push_back(weight);
    }
    RETURN_IF_ERROR(p.r().GetDouble("bias", &c.bias));
  } else {
    c.mode = ScoreNode::Mode::kExpr;
    std::string text;
    RETURN_IF_ERROR(p.RequiredString("expr", &text));
    auto e = flows::Expr::Parse(text);
    if (!e.ok()) return p.Error("expr", e.status().message());
    c.expr = std::move(*e);
    c.names = c.expr->columns();
  }
  if (c.mode != ScoreNode::Mode::kWeights && p.Has("bias")) return p.Error("bias", "only with weights");
  if (c.mode != ScoreNode::Mode::kColumn && p.Has("default")) return p.Error("default", "only with column");
  return std::make_unique<ScoreNode>(std::move(c));
}

// --- filter --------------------------------------------------------------------------------------
// params (at least one; a candidate is kept only if it passes all):
//   expr: "..."                   keep candidates for which the flows expression is non-zero,
//                                 e.g. "score > 0.1" ("score" is the candidate score)
//   exclude_items: [id, ...]      a fixed deny-list
//   exclude_list: NAME            drop the items of the request's lists[NAME] (absent: none)
//   exclude_interacted:           drop items the user interacted with:
//     {user: user_id, types: [order], within: 30d, events: 500}
// Output: the kept candidates in input order.

class FilterNode final : public Node {
 public:
  struct Config {
    std::optional<flows::Expr> expr;
    absl::flat_hash_set<std::string> exclude_items;
    std::string exclude_list;
    bool exclude_interacted = false;
    std::string user = "user_id";
    std::vector<std::string> types;
    int64_t within_ms = 0;
    uint32_t events = 500;
  };
  FilterNode(interactions::InteractionStore* store, Config c) : store_(store), c_(std::move(c)) {}
  bool blocking() const override { return c_.exclude_interacted; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const CandidateSet& input = *in.inputs[0];
    out->candidates.columns = input.columns;
    if (input.items.empty()) return absl::OkStatus();
    std::vector<int> cols;
    if (c_.expr.has_value()) {
      ASSIGN_OR_RETURN(cols, ResolveColumns(input, c_.expr->columns()));
    }
    absl::flat_hash_set<std::string> interacted;
    if (c_.exclude_interacted) {
      const std::string* user = ContextValue(*in.request, c_.user);
      if (user == nullptr) return MissingContext(c_.user);
      v1::HistoriesResponse resp;
      RETURN_IF_ERROR(RecentEvents(store_, *user, c_.types, c_.within_ms, c_.events, &resp));
      for (const auto& u : resp.users()) {
        for (const auto& h : u.histories()) interacted.insert(h.item_ids().begin(), h.item_ids().end());
      }
    }
    const v1::ItemList* list = nullptr;
    if (!c_.exclude_list.empty()) {
      auto it = in.request->lists().find(c_.exclude_list);
      if (it != in.request->lists().end()) list = &it->second;
    }
    absl::flat_hash_set<absl::string_view> deny;
    if (list != nullptr) deny.insert(list->items().begin(), list->items().end());
    std::vector<double> args(cols.size());
    for (size_t i = 0; i < input.items.size(); ++i) {
      const Candidate& c = input.items[i];
      if (c_.exclude_items.contains(c.item_id) || deny.contains(c.item_id) || interacted.contains(c.item_id)) continue;
      if (c_.expr.has_value()) {
        for (size_t k = 0; k < cols.size(); ++k) args[k] = ColumnNumber(input, i, cols[k]);
        if (c_.expr->Evaluate(args) == 0) continue;
      }
      out->candidates.items.push_back(c);
    }
    return absl::OkStatus();
  }

 private:
  interactions::InteractionStore* store_;
  Config c_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildFilter(const NodeSpec& spec, const NodeEnv& env) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"expr", "exclude_items", "exclude_list", "exclude_interacted"}));
  FilterNode::Config c;
  if (!p.Has("expr") && !p.Has("exclude_items") && !p.Has("exclude_list") && !p.Has("exclude_interacted")) {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.where, ".params: give at least one of expr, exclude_items, exclude_list, exclude_interacted"));
  }
  if (p.Has("expr")) {
    std::string text;
    RETURN_IF_ERROR(p.RequiredString("expr", &text));
    auto e = flows::Expr::Parse(text);
    if (!e.ok()) return p.Error("expr", e.status().message());
    c.expr = std::move(*e);
  }
  std::vector<std::string> items;
  RETURN_IF_ERROR(p.StringList("exclude_items", &items));
  c.exclude_items.insert(items.begin(), items.end());
  if (p.Has("exclude_list")) RETURN_IF_ERROR(p.RequiredString("exclude_list", &c.exclude_list));
  if (p.Has("exclude_interacted")) {
    c.exclude_interacted = true;
    YAML::Node ei = p.Node("exclude_interacted");
    std::string where = p.Where("exclude_interacted");
    if (!ei.IsNull() && !ei.IsMap()) return p.Error("exclude_interacted", "expected a mapping");
    base::YamlReader r(ei, where);
    RETURN_IF_ERROR(r.CheckKeys({"user", "types", "within", "events"}));
    RETURN_IF_ERROR(r.GetString("user", &c.user));
    if (c.user.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ".user: must not be empty"));
    if (ei.IsMap()) {
      YAML::Node t = ei["types"];
      if (t.IsDefined() && !t.IsNull()) {
        if (!t.IsSequence()) return absl::InvalidArgumentError(absl::StrCat(where, ".types: expected a list"));
        for (size_t i = 0; i < t.size(); ++i) {
          if (!t[i].IsScalar()) {
            return absl::InvalidArgumentError(absl::StrCat(where, ".types[", i, "]: expected a string"));
          }
          c.types.push_back(t[i].Scalar());
        }
      }
    }
    RETURN_IF_ERROR(r.GetDurationMs("within", &c.within_ms));
    if (r.Has("within") && c.within_ms <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".within: must be positive"));
    }
    uint64_t events = c.events;
    RETURN_IF_ERROR(r.GetUint("events", &events));
    if (events == 0 || events > 100000) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".events: must be 1 to 100000"));
    }
    c.events = static_cast<uint32_t>(events);
    RETURN_IF_ERROR(NeedSubsystem(env.interactions, spec, "the interaction store"));
    RETURN_IF_ERROR(CheckEventTypes(env, p, "exclude_interacted.types", c.types));
    if (env.check_references && c.events > env.interactions->options().max_events_per_read) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".events: exceeds interactions.max_events_per_read (",
                                                     env.interactions->options().max_events_per_read, ")"));
    }
  }
  return std::make_unique<FilterNode>(env.interactions, std::move(c));
}

// --- merge ---------------------------------------------------------------------------------------
// params: weights ({input: weight}, default 1 each), mode (sum | max | first; default sum).
// Output: the union of the inputs, de-duplicated by item id, in order of first appearance
// (inputs in config order). A candidate's score is the sum (or max) over the inputs that hold it
// of weight * its score there, or its weighted score in the first input that holds it (first).
// Columns are the union; a value comes from the first input that has one.

class MergeNode final : public Node {
 public:
  enum class Mode : uint8_t { kSum, kMax, kFirst };
  MergeNode(std::vector<double> weights, Mode mode) : weights_(std::move(weights)), mode_(mode) {}
  bool blocking() const override { return false; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    CandidateSet& cs = out->candidates;
    size_t total = 0;
    for (const CandidateSet* s : in.inputs) total += s->items.size();
    cs.items.reserve(total);
    absl::flat_hash_map<std::string, size_t> index;
    index.reserve(total);
    for (size_t k = 0; k < in.inputs.size(); ++k) {
      const CandidateSet& s = *in.inputs[k];
      std::vector<int> colmap(s.columns.size());
      for (size_t j = 0; j < s.columns.size(); ++j) colmap[j] = cs.AddColumn(s.columns[j]);
      const double w = weights_[k];
      for (const Candidate& c : s.items) {
        const double score = w * c.score;
        auto [it, inserted] = index.try_emplace(c.item_id, cs.items.size());
        if (inserted) {
          Candidate n;
          n.item_id = c.item_id;
          n.score = score;
          cs.items.push_back(std::move(n));
        } else {
          double& cur = cs.items[it->second].score;
          if (mode_ == Mode::kSum) cur += score;
          if (mode_ == Mode::kMax) cur = std::max(cur, score);
        }
        const size_t target = it->second;
        for (size_t j = 0; j < c.values.size(); ++j) {
          if (c.values[j].kind_case() == v1::Value::KIND_NOT_SET) continue;
          if (cs.Get(target, colmap[j]) == nullptr) cs.Set(target, colmap[j], c.values[j]);
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  std::vector<double> weights_;  // per input
  Mode mode_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildMerge(const NodeSpec& spec, const NodeEnv&) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"weights", "mode"}));
  std::vector<double> weights(spec.inputs.size(), 1.0);
  std::vector<std::pair<std::string, double>> w;
  RETURN_IF_ERROR(p.NumberMap("weights", &w));
  for (const auto& [name, weight] : w) {
    auto it = std::find(spec.inputs.begin(), spec.inputs.end(), name);
    if (it == spec.inputs.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(p.Where("weights"), ".", name, ": \"", name,
                       "\" is not an input of this node (inputs: ", absl::StrJoin(spec.inputs, ", "), ")"));
    }
    weights[it - spec.inputs.begin()] = weight;
  }
  std::string mode = "sum";
  RETURN_IF_ERROR(p.r().GetString("mode", &mode));
  MergeNode::Mode m;
  if (mode == "sum") {
    m = MergeNode::Mode::kSum;
  } else if (mode == "max") {
    m = MergeNode::Mode::kMax;
  } else if (mode == "first") {
    m = MergeNode::Mode::kFirst;
  } else {
    return p.Error("mode", absl::StrCat("\"", mode, "\" is not sum, max or first"));
  }
  return std::make_unique<MergeNode>(std::move(weights), m);
}

// --- top_k ---------------------------------------------------------------------------------------
// params: k (required, 1..max_candidates), by (a column or "score"; default score), order (desc |
// asc; default desc).
// Output: the k best candidates by that column; ties keep input order; candidates without a value
// in the column come last.

class TopKNode final : public Node {
 public:
  TopKNode(uint32_t k, std::string by, bool descending) : k_(k), by_(std::move(by)), descending_(descending) {}
  bool blocking() const override { return false; }

  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    const CandidateSet& input = *in.inputs[0];
    out->candidates.columns = input.columns;
    if (input.items.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(std::vector<int> cols, ResolveColumns(input, {by_}));
    const int col = cols[0];
    const size_t n = input.items.size();
    std::vector<std::pair<double, size_t>> keys(n);
    const double missing = descending_ ? -HUGE_VAL : HUGE_VAL;
    for (size_t i = 0; i < n; ++i) {
      bool present = true;
      double v = col < 0 ? input.items[i].score : NumberOf(input.Get(i, col), &present);
      keys[i] = {present && !std::isnan(v) ? v : missing, i};
    }
    const size_t k = std::min<size_t>(k_, n);
    auto better = [this](const std::pair<double, size_t>& a, const std::pair<double, size_t>& b) {
      if (a.first != b.first) return descending_ ? a.first > b.first : a.first < b.first;
      return a.second < b.second;  // stable
    };
    std::partial_sort(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k), keys.end(), better);
    out->candidates.items.reserve(k);
    for (size_t i = 0; i < k; ++i) out->candidates.items.push_back(input.items[keys[i].second]);
    return absl::OkStatus();
  }

 private:
  uint32_t k_;
  std::string by_;
  bool descending_;
};

absl::StatusOr<std::unique_ptr<Node>> BuildTopK(const NodeSpec& spec, const NodeEnv& env) {
  Params p(spec);
  RETURN_IF_ERROR(p.r().CheckKeys({"k", "by", "order"}));
  if (!p.Has("k")) return p.Error("k", "required");
  uint32_t k = 0;
  RETURN_IF_ERROR(p.Limit("k", *env.options, &k));
  std::string by(kScoreColumn), order = "desc";
  RETURN_IF_ERROR(p.r().GetString("by", &by));
  if (by.empty()) return p.Error("by", "must not be empty");
  RETURN_IF_ERROR(p.r().GetString("order", &order));
  if (order != "desc" && order != "asc") return p.Error("order", absl::StrCat("\"", order, "\" is not asc or desc"));
  return std::make_unique<TopKNode>(k, std::move(by), order == "desc");
}

}  // namespace

absl::Status RegisterBuiltinNodes(NodeRegistry* registry) {
  RETURN_IF_ERROR(registry->Register(
      {"dataset_candidates", "candidates from a recommendation-list dataset", true, 0, 0, BuildDatasetCandidates}));
  RETURN_IF_ERROR(registry->Register({"interaction_candidates", "candidates from the user's recent interactions", true,
                                      0, 0, BuildInteractionCandidates}));
  RETURN_IF_ERROR(
      registry->Register({"features", "attach a flow's feature matrix (and model scores)", true, 1, 1, BuildFeatures}));
  RETURN_IF_ERROR(registry->Register({"score", "set the candidate score", true, 1, 1, BuildScore}));
  RETURN_IF_ERROR(registry->Register({"filter", "drop candidates", true, 1, 1, BuildFilter}));
  RETURN_IF_ERROR(registry->Register(
      {"merge", "union with de-duplication and per-input weights", true, 1, NodeType::kAnyInputs, BuildMerge}));
  RETURN_IF_ERROR(registry->Register({"top_k", "sort by a column and keep k", true, 1, 1, BuildTopK}));
  return absl::OkStatus();
}

}  // namespace kosh::pipelines
