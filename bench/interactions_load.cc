// interactions_load: load generator for the interaction-store benchmark (bench/interactions.sh),
// driving Kosh (gRPC) and, doing the same job, Redis sorted sets (the design Kosh replaces).
//
// The workload: --users users (1M) with Zipf(--zipf, 0.9) activity over user rank, 5 event types
// (click 50%, add_to_cart 20%, wishlist 15%, order 10%, share 5%), item ids uniform in 1..10M,
// timestamps spread over the --span-days (7) before --end-ms, each up to 2 minutes late (so
// arrival is out of order). Event i is a pure function of (--seed, i), so every mode and both
// systems see the same events. Every history keeps its newest 500 events (the cap).
//
// Redis, as the old system did it: one sorted set per (user, type), key "u<rank>:<type>", score =
// timestamp in ms, member = 12 bytes (item id u32 + timestamp u64, big-endian; the timestamp makes
// repeated interactions with one item distinct, like Kosh's (item, timestamp) identity). Each event
// is ZADD + ZREMRANGEBYRANK key 0 -501, pipelined.
//
//   interactions_load --mode=MODE [--flag=value | --flag value]...
//
// Modes
//   ingest-kosh    Sends events [0, --events) with Ingest streams: --streams concurrent streams
//                  (each its own TCP connection and thread), --batch events per message. Reports
//                  events/s from the first send until every stream's summary arrived (the summary
//                  means every batch is durable).
//   ingest-redis   The same events over --connections connections, --pipeline events (2 commands
//                  each) per round trip.
//   expected       Replays the events in memory: how many each system should store (the sum over
//                  histories of min(events, 500)), histories and users.
//   verify         For --samples users drawn like the queries, compares every history (all 5
//                  types, up to 500 events) between Kosh (LastK) and Redis (ZREVRANGE): the same
//                  (item, timestamp) pairs in the same order. Exit 1 on any difference.
//   lastk          Last-50 queries against --target=kosh|redis. A request is --query-batch
//                  queries of (user, type): Kosh LastK with those users and one type, k=50 (--k);
//                  Redis that many ZREVRANGE key 0 49 WITHSCORES, pipelined in one round trip.
//                  Users are drawn with the same Zipf law (active users are read more), the type
//                  with the write mix.
//   window         Window queries: Kosh Window (range within the last --window-ms, 24 h, limit
//                  --limit 100); Redis ZREVRANGEBYSCORE key +inf (now-24h) WITHSCORES LIMIT 0 100.
//                  Otherwise as lastk.
//                  lastk and window: --rate=0 is closed loop (--connections threads, one request
//                  outstanding each): the achieved rate is the peak for that concurrency. --rate=R
//                  is open loop at R requests/s in total: each connection sends on its own
//                  schedule whether or not earlier requests returned (gRPC multiplexes, Redis
//                  pipelines) and latency counts from the scheduled send time (no coordinated
//                  omission). --warmup seconds unmeasured, then --duration seconds measured.
//
// Flags (defaults in brackets)
//   --server=HOST:PORT   Kosh gRPC [127.0.0.1:7070]        --redis=HOST:PORT   Redis [127.0.0.1:6379]
//   --users=N [1000000]  --zipf=S [0.9]  --events=N [10000000]  --seed=S [1]  --span-days=D [7]
//   --end-ms=T           the newest timestamp [now]; pass the same value to every mode
//   --streams=S [8]      --batch=B [5000]   (ingest-kosh)
//   --connections=C [8]  --pipeline=P [1000] (ingest-redis: events per round trip)
//   --query-batch=Q [16] --k=K [50]  --window-ms=W [86400000]  --limit=L [100]
//   --rate=R [0]  --duration=S [10]  --warmup=S [1]  --samples=N [300]  --query-seed=S [7]
//
// Output: a short human summary, then as the last line one JSON object with the figures.
// Exit status 0 on success, 1 if any request failed or any verification differed.

#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "hiredis/hiredis.h"
#include "kosh/v1/interactions.grpc.pb.h"

namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr int kTypes = 5;
const char* const kTypeNames[kTypes] = {"click", "add_to_cart", "wishlist", "order", "share"};
constexpr int kTypePercent[kTypes] = {50, 20, 15, 10, 5};
constexpr int kCap = 500;

