// flows_executor_bench: the flow executor in-process, without gRPC, to measure its own overhead.
//
//   flows_executor_bench [--iterations N] [--rows N] [--top-k N] [--engine memory|rocksdb] [--dir PATH]
//
// Loads examples/schema.yaml and examples/flows/ranker.yaml (from the source tree), writes 1000
// users, 10000 products in 50 categories, every (user, category) affinity and 0-19 recent clicks per
// user into a FeatureStore and an InteractionStore (in-memory engine by default; --engine rocksdb
// uses a fresh RocksDB under --dir), then runs
// Executor::Run for a random user and `rows` random products, `iterations` times after a warm-up,
// on one thread, returning the top `top-k` rows (default: every row, as bench/flows_load asks the
// server for). Reports p50/p99 of the Infer time, of the critical chain of lookups (sum over
// stages of the slowest component, from the executor's own timings) and of their difference, the
// executor overhead. Last line: one JSON object.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/arena.h"
#include "bench_util.h"
#include "absl/synchronization/mutex.h"
#include "base/config.h"
#include "base/metrics.h"
#include "features/feature_store.h"
#include "features/registry.h"
#include "features/schema_yaml.h"
#include "flows/executor.h"
#include "flows/flow_registry.h"
#include "interactions/interaction_store.h"
#include "storage/config_store.h"
#include "storage/engine.h"

namespace v1 = kosh::v1;
namespace kf = kosh::features;
namespace kfl = kosh::flows;

