// Dependency graphs of config-defined components (flow components, pipeline nodes).
#pragma once

#include <vector>

namespace kosh::base {

// The result of TopologicalLevels.
struct TopoLevels {
  // levels[k]: in increasing order, the nodes whose dependencies all sit in earlier levels.
  std::vector<std::vector<int>> levels;
  // Empty when the graph is acyclic. Otherwise the nodes on or behind a cycle are missing from
  // `levels`, and this names one cycle as a path in dependency order that ends where it starts
  // ({a, b, a}: b depends on a, a on b).
  std::vector<int> cycle;
};

// Kahn's algorithm in rounds over `deps` (deps[i]: the nodes node i depends on; no duplicates).
TopoLevels TopologicalLevels(const std::vector<std::vector<int>>& deps);

}  // namespace kosh::base