// --- flags ------------------------------------------------------------------------------------------

struct Flags {
  std::map<std::string, std::string> kv;
  std::string Str(const std::string& k, const std::string& def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  int64_t Int(const std::string& k, int64_t def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : std::stoll(it->second);
  }
  double Dbl(const std::string& k, double def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : std::stod(it->second);
  }
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      std::fprintf(stderr, "unexpected argument %s\n", a.c_str());
      std::exit(2);
    }
    a = a.substr(2);
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      f.kv[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      f.kv[a] = argv[++i];
    } else {
      std::fprintf(stderr, "--%s needs a value\n", a.c_str());
      std::exit(2);
    }
  }
  return f;
}

// --- the workload ------------------------------------------------------------------------------------

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
double Unit(uint64_t h) { return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0); }

struct Ev {
  uint32_t user;  // rank, 0 = most active
  int type;
  uint32_t item;
  int64_t ts;
};

class Workload {
 public:
  explicit Workload(const Flags& f)
      : users_(static_cast<uint32_t>(f.Int("users", 1000000))),
        events_(f.Int("events", 10000000)),
        seed_(static_cast<uint64_t>(f.Int("seed", 1))),
        end_ms_(f.Int("end-ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count())),
        span_ms_(static_cast<int64_t>(f.Dbl("span-days", 7) * 86400000.0)) {
    const double s = f.Dbl("zipf", 0.9);
    cdf_.resize(users_);
    double acc = 0;
    for (uint32_t r = 0; r < users_; ++r) {
      acc += 1.0 / std::pow(static_cast<double>(r + 1), s);
      cdf_[r] = acc;
    }
    for (double& c : cdf_) c /= acc;
  }

  int64_t events() const { return events_; }
  int64_t end_ms() const { return end_ms_; }
  uint32_t users() const { return users_; }

  uint32_t ZipfUser(uint64_t h) const {
    double u = Unit(h);
    return static_cast<uint32_t>(std::upper_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin()) % users_;
  }
  static int TypeOf(uint64_t h) {
    int p = static_cast<int>(h % 100);
    for (int t = 0; t < kTypes; ++t) {
      if (p < kTypePercent[t]) return t;
      p -= kTypePercent[t];
    }
    return 0;
  }
  Ev Event(int64_t i) const {
    uint64_t h1 = Mix(seed_ * 0x100000001B3ull + static_cast<uint64_t>(i));
    uint64_t h2 = Mix(h1), h3 = Mix(h2);
    Ev e;
    e.user = ZipfUser(h1);
    e.type = TypeOf(h2);
    e.item = 1 + static_cast<uint32_t>((h2 >> 16) % 10000000);
    e.ts = end_ms_ - span_ms_ + static_cast<int64_t>(static_cast<double>(i) / static_cast<double>(events_) * span_ms_) -
           static_cast<int64_t>(h3 % 120000);
    return e;
  }

 private:
  uint32_t users_;
  int64_t events_;
  uint64_t seed_;
  int64_t end_ms_;
  int64_t span_ms_;
  std::vector<double> cdf_;
};

std::string UserId(uint32_t rank) { return "u" + std::to_string(rank); }
std::string RedisKey(uint32_t rank, int type) { return "u" + std::to_string(rank) + ":" + std::to_string(type); }
void RedisMember(uint32_t item, int64_t ts, char out[12]) {
  uint32_t i = htonl(item);
  std::memcpy(out, &i, 4);
  uint64_t t = static_cast<uint64_t>(ts);
  for (int b = 0; b < 8; ++b) out[4 + b] = static_cast<char>(t >> (56 - 8 * b));
}
void ParseMember(const char* m, uint32_t* item, int64_t* ts) {
  uint32_t i;
  std::memcpy(&i, m, 4);
  *item = ntohl(i);
  uint64_t t = 0;
  for (int b = 0; b < 8; ++b) t = (t << 8) | static_cast<uint8_t>(m[4 + b]);
  *ts = static_cast<int64_t>(t);
}

double CpuSeconds() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}
double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one TCP connection per channel
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

redisContext* RedisConnect(const std::string& addr) {
  size_t colon = addr.rfind(':');
  redisContext* c = redisConnect(addr.substr(0, colon).c_str(), std::stoi(addr.substr(colon + 1)));
  if (c == nullptr || c->err) {
    std::fprintf(stderr, "redis connect %s: %s\n", addr.c_str(), c ? c->errstr : "?");
    std::exit(1);
  }
  return c;
}

// --- ingest --------------------------------------------------------------------------------------------

int IngestKosh(const Flags& f, const Workload& w) {
  const int streams = static_cast<int>(f.Int("streams", 8));
  const int64_t batch = f.Int("batch", 5000);
  const std::string server = f.Str("server", "127.0.0.1:7070");
  const int64_t n = w.events();
  const int64_t nbatches = (n + batch - 1) / batch;
  std::atomic<int64_t> written{0}, failed{0};
  std::vector<std::string> errors(streams);
  double cpu0 = CpuSeconds();
  auto t0 = SteadyClock::now();
  std::vector<std::thread> threads;
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      auto stub = kosh::v1::Interactions::NewStub(NewChannel(server));
      grpc::ClientContext ctx;
      kosh::v1::IngestResponse summary;
      auto stream = stub->Ingest(&ctx, &summary);
      kosh::v1::WriteRequest req;
      int64_t sent = 0;
      for (int64_t b = s; b < nbatches; b += streams) {
        req.Clear();
        for (int64_t i = b * batch; i < std::min(n, (b + 1) * batch); ++i) {
          Ev e = w.Event(i);
          auto* ev = req.add_events();
          ev->set_user_id(UserId(e.user));
          ev->set_type(kTypeNames[e.type]);
          ev->set_item_id(std::to_string(e.item));
          ev->set_timestamp_ms(e.ts);
        }
        sent += req.events_size();
        if (!stream->Write(req)) break;
      }
      stream->WritesDone();
      grpc::Status st = stream->Finish();
      if (!st.ok() || static_cast<int64_t>(summary.events_written()) != sent) {
        errors[s] = st.error_message();
        failed += sent - static_cast<int64_t>(summary.events_written());
      }
      written += static_cast<int64_t>(summary.events_written());
    });
  }
  for (auto& t : threads) t.join();
  double secs = Seconds(SteadyClock::now() - t0);
  double cpu = CpuSeconds() - cpu0;
  for (const auto& e : errors) {
    if (!e.empty()) std::fprintf(stderr, "ingest stream failed: %s\n", e.c_str());
  }
  std::printf("kosh ingest: %lld events in %.2f s = %.0f events/s (%d Ingest streams, %lld events per batch), "
              "client %.2f cores\n",
              static_cast<long long>(written.load()), secs, written.load() / secs, streams,
              static_cast<long long>(batch), cpu / secs);
  std::printf("{\"events\": %lld, \"seconds\": %.3f, \"eps\": %.1f, \"failed\": %lld, \"client_cpu_cores\": %.3f}\n",
              static_cast<long long>(written.load()), secs, written.load() / secs,
              static_cast<long long>(failed.load()), cpu / secs);
  return failed.load() == 0 ? 0 : 1;
}

