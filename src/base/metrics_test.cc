#include "base/metrics.h"

#include "gtest/gtest.h"

namespace kosh::base {
namespace {

TEST(Metrics, CountersAreStableAndRendered) {
  MetricsRegistry r;
  Counter* a = r.GetCounter("kosh_requests_total", "Requests.", {{"method", "Get"}, {"code", "OK"}});
  EXPECT_EQ(a, r.GetCounter("kosh_requests_total", "Requests.", {{"method", "Get"}, {"code", "OK"}}));
  a->Inc();
  a->Inc(2);
  std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE kosh_requests_total counter"), std::string::npos);
  EXPECT_NE(text.find("kosh_requests_total{method=\"Get\",code=\"OK\"} 3\n"), std::string::npos) << text;
}

TEST(Metrics, HistogramIsCumulative) {
  MetricsRegistry r;
  Histogram* h = r.GetHistogram("lat_seconds", "Latency.", {{"m", "x"}}, {0.001, 0.01});
  h->Observe(0.0005);
  h->Observe(0.005);
  h->Observe(5);
  std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"x\",le=\"0.001\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"x\",le=\"0.01\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"x\",le=\"+Inf\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_count{m=\"x\"} 3\n"), std::string::npos) << text;
  EXPECT_NEAR(h->sum(), 5.0055, 1e-6);
}

TEST(Metrics, GaugesAndEscaping) {
  MetricsRegistry r;
  r.AddGauge("g", "A gauge.", [] { return std::vector<std::pair<Labels, double>>{{{{"k", "a\"b"}}, 1.5}}; });
  std::string text = r.RenderPrometheus();
  EXPECT_NE(text.find("g{k=\"a\\\"b\"} 1.5\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace kosh::base
