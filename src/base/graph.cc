#include "base/graph.h"

#include <algorithm>

namespace kosh::base {

TopoLevels TopologicalLevels(const std::vector<std::vector<int>>& deps) {
  const size_t n = deps.size();
  TopoLevels out;
  std::vector<int> left(n, 0);
  std::vector<std::vector<int>> users(n);
  for (size_t i = 0; i < n; ++i) {
    for (int d : deps[i]) {
      ++left[i];
      users[d].push_back(static_cast<int>(i));
    }
  }
  std::vector<int> ready;
  for (size_t i = 0; i < n; ++i) {
    if (left[i] == 0) ready.push_back(static_cast<int>(i));
  }
  size_t placed = 0;
  while (!ready.empty()) {
    std::sort(ready.begin(), ready.end());
    std::vector<int> next;
    for (int c : ready) {
      ++placed;
      for (int u : users[c]) {
        if (--left[u] == 0) next.push_back(u);
      }
    }
    out.levels.push_back(std::move(ready));
    ready = std::move(next);
  }
  if (placed == n) return out;
  // Walk dependencies among the leftovers from the last one until a node repeats.
  int cur = static_cast<int>(n) - 1;
  while (left[cur] == 0) --cur;
  std::vector<int> path;
  std::vector<int> seen_at(n, -1);
  while (seen_at[cur] < 0) {
    seen_at[cur] = static_cast<int>(path.size());
    path.push_back(cur);
    for (int d : deps[cur]) {
      if (left[d] > 0) {
        cur = d;
        break;
      }
    }
  }
  out.cycle.assign(path.rbegin(), path.rend() - seen_at[cur]);
  out.cycle.push_back(out.cycle.front());
  return out;
}

}  // namespace kosh::base
