#include "pipelines/pipeline.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/config.h"
#include "base/graph.h"
#include "base/status.h"
#include "features/registry.h"

namespace kosh::pipelines {
namespace {

using base::GetStringList;

std::string FlowText(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "{}";
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  return e.c_str();
}

class Compiler {
 public:
  Compiler(const NodeRegistry& registry, const NodeEnv& env, CompiledPipeline* p)
      : registry_(registry), env_(env), options_(*env.options), p_(p) {}

  absl::Status Run(const YAML::Node& root) {
    base::YamlReader r(root, "");
    RETURN_IF_ERROR(r.CheckKeys({"pipeline_id", "description", "deadline", "output", "nodes"}));
    RETURN_IF_ERROR(r.GetString("pipeline_id", &p_->pipeline_id));
    if (!features::IsValidName(p_->pipeline_id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("pipeline_id: \"", p_->pipeline_id,
                       "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
    }
    p_->deadline_ms = options_.default_deadline_ms;
    RETURN_IF_ERROR(r.GetDurationMs("deadline", &p_->deadline_ms));
    if (p_->deadline_ms <= 0) return absl::InvalidArgumentError("deadline: must be positive");
    RETURN_IF_ERROR(ParseNodes(root["nodes"]));
    RETURN_IF_ERROR(Resolve());
    RETURN_IF_ERROR(Stage());
    std::string output;
    RETURN_IF_ERROR(r.GetString("output", &output));
    if (output.empty())
      return absl::InvalidArgumentError("output: required (the name of the node whose candidates are returned)");
    auto it = index_.find(output);
    if (it == index_.end()) return absl::InvalidArgumentError(absl::StrCat("output: unknown node \"", output, "\""));
    p_->output = it->second;
    RETURN_IF_ERROR(CheckReachesOutput());
    BuildPlan();
    return absl::OkStatus();
  }

 private:
  struct Pending {
    std::string where;
    std::vector<std::string> inputs;
    YAML::Node params;
  };

  absl::Status ParseNodes(const YAML::Node& node) {
    if (!node.IsDefined() || !node.IsSequence() || node.size() == 0) {
      return absl::InvalidArgumentError("nodes: required non-empty list");
    }
    if (node.size() > options_.max_nodes) {
      return absl::ResourceExhaustedError(absl::StrCat("nodes: ", node.size(), " nodes exceeds the limit of ",
                                                       options_.max_nodes, " (pipelines.max_nodes)"));
    }
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node& nn = node[i];
      std::string where = absl::StrCat("nodes[", i, "]");
      if (!nn.IsMap()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a mapping"));
      base::YamlReader r(nn, where);
      CompiledNode c;
      RETURN_IF_ERROR(r.GetString("name", &c.name));
      if (!features::IsValidName(c.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".name: \"", c.name, "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*)"));
      }
      where = absl::StrCat(where, " (", c.name, ")");
      if (!index_.try_emplace(c.name, static_cast<int>(i)).second) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".name: node \"", c.name, "\" is defined twice"));
      }
      RETURN_IF_ERROR(r.CheckKeys(
          {"name", "type", "inputs", "params", "timeout", "retries", "backoff", "when", "required", "test_delay"}));
      std::string type;
      RETURN_IF_ERROR(r.GetString("type", &type));
      if (type.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ".type: required"));
      c.type = registry_.Find(type);
      if (c.type == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".type: unknown node type \"", type, "\" (known: ", registry_.Names(), ")"));
      }
      Pending p;
      p.where = where;
      RETURN_IF_ERROR(GetStringList(nn, "inputs", where, &p.inputs));
      if (p.inputs.size() < c.type->min_inputs || p.inputs.size() > c.type->max_inputs) {
        std::string want = c.type->max_inputs == NodeType::kAnyInputs ? absl::StrCat("at least ", c.type->min_inputs)
                           : c.type->min_inputs == c.type->max_inputs
                               ? absl::StrCat(c.type->min_inputs)
                               : absl::StrCat(c.type->min_inputs, " to ", c.type->max_inputs);
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".inputs: a ", type, " node takes ", want, " input(s), got ", p.inputs.size()));
      }
      // A missing key of a const node is an "invalid" node that throws on most calls: give
      // factories an empty mapping instead.
      p.params = YAML::Node(YAML::NodeType::Map);
      if (nn["params"].IsDefined() && !nn["params"].IsNull()) {
        if (!nn["params"].IsMap())
          return absl::InvalidArgumentError(absl::StrCat(where, ".params: expected a mapping"));
        p.params = nn["params"];
      }
      c.timeout_ms = options_.default_node_timeout_ms;
      RETURN_IF_ERROR(r.GetDurationMs("timeout", &c.timeout_ms));
      if (c.timeout_ms <= 0) return absl::InvalidArgumentError(absl::StrCat(where, ".timeout: must be positive"));
      uint64_t retries = 0;
      RETURN_IF_ERROR(r.GetUint("retries", &retries));
      if (retries > options_.max_retries) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".retries: ", retries, " exceeds pipelines.max_retries (", options_.max_retries, ")"));
      }
      if (retries > 0 && !c.type->idempotent) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".retries: node type \"", type, "\" is not idempotent and cannot be retried"));
      }
      c.retries = static_cast<uint32_t>(retries);
      RETURN_IF_ERROR(r.GetDurationMs("backoff", &c.backoff_ms));
      if (c.backoff_ms < 0) return absl::InvalidArgumentError(absl::StrCat(where, ".backoff: must not be negative"));
      if (r.Has("backoff") && c.retries == 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".backoff: only meaningful with retries"));
      }
      RETURN_IF_ERROR(r.GetBool("required", &c.required));
      std::string when;
      RETURN_IF_ERROR(r.GetString("when", &when));
      if (r.Has("when")) {
        auto cond = Condition::Parse(when);
        if (!cond.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".when: ", cond.status().message()));
        c.when = std::move(*cond);
      }
      RETURN_IF_ERROR(r.GetDurationMs("test_delay", &c.test_delay_ms));
      if (c.test_delay_ms != 0 && !options_.enable_test_hooks) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".test_delay: test hooks are disabled (pipelines.enable_test_hooks)"));
      }
      p_->nodes.push_back(std::move(c));
      pending_.push_back(std::move(p));
    }
    return absl::OkStatus();
  }

  absl::Status Resolve() {
    for (size_t i = 0; i < p_->nodes.size(); ++i) {
      CompiledNode& c = p_->nodes[i];
      const Pending& p = pending_[i];
      for (size_t k = 0; k < p.inputs.size(); ++k) {
        std::string where = absl::StrCat(p.where, ".inputs[", k, "]");
        auto it = index_.find(p.inputs[k]);
        if (it == index_.end()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": unknown node \"", p.inputs[k], "\""));
        }
        if (it->second == static_cast<int>(i)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": a node cannot read its own output"));
        }
        if (std::find(c.inputs.begin(), c.inputs.end(), it->second) != c.inputs.end()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": node \"", p.inputs[k], "\" is listed twice"));
        }
        c.inputs.push_back(it->second);
      }
      if (c.when.has_value()) {
        for (const auto& name : c.when->nodes()) {
          auto it = index_.find(name);
          if (it == index_.end()) {
            return absl::InvalidArgumentError(
                absl::StrCat(p.where, ".when: count(", name, "): unknown node \"", name, "\""));
          }
          if (it->second == static_cast<int>(i)) {
            return absl::InvalidArgumentError(
                absl::StrCat(p.where, ".when: count(", name, "): a node cannot read its own count"));
          }
          c.condition_on.push_back(it->second);
        }
      }
      // Params last, so that their errors come after the graph's for the same node.
      NodeSpec spec;
      spec.name = c.name;
      spec.type = c.type->name;
      spec.inputs = p.inputs;
      spec.params = p.params;
      spec.where = p.where;
      ASSIGN_OR_RETURN(c.impl, c.type->build(spec, env_));
      c.blocking = c.impl->blocking();
    }
    return absl::OkStatus();
  }

  // Every node waits for its inputs and the nodes its condition reads.
  std::vector<int> Deps(int i) const {
    std::vector<int> d = p_->nodes[i].inputs;
    for (int c : p_->nodes[i].condition_on) {
      if (std::find(d.begin(), d.end(), c) == d.end()) d.push_back(c);
    }
    return d;
  }

  // Topological levels; a node left out of them is on or behind a cycle.
  absl::Status Stage() {
    const size_t n = p_->nodes.size();
    std::vector<std::vector<int>> deps(n);
    for (size_t i = 0; i < n; ++i) {
      deps[i] = Deps(static_cast<int>(i));
      for (int d : deps[i]) p_->nodes[d].consumers.push_back(static_cast<int>(i));
    }
    base::TopoLevels topo = base::TopologicalLevels(deps);
    if (!topo.cycle.empty()) {
      std::vector<std::string> names;
      for (int c : topo.cycle) names.push_back(p_->nodes[c].name);
      const int at = topo.cycle.front();
      return absl::InvalidArgumentError(
          absl::StrCat("nodes[", at, "] (", p_->nodes[at].name, "): dependency cycle: ", absl::StrJoin(names, " -> ")));
    }
    p_->stages = std::move(topo.levels);
    for (size_t s = 0; s < p_->stages.size(); ++s) {
      for (int c : p_->stages[s]) p_->nodes[c].stage = static_cast<int>(s);
    }
    return absl::OkStatus();
  }

  // A node that the output does not (transitively) depend on would run for nothing.
  absl::Status CheckReachesOutput() {
    std::vector<bool> used(p_->nodes.size(), false);
    std::vector<int> stack = {p_->output};
    used[p_->output] = true;
    while (!stack.empty()) {
      int i = stack.back();
      stack.pop_back();
      for (int d : Deps(i)) {
        if (!used[d]) {
          used[d] = true;
          stack.push_back(d);
        }
      }
    }
    for (size_t i = 0; i < used.size(); ++i) {
      if (!used[i]) {
        return absl::InvalidArgumentError(absl::StrCat(pending_[i].where, ": not used by the output node \"",
                                                       p_->nodes[p_->output].name, "\" (no path to it)"));
      }
    }
    return absl::OkStatus();
  }

  void BuildPlan() {
    v1::PipelinePlan& plan = p_->plan;
    plan.set_pipeline_id(p_->pipeline_id);
    plan.set_version(p_->version);
    plan.set_deadline_ms(p_->deadline_ms);
    plan.set_output(p_->nodes[p_->output].name);
    for (const auto& stage : p_->stages) {
      auto* ps = plan.add_stages();
      for (int i : stage) {
        const CompiledNode& c = p_->nodes[i];
        auto* pn = ps->add_nodes();
        pn->set_name(c.name);
        pn->set_type(c.type->name);
        for (int in : c.inputs) pn->add_inputs(p_->nodes[in].name);
        for (int in : c.condition_on) pn->add_condition_on(p_->nodes[in].name);
        if (c.when.has_value()) pn->set_when(c.when->text());
        pn->set_timeout_ms(c.timeout_ms);
        pn->set_retries(c.retries);
        pn->set_backoff_ms(c.backoff_ms);
        pn->set_required(c.required);
        pn->set_blocking(c.blocking);
        pn->set_params(FlowText(pending_[i].params));
        pn->set_stage(static_cast<uint32_t>(c.stage));
      }
    }
    for (size_t i = 0; i < p_->nodes.size(); ++i) {
      for (int in : p_->nodes[i].inputs) {
        auto* e = plan.add_edges();
        e->set_from(p_->nodes[in].name);
        e->set_to(p_->nodes[i].name);
        e->set_kind("data");
      }
      for (int in : p_->nodes[i].condition_on) {
        auto* e = plan.add_edges();
        e->set_from(p_->nodes[in].name);
        e->set_to(p_->nodes[i].name);
        e->set_kind("condition");
      }
    }
  }

  const NodeRegistry& registry_;
  const NodeEnv& env_;
  const PipelinesOptions& options_;
  CompiledPipeline* p_;
  absl::flat_hash_map<std::string, int> index_;
  std::vector<Pending> pending_;
};

}  // namespace