int IngestRedis(const Flags& f, const Workload& w) {
  const int conns = static_cast<int>(f.Int("connections", 8));
  const int64_t pipeline = f.Int("pipeline", 1000);
  const std::string addr = f.Str("redis", "127.0.0.1:6379");
  const int64_t n = w.events();
  const int64_t nchunks = (n + pipeline - 1) / pipeline;
  std::atomic<int64_t> written{0}, failed{0};
  double cpu0 = CpuSeconds();
  auto t0 = SteadyClock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < conns; ++c) {
    threads.emplace_back([&, c] {
      redisContext* ctx = RedisConnect(addr);
      for (int64_t ch = c; ch < nchunks; ch += conns) {
        int64_t cnt = 0;
        for (int64_t i = ch * pipeline; i < std::min(n, (ch + 1) * pipeline); ++i, ++cnt) {
          Ev e = w.Event(i);
          std::string key = RedisKey(e.user, e.type);
          char member[12];
          RedisMember(e.item, e.ts, member);
          std::string score = std::to_string(e.ts);
          const char* zadd[] = {"ZADD", key.data(), score.data(), member};
          size_t zadd_len[] = {4, key.size(), score.size(), 12};
          redisAppendCommandArgv(ctx, 4, zadd, zadd_len);
          const char* trim[] = {"ZREMRANGEBYRANK", key.data(), "0", "-501"};
          size_t trim_len[] = {15, key.size(), 1, 4};
          redisAppendCommandArgv(ctx, 4, trim, trim_len);
        }
        for (int64_t r = 0; r < 2 * cnt; ++r) {
          redisReply* reply = nullptr;
          if (redisGetReply(ctx, reinterpret_cast<void**>(&reply)) != REDIS_OK || reply == nullptr ||
              reply->type == REDIS_REPLY_ERROR) {
            ++failed;
          }
          if (reply) freeReplyObject(reply);
        }
        written += cnt;
      }
      redisFree(ctx);
    });
  }
  for (auto& t : threads) t.join();
  double secs = Seconds(SteadyClock::now() - t0);
  double cpu = CpuSeconds() - cpu0;
  std::printf("redis ingest: %lld events in %.2f s = %.0f events/s (%d connections, %lld events = %lld commands "
              "per round trip), client %.2f cores\n",
              static_cast<long long>(written.load()), secs, written.load() / secs, conns,
              static_cast<long long>(pipeline), static_cast<long long>(2 * pipeline), cpu / secs);
  std::printf("{\"events\": %lld, \"seconds\": %.3f, \"eps\": %.1f, \"failed\": %lld, \"client_cpu_cores\": %.3f}\n",
              static_cast<long long>(written.load()), secs, written.load() / secs,
              static_cast<long long>(failed.load()), cpu / secs);
  return failed.load() == 0 ? 0 : 1;
}

