// Pipeline nodes: reusable steps defined once in code and registered by type name in a
// NodeRegistry; a pipeline config refers to them by that name (nodes.cc has the built-in library:
// dataset_candidates, interaction_candidates, features, score, filter, merge, top_k).
//
// A node type's factory validates one node's `params` (errors name the node and field) and builds
// an immutable Node, which the compiled pipeline owns and every request shares. Node::Run is
// called concurrently by many requests and must be thread-safe; it may be abandoned by the
// executor when it overruns its timeout, so it must own nothing of the request beyond what
// NodeInput hands it (the executor keeps those alive until Run returns).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kosh/v1/pipelines.pb.h"
#include "pipelines/candidates.h"
#include "yaml-cpp/yaml.h"

namespace kosh::datasets {
class DatasetManager;
}
namespace kosh::interactions {
class InteractionStore;
}
namespace kosh::flows {
class FlowRegistry;
class Executor;
}  // namespace kosh::flows

namespace kosh::pipelines {

struct PipelinesOptions;

// What node factories may use. Pointers may be null (a subsystem this server does not run, or a
// unit test); a node that needs a missing one fails to build with FAILED_PRECONDITION.
struct NodeEnv {
  datasets::DatasetManager* datasets = nullptr;
  interactions::InteractionStore* interactions = nullptr;
  flows::FlowRegistry* flow_registry = nullptr;
  flows::Executor* flow_executor = nullptr;
  const PipelinesOptions* options = nullptr;
  // Check references to other definitions (datasets, flows, event types) against what exists now.
  // True when a config is submitted; false when stored versions are reloaded (they were checked
  // when submitted; a reference that broke since fails at run time, naming the node).
  bool check_references = true;
};

// One node of a config, as the factory sees it.
struct NodeSpec {
  std::string name;
  std::string type;
  std::vector<std::string> inputs;  // input node names, in config order
  YAML::Node params;                // the `params` mapping (may be undefined or null)
  std::string where;                // "nodes[2] (blend)", the prefix of every error
};

// One attempt of one node.
struct NodeInput {
  const v1::RunPipelineRequest* request = nullptr;  // context and lists
  std::vector<const CandidateSet*> inputs;          // parallel to NodeSpec::inputs
  absl::Time deadline;                              // of this attempt: min(timeout, request deadline)
};

struct NodeOutput {
  CandidateSet candidates;
  // Non-empty: the node ran but part of its work failed (e.g. a flow component timed out and its
  // columns hold defaults). The node is reported NODE_PARTIAL with this text.
  std::string partial;
};

class Node {
 public:
  virtual ~Node() = default;
  // True when Run does I/O or may block: it then runs on the executor's pool and is abandoned at
  // its timeout. False for pure computation over the inputs, run inline by the coordinator.
  virtual bool blocking() const = 0;
  // Produces the node's candidates. An error fails this attempt (retried if the node allows it and
  // the code is transient: UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNKNOWN).
  virtual absl::Status Run(const NodeInput& in, NodeOutput* out) const = 0;
};

using NodeFactory = std::function<absl::StatusOr<std::unique_ptr<Node>>(const NodeSpec& spec, const NodeEnv& env)>;

struct NodeType {
  std::string name;         // [a-z_][a-z0-9_]*
  std::string description;  // one line, for errors and docs
  // Safe to run again after a failure or timeout (reads only). Only idempotent nodes may set
  // `retries`.
  bool idempotent = true;
  size_t min_inputs = 0;
  size_t max_inputs = 0;  // kAnyInputs: no limit
  static constexpr size_t kAnyInputs = static_cast<size_t>(-1);
  NodeFactory build;
};

// The node types a server (or a test) knows. Filled at start-up, then only read: not
// synchronised, so register everything before sharing it across threads.
class NodeRegistry {
 public:
  // INVALID_ARGUMENT for a duplicate or malformed type.
  absl::Status Register(NodeType type);
  const NodeType* Find(const std::string& name) const;
  // Comma-separated type names, sorted (for errors).
  std::string Names() const;

 private:
  std::map<std::string, NodeType> types_;
};

// Registers the built-in node library (nodes.cc).
absl::Status RegisterBuiltinNodes(NodeRegistry* registry);

}  // namespace kosh::pipelines