const char* NodeStatusLabel(int status) {
  static const char* kNames[] = {"unspecified", "ok", "failed", "timeout", "skipped", "not_run", "partial"};
  return status >= 0 && status < 7 ? kNames[status] : "unknown";
}

absl::StatusOr<PipelinesOptions> ParsePipelinesOptions(const YAML::Node& node) {
  PipelinesOptions o;
  if (!node.IsDefined() || node.IsNull()) return o;
  base::YamlReader r(node, "pipelines");
  RETURN_IF_ERROR(r.CheckKeys({"threads", "deadline", "node_timeout", "max_candidates", "max_nodes", "max_retries",
                               "max_config_bytes", "max_request_items", "enable_test_hooks", "files"}));
  int64_t threads = o.threads;
  RETURN_IF_ERROR(r.GetInt("threads", &threads));
  if (threads < 1 || threads > 256) return absl::InvalidArgumentError("pipelines.threads: must be 1 to 256");
  o.threads = static_cast<int>(threads);
  RETURN_IF_ERROR(r.GetDurationMs("deadline", &o.default_deadline_ms));
  if (o.default_deadline_ms <= 0) return absl::InvalidArgumentError("pipelines.deadline: must be positive");
  RETURN_IF_ERROR(r.GetDurationMs("node_timeout", &o.default_node_timeout_ms));
  if (o.default_node_timeout_ms <= 0) return absl::InvalidArgumentError("pipelines.node_timeout: must be positive");
  struct Limit {
    const char* key;
    uint32_t* out;
    uint64_t min, max;
  };
  for (const Limit& l :
       {Limit{"max_candidates", &o.max_candidates, 1, 1000000}, Limit{"max_nodes", &o.max_nodes, 1, 10000},
        Limit{"max_retries", &o.max_retries, 0, 100}, Limit{"max_request_items", &o.max_request_items, 0, 10000000}}) {
    uint64_t v = *l.out;
    RETURN_IF_ERROR(r.GetUint(l.key, &v));
    if (v < l.min || v > l.max) {
      return absl::InvalidArgumentError(absl::StrCat("pipelines.", l.key, ": must be ", l.min, " to ", l.max));
    }
    *l.out = static_cast<uint32_t>(v);
  }
  uint64_t bytes = o.max_config_bytes;
  RETURN_IF_ERROR(r.GetBytes("max_config_bytes", &bytes));
  if (bytes == 0 || bytes > (64u << 20)) {
    return absl::InvalidArgumentError("pipelines.max_config_bytes: must be 1 B to 64 MiB");
  }
  o.max_config_bytes = static_cast<uint32_t>(bytes);
  RETURN_IF_ERROR(r.GetBool("enable_test_hooks", &o.enable_test_hooks));
  RETURN_IF_ERROR(GetStringList(node, "files", "pipelines", &o.files));
  return o;
}