int Expected(const Workload& w) {
  std::vector<uint16_t> counts(static_cast<size_t>(w.users()) * kTypes, 0);
  for (int64_t i = 0; i < w.events(); ++i) {
    Ev e = w.Event(i);
    uint16_t& c = counts[static_cast<size_t>(e.user) * kTypes + static_cast<size_t>(e.type)];
    if (c < 65535) ++c;
  }
  int64_t stored = 0, histories = 0, users = 0, full = 0;
  for (uint32_t u = 0; u < w.users(); ++u) {
    bool any = false;
    for (int t = 0; t < kTypes; ++t) {
      uint16_t c = counts[static_cast<size_t>(u) * kTypes + static_cast<size_t>(t)];
      if (c == 0) continue;
      any = true;
      ++histories;
      stored += std::min<int>(c, kCap);
      full += c >= kCap;
    }
    users += any;
  }
  std::printf("expected: %lld stored events (of %lld written) in %lld histories of %lld users; %lld histories at "
              "the cap\n",
              static_cast<long long>(stored), static_cast<long long>(w.events()), static_cast<long long>(histories),
              static_cast<long long>(users), static_cast<long long>(full));
  std::printf("{\"stored_events\": %lld, \"histories\": %lld, \"users\": %lld, \"histories_at_cap\": %lld}\n",
              static_cast<long long>(stored), static_cast<long long>(histories), static_cast<long long>(users),
              static_cast<long long>(full));
  return 0;
}

// --- queries -------------------------------------------------------------------------------------------

struct Query {
  std::vector<uint32_t> users;
  int type;
};

class QueryGen {
 public:
  QueryGen(const Workload& w, uint64_t seed, int batch) : w_(w), state_(seed), batch_(batch) {}
  Query Next() {
    Query q;
    state_ = Mix(state_);
    q.type = Workload::TypeOf(state_);
    for (int i = 0; i < batch_; ++i) {
      state_ = Mix(state_);
      q.users.push_back(w_.ZipfUser(state_));
    }
    return q;
  }

 private:
  const Workload& w_;
  uint64_t state_;
  int batch_;
};

struct Spec {
  bool window = false;
  int k = 50;
  int64_t window_ms = 86400000;
  int limit = 100;
  int64_t now_ms = 0;  // window lower bound for Redis: now - window_ms
};

