#include "flows/flow.h"

#include <algorithm>
#include <deque>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/config.h"
#include "base/graph.h"
#include "base/status.h"
#include "features/codec.h"
#include "features/schema_yaml.h"

namespace kosh::flows {
namespace {

using features::IsNumeric;
using features::IsVectorType;
using features::TypeName;

using base::GetStringList;

bool IsKeyType(v1::FeatureType t) { return t == v1::STRING || t == v1::INT32 || t == v1::INT64; }
bool IsNumericScalar(v1::FeatureType t) { return IsNumeric(t) && !IsVectorType(t); }

const char* ComponentStatusLabel(int s) {
  static const char* kNames[] = {"unspecified", "ok", "failed", "timeout", "skipped"};
  return kNames[s];
}

}  // namespace

absl::StatusOr<FlowsOptions> ParseFlowsOptions(const YAML::Node& node) {
  FlowsOptions o;
  if (!node.IsDefined() || node.IsNull()) return o;
  base::YamlReader r(node, "flows");
  RETURN_IF_ERROR(r.CheckKeys({"threads", "inline_max_keys", "deadline", "component_timeout", "max_targets", "max_config_bytes",
                               "max_components", "enable_test_hooks", "files"}));
  int64_t threads = o.threads;
  RETURN_IF_ERROR(r.GetInt("threads", &threads));
  if (threads < 1 || threads > 256) return absl::InvalidArgumentError("flows.threads: must be 1 to 256");
  o.threads = static_cast<int>(threads);
  uint64_t max_keys = o.inline_max_keys;
  RETURN_IF_ERROR(r.GetUint("inline_max_keys", &max_keys));
  if (max_keys > 1000000) return absl::InvalidArgumentError("flows.inline_max_keys: must be 0 to 1000000");
  o.inline_max_keys = static_cast<uint32_t>(max_keys);
  RETURN_IF_ERROR(r.GetDurationMs("deadline", &o.default_deadline_ms));
  RETURN_IF_ERROR(r.GetDurationMs("component_timeout", &o.default_component_timeout_ms));
  if (o.default_deadline_ms <= 0) return absl::InvalidArgumentError("flows.deadline: must be positive");
  if (o.default_component_timeout_ms <= 0) {
    return absl::InvalidArgumentError("flows.component_timeout: must be positive");
  }
  uint64_t v = o.max_targets;
  RETURN_IF_ERROR(r.GetUint("max_targets", &v));
  if (v == 0 || v > 1000000) return absl::InvalidArgumentError("flows.max_targets: must be 1 to 1000000");
  o.max_targets = static_cast<uint32_t>(v);
  v = o.max_config_bytes;
  RETURN_IF_ERROR(r.GetBytes("max_config_bytes", &v));
  if (v == 0 || v > (64u << 20)) return absl::InvalidArgumentError("flows.max_config_bytes: must be 1 B to 64 MiB");
  o.max_config_bytes = static_cast<uint32_t>(v);
  v = o.max_components;
  RETURN_IF_ERROR(r.GetUint("max_components", &v));
  if (v == 0 || v > 10000) return absl::InvalidArgumentError("flows.max_components: must be 1 to 10000");
  o.max_components = static_cast<uint32_t>(v);
  RETURN_IF_ERROR(r.GetBool("enable_test_hooks", &o.enable_test_hooks));
  RETURN_IF_ERROR(GetStringList(node, "files", "flows", &o.files));
  return o;
}

namespace {

class Compiler {
 public:
  Compiler(const features::Snapshot& snap, const FlowsOptions& options, base::MetricsRegistry* metrics,
           CompiledFlow* flow)
      : snap_(snap), options_(options), metrics_(metrics), f_(flow) {}

