// Flows (Inferflow): a flow is a config-defined graph of components (feature fetches, derived
// columns, a model) that turns context ids and a list of target ids into a feature matrix and
// scores. This header holds the compiled form and the compiler (parse + validate); executor.h
// runs compiled flows, flow_registry.h stores and serves their versions.
//
// A CompiledFlow is immutable once built and shared (shared_ptr) by every request that runs it,
// so a new version can be swapped in while old requests finish on the old one.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "features/registry.h"
#include "flows/expr.h"
#include "flows/model_client.h"
#include "kosh/v1/flows.pb.h"
#include "yaml-cpp/yaml.h"

namespace kosh::flows {

// The `flows:` section of the server config.
struct FlowsOptions {
  int threads = 4;                          // fetch threads shared by all requests
  uint32_t inline_max_keys = 8;             // fetches of at most this many keys run on the request's thread
  int64_t default_deadline_ms = 100;        // per request, unless the flow sets `deadline`
  int64_t default_component_timeout_ms = 50;
  uint32_t max_targets = 1000;              // targets per Infer request
  uint32_t max_config_bytes = 1 << 20;      // size of one flow config
  uint32_t max_components = 256;
  bool enable_test_hooks = false;           // allows `test_delay` on components (tests only)
  std::vector<std::string> files;           // flow configs applied at start-up
};

// Parses the `flows:` YAML section (null = defaults). Errors name the path, e.g. "flows.threads".
absl::StatusOr<FlowsOptions> ParseFlowsOptions(const YAML::Node& node);

// One column of the flow's matrix (or an input pseudo-column).
struct ColumnDef {
  enum class Source : uint8_t { kContext, kTarget, kRequest, kComponent };
  std::string name;
  Source source = Source::kComponent;
  v1::FeatureType type = v1::FEATURE_TYPE_UNSPECIFIED;
  uint32_t vector_length = 0;
  int component = -1;  // producing component (kComponent)
  bool per_row = false;
  v1::Value default_value;
};

struct Scorer {
  enum class Kind : uint8_t { kLinear, kLogistic };
  Kind kind = Kind::kLinear;
  double bias = 0;
  std::vector<std::pair<int, double>> weights;  // (column, weight)
};

struct Component {
  enum class Kind : uint8_t { kFeatures, kDerived, kModel, kInteractions, kDataset };
  std::string name;
  Kind kind = Kind::kFeatures;
  int stage = 0;
  int64_t timeout_ms = 0;
  int64_t test_delay_ms = 0;  // test hook: sleep before running
  bool per_row = false;
  std::vector<int> deps;      // components this one reads from
  std::vector<int> out_cols;  // columns it produces
  // kFeatures
  std::string entity;
  std::vector<int> key_cols;                // one per key column of the entity
  std::vector<std::string> feature_refs;    // "group.feature", parallel to out_cols
  // Fetches of one stage from the same entity with the same keys are one Retrieve: the first
  // component (the leader) lists the others in `merged`; they point back with `merged_into`.
  std::vector<int> merged;
  int merged_into = -1;
  std::vector<int> fetch_cols;  // leader: the columns its Retrieve fills (its own, then the merged ones')
  // kInteractions: events of `event_types` (empty = every type) of the user in key_cols[0] within
  // the last `window_ms` (0 = every retained event). Outputs: "<name>.count" (INT64, all such
  // events) and/or "<name>.target_count" (INT64 per row: those whose item_id is the row's target).
  std::vector<std::string> event_types;
  int64_t window_ms = 0;
  int count_col = -1;
  int target_count_col = -1;
  // kDataset: a lookup of the key in key_cols[0] in dataset `dataset`. Recommendation lists give
  // "<name>.target_score" (FLOAT32) and/or "<name>.target_rank" (INT32, 1-based) of the row's
  // target in the list; typed records give the declared `record_fields` as "<name>.<field>".
  std::string dataset;
  int target_score_col = -1;
  int target_rank_col = -1;
  std::vector<std::string> record_fields;  // parallel to out_cols (records)
  bool uses_target = false;                // outputs depend on the row's target: per row
  // kDerived
  std::optional<Expr> expr;
  std::vector<int> expr_inputs;             // columns, parallel to expr->columns()
  // kModel: the built-in scorer, or (model_client set) an external KServe v2 model server scoring
  // the dense float32 rows of `model_inputs` (vectors flattened; model_width floats per row).
  Scorer scorer;
  std::shared_ptr<const ModelClient> model_client;
  std::vector<int> model_inputs;
  uint32_t model_width = 0;
  // Metrics (owned by the metrics registry; null without one).
  base::Histogram* latency = nullptr;
  base::Counter* results[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};  // by ComponentStatus
};

struct CompiledFlow {
  std::string model_id;
  uint32_t version = 0;
  int64_t deadline_ms = 0;
  std::vector<ColumnDef> columns;
  absl::flat_hash_map<std::string, int> column_index;
  std::vector<int> context_cols;  // inputs.context, in order
  int target_col = -1;
  std::vector<int> request_cols;  // inputs.request_features
  std::vector<Component> components;
  std::vector<std::vector<int>> stages;  // component indices per stage
  std::vector<int> output_cols;          // matrix columns: every component column, in order
  int sort_col = -1;
  bool descending = true;
  uint32_t top_k = 0;
  v1::FlowPlan plan;
};

// Parses a flow config (YAML or JSON text) and validates it against the feature registry
// `snap`: unknown entities, groups and features, key arity, unknown or cyclic references, type
// mismatches (keys must be STRING/INT32/INT64; expressions, scorers and sort_by need numeric
// scalars), duplicate names. Errors are INVALID_ARGUMENT naming the component and field, e.g.
// `components[2] (user_category).keys[1]: unknown column "product.product_stats.categry_id"`.
// `metrics` may be null.
absl::StatusOr<std::shared_ptr<const CompiledFlow>> CompileFlow(absl::string_view config, uint32_t version,
                                                               const features::Snapshot& snap,
                                                               const FlowsOptions& options,
                                                               base::MetricsRegistry* metrics);

}  // namespace kosh::flows