kosh::v1::LastKRequest KoshLastK(const Query& q, const Spec& s) {
  kosh::v1::LastKRequest r;
  for (uint32_t u : q.users) r.add_user_ids(UserId(u));
  r.add_types(kTypeNames[q.type]);
  r.set_k(s.k);
  return r;
}
kosh::v1::WindowRequest KoshWindow(const Query& q, const Spec& s) {
  kosh::v1::WindowRequest r;
  for (uint32_t u : q.users) r.add_user_ids(UserId(u));
  r.add_types(kTypeNames[q.type]);
  r.mutable_range()->set_within_ms(s.window_ms);
  r.set_limit(static_cast<uint32_t>(s.limit));
  return r;
}
int64_t CountEvents(const kosh::v1::HistoriesResponse& resp) {
  int64_t n = 0;
  for (const auto& u : resp.users()) {
    for (const auto& h : u.histories()) n += h.item_ids_size();
  }
  return n;
}

// Appends the Redis commands of one query batch.
void RedisAppend(redisContext* c, const Query& q, const Spec& s) {
  const std::string limit = std::to_string(s.limit), stop = std::to_string(s.k - 1);
  for (uint32_t u : q.users) {
    std::string key = RedisKey(u, q.type);
    if (s.window) {
      std::string lo = std::to_string(s.now_ms - s.window_ms);
      const char* argv[] = {"ZREVRANGEBYSCORE", key.data(), "+inf", lo.data(), "WITHSCORES", "LIMIT", "0", limit.data()};
      size_t len[] = {16, key.size(), 4, lo.size(), 10, 5, 1, limit.size()};
      redisAppendCommandArgv(c, 8, argv, len);
    } else {
      const char* argv[] = {"ZREVRANGE", key.data(), "0", stop.data(), "WITHSCORES"};
      size_t len[] = {9, key.size(), 1, stop.size(), 10};
      redisAppendCommandArgv(c, 5, argv, len);
    }
  }
}
// Formats the Redis commands of one query batch as raw protocol bytes (for the open-loop sender).
std::string RedisFormat(const Query& q, const Spec& s) {
  std::string out;
  const std::string limit = std::to_string(s.limit), stop = std::to_string(s.k - 1);
  for (uint32_t u : q.users) {
    std::string key = RedisKey(u, q.type);
    char* cmd = nullptr;
    int n;
    if (s.window) {
      std::string lo = std::to_string(s.now_ms - s.window_ms);
      const char* argv[] = {"ZREVRANGEBYSCORE", key.data(), "+inf", lo.data(), "WITHSCORES", "LIMIT", "0", limit.data()};
      size_t len[] = {16, key.size(), 4, lo.size(), 10, 5, 1, limit.size()};
      n = redisFormatCommandArgv(&cmd, 8, argv, len);
    } else {
      const char* argv[] = {"ZREVRANGE", key.data(), "0", stop.data(), "WITHSCORES"};
      size_t len[] = {9, key.size(), 1, stop.size(), 10};
      n = redisFormatCommandArgv(&cmd, 5, argv, len);
    }
    out.append(cmd, static_cast<size_t>(n));
    redisFreeCommand(cmd);
  }
  return out;
}
// Events in one Redis reply (an array of member, score pairs); -1 for an error reply.
int64_t RedisEvents(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return -1;
  return static_cast<int64_t>(r->elements / 2);
}

struct Stats {
  std::mutex mu;
  std::vector<double> lat_ms;
  int64_t requests = 0, errors = 0, events = 0;
  void Add(double ms, int64_t ev, bool ok) {
    std::lock_guard<std::mutex> l(mu);
    lat_ms.push_back(ms);
    ++requests;
    if (ok) events += ev; else ++errors;
  }
};

double Pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(i), v.end());
  return v[i];
}

