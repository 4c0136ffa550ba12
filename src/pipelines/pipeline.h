// Pipelines: a pipeline is a config-defined DAG of nodes (node.h) through which candidate sets
// flow, from candidate generators to the output node (typically a top_k). This header holds the
// server options, the compiled form and the compiler (parse + validate + plan); executor.h runs
// compiled pipelines; pipeline_registry.h stores and serves their versions.
//
// Config (YAML or JSON; docs/api.md "Pipelines" has the full reference):
//   pipeline_id: home_feed
//   deadline: 50ms                  # the whole request (default pipelines.deadline)
//   output: rank                    # the node whose candidates are returned
//   nodes:
//     - name: recs                  # [A-Za-z_][A-Za-z0-9_]*, unique
//       type: dataset_candidates    # a registered node type
//       inputs: []                  # names of nodes whose candidates this node reads
//       params: {dataset: user_recs, key: user_id}
//       timeout: 10ms               # per attempt (default pipelines.node_timeout)
//       retries: 2                  # idempotent types only; transient errors and timeouts
//       backoff: 2ms                # before the first retry, doubling per retry, within the deadline
//       when: "context.segment != 'new_user'"   # condition.h; false: skipped, empty output
//       required: false             # true: the request fails when this node fails
//
// A CompiledPipeline is immutable once built and shared (shared_ptr) by every request that runs
// it, so a new version can be swapped in while older requests finish on the old one.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "kosh/v1/pipelines.pb.h"
#include "pipelines/condition.h"
#include "pipelines/node.h"
#include "yaml-cpp/yaml.h"

namespace kosh::pipelines {

// The `pipelines:` section of the server config.
struct PipelinesOptions {
  int threads = 8;                       // pool running blocking nodes, shared by all requests
  int64_t default_deadline_ms = 100;     // per request, unless the pipeline sets `deadline`
  int64_t default_node_timeout_ms = 50;  // per attempt, unless the node sets `timeout`
  uint32_t max_candidates = 1000;        // candidates one node may produce
  uint32_t max_nodes = 128;              // nodes per pipeline
  uint32_t max_retries = 5;              // `retries` of one node
  uint32_t max_config_bytes = 1 << 20;   // size of one pipeline config
  uint32_t max_request_items = 10000;    // items in a RunPipeline request's lists, in total
  bool enable_test_hooks = false;        // allows `test_delay` on nodes (tests only)
  std::vector<std::string> files;        // pipeline configs applied at start-up
};

// Parses the `pipelines:` YAML section (null = defaults). Errors name the path, e.g.
// "pipelines.threads: must be 1 to 256".
absl::StatusOr<PipelinesOptions> ParsePipelinesOptions(const YAML::Node& node);

struct CompiledNode {
  std::string name;
  const NodeType* type = nullptr;
  std::unique_ptr<Node> impl;
  bool blocking = false;
  std::vector<int> inputs;        // data inputs, in config order
  std::vector<int> condition_on;  // parallel to when->nodes()
  std::vector<int> consumers;     // nodes that wait for this one (data or condition)
  int stage = 0;
  int64_t timeout_ms = 0;
  uint32_t retries = 0;
  int64_t backoff_ms = 0;
  bool required = false;
  std::optional<Condition> when;
  int64_t test_delay_ms = 0;  // test hook: sleep at the start of every attempt
  // Metrics (owned by the metrics registry; null without one).
  base::Histogram* latency = nullptr;
  base::Counter* results[7] = {};  // by v1::NodeStatus
  base::Counter* retried = nullptr;
};

struct CompiledPipeline {
  std::string pipeline_id;
  uint32_t version = 0;
  int64_t deadline_ms = 0;
  int output = -1;
  std::vector<CompiledNode> nodes;
  std::vector<std::vector<int>> stages;  // topological levels, for the plan
  v1::PipelinePlan plan;
  base::Histogram* latency = nullptr;  // whole runs
};

// Parses and validates a pipeline config: unknown keys, node names (valid, unique), unknown node
// types, input counts, unknown or duplicate inputs, `when` syntax and the nodes it reads, cycles,
// nodes that do not lead to the output, retries on non-idempotent types, limits, and each node's
// params (its type's factory; with env.check_references also the datasets, flows and event types
// they name). Errors are INVALID_ARGUMENT naming the node and field, e.g.
// `nodes[3] (blend).inputs[1]: unknown node "recnt"`; RESOURCE_EXHAUSTED for an oversize config.
// env.options must be set; `metrics` may be null.
absl::StatusOr<std::shared_ptr<const CompiledPipeline>> CompilePipeline(absl::string_view config, uint32_t version,
                                                                        const NodeRegistry& registry,
                                                                        const NodeEnv& env,
                                                                        base::MetricsRegistry* metrics);

// "ok", "failed", ... for a v1::NodeStatus (metrics labels).
const char* NodeStatusLabel(int status);

}  // namespace kosh::pipelines
