// Runs compiled pipelines. A node starts as soon as every node it depends on (inputs, and the
// nodes its `when` condition reads) has finished, so parallel branches overlap: blocking nodes
// (I/O: datasets, interactions, flows) run on a small shared pool, pure computation (merge,
// top_k, score, expression filters) inline on the request's thread.
//
// Per node: the `when` condition (false: skipped, empty output), a timeout per attempt (a late
// attempt is abandoned: it owns its inputs and request copy, so it can finish harmlessly later),
// retries with exponential backoff on transient errors and timeouts, never past the request
// deadline; a node that fails for good yields an empty candidate set and is reported, unless it
// is `required`, which fails the request. Every node's outcome and time go to /metrics.
//
// Thread-safe: any number of concurrent Run calls.
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "base/thread_pool.h"
#include "flows/executor.h"
#include "kosh/v1/pipelines.pb.h"
#include "pipelines/pipeline.h"

namespace kosh::pipelines {

class PipelineExecutor {
 public:
  // Starts options.threads pool threads; the destructor finishes queued (abandoned) attempts and
  // joins them, so it must run before the subsystems the nodes use are destroyed.
  explicit PipelineExecutor(const PipelinesOptions& options);

  // Runs `pipeline` for `req` and fills `resp`. With req.dry_run, only the plan.
  // INVALID_ARGUMENT naming the field for a bad request (negative deadline_ms), RESOURCE_EXHAUSTED
  // for oversize lists; a required node's failure returns its error (DEADLINE_EXCEEDED for a
  // timeout) naming the node. Other node failures are not errors of the call: the response is
  // partial and lists them.
  absl::Status Run(std::shared_ptr<const CompiledPipeline> pipeline, const v1::RunPipelineRequest& req,
                   v1::RunPipelineResponse* resp);

 private:
  PipelinesOptions options_;
  base::ThreadPool pool_;
};

}  // namespace kosh::pipelines