int RunQueries(const Flags& f, const Workload& w, bool window) {
  const std::string target = f.Str("target", "kosh");
  const bool kosh = target == "kosh";
  const int conns = static_cast<int>(f.Int("connections", 8));
  const int qb = static_cast<int>(f.Int("query-batch", 16));
  const double rate = f.Dbl("rate", 0);
  const double duration = f.Dbl("duration", 10), warmup = f.Dbl("warmup", 1);
  Spec spec;
  spec.window = window;
  spec.k = static_cast<int>(f.Int("k", 50));
  spec.window_ms = f.Int("window-ms", 86400000);
  spec.limit = static_cast<int>(f.Int("limit", 100));
  spec.now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  const uint64_t qseed = static_cast<uint64_t>(f.Int("query-seed", 7));
  Stats stats;
  auto start = SteadyClock::now();
  auto measure_from = start + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(warmup));
  auto end = measure_from + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(duration));
  std::atomic<int64_t> inflight{0};
  double cpu0 = 0;
  std::atomic<bool> cpu_marked{false};
  auto mark_cpu = [&] {
    if (!cpu_marked.exchange(true)) cpu0 = CpuSeconds();
  };
  std::vector<std::thread> threads;
  std::vector<std::shared_ptr<kosh::v1::Interactions::Stub>> stubs;
  if (kosh) {
    for (int c = 0; c < conns; ++c) stubs.push_back(kosh::v1::Interactions::NewStub(NewChannel(f.Str("server", "127.0.0.1:7070"))));
  }
  auto record = [&](SteadyClock::time_point sent, int64_t ev, bool ok) {
    auto now = SteadyClock::now();
    if (sent >= measure_from && sent < end) stats.Add(std::chrono::duration<double, std::milli>(now - sent).count(), ev, ok);
  };

  if (rate <= 0) {  // closed loop
    for (int c = 0; c < conns; ++c) {
      threads.emplace_back([&, c] {
        QueryGen gen(w, qseed * 1000 + static_cast<uint64_t>(c), qb);
        redisContext* rc = kosh ? nullptr : RedisConnect(f.Str("redis", "127.0.0.1:6379"));
        while (SteadyClock::now() < end) {
          Query q = gen.Next();
          auto sent = SteadyClock::now();
          if (sent >= measure_from) mark_cpu();
          if (kosh) {
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
            kosh::v1::HistoriesResponse resp;
            grpc::Status st = window ? stubs[c]->Window(&ctx, KoshWindow(q, spec), &resp)
                                     : stubs[c]->LastK(&ctx, KoshLastK(q, spec), &resp);
            record(sent, CountEvents(resp), st.ok());
          } else {
            RedisAppend(rc, q, spec);
            int64_t ev = 0;
            bool ok = true;
            for (size_t i = 0; i < q.users.size(); ++i) {
              redisReply* r = nullptr;
              if (redisGetReply(rc, reinterpret_cast<void**>(&r)) != REDIS_OK) {
                ok = false;
                break;
              }
              int64_t n = RedisEvents(r);
              ok = ok && n >= 0;
              ev += std::max<int64_t>(n, 0);
              freeReplyObject(r);
            }
            record(sent, ev, ok);
            if (!ok) break;
          }
        }
        if (rc) redisFree(rc);
      });
    }
  } else {  // open loop: each connection has its own schedule
    const double period_s = conns / rate;
    for (int c = 0; c < conns; ++c) {
      if (kosh) {
        threads.emplace_back([&, c] {
          QueryGen gen(w, qseed * 1000 + static_cast<uint64_t>(c), qb);
          auto next = start + std::chrono::duration_cast<SteadyClock::duration>(
                                  std::chrono::duration<double>(period_s * c / conns));
          int64_t seq = 0;
          while (next < end) {
            std::this_thread::sleep_until(next);
            if (next >= measure_from) mark_cpu();
            struct Call {
              grpc::ClientContext ctx;
              kosh::v1::LastKRequest lreq;
              kosh::v1::WindowRequest wreq;
              kosh::v1::HistoriesResponse resp;
              SteadyClock::time_point sent;
            };
            auto* call = new Call;
            call->sent = next;
            call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
            Query q = gen.Next();
            ++inflight;
            auto done = [&, call](grpc::Status st) {
              record(call->sent, CountEvents(call->resp), st.ok());
              delete call;
              --inflight;
            };
            if (window) {
              call->wreq = KoshWindow(q, spec);
              stubs[c]->async()->Window(&call->ctx, &call->wreq, &call->resp, done);
            } else {
              call->lreq = KoshLastK(q, spec);
              stubs[c]->async()->LastK(&call->ctx, &call->lreq, &call->resp, done);
            }
            ++seq;
            next = start + std::chrono::duration_cast<SteadyClock::duration>(
                               std::chrono::duration<double>(period_s * (static_cast<double>(seq) + double(c) / conns)));
          }
        });
      } else {
        threads.emplace_back([&, c] {
          QueryGen gen(w, qseed * 1000 + static_cast<uint64_t>(c), qb);
          redisContext* rc = RedisConnect(f.Str("redis", "127.0.0.1:6379"));
          const int fd = rc->fd;
          std::mutex mu;
          std::deque<SteadyClock::time_point> pending;  // scheduled send time of each batch in flight
          std::atomic<bool> sender_done{false};
          std::thread receiver([&] {
            redisReader* reader = redisReaderCreate();
            char buf[65536];
            int64_t in_batch = 0, ev = 0;
            bool ok = true;
            while (true) {
              {
                std::lock_guard<std::mutex> l(mu);
                if (sender_done && pending.empty()) break;
              }
              ssize_t n = read(fd, buf, sizeof(buf));
              if (n <= 0) break;
              redisReaderFeed(reader, buf, static_cast<size_t>(n));
              void* r = nullptr;
              while (redisReaderGetReply(reader, &r) == REDIS_OK && r != nullptr) {
                int64_t e = RedisEvents(static_cast<redisReply*>(r));
                ok = ok && e >= 0;
                ev += std::max<int64_t>(e, 0);
                freeReplyObject(r);
                r = nullptr;
                if (++in_batch == qb) {
                  SteadyClock::time_point sent;
                  {
                    std::lock_guard<std::mutex> l(mu);
                    sent = pending.front();
                    pending.pop_front();
                  }
                  record(sent, ev, ok);
                  in_batch = 0;
                  ev = 0;
                  ok = true;
                }
              }
            }
            redisReaderFree(reader);
          });
          auto next = start + std::chrono::duration_cast<SteadyClock::duration>(
                                  std::chrono::duration<double>(period_s * c / conns));
          int64_t seq = 0;
          while (next < end) {
            std::this_thread::sleep_until(next);
            if (next >= measure_from) mark_cpu();
            std::string bytes = RedisFormat(gen.Next(), spec);
            {
              std::lock_guard<std::mutex> l(mu);
              pending.push_back(next);
            }
            size_t off = 0;
            while (off < bytes.size()) {
              ssize_t n = write(fd, bytes.data() + off, bytes.size() - off);
              if (n <= 0) break;
              off += static_cast<size_t>(n);
            }
            ++seq;
            next = start + std::chrono::duration_cast<SteadyClock::duration>(
                               std::chrono::duration<double>(period_s * (static_cast<double>(seq) + double(c) / conns)));
          }
          sender_done = true;
          // Wait (bounded) for the replies still in flight, then stop the receiver.
          auto deadline = SteadyClock::now() + std::chrono::seconds(10);
          while (SteadyClock::now() < deadline) {
            {
              std::lock_guard<std::mutex> l(mu);
              if (pending.empty()) break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
          shutdown(fd, SHUT_RDWR);
          receiver.join();
          redisFree(rc);
        });
      }
    }
  }
  for (auto& t : threads) t.join();
  if (kosh) {
    auto deadline = SteadyClock::now() + std::chrono::seconds(15);
    while (inflight.load() > 0 && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  double cpu = CpuSeconds() - cpu0;
  std::lock_guard<std::mutex> l(stats.mu);
  const double achieved = static_cast<double>(stats.requests) / duration;
  const double p50 = Pct(stats.lat_ms, 0.5), p99 = Pct(stats.lat_ms, 0.99), p999 = Pct(stats.lat_ms, 0.999);
  const int64_t unfinished = inflight.load();
  const double ev_per_query = stats.requests > 0 ? static_cast<double>(stats.events) / (stats.requests * qb) : 0;
  std::printf("%s %s %s: %.0f requests/s = %.0f queries/s (%d queries per request, %d connections), p50 %.3f ms, "
              "p99 %.3f ms, p99.9 %.3f ms, %.1f events per query, %lld errors, client %.2f cores\n",
              target.c_str(), window ? "window" : "last-k", rate > 0 ? "open loop" : "closed loop", achieved,
              achieved * qb, qb, conns, p50, p99, p999, ev_per_query, static_cast<long long>(stats.errors),
              cpu / duration);
  std::printf("{\"target\": \"%s\", \"kind\": \"%s\", \"offered_rps\": %.1f, \"achieved_rps\": %.1f, "
              "\"queries_per_s\": %.1f, \"query_batch\": %d, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"p999_ms\": %.4f, "
              "\"events_per_query\": %.2f, \"errors\": %lld, \"unfinished\": %lld, \"client_cpu_cores\": %.3f, "
              "\"ok\": %s}\n",
              target.c_str(), window ? "window" : "lastk", rate, achieved, achieved * qb, qb, p50, p99, p999,
              ev_per_query, static_cast<long long>(stats.errors), static_cast<long long>(unfinished), cpu / duration,
              stats.errors == 0 && unfinished == 0 ? "true" : "false");
  return stats.errors == 0 && unfinished == 0 ? 0 : 1;
}

// --- verify --------------------------------------------------------------------------------------------

int Verify(const Flags& f, const Workload& w) {
  const int samples = static_cast<int>(f.Int("samples", 300));
  auto stub = kosh::v1::Interactions::NewStub(NewChannel(f.Str("server", "127.0.0.1:7070")));
  redisContext* rc = RedisConnect(f.Str("redis", "127.0.0.1:6379"));
  QueryGen gen(w, static_cast<uint64_t>(f.Int("query-seed", 7)) + 99, 1);
  int64_t histories = 0, events = 0, differ = 0;
  for (int s = 0; s < samples; ++s) {
    uint32_t user = gen.Next().users[0];
    kosh::v1::LastKRequest req;
    req.add_user_ids(UserId(user));
    for (const char* t : kTypeNames) req.add_types(t);
    req.set_k(kCap);
    grpc::ClientContext ctx;
    kosh::v1::HistoriesResponse resp;
    grpc::Status st = stub->LastK(&ctx, req, &resp);
    if (!st.ok()) {
      std::fprintf(stderr, "verify: LastK failed: %s\n", st.error_message().c_str());
      return 1;
    }
    for (int t = 0; t < kTypes; ++t) {
      std::string key = RedisKey(user, t);
      redisReply* r = static_cast<redisReply*>(redisCommand(rc, "ZREVRANGE %b 0 -1", key.data(), key.size()));
      std::vector<std::pair<int64_t, uint32_t>> redis_events, kosh_events;
      for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; ++i) {
        uint32_t item;
        int64_t ts;
        if (r->element[i]->len != 12) continue;
        ParseMember(r->element[i]->str, &item, &ts);
        redis_events.push_back({ts, item});
      }
      if (r) freeReplyObject(r);
      const auto& h = resp.users(0).histories(t);
      for (int i = 0; i < h.item_ids_size(); ++i) {
        kosh_events.push_back({h.timestamps_ms(i), static_cast<uint32_t>(std::stoul(h.item_ids(i)))});
      }
      // Equal timestamps may be ordered differently (Redis: member bytes descending; Kosh: item
      // id ascending); compare as sets in timestamp order.
      std::sort(redis_events.rbegin(), redis_events.rend());
      std::sort(kosh_events.rbegin(), kosh_events.rend());
      ++histories;
      events += static_cast<int64_t>(kosh_events.size());
      if (redis_events != kosh_events) {
        if (differ < 5) {
          std::fprintf(stderr, "verify: user %u type %s: kosh %zu events, redis %zu\n", user, kTypeNames[t],
                       kosh_events.size(), redis_events.size());
        }
        ++differ;
      }
    }
  }
  redisFree(rc);
  std::printf("verify: %lld histories of %d sampled users (%lld events) compared, %lld differ\n",
              static_cast<long long>(histories), samples, static_cast<long long>(events),
              static_cast<long long>(differ));
  std::printf("{\"histories\": %lld, \"events\": %lld, \"differ\": %lld}\n", static_cast<long long>(histories),
              static_cast<long long>(events), static_cast<long long>(differ));
  return differ == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f = ParseFlags(argc, argv);
  const std::string mode = f.Str("mode", "");
  Workload w(f);
  if (mode == "ingest-kosh") return IngestKosh(f, w);
  if (mode == "ingest-redis") return IngestRedis(f, w);
  if (mode == "expected") return Expected(w);
  if (mode == "verify") return Verify(f, w);
  if (mode == "lastk") return RunQueries(f, w, false);
  if (mode == "window") return RunQueries(f, w, true);
  std::fprintf(stderr, "usage: interactions_load --mode=ingest-kosh|ingest-redis|expected|verify|lastk|window "
                       "[flags]; see the top of bench/interactions_load.cc\n");
  return 2;
}
