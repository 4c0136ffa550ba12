#include "pipelines/executor.h"

#include <algorithm>
#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kosh::pipelines {

PipelineExecutor::PipelineExecutor(const PipelinesOptions& options) : options_(options), pool_(options.threads) {}

namespace {

// What a pool attempt hands back to the coordinator.
struct Completion {
  int node = 0;
  uint32_t attempt = 0;
  absl::Status status;
  std::shared_ptr<NodeOutput> out;
  absl::Time finished;
};

// Shared by the coordinator and its pool attempts (which may outlive the request).
struct Mailbox {
  absl::Mutex mu;
  absl::CondVar cv;
  std::vector<Completion> done ABSL_GUARDED_BY(mu);
};

bool Transient(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), "ms"); }

class RunState {
 public:
  RunState(std::shared_ptr<const CompiledPipeline> p, const v1::RunPipelineRequest& req, absl::Time deadline,
           const PipelinesOptions& options, base::ThreadPool* pool)
      : p_(std::move(p)),
        req_(req),
        deadline_(deadline),
        options_(options),
        pool_(pool),
        runs_(p_->nodes.size()),
        mailbox_(std::make_shared<Mailbox>()),
        empty_(std::make_shared<NodeOutput>()) {
    for (const auto& n : p_->nodes) {
      for (int c : n.consumers) ++runs_[c].pending;
      if (n.blocking) has_blocking_ = true;
    }
    if (has_blocking_) shared_req_ = std::make_shared<const v1::RunPipelineRequest>(req);
  }

  absl::Status Execute() {
    const size_t n = p_->nodes.size();
    for (size_t i = 0; i < n; ++i) {
      if (runs_[i].pending == 0) ready_.push_back(static_cast<int>(i));
    }
    std::vector<Completion> completions;
    while (done_ < n && fatal_.ok()) {
      while (!ready_.empty() && fatal_.ok()) {
        int i = ready_.front();
        ready_.pop_front();
        Start(i);
      }
      if (done_ == n || !fatal_.ok()) break;
      // Timers: attempts past their deadline, retries whose backoff has elapsed.
      absl::Time now = absl::Now();
      absl::Time next = absl::InfiniteFuture();
      for (size_t i = 0; i < n && fatal_.ok(); ++i) {
        NodeRun& r = runs_[i];
        if (r.state == State::kRunning) {
          if (now >= r.attempt_deadline) {
            AttemptEnded(static_cast<int>(i), absl::OkStatus(), /*timed_out=*/true, nullptr);
          } else {
            next = std::min(next, r.attempt_deadline);
          }
        } else if (r.state == State::kBackoff) {
          if (now >= r.retry_at) {
            Dispatch(static_cast<int>(i));
          } else {
            next = std::min(next, r.retry_at);
          }
        }
      }
      if (!ready_.empty() || done_ == n || !fatal_.ok()) continue;
      if (next == absl::InfiniteFuture() && !AnyRunning()) {
        // Nothing running, nothing waiting on a timer, nothing ready: only possible if a bug
        // left a node without a way to start. Fail loudly rather than hang.
        return absl::InternalError("pipeline executor: no runnable node left");
      }
      {
        absl::MutexLock l(&mailbox_->mu);
        while (mailbox_->done.empty() && absl::Now() < next) mailbox_->cv.WaitWithDeadline(&mailbox_->mu, next);
        completions.swap(mailbox_->done);
      }
      for (Completion& c : completions) {
        NodeRun& r = runs_[c.node];
        // A completion of an attempt already given up on (timed out, retried) is dropped.
        if (r.state != State::kRunning || c.attempt != r.attempts) continue;
        if (c.finished > r.attempt_deadline) {
          AttemptEnded(c.node, absl::OkStatus(), /*timed_out=*/true, nullptr);
        } else {
          AttemptEnded(c.node, std::move(c.status), /*timed_out=*/false, std::move(c.out));
        }
      }
      completions.clear();
    }
    return fatal_;
  }

