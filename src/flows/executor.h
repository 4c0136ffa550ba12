// Runs compiled flows: stage by stage, the feature fetches of a stage in parallel on a small
// shared thread pool, derived columns and the scorer inline; per-component timeouts and a request
// deadline; a failed, timed-out or skipped component leaves defaults in its columns and is named
// in the response (partial results are explicit). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "base/thread_pool.h"
#include "features/feature_store.h"
#include "flows/flow.h"
#include "kosh/v1/flows.pb.h"

namespace kosh::interactions {
class InteractionStore;
}  // namespace kosh::interactions
namespace kosh::datasets {
class DatasetManager;
}  // namespace kosh::datasets

namespace kosh::flows {

// Where fetch components read. Null interactions/datasets: such components fail (explicitly, with
// partial results) on a server without them.
struct Sources {
  features::FeatureStore* features = nullptr;
  interactions::InteractionStore* interactions = nullptr;
  datasets::DatasetManager* datasets = nullptr;
};

class Executor {
 public:
  // The sources must outlive the executor.
  Executor(Sources sources, const FlowsOptions& options);

  // Runs `flow` for `req` and fills `resp` (model_id, version, columns, rows, dense form, component
  // results, partial). INVALID_ARGUMENT naming the field for a bad request (missing context id,
  // unknown request feature or wrong type, no targets), RESOURCE_EXHAUSTED for too many targets.
  // A failing component is not an error of the call: the response is partial and says so.
  // A response on an arena refers to values it shares with other cells (and keeps what they live
  // in alive on that arena) instead of copying each cell: read, print and serialize it, but do not
  // clear, assign, merge into or otherwise reuse it (protobuf would reuse a shared cell for several
  // new values). `resp` must be empty.
  absl::Status Run(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp);

  // Runs `flow` and returns its targets ranked by the flow's output.sort_by column (with top_k).
  // FAILED_PRECONDITION if the flow does not sort; otherwise the errors of Run.
  absl::Status Rank(const CompiledFlow& flow, const v1::RankRequest& req, v1::RankResponse* resp);

 private:
  // Run, filling either the matrix (`ranked` null) or, for Rank, `ranked` with the sorted targets
  // and scores (then `resp` gets only the model, version, component results and timing).
  absl::Status Evaluate(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp,
                        v1::RankResponse* ranked);

  Sources sources_;
  FlowsOptions options_;
  base::ThreadPool pool_;
};

}  // namespace kosh::flows