namespace {

using kosh::bench::Arg;
using kosh::bench::Pct;

void Die(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  // As in the server (server.cc): no lock-order tracking in Debian's debug-mode Abseil.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const int iterations = std::stoi(Arg(argc, argv, "--iterations", "20000"));
  const int rows = std::stoi(Arg(argc, argv, "--rows", "100"));
  const int top_k = std::stoi(Arg(argc, argv, "--top-k", std::to_string(rows)));
  const std::string engine_kind = Arg(argc, argv, "--engine", "memory");
  const int users = 1000, products = 10000, categories = 50;

  auto slot = std::make_shared<kosh::interactions::TypeTableSlot>();
  kosh::interactions::InteractionOptions iopts;
  iopts.event_types.emplace_back().set_name("click");
  iopts.event_type_sources.push_back("flows_executor_bench");
  std::vector<kosh::storage::KeyspaceOptions> ks = {
      {"registry", nullptr, nullptr},
      {"features", nullptr, nullptr},
      {"flows", nullptr, nullptr},
      {"interaction_types", nullptr, nullptr},
      {"interactions", kosh::interactions::HistoryExpired,
       kosh::interactions::HistoryMergeFn(slot, kosh::interactions::SystemNowMs, iopts.types.max_cap)}};
  std::unique_ptr<kosh::storage::Engine> engine;
  std::string dir;
  if (engine_kind == "rocksdb") {
    dir = Arg(argc, argv, "--dir", "/tmp/kosh-flows-executor-bench");
    std::filesystem::remove_all(dir);
    kosh::storage::RocksDbOptions so;
    so.path = dir;
    auto e = kosh::storage::OpenRocksDb(so, ks);
    Die(e.status(), "open rocksdb");
    engine = std::move(*e);
  } else {
    engine = kosh::storage::NewMemoryEngine(ks);
  }
  kosh::base::MetricsRegistry metrics;
  auto interactions = kosh::interactions::InteractionStore::Open(engine.get(), 3, 4, iopts, slot, &metrics);
  Die(interactions.status(), "interactions");
  auto registry_config = kosh::storage::NewEngineConfigStore(engine.get(), 0);
  auto flows_config = kosh::storage::NewEngineConfigStore(engine.get(), 2);
  auto registry = kf::Registry::Open(registry_config.get());
  Die(registry.status(), "registry");
  auto schema_text = kosh::base::ReadFile(std::string(KOSH_SOURCE_DIR) + "/examples/schema.yaml");
  Die(schema_text.status(), "schema");
  auto schema = kf::ParseSchemaYaml(YAML::Load(*schema_text), "examples/schema.yaml");
  Die(schema.status(), "schema");
  Die((*registry)->Apply(*schema).status(), "apply");
  kf::FeatureStore store(engine.get(), 1, registry->get(), kf::FeatureStoreOptions{}, &metrics);

  auto persist = [&](const std::string& entity, const std::string& group, const std::vector<std::string>& features,
                     auto fill, int count) {
    for (int base = 0; base < count; base += 500) {
      v1::PersistRequest req;
      req.set_entity(entity);
      req.set_group(group);
      for (const auto& f : features) req.add_features(f);
      for (int i = base; i < std::min(count, base + 500); ++i) fill(req.add_rows(), i);
      v1::PersistResponse resp;
      Die(store.Persist(req, &resp), "persist");
    }
  };
  persist("user", "user_profile", {"age", "is_premium", "orders_30d"}, [](v1::PersistRow* r, int i) {
    r->mutable_key()->add_parts(absl::StrCat("u", i));
    r->add_values()->set_int32_value(20 + i % 50);
    r->add_values()->set_bool_value(i % 3 == 0);
    r->add_values()->set_int32_value(i % 17);
  }, users);
  persist("product", "product_stats", {"price", "ctr_7d", "category_id"}, [](v1::PersistRow* r, int i) {
    r->mutable_key()->add_parts(absl::StrCat("p", i));
    r->add_values()->set_float32_value(static_cast<float>(10 + i % 990));
    r->add_values()->set_float32_value(static_cast<float>(i % 100) / 1000.0f);
    r->add_values()->set_string_value(absl::StrCat("c", i % categories));
  }, products);
  persist("user_category", "affinity", {"clicks_30d", "score"}, [](v1::PersistRow* r, int i) {
    r->mutable_key()->add_parts(absl::StrCat("u", i / categories));
    r->mutable_key()->add_parts(absl::StrCat("c", i % categories));
    r->add_values()->set_int32_value(i % 23);
    r->add_values()->set_float32_value(static_cast<float>(i % 97) / 97.0f);
  }, users * categories);

  // Every user clicked 0-19 products within the last hour (the flow counts them).
  {
    const int64_t now = kosh::interactions::SystemNowMs();
    v1::WriteRequest w;
    for (int u = 0; u < users; ++u) {
      for (int k = 0; k < u % 20; ++k) {
        auto* e = w.add_events();
        e->set_user_id(absl::StrCat("u", u));
        e->set_type("click");
        e->set_item_id(absl::StrCat("p", (u * 7 + k) % products));
        e->set_timestamp_ms(now - 1000 * (k + 1));
      }
      if (w.events_size() > 500 || u + 1 == users) {
        v1::WriteResponse wr;
        Die((*interactions)->Write(w, &wr), "write interactions");
        w.clear_events();
      }
    }
  }

  kfl::FlowsOptions options;
  auto flows = kfl::FlowRegistry::Open(flows_config.get(), registry->get(), options, &metrics);
  Die(flows.status(), "flows");
  auto flow_text = kosh::base::ReadFile(std::string(KOSH_SOURCE_DIR) + "/examples/flows/ranker.yaml");
  Die(flow_text.status(), "flow");
  v1::PutFlowRequest put;
  put.set_config(*flow_text);
  Die((*flows)->Put(put).status(), "put flow");
  auto flow = (*flows)->Find("ranker", 0);
  Die(flow.status(), "find flow");
  kfl::Executor executor(kfl::Sources{&store, interactions->get()}, options);

  std::mt19937_64 rng(42);
  std::vector<double> total_us, chain_us, overhead_us;
  int partial = 0;
  const int warmup = std::max(200, iterations / 10);
  for (int it = 0; it < warmup + iterations; ++it) {
    // Request and response on one arena per call, as the server's gRPC message allocator does
    // (src/server/flow_family.cc).
    google::protobuf::ArenaOptions ao;
    ao.start_block_size = 16384;
    ao.max_block_size = 262144;
    google::protobuf::Arena arena(ao);
    v1::InferRequest& req = *google::protobuf::Arena::CreateMessage<v1::InferRequest>(&arena);
    req.set_model_id("ranker");
    (*req.mutable_context())["user_id"] = absl::StrCat("u", rng() % users);
    for (int r = 0; r < rows; ++r) req.add_targets(absl::StrCat("p", rng() % products));
    req.set_top_k(static_cast<uint32_t>(top_k));
    req.set_return_timings(true);
    v1::InferResponse& resp = *google::protobuf::Arena::CreateMessage<v1::InferResponse>(&arena);
    auto t0 = std::chrono::steady_clock::now();
    Die(executor.Run(**flow, req, &resp), "infer");
    auto t1 = std::chrono::steady_clock::now();
    if (it < warmup) continue;
    if (resp.partial()) ++partial;
    const int64_t chain = kosh::bench::CriticalChainMicros(resp);
    total_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    chain_us.push_back(static_cast<double>(chain));
    overhead_us.push_back(static_cast<double>(resp.total_micros() - chain));
  }
  std::printf("engine %s, %d rows, top %d, %d iterations, one thread\n", engine_kind.c_str(), rows, top_k, iterations);
  std::printf("infer us       p50 %8.1f  p99 %8.1f\n", Pct(total_us, 50), Pct(total_us, 99));
  std::printf("chain us       p50 %8.1f  p99 %8.1f\n", Pct(chain_us, 50), Pct(chain_us, 99));
  std::printf("overhead us    p50 %8.1f  p99 %8.1f\n", Pct(overhead_us, 50), Pct(overhead_us, 99));
  std::printf("{\"engine\": \"%s\", \"rows\": %d, \"top_k\": %d, \"iterations\": %d, \"infer_us_p50\": %.1f, \"infer_us_p99\": %.1f, "
              "\"chain_us_p50\": %.1f, \"executor_overhead_us_p50\": %.1f, \"executor_overhead_us_p99\": %.1f, "
              "\"partial\": %d}\n",
              engine_kind.c_str(), rows, top_k, iterations, Pct(total_us, 50), Pct(total_us, 99), Pct(chain_us, 50),
              Pct(overhead_us, 50), Pct(overhead_us, 99), partial);
  if (!dir.empty()) std::filesystem::remove_all(dir);
  return 0;
}