  void Fill(v1::RunPipelineResponse* resp, absl::Time start) {
    NodeRun& out = runs_[p_->output];
    // The output node has no consumers, so its output is referenced only here: move from it.
    NodeOutput& o = *out.out;
    const size_t ncols = o.candidates.columns.size();
    for (const auto& c : o.candidates.columns) resp->add_columns(c);
    size_t count = o.candidates.items.size();
    if (req_.limit() != 0) count = std::min<size_t>(count, req_.limit());
    resp->mutable_candidates()->Reserve(static_cast<int>(count));
    for (size_t i = 0; i < count; ++i) {
      Candidate& c = o.candidates.items[i];
      auto* pc = resp->add_candidates();
      pc->set_item_id(std::move(c.item_id));
      pc->set_score(c.score);
      if (ncols == 0) continue;
      pc->mutable_values()->Reserve(static_cast<int>(ncols));
      for (size_t k = 0; k < ncols; ++k) {
        auto* v = pc->add_values();
        if (k < c.values.size()) v->Swap(&c.values[k]);
      }
    }
    for (size_t i = 0; i < p_->nodes.size(); ++i) {
      const CompiledNode& node = p_->nodes[i];
      const NodeRun& r = runs_[i];
      const bool failed = r.status == v1::NODE_FAILED || r.status == v1::NODE_TIMEOUT || r.status == v1::NODE_NOT_RUN ||
                          r.status == v1::NODE_PARTIAL;
      if (failed) {
        resp->set_partial(true);
        resp->add_failed_nodes(node.name);
      }
      if (r.status != v1::NODE_OK || req_.return_timings()) {
        auto* nr = resp->add_nodes();
        nr->set_name(node.name);
        nr->set_status(r.status);
        nr->set_error(r.error);
        nr->set_micros(r.micros);
        nr->set_attempts(r.attempts);
        nr->set_candidates(static_cast<uint32_t>(r.out->candidates.items.size()));
        nr->set_stage(static_cast<uint32_t>(node.stage));
      }
    }
    absl::Duration took = absl::Now() - start;
    resp->set_total_micros(absl::ToInt64Microseconds(took));
    if (p_->latency != nullptr) p_->latency->Observe(absl::ToDoubleSeconds(took));
  }

 private:
  enum class State : uint8_t { kWaiting, kRunning, kBackoff, kDone };
  struct NodeRun {
    State state = State::kWaiting;
    int pending = 0;  // dependencies not finished yet
    uint32_t attempts = 0;
    absl::Time first_start, attempt_start, attempt_deadline, retry_at;
    std::string last_error;  // of the previous failed attempt, while backing off
    v1::NodeStatus status = v1::NODE_STATUS_UNSPECIFIED;
    std::string error;
    int64_t micros = 0;
    std::shared_ptr<NodeOutput> out;  // set when done (empty_ unless OK or PARTIAL)
  };

  bool AnyRunning() const {
    for (const auto& r : runs_) {
      if (r.state == State::kRunning || r.state == State::kBackoff) return true;
    }
    return false;
  }

  void Start(int i) {
    const CompiledNode& node = p_->nodes[i];
    NodeRun& r = runs_[i];
    r.first_start = absl::Now();
    if (node.when.has_value()) {
      std::vector<int64_t> counts;
      counts.reserve(node.condition_on.size());
      for (int c : node.condition_on) counts.push_back(static_cast<int64_t>(runs_[c].out->candidates.items.size()));
      if (!node.when->Evaluate(req_.context(), counts)) {
        Finish(i, v1::NODE_SKIPPED, absl::StrCat("condition is false: ", node.when->text()), nullptr);
        return;
      }
    }
    if (r.first_start >= deadline_) {
      Finish(i, v1::NODE_NOT_RUN, "the request deadline passed before the node could start", nullptr);
      return;
    }
    Dispatch(i);
  }