  absl::Status Run(const YAML::Node& root) {
    base::YamlReader r(root, "");
    RETURN_IF_ERROR(r.CheckKeys({"model_id", "description", "deadline", "inputs", "components", "output"}));
    RETURN_IF_ERROR(r.GetString("model_id", &f_->model_id));
    if (!features::IsValidName(f_->model_id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model_id: \"", f_->model_id, "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
    }
    f_->deadline_ms = options_.default_deadline_ms;
    RETURN_IF_ERROR(r.GetDurationMs("deadline", &f_->deadline_ms));
    if (f_->deadline_ms <= 0) return absl::InvalidArgumentError("deadline: must be positive");
    RETURN_IF_ERROR(ParseInputs(root["inputs"]));
    RETURN_IF_ERROR(ParseComponents(root["components"]));
    RETURN_IF_ERROR(ResolveAll());
    RETURN_IF_ERROR(Stage());
    RETURN_IF_ERROR(ParseOutput(root["output"]));
    MergeFetches();
    BuildPlan();
    return absl::OkStatus();
  }

 private:
  absl::Status AddColumn(ColumnDef c, const std::string& where) {
    auto [it, inserted] = f_->column_index.try_emplace(c.name, static_cast<int>(f_->columns.size()));
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", c.name, "\" is defined twice"));
    }
    f_->columns.push_back(std::move(c));
    return absl::OkStatus();
  }

