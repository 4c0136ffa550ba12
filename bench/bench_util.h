// Small helpers shared by the benchmark programs: flag lookup, percentiles, a flow's critical chain.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace kosh::bench {

// The value after `name` on the command line ("--rows 100"), or `def`.
inline std::string Arg(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return def;
}

// The p-th percentile (nearest rank) of `v`; 0 for an empty sample.
inline double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  i = i == 0 ? 0 : i - 1;
  return v[std::min(i, v.size() - 1)];
}

// The critical chain of lookups of an Infer or Rank response (return_timings on): the sum over
// stages of the slowest component's micros. Its total_micros minus this is the executor's overhead.
template <typename FlowResponse>
int64_t CriticalChainMicros(const FlowResponse& resp) {
  std::vector<int64_t> slowest;
  for (const auto& c : resp.components()) {
    if (c.stage() >= slowest.size()) slowest.resize(c.stage() + 1, 0);
    slowest[c.stage()] = std::max<int64_t>(slowest[c.stage()], c.micros());
  }
  int64_t chain = 0;
  for (int64_t s : slowest) chain += s;
  return chain;
}

}  // namespace kosh::bench
