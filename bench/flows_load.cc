// flows_load: one Infer of a flow against the same lookups done by a client itself, in one run.
//
//   flows_load --target HOST:PORT [--users N] [--products N] [--categories N] [--iterations N]
//              [--rows N] [--load yes|no] [--rank yes|no] [--block N]
//
//   --target       the kosh gRPC address (the server must have examples/schema.yaml applied and
//                  examples/flows/ranker.yaml loaded; bench/flows.sh does both)
//   --users        users written (default 1000)          --products   products (default 10000)
//   --categories   categories (default 50; every (user, category) pair gets an affinity row)
//   --iterations   measured requests per variant (default 2000, after 200 of warm-up)
//   --rows         products per request (default 100)
//   --load         write the data first (default yes)
//   --rank         also measure Rank (default yes; its requests change what the server's caches
//                  hold between Infer calls, so compare Infer figures only between runs alike)
//   --block        iterations of one variant before switching to the other (default 200); 1
//                  interleaves flow and client request by request (each flow request then runs
//                  with caches cold from ~150 client calls)
//
// Per iteration (random user, `rows` random products; the same requests for every variant), in
// alternating blocks so both variants see the same machine over the run:
//   flow:        one Infer (ranker: user features; product features; product.category_id ->
//                user_category; the user's clicks in the last hour; derived log price; logistic
//                score; sort), return_timings on.
//   rank:        one Rank of the same flow and request (the ranked targets and scores, no
//                matrix), return_timings on.
//   client_seq:  the same lookups as sequential calls, one per lookup: the user, the user's click
//                count (Interactions.Count), each product, then each distinct (user, category);
//                the score computed client-side.
//   client_batch: the same as four sequential batched calls (user; click count; all products; all
//                distinct (user, category) keys), for reference.
// Executor overhead per Infer (and per Rank) = total_micros - sum over stages of the slowest component of the
// stage (the critical chain of lookups), from the server's own timings.
// Prints a table, then one JSON object as the last line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "bench_util.h"
#include "grpcpp/grpcpp.h"
#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/flows.grpc.pb.h"
#include "kosh/v1/interactions.grpc.pb.h"

namespace v1 = kosh::v1;
using Clock = std::chrono::steady_clock;