  void Dispatch(int i) {
    const CompiledNode& node = p_->nodes[i];
    NodeRun& r = runs_[i];
    ++r.attempts;
    if (r.attempts > 1 && node.retried != nullptr) node.retried->Inc();
    const absl::Time now = absl::Now();
    r.attempt_start = now;
    r.attempt_deadline = std::min(deadline_, now + absl::Milliseconds(node.timeout_ms));
    std::vector<std::shared_ptr<const NodeOutput>> inputs;
    inputs.reserve(node.inputs.size());
    for (int in : node.inputs) inputs.push_back(runs_[in].out);
    if (node.blocking) {
      r.state = State::kRunning;
      pool_->Schedule([p = p_, req = shared_req_, inputs = std::move(inputs), mailbox = mailbox_, i,
                       attempt = r.attempts, deadline = r.attempt_deadline] {
        const CompiledNode& n = p->nodes[i];
        if (n.test_delay_ms > 0) absl::SleepFor(absl::Milliseconds(n.test_delay_ms));
        NodeInput in;
        in.request = req.get();
        in.deadline = deadline;
        for (const auto& x : inputs) in.inputs.push_back(&x->candidates);
        auto out = std::make_shared<NodeOutput>();
        absl::Status st = n.impl->Run(in, out.get());
        absl::MutexLock l(&mailbox->mu);
        mailbox->done.push_back(Completion{i, attempt, std::move(st), std::move(out), absl::Now()});
        mailbox->cv.Signal();
      });
      return;
    }
    // Inline: cannot be interrupted; a late result is discarded all the same, so the timeout
    // means the same for every node.
    if (node.test_delay_ms > 0) absl::SleepFor(absl::Milliseconds(node.test_delay_ms));
    NodeInput in;
    in.request = &req_;
    in.deadline = r.attempt_deadline;
    for (const auto& x : inputs) in.inputs.push_back(&x->candidates);
    auto out = std::make_shared<NodeOutput>();
    absl::Status st = node.impl->Run(in, out.get());
    if (absl::Now() > r.attempt_deadline) {
      AttemptEnded(i, absl::OkStatus(), /*timed_out=*/true, nullptr);
    } else {
      AttemptEnded(i, std::move(st), /*timed_out=*/false, std::move(out));
    }
  }

  void AttemptEnded(int i, absl::Status st, bool timed_out, std::shared_ptr<NodeOutput> out) {
    const CompiledNode& node = p_->nodes[i];
    NodeRun& r = runs_[i];
    if (!timed_out && st.ok()) {
      if (out->candidates.items.size() > options_.max_candidates) {
        st = absl::ResourceExhaustedError(absl::StrCat("produced ", out->candidates.items.size(),
                                                       " candidates, over the limit of ", options_.max_candidates,
                                                       " (pipelines.max_candidates)"));
      } else {
        std::string partial = std::move(out->partial);
        Finish(i, partial.empty() ? v1::NODE_OK : v1::NODE_PARTIAL, std::move(partial), std::move(out));
        return;
      }
    }
    const absl::Time now = absl::Now();
    std::string why;
    if (timed_out) {
      const bool by_deadline = r.attempt_deadline == deadline_;
      why = absl::StrCat("no result within ", Ms(r.attempt_deadline - r.attempt_start),
                         by_deadline ? " (the request deadline)" : " (the node timeout)");
    } else {
      why = std::string(st.message());
    }
    if ((timed_out || Transient(st.code())) && r.attempts <= node.retries) {
      int shift = static_cast<int>(std::min<uint32_t>(r.attempts - 1, 20));
      absl::Time retry_at = now + absl::Milliseconds(node.backoff_ms) * (int64_t{1} << shift);
      if (retry_at < deadline_) {
        r.state = State::kBackoff;
        r.retry_at = retry_at;
        r.last_error = std::move(why);
        return;
      }
      why = absl::StrCat(why, "; no time left for a retry before the request deadline");
    }
    if (r.attempts > 1) why = absl::StrCat("attempt ", r.attempts, ": ", why);
    const v1::NodeStatus status = timed_out ? v1::NODE_TIMEOUT : v1::NODE_FAILED;
    if (node.required) {
      absl::StatusCode code = timed_out ? absl::StatusCode::kDeadlineExceeded : st.code();
      fatal_ = absl::Status(
          code, absl::StrCat("node \"", node.name, "\" (required) ", timed_out ? "timed out: " : "failed: ", why));
    }
    Finish(i, status, std::move(why), nullptr);
  }