  absl::Status ParseInputs(const YAML::Node& node) {
    if (!node.IsDefined() || !node.IsMap()) {
      return absl::InvalidArgumentError("inputs: required mapping with context, target and request_features");
    }
    base::YamlReader r(node, "inputs");
    RETURN_IF_ERROR(r.CheckKeys({"context", "target", "request_features"}));
    std::vector<std::string> ctx;
    RETURN_IF_ERROR(GetStringList(node, "context", "inputs", &ctx));
    for (size_t i = 0; i < ctx.size(); ++i) {
      std::string where = absl::StrCat("inputs.context[", i, "]");
      if (!features::IsValidName(ctx[i])) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": \"", ctx[i], "\" is not a valid name"));
      }
      ColumnDef c;
      c.name = ctx[i];
      c.source = ColumnDef::Source::kContext;
      c.type = v1::STRING;
      c.default_value.set_string_value("");
      f_->context_cols.push_back(static_cast<int>(f_->columns.size()));
      RETURN_IF_ERROR(AddColumn(std::move(c), where));
    }
    std::string target;
    RETURN_IF_ERROR(r.GetString("target", &target));
    if (target.empty()) return absl::InvalidArgumentError("inputs.target: required (the name of the row ids, e.g. product_id)");
    if (!features::IsValidName(target)) {
      return absl::InvalidArgumentError(absl::StrCat("inputs.target: \"", target, "\" is not a valid name"));
    }
    ColumnDef t;
    t.name = target;
    t.source = ColumnDef::Source::kTarget;
    t.type = v1::STRING;
    t.per_row = true;
    t.default_value.set_string_value("");
    f_->target_col = static_cast<int>(f_->columns.size());
    RETURN_IF_ERROR(AddColumn(std::move(t), "inputs.target"));
    YAML::Node rf = node["request_features"];
    if (rf.IsDefined() && !rf.IsNull()) {
      if (!rf.IsSequence()) return absl::InvalidArgumentError("inputs.request_features: expected a list");
      for (size_t i = 0; i < rf.size(); ++i) {
        std::string where = absl::StrCat("inputs.request_features[", i, "]");
        base::YamlReader fr(rf[i], where);
        RETURN_IF_ERROR(fr.CheckKeys({"name", "type", "default"}));
        ColumnDef c;
        std::string type;
        RETURN_IF_ERROR(fr.GetString("name", &c.name));
        RETURN_IF_ERROR(fr.GetString("type", &type));
        if (!features::IsValidName(c.name)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", c.name, "\" is not a valid name"));
        }
        auto t2 = features::ParseTypeName(type);
        if (!t2.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".type: ", t2.status().message()));
        if (IsVectorType(*t2) || *t2 == v1::BYTES) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ".type: request features must be scalar (bool, int32, int64, float32, float64, string)"));
        }
        c.type = *t2;
        c.source = ColumnDef::Source::kRequest;
        v1::FeatureSpec spec;
        spec.set_name(c.name);
        spec.set_type(c.type);
        if (rf[i]["default"].IsDefined()) {
          auto d = features::ParseYamlValue(spec, rf[i]["default"]);
          if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".default: ", d.status().message()));
          c.default_value = *d;
        } else {
          c.default_value = features::ZeroValue(spec);
        }
        f_->request_cols.push_back(static_cast<int>(f_->columns.size()));
        RETURN_IF_ERROR(AddColumn(std::move(c), where));
      }
    }
    return absl::OkStatus();
  }

  // Raw, unresolved references of one component.
  struct Pending {
    std::string where;                   // "components[2] (user_category)"
    std::vector<std::string> key_refs;   // kFeatures
    std::vector<std::pair<std::string, double>> weight_refs;  // kModel (scorer)
    std::vector<std::string> input_refs;                      // kModel (kserve)
  };

  absl::Status ParseComponents(const YAML::Node& node) {
    if (!node.IsDefined() || !node.IsSequence() || node.size() == 0) {
      return absl::InvalidArgumentError("components: required non-empty list");
    }
    if (node.size() > options_.max_components) {
      return absl::ResourceExhaustedError(absl::StrCat("components: ", node.size(), " components exceeds the limit of ",
                                                       options_.max_components));
    }
    absl::flat_hash_map<std::string, int> names;
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node& cn = node[i];
      std::string where = absl::StrCat("components[", i, "]");
      if (!cn.IsMap()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a mapping"));
      base::YamlReader r(cn, where);
      Component c;
      RETURN_IF_ERROR(r.GetString("name", &c.name));
      if (!features::IsValidName(c.name)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", c.name,
                                                       "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"));
      }
      where = absl::StrCat(where, " (", c.name, ")");
      if (!names.try_emplace(c.name, static_cast<int>(i)).second) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: component \"", c.name, "\" is defined twice"));
      }
      std::string kind;
      RETURN_IF_ERROR(r.GetString("kind", &kind));
      c.timeout_ms = options_.default_component_timeout_ms;
      Pending p;
      p.where = where;
      const int ci = static_cast<int>(f_->components.size());
      if (kind == "features") {
        RETURN_IF_ERROR(r.CheckKeys({"name", "kind", "entity", "keys", "features", "timeout", "test_delay"}));
        c.kind = Component::Kind::kFeatures;
        RETURN_IF_ERROR(r.GetString("entity", &c.entity));
        const features::EntityInfo* e = snap_.FindEntity(c.entity);
        if (e == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".entity: unknown entity \"", c.entity, "\""));
        }
        RETURN_IF_ERROR(GetStringList(cn, "keys", where, &p.key_refs));
        if (p.key_refs.size() != static_cast<size_t>(e->def.key_columns_size())) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ".keys: entity \"", c.entity, "\" is keyed by (", absl::StrJoin(e->def.key_columns(), ", "),
              "): expected ", e->def.key_columns_size(), " key reference(s), got ", p.key_refs.size()));
        }
        std::vector<std::string> refs;
        RETURN_IF_ERROR(GetStringList(cn, "features", where, &refs));
        if (refs.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ".features: name at least one feature"));
        for (size_t j = 0; j < refs.size(); ++j) {
          std::string fw = absl::StrCat(where, ".features[", j, "]");
          size_t dot = refs[j].find('.');
          if (dot == std::string::npos) {
            return absl::InvalidArgumentError(absl::StrCat(fw, ": \"", refs[j], "\" is not \"group.feature\" or \"group.*\""));
          }
          std::string gname = refs[j].substr(0, dot), fname = refs[j].substr(dot + 1);
          auto git = e->groups.find(gname);
          if (git == e->groups.end()) {
            return absl::InvalidArgumentError(absl::StrCat(fw, ": unknown feature group \"", gname, "\" of entity \"",
                                                           c.entity, "\""));
          }
          const features::GroupInfo& g = *git->second;
          std::vector<std::string> fnames;
          if (fname == "*") {
            fnames = g.latest_names;
          } else {
            if (!g.all_features.contains(fname)) {
              return absl::InvalidArgumentError(
                  absl::StrCat(fw, ": unknown feature \"", fname, "\" in group \"", gname, "\""));
            }
            fnames.push_back(fname);
          }
          for (const auto& fn : fnames) {
            const v1::FeatureSpec& spec = g.all_features.at(fn);
            ColumnDef col;
            col.name = absl::StrCat(c.entity, ".", gname, ".", fn);
            col.type = spec.type();
            col.vector_length = spec.vector_length();
            col.component = ci;
            col.default_value = features::DefaultValue(spec);
            c.out_cols.push_back(static_cast<int>(f_->columns.size()));
            c.feature_refs.push_back(absl::StrCat(gname, ".", fn));
            RETURN_IF_ERROR(AddColumn(std::move(col), fw));
          }
        }
      } else if (kind == "derived") {
        RETURN_IF_ERROR(r.CheckKeys({"name", "kind", "expr", "timeout", "test_delay"}));
        c.kind = Component::Kind::kDerived;
        std::string text;
        RETURN_IF_ERROR(r.GetString("expr", &text));
        auto ex = Expr::Parse(text);
        if (!ex.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".expr: ", ex.status().message()));
        c.expr = std::move(*ex);
        ColumnDef col;
        col.name = c.name;
        col.type = v1::FLOAT32;
        col.component = ci;
        col.default_value.set_float32_value(0);
        c.out_cols.push_back(static_cast<int>(f_->columns.size()));
        RETURN_IF_ERROR(AddColumn(std::move(col), where));
      } else if (kind == "model") {
        RETURN_IF_ERROR(r.CheckKeys({"name", "kind", "scorer", "kserve", "inputs", "timeout", "test_delay"}));
        c.kind = Component::Kind::kModel;
        const bool has_scorer = cn["scorer"].IsDefined(), has_kserve = cn["kserve"].IsDefined();
        if (has_scorer == has_kserve) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": a model has either a scorer (built-in linear/logistic) or kserve (an external model server)"));
        }
        if (has_kserve) {
          RETURN_IF_ERROR(GetStringList(cn, "inputs", where, &p.input_refs));
          if (p.input_refs.empty()) {
            return absl::InvalidArgumentError(
                absl::StrCat(where, ".inputs: name the columns sent to the model server, in order"));
          }
          ASSIGN_OR_RETURN(ModelCallOptions mo, ParseModelCallOptions(cn["kserve"], absl::StrCat(where, ".kserve")));
          ASSIGN_OR_RETURN(auto client, ModelClient::Create(std::move(mo), metrics_));
          c.model_client = std::move(client);
          ColumnDef col;
          col.name = c.name;
          col.type = v1::FLOAT32;
          col.component = ci;
          col.default_value.set_float32_value(0);
          c.out_cols.push_back(static_cast<int>(f_->columns.size()));
          RETURN_IF_ERROR(AddColumn(std::move(col), where));
        } else {
          RETURN_IF_ERROR(ParseScorer(cn, r, where, ci, &c, &p));
        }
      } else if (kind == "interactions") {
        RETURN_IF_ERROR(r.CheckKeys({"name", "kind", "user", "types", "window", "outputs", "timeout", "test_delay"}));
        c.kind = Component::Kind::kInteractions;
        std::string user;
        RETURN_IF_ERROR(r.GetString("user", &user));
        if (user.empty()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".user: required (the column holding the user id)"));
        }
        p.key_refs.push_back(user);
        RETURN_IF_ERROR(GetStringList(cn, "types", where, &c.event_types));
        RETURN_IF_ERROR(r.GetDurationMs("window", &c.window_ms));
        if (c.window_ms < 0) return absl::InvalidArgumentError(absl::StrCat(where, ".window: must not be negative"));
        std::vector<std::string> outputs;
        RETURN_IF_ERROR(GetStringList(cn, "outputs", where, &outputs));
        if (outputs.empty()) outputs.push_back("count");
        for (size_t j = 0; j < outputs.size(); ++j) {
          std::string ow = absl::StrCat(where, ".outputs[", j, "]");
          int* slot = outputs[j] == "count" ? &c.count_col : outputs[j] == "target_count" ? &c.target_count_col : nullptr;
          if (slot == nullptr) {
            return absl::InvalidArgumentError(
                absl::StrCat(ow, ": \"", outputs[j], "\" is not an interactions output (known: count, target_count)"));
          }
          if (*slot >= 0) return absl::InvalidArgumentError(absl::StrCat(ow, ": \"", outputs[j], "\" named twice"));
          *slot = static_cast<int>(f_->columns.size());
          c.uses_target |= outputs[j] == "target_count";
          ColumnDef col;
          col.name = absl::StrCat(c.name, ".", outputs[j]);
          col.type = v1::INT64;
          col.component = ci;
          col.default_value.set_int64_value(0);
          c.out_cols.push_back(*slot);
          RETURN_IF_ERROR(AddColumn(std::move(col), ow));
        }
      } else if (kind == "dataset") {
        RETURN_IF_ERROR(r.CheckKeys({"name", "kind", "dataset", "key", "outputs", "fields", "timeout", "test_delay"}));
        c.kind = Component::Kind::kDataset;
        RETURN_IF_ERROR(r.GetString("dataset", &c.dataset));
        if (c.dataset.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ".dataset: required"));
        std::string key;
        RETURN_IF_ERROR(r.GetString("key", &key));
        if (key.empty()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".key: required (the column holding the dataset key)"));
        }
        p.key_refs.push_back(key);
        std::vector<std::string> outputs;
        RETURN_IF_ERROR(GetStringList(cn, "outputs", where, &outputs));
        YAML::Node fields = cn["fields"];
        const bool has_fields = fields.IsDefined() && !fields.IsNull();
        if (outputs.empty() == !has_fields) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, ": name either outputs (recommendation lists: target_score, target_rank) or fields (typed "
                     "records: [{name, type}])"));
        }
        for (size_t j = 0; j < outputs.size(); ++j) {
          std::string ow = absl::StrCat(where, ".outputs[", j, "]");
          bool score = outputs[j] == "target_score";
          int* slot = score ? &c.target_score_col : outputs[j] == "target_rank" ? &c.target_rank_col : nullptr;
          if (slot == nullptr) {
            return absl::InvalidArgumentError(absl::StrCat(
                ow, ": \"", outputs[j], "\" is not a dataset output (known: target_score, target_rank)"));
          }
          if (*slot >= 0) return absl::InvalidArgumentError(absl::StrCat(ow, ": \"", outputs[j], "\" named twice"));
          *slot = static_cast<int>(f_->columns.size());
          c.uses_target = true;
          ColumnDef col;
          col.name = absl::StrCat(c.name, ".", outputs[j]);
          col.type = score ? v1::FLOAT32 : v1::INT32;
          col.component = ci;
          if (score) {
            col.default_value.set_float32_value(0);
          } else {
            col.default_value.set_int32_value(0);
          }
          c.out_cols.push_back(*slot);
          RETURN_IF_ERROR(AddColumn(std::move(col), ow));
        }
        if (has_fields) {
          if (!fields.IsSequence() || fields.size() == 0) {
            return absl::InvalidArgumentError(absl::StrCat(where, ".fields: expected a non-empty list of {name, type}"));
          }
          for (size_t j = 0; j < fields.size(); ++j) {
            std::string fw = absl::StrCat(where, ".fields[", j, "]");
            base::YamlReader fr(fields[j], fw);
            RETURN_IF_ERROR(fr.CheckKeys({"name", "type", "default"}));
            std::string fname, type;
            RETURN_IF_ERROR(fr.GetString("name", &fname));
            RETURN_IF_ERROR(fr.GetString("type", &type));
            if (!features::IsValidName(fname)) {
              return absl::InvalidArgumentError(absl::StrCat(fw, ".name: \"", fname, "\" is not a valid name"));
            }
            auto t = features::ParseTypeName(type);
            if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(fw, ".type: ", t.status().message()));
            if (IsVectorType(*t)) {
              return absl::InvalidArgumentError(absl::StrCat(fw, ".type: flows take scalar dataset fields"));
            }
            v1::FeatureSpec spec;
            spec.set_name(fname);
            spec.set_type(*t);
            ColumnDef col;
            col.name = absl::StrCat(c.name, ".", fname);
            col.type = *t;
            col.component = ci;
            if (fields[j]["default"].IsDefined()) {
              auto d = features::ParseYamlValue(spec, fields[j]["default"]);
              if (!d.ok()) return absl::InvalidArgumentError(absl::StrCat(fw, ".default: ", d.status().message()));
              col.default_value = *d;
            } else {
              col.default_value = features::ZeroValue(spec);
            }
            c.record_fields.push_back(fname);
            c.out_cols.push_back(static_cast<int>(f_->columns.size()));
            RETURN_IF_ERROR(AddColumn(std::move(col), fw));
          }
        }
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ".kind: \"", kind,
            "\" is not a component kind (known: features, interactions, dataset, derived, model)"));
      }
      RETURN_IF_ERROR(r.GetDurationMs("timeout", &c.timeout_ms));
      if (c.timeout_ms <= 0) return absl::InvalidArgumentError(absl::StrCat(where, ".timeout: must be positive"));
      RETURN_IF_ERROR(r.GetDurationMs("test_delay", &c.test_delay_ms));
      if (c.test_delay_ms != 0 && !options_.enable_test_hooks) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".test_delay: test hooks are disabled (flows.enable_test_hooks)"));
      }
      f_->components.push_back(std::move(c));
      pending_.push_back(std::move(p));
    }
    return absl::OkStatus();
  }

  // The built-in scorer of a model component.
  absl::Status ParseScorer(const YAML::Node& cn, base::YamlReader& r, const std::string& where, int ci, Component* cp,
                           Pending* pp) {
    Component& c = *cp;
    Pending& p = *pp;
    if (cn["inputs"].IsDefined()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".inputs: only kserve models take inputs (a scorer "
                                                            "names its columns in its weights)"));
    }
    ASSIGN_OR_RETURN(base::YamlReader sr, r.Child("scorer"));
    RETURN_IF_ERROR(sr.CheckKeys({"type", "bias", "weights"}));
    std::string type;
    RETURN_IF_ERROR(sr.GetString("type", &type));
    if (type == "linear") {
      c.scorer.kind = Scorer::Kind::kLinear;
    } else if (type == "logistic") {
      c.scorer.kind = Scorer::Kind::kLogistic;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".scorer.type: \"", type, "\" is not a scorer (known: linear, logistic)"));
    }
    RETURN_IF_ERROR(sr.GetDouble("bias", &c.scorer.bias));
    YAML::Node w = cn["scorer"]["weights"];
    if (!w.IsDefined() || !w.IsMap() || w.size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".scorer.weights: required mapping of column -> weight"));
    }
    base::YamlReader wr(w, absl::StrCat(where, ".scorer.weights"));
    for (const auto& kv : w) {
      std::string col = kv.first.as<std::string>();
      double weight = 0;
      RETURN_IF_ERROR(wr.GetDouble(col, &weight));
      p.weight_refs.emplace_back(col, weight);
    }
    ColumnDef col;
    col.name = c.name;
    col.type = v1::FLOAT32;
    col.component = ci;
    col.default_value.set_float32_value(0);
    c.out_cols.push_back(static_cast<int>(f_->columns.size()));
    RETURN_IF_ERROR(AddColumn(std::move(col), where));
    return absl::OkStatus();
  }

  // Resolves a column reference; records the dependency on its producer.
  absl::StatusOr<int> Resolve(const std::string& name, int ci, const std::string& where) {
    auto it = f_->column_index.find(name);
    if (it == f_->column_index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown column \"", name,
                                                     "\" (not an input and produced by no component)"));
    }
    int col = it->second;
    int producer = f_->columns[col].component;
    if (producer == ci) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", name, "\" is produced by this component"));
    }
    Component& c = f_->components[ci];
    if (producer >= 0 && std::find(c.deps.begin(), c.deps.end(), producer) == c.deps.end()) {
      c.deps.push_back(producer);
    }
    return col;
  }

  absl::Status ResolveAll() {
    for (size_t ci = 0; ci < f_->components.size(); ++ci) {
      Component& c = f_->components[ci];
      const Pending& p = pending_[ci];
      const int i = static_cast<int>(ci);
      for (size_t k = 0; k < p.key_refs.size(); ++k) {
        std::string where = c.kind == Component::Kind::kInteractions ? absl::StrCat(p.where, ".user")
                            : c.kind == Component::Kind::kDataset    ? absl::StrCat(p.where, ".key")
                                                                     : absl::StrCat(p.where, ".keys[", k, "]");
        ASSIGN_OR_RETURN(int col, Resolve(p.key_refs[k], i, where));
        const ColumnDef& cd = f_->columns[col];
        if (!IsKeyType(cd.type)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", cd.name, "\" is ", TypeName(cd.type),
                                                         "; key parts must be STRING, INT32 or INT64"));
        }
        c.key_cols.push_back(col);
      }
      if (c.expr.has_value()) {
        for (const auto& name : c.expr->columns()) {
          std::string where = absl::StrCat(p.where, ".expr");
          ASSIGN_OR_RETURN(int col, Resolve(name, i, where));
          const ColumnDef& cd = f_->columns[col];
          if (!IsNumericScalar(cd.type)) {
            return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", cd.name, "\" is ", TypeName(cd.type),
                                                           "; expressions take numeric scalars"));
          }
          c.expr_inputs.push_back(col);
        }
      }
      for (size_t k = 0; k < p.input_refs.size(); ++k) {
        std::string where = absl::StrCat(p.where, ".inputs[", k, "]");
        ASSIGN_OR_RETURN(int col, Resolve(p.input_refs[k], i, where));
        const ColumnDef& cd = f_->columns[col];
        if (!IsNumeric(cd.type)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", cd.name, "\" is ", TypeName(cd.type),
                                                         "; model inputs must be numeric (vectors are flattened)"));
        }
        c.model_inputs.push_back(col);
        c.model_width += IsVectorType(cd.type) ? cd.vector_length : 1;
      }
      for (const auto& [name, w] : p.weight_refs) {
        std::string where = absl::StrCat(p.where, ".scorer.weights.", name);
        ASSIGN_OR_RETURN(int col, Resolve(name, i, where));
        const ColumnDef& cd = f_->columns[col];
        if (!IsNumericScalar(cd.type)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": column \"", cd.name, "\" is ", TypeName(cd.type),
                                                         "; scorers take numeric scalars"));
        }
        c.scorer.weights.emplace_back(col, w);
      }
    }
    return absl::OkStatus();
  }

  // Topological levels; a component left out of them is on or behind a cycle.
  absl::Status Stage() {
    std::vector<std::vector<int>> deps;
    for (const auto& c : f_->components) deps.push_back(c.deps);
    base::TopoLevels topo = base::TopologicalLevels(deps);
    if (!topo.cycle.empty()) {
      std::vector<std::string> names;
      for (int c : topo.cycle) names.push_back(f_->components[c].name);
      const int at = topo.cycle.front();
      return absl::InvalidArgumentError(absl::StrCat("components[", at, "] (", f_->components[at].name,
                                                     "): dependency cycle: ", absl::StrJoin(names, " -> ")));
    }
    f_->stages = std::move(topo.levels);
    for (size_t s = 0; s < f_->stages.size(); ++s) {
      for (int c : f_->stages[s]) f_->components[c].stage = static_cast<int>(s);
    }
    // Per-row-ness flows along dependencies, stage by stage.
    for (const auto& stage : f_->stages) {
      for (int ci : stage) {
        Component& c = f_->components[ci];
        bool per_row = c.uses_target;
        for (int col : c.key_cols) per_row |= f_->columns[col].per_row;
        for (int col : c.expr_inputs) per_row |= f_->columns[col].per_row;
        for (const auto& [col, w] : c.scorer.weights) per_row |= f_->columns[col].per_row;
        for (int col : c.model_inputs) per_row |= f_->columns[col].per_row;
        c.per_row = per_row;
        for (int col : c.out_cols) f_->columns[col].per_row = per_row;
      }
    }
    for (const auto& c : f_->components) {
      for (int col : c.out_cols) f_->output_cols.push_back(col);
    }
    return absl::OkStatus();
  }

  // One Retrieve per (stage, entity, keys, timeout): later components join the first one's fetch.
  void MergeFetches() {
    for (const auto& stage : f_->stages) {
      for (size_t a = 0; a < stage.size(); ++a) {
        Component& lead = f_->components[stage[a]];
        if (lead.kind != Component::Kind::kFeatures || lead.merged_into >= 0 || lead.test_delay_ms != 0) continue;
        for (size_t b = a + 1; b < stage.size(); ++b) {
          Component& other = f_->components[stage[b]];
          if (other.kind == Component::Kind::kFeatures && other.merged_into < 0 && other.test_delay_ms == 0 &&
              other.entity == lead.entity && other.key_cols == lead.key_cols && other.timeout_ms == lead.timeout_ms) {
            lead.merged.push_back(stage[b]);
            other.merged_into = stage[a];
          }
        }
      }
    }
    for (auto& c : f_->components) {
      if (c.kind != Component::Kind::kFeatures || c.merged_into >= 0) continue;
      c.fetch_cols = c.out_cols;
      for (int m : c.merged) {
        const auto& cols = f_->components[m].out_cols;
        c.fetch_cols.insert(c.fetch_cols.end(), cols.begin(), cols.end());
      }
    }
  }

  absl::Status ParseOutput(const YAML::Node& node) {
    if (!node.IsDefined() || node.IsNull()) return absl::OkStatus();
    base::YamlReader r(node, "output");
    RETURN_IF_ERROR(r.CheckKeys({"sort_by", "order", "top_k"}));
    std::string sort_by, order = "desc";
    RETURN_IF_ERROR(r.GetString("sort_by", &sort_by));
    RETURN_IF_ERROR(r.GetString("order", &order));
    if (order != "desc" && order != "asc") {
      return absl::InvalidArgumentError(absl::StrCat("output.order: \"", order, "\" is not asc or desc"));
    }
    f_->descending = order == "desc";
    uint64_t k = 0;
    RETURN_IF_ERROR(r.GetUint("top_k", &k));
    if (k > options_.max_targets) {
      return absl::InvalidArgumentError(absl::StrCat("output.top_k: exceeds flows.max_targets (", options_.max_targets, ")"));
    }
    f_->top_k = static_cast<uint32_t>(k);
    if (!sort_by.empty()) {
      auto it = f_->column_index.find(sort_by);
      if (it == f_->column_index.end() || f_->columns[it->second].component < 0) {
        return absl::InvalidArgumentError(absl::StrCat("output.sort_by: unknown column \"", sort_by, "\""));
      }
      if (!IsNumericScalar(f_->columns[it->second].type)) {
        return absl::InvalidArgumentError(absl::StrCat("output.sort_by: column \"", sort_by, "\" is ",
                                                       TypeName(f_->columns[it->second].type),
                                                       "; sorting takes a numeric scalar"));
      }
      f_->sort_col = it->second;
    } else if (f_->top_k != 0) {
      return absl::InvalidArgumentError("output.top_k: needs output.sort_by");
    }
    return absl::OkStatus();
  }

  void BuildPlan() {
    v1::FlowPlan& p = f_->plan;
    p.set_model_id(f_->model_id);
    p.set_version(f_->version);
    p.set_deadline_ms(f_->deadline_ms);
    static const char* kKinds[] = {"features", "derived", "model", "interactions", "dataset"};
    for (const auto& stage : f_->stages) {
      auto* ps = p.add_stages();
      for (int ci : stage) {
        const Component& c = f_->components[ci];
        auto* pc = ps->add_components();
        pc->set_name(c.name);
        pc->set_kind(c.model_client != nullptr ? "kserve" : kKinds[static_cast<int>(c.kind)]);
        for (int d : c.deps) pc->add_depends_on(f_->components[d].name);
        for (int col : c.out_cols) pc->add_columns(f_->columns[col].name);
        pc->set_per_row(c.per_row);
        pc->set_timeout_ms(c.timeout_ms);
        pc->set_entity(c.kind == Component::Kind::kDataset ? c.dataset : c.entity);
        for (int col : c.key_cols) pc->add_keys(f_->columns[col].name);
        if (c.merged_into >= 0) pc->set_fetched_with(f_->components[c.merged_into].name);
      }
    }
  }

  const features::Snapshot& snap_;
  const FlowsOptions& options_;
  base::MetricsRegistry* metrics_;
  CompiledFlow* f_;
  std::vector<Pending> pending_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const CompiledFlow>> CompileFlow(absl::string_view config, uint32_t version,
                                                               const features::Snapshot& snap,
                                                               const FlowsOptions& options,
                                                               base::MetricsRegistry* metrics) {
  if (config.size() > options.max_config_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("config: ", config.size(), " bytes exceeds the limit of ",
                                                     options.max_config_bytes));
  }
  ASSIGN_OR_RETURN(YAML::Node root, base::ParseConfigText(config));
  auto flow = std::make_shared<CompiledFlow>();
  flow->version = version;
  try {
    RETURN_IF_ERROR(Compiler(snap, options, metrics, flow.get()).Run(root));
  } catch (const YAML::Exception& e) {
    // yaml-cpp throws on conversions of malformed nodes (e.g. a mapping key that is a list).
    return absl::InvalidArgumentError(absl::StrCat("config: line ", e.mark.line + 1, ": ", e.msg));
  }
  if (metrics != nullptr) {
    for (auto& c : flow->components) {
      base::Labels labels{{"model", flow->model_id}, {"component", c.name}};
      c.latency = metrics->GetHistogram("kosh_flow_component_seconds",
                                        "Time per flow component, dispatch to completion.", labels);
      for (int s = 1; s < 5; ++s) {
        base::Labels l = labels;
        l.emplace_back("status", ComponentStatusLabel(s));
        c.results[s] = metrics->GetCounter("kosh_flow_component_results_total",
                                           "Flow component executions by outcome.", l);
      }
    }
  }
  return std::shared_ptr<const CompiledFlow>(std::move(flow));
}

}  // namespace kosh::flows