absl::StatusOr<std::shared_ptr<const CompiledPipeline>> CompilePipeline(absl::string_view config, uint32_t version,
                                                                        const NodeRegistry& registry,
                                                                        const NodeEnv& env,
                                                                        base::MetricsRegistry* metrics) {
  if (env.options == nullptr) return absl::InternalError("CompilePipeline: NodeEnv::options is not set");
  if (config.size() > env.options->max_config_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("config: ", config.size(), " bytes exceeds the limit of ",
                                                     env.options->max_config_bytes, " (pipelines.max_config_bytes)"));
  }
  ASSIGN_OR_RETURN(YAML::Node root, base::ParseConfigText(config));
  auto p = std::make_shared<CompiledPipeline>();
  p->version = version;
  try {
    RETURN_IF_ERROR(Compiler(registry, env, p.get()).Run(root));
  } catch (const YAML::Exception& e) {
    // yaml-cpp throws on conversions of malformed nodes (e.g. a mapping key that is a list).
    return absl::InvalidArgumentError(absl::StrCat("config: line ", e.mark.line + 1, ": ", e.msg));
  }
  if (metrics != nullptr) {
    p->latency =
        metrics->GetHistogram("kosh_pipeline_seconds", "Time per pipeline run.", {{"pipeline", p->pipeline_id}});
    for (auto& c : p->nodes) {
      base::Labels labels{{"pipeline", p->pipeline_id}, {"node", c.name}};
      c.latency = metrics->GetHistogram("kosh_pipeline_node_seconds",
                                        "Time per pipeline node, first start to end (all attempts).", labels);
      c.retried =
          metrics->GetCounter("kosh_pipeline_node_retries_total", "Pipeline node attempts after the first.", labels);
      for (int s = 1; s < 7; ++s) {
        base::Labels l = labels;
        l.emplace_back("status", NodeStatusLabel(s));
        c.results[s] = metrics->GetCounter("kosh_pipeline_node_results_total", "Pipeline node runs by outcome.", l);
      }
    }
  }
  return std::shared_ptr<const CompiledPipeline>(std::move(p));
}

}  // namespace kosh::pipelines