  void Finish(int i, v1::NodeStatus status, std::string error, std::shared_ptr<NodeOutput> out) {
    const CompiledNode& node = p_->nodes[i];
    NodeRun& r = runs_[i];
    r.state = State::kDone;
    r.status = status;
    r.error = std::move(error);
    r.out = out != nullptr ? std::move(out) : empty_;
    ++done_;
    if (status != v1::NODE_SKIPPED && status != v1::NODE_NOT_RUN) {
      absl::Duration took = absl::Now() - r.first_start;
      r.micros = absl::ToInt64Microseconds(took);
      if (node.latency != nullptr) node.latency->Observe(absl::ToDoubleSeconds(took));
    }
    if (node.results[status] != nullptr) node.results[status]->Inc();
    for (int c : node.consumers) {
      if (--runs_[c].pending == 0) ready_.push_back(c);
    }
  }

  std::shared_ptr<const CompiledPipeline> p_;
  const v1::RunPipelineRequest& req_;
  std::shared_ptr<const v1::RunPipelineRequest> shared_req_;  // for pool attempts
  const absl::Time deadline_;
  const PipelinesOptions& options_;
  base::ThreadPool* pool_;
  std::vector<NodeRun> runs_;
  std::shared_ptr<Mailbox> mailbox_;
  // The output of failed and skipped nodes. Shared, and never handed out mutable except to Fill,
  // which only moves from the output node's own output.
  std::shared_ptr<NodeOutput> empty_;
  std::deque<int> ready_;
  size_t done_ = 0;
  bool has_blocking_ = false;
  absl::Status fatal_;
};

}  // namespace

absl::Status PipelineExecutor::Run(std::shared_ptr<const CompiledPipeline> pipeline, const v1::RunPipelineRequest& req,
                                   v1::RunPipelineResponse* resp) {
  const absl::Time start = absl::Now();
  resp->set_pipeline_id(pipeline->pipeline_id);
  resp->set_version(pipeline->version);
  if (req.dry_run()) {
    *resp->mutable_plan() = pipeline->plan;
    return absl::OkStatus();
  }
  if (req.deadline_ms() < 0) return absl::InvalidArgumentError("deadline_ms: must not be negative");
  uint64_t items = 0;
  for (const auto& [name, list] : req.lists()) {
    items += static_cast<uint64_t>(list.items_size());
    for (int i = 0; i < list.items_size(); ++i) {
      if (list.items(i).empty())
        return absl::InvalidArgumentError(absl::StrCat("lists.", name, ".items[", i, "]: empty item id"));
    }
  }
  if (items > options_.max_request_items) {
    return absl::ResourceExhaustedError(absl::StrCat("lists: ", items, " items exceeds the limit of ",
                                                     options_.max_request_items, " (pipelines.max_request_items)"));
  }
  int64_t deadline_ms = pipeline->deadline_ms;
  if (req.deadline_ms() > 0) deadline_ms = std::min(deadline_ms, req.deadline_ms());
  RunState run(std::move(pipeline), req, start + absl::Milliseconds(deadline_ms), options_, &pool_);
  absl::Status st = run.Execute();
  if (!st.ok()) return st;
  run.Fill(resp, start);
  return absl::OkStatus();
}

}  // namespace kosh::pipelines