namespace {

using kosh::bench::Arg;
using kosh::bench::Pct;

constexpr int kWarmup = 200;  // unmeasured iterations of each variant at the start

bool Check(const grpc::Status& s, const char* what) {
  if (!s.ok()) std::fprintf(stderr, "%s: %s\n", what, s.error_message().c_str());
  return s.ok();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = Arg(argc, argv, "--target", "127.0.0.1:7070");
  const int users = std::stoi(Arg(argc, argv, "--users", "1000"));
  const int products = std::stoi(Arg(argc, argv, "--products", "10000"));
  const int cats = std::stoi(Arg(argc, argv, "--categories", "50"));
  const int iters = std::stoi(Arg(argc, argv, "--iterations", "2000"));
  const int rows = std::stoi(Arg(argc, argv, "--rows", "100"));
  const bool load = Arg(argc, argv, "--load", "yes") == "yes";
  const bool with_rank = Arg(argc, argv, "--rank", "yes") == "yes";
  const int block = std::max(1, std::stoi(Arg(argc, argv, "--block", "200")));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  auto fs = v1::FeatureStore::NewStub(ch);
  auto flows = v1::Flows::NewStub(ch);
  auto inter = v1::Interactions::NewStub(ch);
  std::mt19937_64 rng(42);

  if (load) {
    auto persist = [&](v1::PersistRequest& req) {
      grpc::ClientContext ctx;
      v1::PersistResponse resp;
      bool ok = Check(fs->Persist(&ctx, req, &resp), "persist");
      req.clear_rows();
      return ok;
    };
    v1::PersistRequest u;
    u.set_entity("user");
    u.set_group("user_profile");
    for (const char* f : {"age", "is_premium", "orders_30d"}) u.add_features(f);
    for (int i = 0; i < users; ++i) {
      auto* r = u.add_rows();
      r->mutable_key()->add_parts("u" + std::to_string(i));
      r->add_values()->set_int32_value(18 + i % 50);
      r->add_values()->set_bool_value(i % 3 == 0);
      r->add_values()->set_int32_value(i % 7);
    }
    if (!persist(u)) return 1;
    v1::PersistRequest p;
    p.set_entity("product");
    p.set_group("product_stats");
    for (const char* f : {"price", "ctr_7d", "category_id"}) p.add_features(f);
    for (int i = 0; i < products; ++i) {
      auto* r = p.add_rows();
      r->mutable_key()->add_parts("p" + std::to_string(i));
      r->add_values()->set_float32_value(10.0f + static_cast<float>(i % 1000));
      r->add_values()->set_float32_value(0.001f * static_cast<float>(i % 100));
      r->add_values()->set_string_value("c" + std::to_string(i % cats));
      if (p.rows_size() == 5000 && !persist(p)) return 1;
    }
    if (p.rows_size() > 0 && !persist(p)) return 1;
    v1::PersistRequest a;
    a.set_entity("user_category");
    a.set_group("affinity");
    for (int i = 0; i < users; ++i) {
      for (int c = 0; c < cats; ++c) {
        auto* r = a.add_rows();
        r->mutable_key()->add_parts("u" + std::to_string(i));
        r->mutable_key()->add_parts("c" + std::to_string(c));
        r->add_values()->set_int32_value((i + c) % 20);
        r->add_values()->set_float32_value(static_cast<float>((i * 31 + c) % 100) / 100.0f);
        if (a.rows_size() == 5000 && !persist(a)) return 1;
      }
    }
    if (a.rows_size() > 0 && !persist(a)) return 1;
    // Every user clicked 0-19 products within the last hour (the flow's recent_clicks counts them).
    const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
    v1::WriteRequest w;
    for (int i = 0; i < users; ++i) {
      for (int k = 0; k < i % 20; ++k) {
        auto* e = w.add_events();
        e->set_user_id("u" + std::to_string(i));
        e->set_type("click");
        e->set_item_id("p" + std::to_string((i * 7 + k) % products));
        e->set_timestamp_ms(now - 1000 * (k + 1));
      }
      if (w.events_size() > 500 || i + 1 == users) {
        grpc::ClientContext ctx;
        v1::WriteResponse wr;
        if (!Check(inter->Write(&ctx, w, &wr), "write interactions")) return 1;
        w.clear_events();
      }
    }
  }

  std::vector<double> flow_ms, seq_ms, batch_ms, overhead_us, chain_us, rank_ms, rank_overhead_us;
  int partial = 0;
  // The requests, drawn up front so every variant sees the same ones: iteration i of each variant
  // is for users[i] and products[i].
  const int total = iters + kWarmup;
  std::vector<std::string> req_user(total);
  std::vector<std::vector<std::string>> req_prods(total, std::vector<std::string>(rows));
  for (int it = 0; it < total; ++it) {
    req_user[it] = "u" + std::to_string(rng() % users);
    for (auto& id : req_prods[it]) id = "p" + std::to_string(rng() % products);
  }

  // --- flow (Infer), then the same request through Rank ---
  auto run_flow = [&](int it) {
    const bool measured = it >= kWarmup;
    const std::string& user = req_user[it];
    const std::vector<std::string>& prods = req_prods[it];
    auto fill = [&](auto* req) {
      req->set_model_id("ranker");
      (*req->mutable_context())["user_id"] = user;
      for (auto& id : prods) req->add_targets(id);
      req->set_top_k(static_cast<uint32_t>(rows));
      req->set_return_timings(true);
    };
    {
      v1::InferRequest req;
      fill(&req);
      v1::InferResponse resp;
      grpc::ClientContext ctx;
      auto t0 = Clock::now();
      if (!Check(flows->Infer(&ctx, req, &resp), "infer")) return false;
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (resp.partial()) ++partial;
      const int64_t chain = kosh::bench::CriticalChainMicros(resp);
      if (measured) {
        flow_ms.push_back(ms);
        overhead_us.push_back(static_cast<double>(resp.total_micros() - chain));
        chain_us.push_back(static_cast<double>(chain));
      }
    }
    if (with_rank) {
      v1::RankRequest req;
      fill(&req);
      v1::RankResponse resp;
      grpc::ClientContext ctx;
      auto t0 = Clock::now();
      if (!Check(flows->Rank(&ctx, req, &resp), "rank")) return false;
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (resp.partial()) ++partial;
      if (measured) {
        rank_ms.push_back(ms);
        rank_overhead_us.push_back(static_cast<double>(resp.total_micros() - kosh::bench::CriticalChainMicros(resp)));
      }
    }
    return true;
  };
  // --- client side: one call per lookup, then four batched calls ---
  auto run_client = [&](int it) {
    const bool measured = it >= kWarmup;
    const std::string& user = req_user[it];
    const std::vector<std::string>& prods = req_prods[it];
    auto retrieve = [&](const std::string& entity, std::vector<std::vector<std::string>> keys,
                        std::vector<std::string> feats, v1::RetrieveResponse* resp) {
      v1::RetrieveRequest req;
      req.set_entity(entity);
      for (auto& k : keys) {
        auto* ek = req.add_keys();
        for (auto& p : k) ek->add_parts(p);
      }
      for (auto& f : feats) req.add_features(f);
      grpc::ClientContext ctx;
      return Check(fs->Retrieve(&ctx, req, resp), "retrieve");
    };
    const std::vector<std::string> ufeats = {"user_profile.age", "user_profile.is_premium", "user_profile.orders_30d"};
    const std::vector<std::string> pfeats = {"product_stats.price", "product_stats.ctr_7d", "product_stats.category_id"};
    const std::vector<std::string> afeats = {"affinity.clicks_30d", "affinity.score"};
    auto clicks = [&](uint64_t* out) {
      v1::CountRequest req;
      req.add_user_ids(user);
      req.add_types("click");
      req.mutable_range()->set_within_ms(3600 * 1000);
      v1::CountResponse resp;
      grpc::ClientContext ctx;
      if (!Check(inter->Count(&ctx, req, &resp), "count")) return false;
      *out = resp.users(0).total();
      return true;
    };
    {
      auto t0 = Clock::now();
      v1::RetrieveResponse ur;
      if (!retrieve("user", {{user}}, ufeats, &ur)) return false;
      uint64_t recent = 0;
      if (!clicks(&recent)) return false;
      std::vector<std::string> cat(rows);
      std::vector<float> price(rows), ctr(rows);
      for (int i = 0; i < rows; ++i) {
        v1::RetrieveResponse pr;
        if (!retrieve("product", {{prods[i]}}, pfeats, &pr)) return false;
        price[i] = pr.rows(0).values(0).float32_value();
        ctr[i] = pr.rows(0).values(1).float32_value();
        cat[i] = pr.rows(0).values(2).string_value();
      }
      std::map<std::string, std::pair<int, float>> aff;
      for (int i = 0; i < rows; ++i) {
        if (cat[i].empty() || aff.count(cat[i])) continue;
        v1::RetrieveResponse ar;
        if (!retrieve("user_category", {{user, cat[i]}}, afeats, &ar)) return false;
        aff[cat[i]] = {ar.rows(0).values(0).int32_value(), ar.rows(0).values(1).float32_value()};
      }
      std::vector<std::pair<double, int>> scored;
      for (int i = 0; i < rows; ++i) {
        auto a = aff[cat[i]];
        double s = -1.0 + 2.0 * a.second + 0.05 * a.first + 10.0 * ctr[i] - 0.1 * std::log1p(price[i]) +
                   0.3 * (ur.rows(0).values(1).bool_value() ? 1 : 0) + 0.02 * static_cast<double>(recent);
        scored.emplace_back(1.0 / (1.0 + std::exp(-s)), i);
      }
      std::sort(scored.rbegin(), scored.rend());
      if (measured) seq_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    // --- client side, three batched calls ---
    {
      auto t0 = Clock::now();
      v1::RetrieveResponse ur, pr, ar;
      if (!retrieve("user", {{user}}, ufeats, &ur)) return false;
      uint64_t recent = 0;
      if (!clicks(&recent)) return false;
      std::vector<std::vector<std::string>> pkeys;
      for (auto& id : prods) pkeys.push_back({id});
      if (!retrieve("product", pkeys, pfeats, &pr)) return false;
      std::set<std::string> cats_seen;
      std::vector<std::vector<std::string>> akeys;
      for (const auto& r : pr.rows()) {
        const std::string& c = r.values(2).string_value();
        if (!c.empty() && cats_seen.insert(c).second) akeys.push_back({user, c});
      }
      if (!retrieve("user_category", akeys, afeats, &ar)) return false;
      if (measured) batch_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return true;
  };

  // Blocks of `block` iterations of each variant in turn (flow, then client), so that both
  // see the same machine over the run while each runs warm, as a server serving one kind of traffic
  // does. --block 1 interleaves them request by request: every flow request then follows ~150
  // client calls that evicted its code and data from the CPU caches.
  for (int b = 0; b < total; b += block) {
    const int e = std::min(total, b + block);
    for (int it = b; it < e; ++it) {
      if (!run_flow(it)) return 1;
    }
    for (int it = b; it < e; ++it) {
      if (!run_client(it)) return 1;
    }
  }
  double fp50 = Pct(flow_ms, 50), fp99 = Pct(flow_ms, 99), fp999 = Pct(flow_ms, 99.9);
  double sp50 = Pct(seq_ms, 50), sp99 = Pct(seq_ms, 99), sp999 = Pct(seq_ms, 99.9);
  double bp50 = Pct(batch_ms, 50), bp99 = Pct(batch_ms, 99), bp999 = Pct(batch_ms, 99.9);
  double ov50 = Pct(overhead_us, 50), ov99 = Pct(overhead_us, 99), ch50 = Pct(chain_us, 50);
  double rp50 = Pct(rank_ms, 50), rp99 = Pct(rank_ms, 99), rp999 = Pct(rank_ms, 99.9);
  double rov50 = Pct(rank_overhead_us, 50), rov99 = Pct(rank_overhead_us, 99);
  std::printf("variant                      p50 ms   p99 ms   p99.9 ms  (%d requests each, %d rows, closed loop, 1 client, blocks of %d)\n",
              iters, rows, block);
  std::printf("flow (one Infer)            %7.3f  %7.3f  %8.3f\n", fp50, fp99, fp999);
  if (with_rank) std::printf("rank (one Rank, no matrix)  %7.3f  %7.3f  %8.3f\n", rp50, rp99, rp999);
  std::printf("client, call per lookup     %7.3f  %7.3f  %8.3f\n", sp50, sp99, sp999);
  std::printf("client, 4 batched calls     %7.3f  %7.3f  %8.3f\n", bp50, bp99, bp999);
  std::printf("executor overhead us        p50 %.0f  p99 %.0f   (critical chain of lookups p50 %.0f us)\n", ov50, ov99,
              ch50);
  if (with_rank) std::printf("rank overhead us            p50 %.0f  p99 %.0f\n", rov50, rov99);
  char rank_json[200] = "";
  if (with_rank) {
    std::snprintf(rank_json, sizeof(rank_json),
                  "\"rank_p50_ms\": %.3f, \"rank_p99_ms\": %.3f, \"rank_overhead_us_p50\": %.0f, "
                  "\"rank_overhead_us_p99\": %.0f, ",
                  rp50, rp99, rov50, rov99);
  }
  std::printf("partial flow responses: %d\n", partial);
  std::printf("{\"flow_p50_ms\": %.3f, \"flow_p99_ms\": %.3f, \"client_side_p50_ms\": %.3f, \"client_side_p99_ms\": %.3f, "
              "\"client_batched_p99_ms\": %.3f, \"p99_ratio\": %.2f, \"executor_overhead_us_p50\": %.0f, "
              "\"executor_overhead_us_p99\": %.0f, \"chain_us_p50\": %.0f, %s\"iterations\": %d, \"rows\": %d, "
              "\"block\": %d, \"partial\": %d}\n",
              fp50, fp99, sp50, sp99, bp99, fp99 > 0 ? sp99 / fp99 : 0, ov50, ov99, ch50, rank_json, iters, rows, block, partial);
  return 0;
}
