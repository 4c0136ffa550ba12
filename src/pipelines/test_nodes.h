// Fake node types for the pipeline unit tests, registered next to the built-in library.
//
//   type: fixed         a source: params items ["id:score", ...], columns {name: [numbers]}
//                       (parallel to items), blocking (default true), delay (ms slept per
//                       attempt), fail (the first N attempts fail), code (unavailable |
//                       invalid_argument: the failure's code)
//   type: pass          one input, copied through (inline)
//   type: append        non-idempotent: one input, copied through
// Every attempt is recorded in a Probe (start, end) so tests can check overlap and backoff.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "base/config.h"
#include "base/status.h"
#include "pipelines/node.h"
#include "pipelines/pipeline.h"

namespace kosh::pipelines::testing {

struct Probe {
  struct Attempt {
    absl::Time start, end;
  };
  absl::Mutex mu;
  std::map<std::string, std::vector<Attempt>> attempts ABSL_GUARDED_BY(mu);

  std::vector<Attempt> Of(const std::string& node) {
    absl::MutexLock l(&mu);
    return attempts[node];
  }
  void Clear() {
    absl::MutexLock l(&mu);
    attempts.clear();
  }
};

class FixedNode final : public Node {
 public:
  FixedNode(std::string name, CandidateSet set, bool blocking, int64_t delay_ms, int fail, absl::StatusCode code,
            Probe* probe)
      : name_(std::move(name)),
        set_(std::move(set)),
        blocking_(blocking),
        delay_ms_(delay_ms),
        fail_(fail),
        code_(code),
        probe_(probe) {}
  bool blocking() const override { return blocking_; }
  absl::Status Run(const NodeInput&, NodeOutput* out) const override {
    absl::Time start = absl::Now();
    if (delay_ms_ > 0) absl::SleepFor(absl::Milliseconds(delay_ms_));
    int n = calls_.fetch_add(1);
    {
      absl::MutexLock l(&probe_->mu);
      probe_->attempts[name_].push_back({start, absl::Now()});
    }
    if (n < fail_) return absl::Status(code_, absl::StrCat("injected failure ", n + 1));
    out->candidates = set_;
    return absl::OkStatus();
  }

 private:
  std::string name_;
  CandidateSet set_;
  bool blocking_;
  int64_t delay_ms_;
  int fail_;
  absl::StatusCode code_;
  Probe* probe_;
  mutable std::atomic<int> calls_{0};
};

class PassNode final : public Node {
 public:
  bool blocking() const override { return false; }
  absl::Status Run(const NodeInput& in, NodeOutput* out) const override {
    out->candidates = *in.inputs[0];
    return absl::OkStatus();
  }
};

inline absl::StatusOr<std::unique_ptr<Node>> BuildFixed(const NodeSpec& spec, Probe* probe) {
  base::YamlReader r(spec.params, spec.where + ".params");
  RETURN_IF_ERROR(r.CheckKeys({"items", "columns", "blocking", "delay", "fail", "code"}));
  CandidateSet set;
  const YAML::Node& params = spec.params;
  if (params["items"]) {
    for (const auto& it : params["items"]) {
      std::string s = it.as<std::string>();
      size_t colon = s.find(':');
      Candidate c;
      c.item_id = s.substr(0, colon);
      if (colon != std::string::npos && !absl::SimpleAtod(s.substr(colon + 1), &c.score)) {
        return absl::InvalidArgumentError(spec.where + ".params.items: bad score");
      }
      set.items.push_back(std::move(c));
    }
  }
  if (params["columns"]) {
    for (const auto& kv : params["columns"]) {
      int col = set.AddColumn(kv.first.as<std::string>());
      for (size_t i = 0; i < kv.second.size() && i < set.items.size(); ++i) {
        if (kv.second[i].IsNull()) continue;
        v1::Value v;
        v.set_float64_value(kv.second[i].as<double>());
        set.Set(i, col, v);
      }
    }
  }
  bool blocking = true;
  RETURN_IF_ERROR(r.GetBool("blocking", &blocking));
  int64_t delay = 0, fail = 0;
  RETURN_IF_ERROR(r.GetInt("delay", &delay));
  RETURN_IF_ERROR(r.GetInt("fail", &fail));
  std::string code = "unavailable";
  RETURN_IF_ERROR(r.GetString("code", &code));
  absl::StatusCode c = code == "invalid_argument" ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kUnavailable;
  return std::make_unique<FixedNode>(spec.name, std::move(set), blocking, delay, static_cast<int>(fail), c, probe);
}

// The built-in library plus the fakes above.
inline std::unique_ptr<NodeRegistry> TestNodeRegistry(Probe* probe) {
  auto reg = std::make_unique<NodeRegistry>();
  absl::Status s = RegisterBuiltinNodes(reg.get());
  if (s.ok()) {
    s = reg->Register({"fixed", "test source", true, 0, 0,
                       [probe](const NodeSpec& spec, const NodeEnv&) { return BuildFixed(spec, probe); }});
  }
  if (s.ok()) {
    s = reg->Register({"pass", "test pass-through", true, 1, 1,
                       [](const NodeSpec&, const NodeEnv&) -> absl::StatusOr<std::unique_ptr<Node>> {
                         return std::make_unique<PassNode>();
                       }});
  }
  if (s.ok()) {
    s = reg->Register({"append", "test non-idempotent", false, 1, 1,
                       [](const NodeSpec&, const NodeEnv&) -> absl::StatusOr<std::unique_ptr<Node>> {
                         return std::make_unique<PassNode>();
                       }});
  }
  if (!s.ok()) std::abort();  // a bug in this file
  return reg;
}

}  // namespace kosh::pipelines::testing
