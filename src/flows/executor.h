// Runs compiled flows: stage by stage, the feature fetches of a stage in parallel on a small
// shared thread pool, derived columns and the scorer inline; per-component timeouts and a request
// deadline; a failed, timed-out or skipped component leaves defaults in its columns and is named
// in the response (partial results are explicit). Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
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

// A fixed set of worker threads running queued closures in FIFO order. The destructor finishes
// what is queued and joins the threads.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  void Schedule(std::function<void()> fn);

 private:
  void Work();
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

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
  absl::Status Run(const CompiledFlow& flow, const v1::InferRequest& req, v1::InferResponse* resp);

  // Runs `flow` and returns its targets ranked by the flow's output.sort_by column (with top_k).
  // FAILED_PRECONDITION if the flow does not sort; otherwise the errors of Run.
  absl::Status Rank(const CompiledFlow& flow, const v1::RankRequest& req, v1::RankResponse* resp);

 private:
  Sources sources_;
  FlowsOptions options_;
  ThreadPool pool_;
};

}  // namespace kosh::flows
