// A small metrics registry rendered in the Prometheus text exposition format.
//
// Metrics are created once (GetCounter / GetHistogram return stable pointers owned by the registry)
// and updated on hot paths with relaxed atomics only. Gauges whose values live elsewhere (cache
// sizes, RocksDB properties) are registered as callbacks that run at scrape time.
// All methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace kosh::base {

// Label name/value pairs, e.g. {{"method", "Retrieve"}, {"code", "OK"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A cumulative histogram with fixed upper bounds.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Count of observations <= bounds()[i] (non-cumulative per bucket; last entry is +Inf).
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum in millionths of the observed unit
};

// Latency buckets in seconds, from 50 microseconds to 10 seconds.
std::vector<double> LatencyBuckets();

class MetricsRegistry {
 public:
  // Returns the counter of family `name` with `labels`, creating it on first use.
  Counter* GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram* GetHistogram(const std::string& name, const std::string& help, const Labels& labels,
                          const std::vector<double>& bounds = LatencyBuckets());
  // A gauge family whose samples are produced by `fn` at scrape time.
  using GaugeFn = std::function<std::vector<std::pair<Labels, double>>()>;
  void AddGauge(const std::string& name, const std::string& help, GaugeFn fn);

  // The whole registry in Prometheus text format 0.0.4.
  std::string RenderPrometheus() const;

 private:
  struct Family {
    std::string help;
    std::string type;  // counter, histogram, gauge
    std::map<std::string, std::unique_ptr<Counter>> counters;      // keyed by rendered labels
    std::map<std::string, std::unique_ptr<Histogram>> histograms;  // keyed by rendered labels
    std::vector<GaugeFn> gauges;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

// Renders {a="x",b="y"} with Prometheus escaping; empty labels render as "".
std::string RenderLabels(const Labels& labels);

}  // namespace kosh::base
