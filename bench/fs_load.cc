// fs_load: load generator and baselines for the feature-store benchmark (bench/feature_store.sh).
//
// The workload: N keys of entity "user" (key "u00000042"), one feature group "bench" of 50 FLOAT32
// features f0..f49 whose values are a deterministic function of (key, feature). A read request
// asks for K random keys (default 100) and ends with K x 50 floats in the client's memory.
//
//   fs_load --mode=MODE [--flag=value | --flag value]...
//
// Modes
//   load-kosh        Applies the schema (Registry.ApplySchema, idempotent) and writes the N rows
//                    with FeatureStore.Persist, --batch rows per request, --load-threads requests
//                    in flight.
//   load-redis       The design Kosh replaces: one Redis string per key+group,
//                    "bench:u00000042" -> "v0,v1,...,v49" (shortest round-trip float32 text),
//                    written with pipelined SETs.
//   warm-kosh        Reads every key once in order (K keys per RetrieveMatrix) so that the server's
//                    row cache holds the working set, as it would in steady state.
//   rocksdb-inproc   The in-process ceiling: builds its own RocksDB at --db (destroyed first) with
//                    the same N keys and the same encoded rows Kosh stores (same storage key and
//                    codec, same table options as src/storage/rocksdb_engine.cc), compacts it,
//                    then for --duration seconds runs --threads threads each calling MultiGet of K
//                    random keys and copying the floats out. Reports lookups/s. Run it while no
//                    other measurement runs: it uses every core it is given.
//   run              Measures reads against --target=kosh|redis.
//                      kosh: --method=matrix (FeatureStore.RetrieveMatrix, dense float32, what a
//                            model consumes) or --method=rows (FeatureStore.Retrieve, typed rows).
//                            gRPC async client: --connections channels, each its own TCP
//                            connection (GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL), served by --threads
//                            completion-queue threads that parse and record responses (and, in
//                            open loop, --threads sender threads that keep the schedule).
//                      redis: MGET of the K keys; every value is parsed into 50 floats
//                            (std::from_chars), so both clients end with the same floats.
//                            hiredis on --connections connections served by --threads epoll loops.
//                    --rate=0: closed loop, --depth requests outstanding per connection; the
//                    achieved rate is the peak throughput for that concurrency.
//                    --rate=R: open loop at R requests/s in total. Each connection has its own
//                    schedule of intended send times (period connections/R, phases staggered);
//                    a request is sent at its time whether or not earlier ones have returned
//                    (gRPC multiplexes, Redis pipelines), and its latency is measured from the
//                    intended send time, so a stalled server is not hidden (no coordinated
//                    omission).
//                    Latency ends when the floats are in client memory (after parsing).
//
// Flags (defaults in brackets)
//   --mode                 see above
//   --server=HOST:PORT     Kosh gRPC address [127.0.0.1:7070]
//   --redis=HOST:PORT      Redis address [127.0.0.1:6379]
//   --keys=N               number of keys [1000000]
//   --keys-per-request=K   keys per read request [100]
//   --batch=B              rows per Persist request / SETs per pipeline flush [1000]
//   --load-threads=T       Persist requests in flight while loading [2]
//   --target=kosh|redis    run: the system under test [kosh]
//   --method=matrix|rows   run against kosh: the read RPC [matrix]
//   --rate=R               run: offered requests/s, 0 = closed loop [0]
//   --duration=S           run, rocksdb-inproc: measured seconds [10]
//   --warmup=S             run: seconds of unmeasured traffic first [1]
//   --connections=C        run, warm-kosh: connections [8]
//   --depth=D              run, closed loop: requests outstanding per connection [1]
//   --threads=T            run: Redis epoll loops / Kosh completion-queue threads (plus as many
//                          open-loop sender threads);
//                          rocksdb-inproc: reader threads [2]
//   --verify-every=N       check every Nth response value by value against the generator [16]
//   --db=DIR               rocksdb-inproc: database directory [/tmp/fs_load_rocksdb]
//   --seed=S               random seed [1]
//   --latency-log=FILE     run: also write one line per measured request to FILE:
//                          "<ms since window start> <latency ms> <ok>" (for finding stalls)
//
// Output: a human-readable summary, then as the last line one JSON object with the figures.
// Exit status 0 on success; 1 if any request failed or any value did not match.

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
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

#include "absl/synchronization/mutex.h"
#include "features/codec.h"
#include "features/feature_store.h"
#include "google/protobuf/arena.h"
#include "grpcpp/grpcpp.h"
#include "hiredis/hiredis.h"
#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/registry.grpc.pb.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/table.h"

namespace {

namespace v1 = kosh::v1;

constexpr int kFeatures = 50;
constexpr char kEntity[] = "user";
constexpr char kGroup[] = "bench";

// --- flags ---------------------------------------------------------------------------------------

std::map<std::string, std::string> g_flags;

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "fs_load: %s\n", msg.c_str());
  std::exit(2);
}

std::string Flag(const std::string& name, const std::string& def) {
  auto it = g_flags.find(name);
  return it == g_flags.end() ? def : it->second;
}
int64_t IntFlag(const std::string& name, int64_t def) {
  std::string v = Flag(name, "");
  if (v.empty()) return def;
  char* end = nullptr;
  long long n = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0') Die("--" + name + ": not an integer: " + v);
  return n;
}
double DoubleFlag(const std::string& name, double def) {
  std::string v = Flag(name, "");
  if (v.empty()) return def;
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (*end != '\0') Die("--" + name + ": not a number: " + v);
  return d;
}

void ParseFlags(int argc, char** argv) {
  static const char* kKnown[] = {"mode", "server", "redis", "keys", "keys-per-request", "batch",
                                 "load-threads", "target", "method", "rate", "duration", "warmup",
                                 "connections", "depth", "threads", "verify-every", "db", "seed",
                                 "latency-log"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) Die("unexpected argument " + a);
    std::string name = a.substr(2), value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Die(a + ": needs a value");
    }
    if (std::find(std::begin(kKnown), std::end(kKnown), name) == std::end(kKnown)) {
      Die("unknown flag --" + name + " (the flags are documented at the top of bench/fs_load.cc)");
    }
    g_flags[name] = value;
  }
}

// --- the data set --------------------------------------------------------------------------------

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The value of feature j of key i: a float in [0, 1) with 24 significant bits.
float FeatureValue(uint32_t i, int j) {
  return static_cast<float>(SplitMix(uint64_t{i} * 64 + static_cast<uint64_t>(j)) >> 40) *
         (1.0f / 16777216.0f);
}

// "u00000042": 9 bytes for every key below 10^8.
constexpr size_t kKeyLen = 9;
void KeyName(uint32_t i, char* out) {
  out[0] = 'u';
  for (int d = 8; d >= 1; --d) {
    out[d] = static_cast<char>('0' + i % 10);
    i /= 10;
  }
}
std::string KeyName(uint32_t i) {
  std::string s(kKeyLen, '\0');
  KeyName(i, s.data());
  return s;
}
std::string RedisKey(uint32_t i) { return std::string(kGroup) + ":" + KeyName(i); }

// "v0,v1,...,v49", each the shortest text that reads back as the same float32.
std::string RedisValue(uint32_t i) {
  std::string out;
  char buf[32];
  for (int j = 0; j < kFeatures; ++j) {
    if (j) out.push_back(',');
    auto r = std::to_chars(buf, buf + sizeof buf, FeatureValue(i, j));
    out.append(buf, r.ptr);
  }
  return out;
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(SplitMix(seed) | 1) {}
  uint64_t Next() {  // xorshift64*
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dull;
  }
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>((Next() >> 32) * n >> 32); }
};

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
void SleepUntilNs(int64_t t) {
  timespec ts{static_cast<time_t>(t / 1000000000), static_cast<long>(t % 1000000000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}
double CpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

std::string Json(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string out = "{";
  for (size_t i = 0; i < kv.size(); ++i) {
    if (i) out += ", ";
    out += "\"" + kv[i].first + "\": " + kv[i].second;
  }
  return out + "}";
}
std::string Str(const std::string& s) { return "\"" + s + "\""; }
std::string Num(double d) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", d);
  return buf;
}

// --- Kosh client helpers -------------------------------------------------------------------------

std::shared_ptr<grpc::Channel> NewChannel(const std::string& target) {
  grpc::ChannelArguments args;
  // Each channel gets its own subchannel and so its own TCP connection.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto ch = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    Die("cannot connect to Kosh at " + target);
  }
  return ch;
}

void CheckGrpc(const grpc::Status& s, const std::string& what) {
  if (!s.ok()) Die(what + ": " + std::to_string(s.error_code()) + " " + s.error_message());
}

std::unique_ptr<grpc::ClientContext> NewContext(int seconds) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  return ctx;
}

void ApplySchema(grpc::Channel* ch) {
  auto stub = v1::Registry::NewStub(std::shared_ptr<grpc::Channel>(ch, [](grpc::Channel*) {}));
  v1::ApplySchemaRequest req;
  auto* e = req.add_entities();
  e->set_name(kEntity);
  e->add_key_columns("user_id");
  auto* g = req.add_groups();
  g->set_entity(kEntity);
  g->set_name(kGroup);
  g->set_description("fs_load benchmark group: 50 float32 features");
  auto* ver = g->add_versions();
  ver->set_version(1);
  for (int j = 0; j < kFeatures; ++j) {
    auto* f = ver->add_features();
    f->set_name("f" + std::to_string(j));
    f->set_type(v1::FLOAT32);
  }
  v1::ApplySchemaResponse resp;
  auto ctx = NewContext(30);
  CheckGrpc(stub->ApplySchema(ctx.get(), req, &resp), "ApplySchema");
}

// --- load-kosh -----------------------------------------------------------------------------------

int LoadKosh() {
  const std::string server = Flag("server", "127.0.0.1:7070");
  const uint32_t n = static_cast<uint32_t>(IntFlag("keys", 1000000));
  const uint32_t batch = static_cast<uint32_t>(IntFlag("batch", 1000));
  const int threads = static_cast<int>(IntFlag("load-threads", 2));
  {
    auto ch = NewChannel(server);
    ApplySchema(ch.get());
  }
  const int64_t t0 = NowNs();
  std::atomic<uint32_t> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      auto ch = NewChannel(server);
      auto stub = v1::FeatureStore::NewStub(ch);
      for (;;) {
        uint32_t start = next.fetch_add(batch);
        if (start >= n) break;
        uint32_t end = std::min(n, start + batch);
        google::protobuf::Arena arena;
        auto* req = google::protobuf::Arena::CreateMessage<v1::PersistRequest>(&arena);
        req->set_entity(kEntity);
        req->set_group(kGroup);
        for (uint32_t i = start; i < end; ++i) {
          auto* row = req->add_rows();
          row->mutable_key()->add_parts(KeyName(i));
          for (int j = 0; j < kFeatures; ++j) row->add_values()->set_float32_value(FeatureValue(i, j));
        }
        v1::PersistResponse resp;
        auto ctx = NewContext(120);
        CheckGrpc(stub->Persist(ctx.get(), *req, &resp), "Persist rows " + std::to_string(start));
        if (resp.rows_written() != end - start) Die("Persist: short write");
      }
    });
  }
  for (auto& t : ts) t.join();
  double secs = (NowNs() - t0) / 1e9;
  std::printf("load-kosh: %u rows in %.1f s (%.0f rows/s), batch %u, %d in flight\n", n, secs, n / secs,
              batch, threads);
  std::printf("%s\n", Json({{"mode", Str("load-kosh")}, {"rows", Num(n)}, {"seconds", Num(secs)},
                            {"rows_per_s", Num(n / secs)}, {"batch", Num(batch)}})
                          .c_str());
  return 0;
}

// --- warm-kosh -----------------------------------------------------------------------------------

int WarmKosh() {
  const std::string server = Flag("server", "127.0.0.1:7070");
  const uint32_t n = static_cast<uint32_t>(IntFlag("keys", 1000000));
  const uint32_t k = static_cast<uint32_t>(IntFlag("keys-per-request", 100));
  const int conns = static_cast<int>(IntFlag("connections", 8));
  const int64_t t0 = NowNs();
  std::atomic<uint32_t> next{0};
  std::atomic<uint64_t> present{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < conns; ++t) {
    ts.emplace_back([&] {
      auto stub = v1::FeatureStore::NewStub(NewChannel(server));
      for (;;) {
        uint32_t start = next.fetch_add(k);
        if (start >= n) break;
        v1::RetrieveRequest req;
        req.set_entity(kEntity);
        req.add_features(std::string(kGroup) + ".*");
        for (uint32_t i = start; i < std::min(n, start + k); ++i) req.add_keys()->add_parts(KeyName(i));
        v1::RetrieveMatrixResponse resp;
        auto ctx = NewContext(30);
        CheckGrpc(stub->RetrieveMatrix(ctx.get(), req, &resp), "RetrieveMatrix");
        uint64_t p = 0;
        for (int s : resp.statuses()) p += s == v1::PRESENT;
        present += p;
      }
    });
  }
  for (auto& t : ts) t.join();
  double secs = (NowNs() - t0) / 1e9;
  uint64_t expect = uint64_t{n} * kFeatures;
  std::printf("warm-kosh: read %u keys in %.1f s; %llu of %llu values PRESENT\n", n, secs,
              static_cast<unsigned long long>(present.load()), static_cast<unsigned long long>(expect));
  std::printf("%s\n", Json({{"mode", Str("warm-kosh")}, {"keys", Num(n)}, {"seconds", Num(secs)},
                            {"present_values", Num(double(present.load()))}})
                          .c_str());
  return present.load() == expect ? 0 : 1;
}

// --- Redis helpers -------------------------------------------------------------------------------

redisContext* RedisConnect(const std::string& addr) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos) Die("--redis: expected HOST:PORT");
  std::string host = addr.substr(0, colon);
  int port = std::atoi(addr.c_str() + colon + 1);
  timeval tv{10, 0};
  redisContext* c = redisConnectWithTimeout(host.c_str(), port, tv);
  if (c == nullptr || c->err) Die("cannot connect to Redis at " + addr + ": " + (c ? c->errstr : "?"));
  return c;
}

// --- load-redis ----------------------------------------------------------------------------------

int LoadRedis() {
  const std::string addr = Flag("redis", "127.0.0.1:6379");
  const uint32_t n = static_cast<uint32_t>(IntFlag("keys", 1000000));
  const uint32_t batch = static_cast<uint32_t>(IntFlag("batch", 1000));
  redisContext* c = RedisConnect(addr);
  const int64_t t0 = NowNs();
  uint64_t value_bytes = 0;
  for (uint32_t start = 0; start < n; start += batch) {
    uint32_t end = std::min(n, start + batch);
    for (uint32_t i = start; i < end; ++i) {
      std::string k = RedisKey(i), v = RedisValue(i);
      value_bytes += v.size();
      const char* argv[3] = {"SET", k.data(), v.data()};
      size_t lens[3] = {3, k.size(), v.size()};
      if (redisAppendCommandArgv(c, 3, argv, lens) != REDIS_OK) Die("redis append failed");
    }
    for (uint32_t i = start; i < end; ++i) {
      void* r = nullptr;
      if (redisGetReply(c, &r) != REDIS_OK || r == nullptr) Die(std::string("redis SET: ") + c->errstr);
      auto* reply = static_cast<redisReply*>(r);
      if (reply->type == REDIS_REPLY_ERROR) Die(std::string("redis SET: ") + reply->str);
      freeReplyObject(reply);
    }
  }
  double secs = (NowNs() - t0) / 1e9;
  redisFree(c);
  std::printf("load-redis: %u keys in %.1f s (%.0f keys/s), mean value %.0f bytes\n", n, secs, n / secs,
              double(value_bytes) / n);
  std::printf("%s\n", Json({{"mode", Str("load-redis")}, {"rows", Num(n)}, {"seconds", Num(secs)},
                            {"rows_per_s", Num(n / secs)}, {"mean_value_bytes", Num(double(value_bytes) / n)}})
                          .c_str());
  return 0;
}

// --- latency bookkeeping -------------------------------------------------------------------------

struct Sample {
  int64_t intended = 0;  // ns: when the request was (to be) sent
  int64_t done = 0;      // ns: when its floats were in memory; 0 = never completed
  bool ok = false;
};

struct Window {
  int64_t start, end;  // measured interval [start, end)
};

struct Result {
  uint64_t requests = 0, ok = 0, errors = 0, unfinished = 0, completed_in_window = 0;
  double achieved_rps = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;  // ms
};

Result Summarize(const std::vector<const std::vector<Sample>*>& all, Window w) {
  Result r;
  std::vector<int64_t> lat;
  FILE* log = nullptr;
  if (std::string path = Flag("latency-log", ""); !path.empty()) {
    log = std::fopen(path.c_str(), "w");
    if (log == nullptr) Die("cannot write " + path);
  }
  for (const auto* v : all) {
    for (const Sample& s : *v) {
      if (s.done != 0 && s.ok && s.done >= w.start && s.done < w.end) ++r.completed_in_window;
      if (s.intended < w.start || s.intended >= w.end) continue;
      ++r.requests;
      if (log != nullptr) {
        std::fprintf(log, "%.3f %.3f %d\n", (s.intended - w.start) / 1e6,
                     s.done == 0 ? -1.0 : (s.done - s.intended) / 1e6, s.ok ? 1 : 0);
      }
      if (s.done == 0) {
        ++r.unfinished;
      } else if (!s.ok) {
        ++r.errors;
      } else {
        ++r.ok;
        lat.push_back(s.done - s.intended);
      }
    }
  }
  if (log != nullptr) std::fclose(log);
  r.achieved_rps = r.completed_in_window / ((w.end - w.start) / 1e9);
  if (!lat.empty()) {
    std::sort(lat.begin(), lat.end());
    auto q = [&](double p) {
      size_t i = static_cast<size_t>(p * static_cast<double>(lat.size()));
      return lat[std::min(i, lat.size() - 1)] / 1e6;
    };
    r.p50 = q(0.5);
    r.p90 = q(0.9);
    r.p99 = q(0.99);
    r.p999 = q(0.999);
    r.max = lat.back() / 1e6;
    double sum = 0;
    for (int64_t x : lat) sum += static_cast<double>(x);
    r.mean = sum / static_cast<double>(lat.size()) / 1e6;
  }
  return r;
}

struct RunConfig {
  std::string target, method;
  double rate;  // requests/s; 0 = closed loop
  double duration, warmup;
  int connections, depth, threads;
  uint32_t keys, keys_per_request;
  int verify_every;
  uint64_t seed;
};

std::atomic<uint64_t> g_mismatches{0};
std::mutex g_error_mu;
std::string g_first_error;
void NoteError(const std::string& e) {
  std::lock_guard<std::mutex> l(g_error_mu);
  if (g_first_error.empty()) g_first_error = e;
}

// Checks the floats of one response against the generator.
void Verify(const uint32_t* ids, uint32_t k, const float* out) {
  for (uint32_t r = 0; r < k; ++r) {
    for (int j = 0; j < kFeatures; ++j) {
      if (out[r * kFeatures + j] != FeatureValue(ids[r], j)) {
        if (g_mismatches.fetch_add(1) == 0) {
          NoteError("value mismatch for key " + KeyName(ids[r]) + " feature f" + std::to_string(j));
        }
        return;
      }
    }
  }
}

// --- run against Kosh ----------------------------------------------------------------------------

class KoshRun {
 public:
  explicit KoshRun(const RunConfig& cfg) : cfg_(cfg) {
    const std::string server = Flag("server", "127.0.0.1:7070");
    const int T = std::max(1, std::min(cfg.threads, cfg.connections));
    for (int t = 0; t < T; ++t) cqs_.push_back(std::make_unique<grpc::CompletionQueue>());
    for (int c = 0; c < cfg.connections; ++c) {
      conns_.push_back(std::make_unique<Conn>());
      conns_.back()->stub = v1::FeatureStore::NewStub(NewChannel(server));
      conns_.back()->index = c;
      conns_.back()->cq = cqs_[static_cast<size_t>(c % T)].get();
    }
    features_ = std::string(kGroup) + ".*";
  }

  Result Run() {
    const int T = static_cast<int>(cqs_.size());
    const int64_t t0 = NowNs() + 20'000'000;  // 20 ms to set up
    window_ = {t0 + static_cast<int64_t>(cfg_.warmup * 1e9),
               t0 + static_cast<int64_t>((cfg_.warmup + cfg_.duration) * 1e9)};
    stop_at_ = window_.end;
    double cpu0 = 0, cpu1 = 0;
    std::thread cpu_meter([&] {
      SleepUntilNs(window_.start);
      cpu0 = CpuSeconds();
      SleepUntilNs(window_.end);
      cpu1 = CpuSeconds();
    });
    // Completion threads: each drains its own queue, so a response is parsed, checked and
    // recorded on the thread that polled it off the socket (no hand-off to another thread).
    std::vector<std::thread> pollers;
    for (int t = 0; t < T; ++t) {
      pollers.emplace_back([this, t] {
        void* tag = nullptr;
        bool ok = false;
        while (cqs_[static_cast<size_t>(t)]->Next(&tag, &ok)) Done(static_cast<Call*>(tag), ok);
      });
    }
    if (cfg_.rate <= 0) {
      SleepUntilNs(t0);
      for (auto& c : conns_) {
        c->closed.resize(static_cast<size_t>(cfg_.depth));
        for (int d = 0; d < cfg_.depth; ++d) Start(c.get(), NowNs(), &c->closed[static_cast<size_t>(d)], nullptr);
      }
    } else {
      // Open loop: T sender threads; request i of the global schedule is due at t0 + i/rate and
      // goes to connection i % C, so every connection has its own fixed-period schedule.
      const double period_ns = 1e9 / cfg_.rate;
      const int64_t total = static_cast<int64_t>((cfg_.warmup + cfg_.duration) * cfg_.rate);
      for (auto& c : conns_) c->open.resize(static_cast<size_t>(total / cfg_.connections + 2));
      std::vector<std::thread> senders;
      for (int t = 0; t < T; ++t) {
        senders.emplace_back([this, t, T, period_ns, total, t0] {
          prctl(PR_SET_TIMERSLACK, 1UL);
          for (int64_t i = t; i < total; i += T) {
            int64_t when = t0 + static_cast<int64_t>(static_cast<double>(i) * period_ns);
            SleepUntilNs(when);
            Conn* c = conns_[static_cast<size_t>(i % cfg_.connections)].get();
            int64_t s = c->seq.fetch_add(1);
            Start(c, when, nullptr, &c->open[static_cast<size_t>(s)]);
          }
        });
      }
      for (auto& s : senders) s.join();
    }
    // Drain: wait for every outstanding call (their 10 s deadline bounds this).
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait_for(l, std::chrono::seconds(15),
                   [&] { return outstanding_ == 0 && (cfg_.rate > 0 || NowNs() >= window_.end); });
    }
    for (auto& cq : cqs_) cq->Shutdown();
    for (auto& p : pollers) p.join();
    cpu_meter.join();
    client_cpu_ = (cpu1 - cpu0) / cfg_.duration;
    std::vector<const std::vector<Sample>*> all;
    for (auto& c : conns_) {
      if (cfg_.rate <= 0) {
        for (auto& v : c->closed) all.push_back(&v);
      } else {
        all.push_back(&c->open);
      }
    }
    return Summarize(all, window_);
  }
  double client_cpu() const { return client_cpu_; }

 private:
  struct Conn {
    std::unique_ptr<v1::FeatureStore::Stub> stub;
    grpc::CompletionQueue* cq = nullptr;
    int index = 0;
    std::atomic<int64_t> seq{0};              // open loop: next index into `open`
    std::vector<std::vector<Sample>> closed;  // per outstanding slot (closed loop)
    std::vector<Sample> open;                 // per scheduled request (open loop)
  };
  struct Call {
    grpc::ClientContext ctx;
    google::protobuf::Arena arena;
    v1::RetrieveRequest* req = nullptr;
    v1::RetrieveResponse* rows = nullptr;
    v1::RetrieveMatrixResponse* matrix = nullptr;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::RetrieveResponse>> rows_reader;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::RetrieveMatrixResponse>> matrix_reader;
    grpc::Status status;
    Conn* conn = nullptr;
    std::vector<Sample>* slot = nullptr;  // closed loop: the slot's samples
    Sample* sample = nullptr;             // open loop: this request's sample
    int64_t intended = 0;
    std::vector<uint32_t> ids;
  };

  // Sends one request of K random keys on `c`. Closed loop (slot set): the sample is appended to
  // *slot and the slot's next request is sent when this one ends. Open loop: written to *sample.
  void Start(Conn* c, int64_t intended, std::vector<Sample>* slot, Sample* sample) {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++outstanding_;
    }
    auto* call = new Call;
    call->conn = c;
    call->intended = intended;
    call->slot = slot;
    call->sample = sample;
    call->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    call->req = google::protobuf::Arena::CreateMessage<v1::RetrieveRequest>(&call->arena);
    call->req->set_entity(kEntity);
    call->req->add_features(features_);
    thread_local Rng rng(cfg_.seed * 7919 + std::hash<std::thread::id>()(std::this_thread::get_id()));
    call->ids.resize(cfg_.keys_per_request);
    char key[kKeyLen];
    for (uint32_t r = 0; r < cfg_.keys_per_request; ++r) {
      uint32_t id = rng.Below(cfg_.keys);
      call->ids[r] = id;
      KeyName(id, key);
      call->req->add_keys()->add_parts()->assign(key, kKeyLen);
    }
    if (cfg_.method == "rows") {
      call->rows = google::protobuf::Arena::CreateMessage<v1::RetrieveResponse>(&call->arena);
      call->rows_reader = c->stub->PrepareAsyncRetrieve(&call->ctx, *call->req, c->cq);
      call->rows_reader->StartCall();
      call->rows_reader->Finish(call->rows, &call->status, call);
    } else {
      call->matrix = google::protobuf::Arena::CreateMessage<v1::RetrieveMatrixResponse>(&call->arena);
      call->matrix_reader = c->stub->PrepareAsyncRetrieveMatrix(&call->ctx, *call->req, c->cq);
      call->matrix_reader->StartCall();
      call->matrix_reader->Finish(call->matrix, &call->status, call);
    }
  }

  // Copies the response's floats into client memory (as a model server would) and checks them.
  bool Consume(Call* call) {
    const grpc::Status& s = call->status;
    if (!s.ok()) {
      NoteError("kosh: " + std::to_string(s.error_code()) + " " + s.error_message());
      return false;
    }
    const uint32_t k = cfg_.keys_per_request;
    thread_local std::vector<float> out;
    out.resize(size_t{k} * kFeatures);
    if (call->rows != nullptr) {
      const auto& resp = *call->rows;
      if (resp.rows_size() != static_cast<int>(k)) return NoteError("kosh: wrong row count"), false;
      for (uint32_t r = 0; r < k; ++r) {
        const v1::Row& row = resp.rows(static_cast<int>(r));
        if (row.values_size() != kFeatures || row.statuses_size() != kFeatures) {
          return NoteError("kosh: wrong column count"), false;
        }
        for (int j = 0; j < kFeatures; ++j) {
          if (row.statuses(j) != v1::PRESENT) return NoteError("kosh: value not PRESENT"), false;
          out[r * kFeatures + j] = row.values(j).float32_value();
        }
      }
    } else {
      const auto& resp = *call->matrix;
      if (resp.num_rows() != k || resp.num_cols() != kFeatures ||
          resp.values_size() != static_cast<int>(k * kFeatures) ||
          resp.statuses_size() != static_cast<int>(k * kFeatures)) {
        return NoteError("kosh: wrong matrix shape"), false;
      }
      for (int st : resp.statuses()) {
        if (st != v1::PRESENT) return NoteError("kosh: value not PRESENT"), false;
      }
      std::memcpy(out.data(), resp.values().data(), sizeof(float) * k * kFeatures);
    }
    thread_local uint64_t n = 0;
    if (cfg_.verify_every > 0 && n++ % static_cast<uint64_t>(cfg_.verify_every) == 0) {
      Verify(call->ids.data(), k, out.data());
    }
    return true;
  }

  void Done(Call* call, bool cq_ok) {
    bool ok = cq_ok && Consume(call);
    int64_t now = NowNs();
    Conn* c = call->conn;
    std::vector<Sample>* slot = call->slot;
    if (slot != nullptr) {
      slot->push_back({call->intended, now, ok});
    } else {
      *call->sample = {call->intended, now, ok};
    }
    delete call;
    if (slot != nullptr && now < stop_at_) Start(c, now, slot, nullptr);  // closed loop: next request
    std::lock_guard<std::mutex> l(mu_);
    if (--outstanding_ == 0) cv_.notify_all();
  }

  RunConfig cfg_;
  std::string features_;
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs_;
  std::vector<std::unique_ptr<Conn>> conns_;
  Window window_{};
  int64_t stop_at_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t outstanding_ = 0;
  double client_cpu_ = 0;
};

// --- run against Redis ---------------------------------------------------------------------------

class RedisRun {
 public:
  explicit RedisRun(const RunConfig& cfg) : cfg_(cfg) {}

  Result Run() {
    const std::string addr = Flag("redis", "127.0.0.1:6379");
    const int T = std::max(1, std::min(cfg_.threads, cfg_.connections));
    std::vector<std::vector<redisContext*>> per_thread(static_cast<size_t>(T));
    for (int c = 0; c < cfg_.connections; ++c) per_thread[static_cast<size_t>(c % T)].push_back(RedisConnect(addr));
    const int64_t t0 = NowNs() + 20'000'000;
    Window w{t0 + static_cast<int64_t>(cfg_.warmup * 1e9),
             t0 + static_cast<int64_t>((cfg_.warmup + cfg_.duration) * 1e9)};
    std::vector<std::vector<Sample>> samples(static_cast<size_t>(T));
    double cpu0 = 0, cpu1 = 0;
    std::thread cpu_meter([&] {
      SleepUntilNs(w.start);
      cpu0 = CpuSeconds();
      SleepUntilNs(w.end);
      cpu1 = CpuSeconds();
    });
    std::vector<std::thread> ts;
    for (int t = 0; t < T; ++t) {
      ts.emplace_back([&, t] { Loop(t, T, per_thread[static_cast<size_t>(t)], t0, w, &samples[static_cast<size_t>(t)]); });
    }
    for (auto& t : ts) t.join();
    cpu_meter.join();
    client_cpu_ = (cpu1 - cpu0) / cfg_.duration;
    for (auto& v : per_thread) {
      for (auto* c : v) redisFree(c);
    }
    std::vector<const std::vector<Sample>*> all;
    for (auto& s : samples) all.push_back(&s);
    return Summarize(all, w);
  }
  double client_cpu() const { return client_cpu_; }

 private:
  struct Pending {
    int64_t intended;
    std::vector<uint32_t> ids;
  };
  struct Conn {
    redisContext* c;
    std::deque<Pending> inflight;
  };

  void Send(Conn* c, int64_t intended, Rng* rng) {
    const uint32_t k = cfg_.keys_per_request;
    Pending p{intended, std::vector<uint32_t>(k)};
    // argv[0] = MGET, then the keys, formatted in one buffer.
    thread_local std::vector<char> keybuf;
    thread_local std::vector<const char*> argv;
    thread_local std::vector<size_t> lens;
    const size_t klen = sizeof(kGroup) + kKeyLen;  // "bench:" + key
    keybuf.resize(k * klen);
    argv.assign(k + 1, nullptr);
    lens.assign(k + 1, klen);
    argv[0] = "MGET";
    lens[0] = 4;
    for (uint32_t r = 0; r < k; ++r) {
      uint32_t id = rng->Below(cfg_.keys);
      p.ids[r] = id;
      char* kp = keybuf.data() + r * klen;
      std::memcpy(kp, kGroup, sizeof(kGroup) - 1);
      kp[sizeof(kGroup) - 1] = ':';
      KeyName(id, kp + sizeof(kGroup));
      argv[r + 1] = kp;
    }
    if (redisAppendCommandArgv(c->c, static_cast<int>(k + 1), argv.data(), lens.data()) != REDIS_OK) {
      Die("redis: cannot format MGET");
    }
    int done = 0;
    while (!done) {
      if (redisBufferWrite(c->c, &done) != REDIS_OK) Die(std::string("redis write: ") + c->c->errstr);
    }
    c->inflight.push_back(std::move(p));
  }

  // Parses an MGET reply into floats and checks them.
  bool Consume(redisReply* reply, const Pending& p) {
    const uint32_t k = cfg_.keys_per_request;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != k) {
      NoteError("redis: unexpected MGET reply");
      return false;
    }
    thread_local std::vector<float> out;
    out.resize(size_t{k} * kFeatures);
    for (uint32_t r = 0; r < k; ++r) {
      const redisReply* e = reply->element[r];
      if (e->type != REDIS_REPLY_STRING) {
        NoteError("redis: key " + KeyName(p.ids[r]) + " missing");
        return false;
      }
      const char* s = e->str;
      const char* end = e->str + e->len;
      float* o = out.data() + size_t{r} * kFeatures;
      int j = 0;
      while (s < end && j < kFeatures) {
        auto res = std::from_chars(s, end, o[j]);
        if (res.ec != std::errc()) break;
        ++j;
        s = res.ptr;
        if (s < end && *s == ',') ++s;
      }
      if (j != kFeatures || s != end) {
        NoteError("redis: value of " + KeyName(p.ids[r]) + " is not 50 floats");
        return false;
      }
    }
    thread_local uint64_t n = 0;
    if (cfg_.verify_every > 0 && n++ % static_cast<uint64_t>(cfg_.verify_every) == 0) {
      Verify(p.ids.data(), k, out.data());
    }
    return true;
  }

  void Loop(int t, int T, const std::vector<redisContext*>& ctxs, int64_t t0, Window w,
            std::vector<Sample>* samples) {
    prctl(PR_SET_TIMERSLACK, 1UL);
    Rng rng(cfg_.seed * 104729 + static_cast<uint64_t>(t));
    std::vector<Conn> conns;
    for (auto* c : ctxs) conns.push_back({c, {}});
    int ep = epoll_create1(0);
    for (size_t i = 0; i < conns.size(); ++i) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].c->fd, &ev);
    }
    const bool closed = cfg_.rate <= 0;
    const int64_t stop = w.end;
    // Open loop: this thread's requests are i = t, t+T, ... of the global schedule, sent at
    // t0 + i/rate on connection (i / T) % conns (so each connection keeps a fixed period).
    const double period_ns = closed ? 0 : 1e9 / cfg_.rate;
    int64_t next_i = t;
    size_t rr = 0;
    size_t inflight = 0;
    SleepUntilNs(t0);
    if (closed) {
      for (auto& c : conns) {
        for (int d = 0; d < cfg_.depth; ++d) {
          Send(&c, NowNs(), &rng);
          ++inflight;
        }
      }
    }
    const int64_t drain_deadline = stop + 15'000'000'000LL;
    epoll_event evs[64];
    for (;;) {
      int64_t now = NowNs();
      if (!closed) {
        while (true) {
          int64_t when = t0 + static_cast<int64_t>(static_cast<double>(next_i) * period_ns);
          if (when > now || when >= stop) break;
          Send(&conns[rr], when, &rng);
          rr = (rr + 1) % conns.size();
          ++inflight;
          next_i += T;
        }
      }
      bool sending_done = closed ? now >= stop
                                 : t0 + static_cast<int64_t>(static_cast<double>(next_i) * period_ns) >= stop;
      if (sending_done && inflight == 0) break;
      if (now > drain_deadline) break;
      int64_t wait_ns = 100'000'000;
      if (!closed && !sending_done) {
        int64_t when = t0 + static_cast<int64_t>(static_cast<double>(next_i) * period_ns);
        wait_ns = std::max<int64_t>(0, when - now);
      }
      timespec ts{static_cast<time_t>(wait_ns / 1000000000), static_cast<long>(wait_ns % 1000000000)};
      int n = epoll_pwait2(ep, evs, 64, &ts, nullptr);
      for (int e = 0; e < n; ++e) {
        Conn& c = conns[evs[e].data.u64];
        if (redisBufferRead(c.c) != REDIS_OK) Die(std::string("redis read: ") + c.c->errstr);
        for (;;) {
          void* r = nullptr;
          if (redisGetReplyFromReader(c.c, &r) != REDIS_OK) Die(std::string("redis reply: ") + c.c->errstr);
          if (r == nullptr) break;
          auto* reply = static_cast<redisReply*>(r);
          if (c.inflight.empty()) Die("redis: reply without request");
          Pending p = std::move(c.inflight.front());
          c.inflight.pop_front();
          bool ok = Consume(reply, p);
          freeReplyObject(reply);
          int64_t done = NowNs();
          samples->push_back({p.intended, done, ok});
          --inflight;
          if (closed && done < stop) {
            Send(&c, done, &rng);
            ++inflight;
          }
        }
      }
    }
    close(ep);
  }

  RunConfig cfg_;
  double client_cpu_ = 0;
};

int RunMode() {
  RunConfig cfg;
  cfg.target = Flag("target", "kosh");
  cfg.method = Flag("method", "matrix");
  cfg.rate = DoubleFlag("rate", 0);
  cfg.duration = DoubleFlag("duration", 10);
  cfg.warmup = DoubleFlag("warmup", 1);
  cfg.connections = static_cast<int>(IntFlag("connections", 8));
  cfg.depth = static_cast<int>(IntFlag("depth", 1));
  cfg.threads = static_cast<int>(IntFlag("threads", 2));
  cfg.keys = static_cast<uint32_t>(IntFlag("keys", 1000000));
  cfg.keys_per_request = static_cast<uint32_t>(IntFlag("keys-per-request", 100));
  cfg.verify_every = static_cast<int>(IntFlag("verify-every", 16));
  cfg.seed = static_cast<uint64_t>(IntFlag("seed", 1));
  if (cfg.target != "kosh" && cfg.target != "redis") Die("--target: kosh or redis");
  if (cfg.method != "matrix" && cfg.method != "rows") Die("--method: matrix or rows");
  if (cfg.connections < 1 || cfg.depth < 1 || cfg.threads < 1 || cfg.keys < 1 || cfg.keys_per_request < 1 ||
      cfg.duration <= 0) {
    Die("--connections, --depth, --threads, --keys, --keys-per-request and --duration must be positive");
  }
  Result r;
  double cpu = 0;
  std::string label = cfg.target == "kosh" ? "kosh/" + cfg.method : "redis/mget";
  if (cfg.target == "kosh") {
    KoshRun run(cfg);
    r = run.Run();
    cpu = run.client_cpu();
  } else {
    RedisRun run(cfg);
    r = run.Run();
    cpu = run.client_cpu();
  }
  const bool failed = r.errors > 0 || r.unfinished > 0 || g_mismatches.load() > 0 || r.ok == 0;
  std::printf("%-12s %s  offered %s  achieved %.0f req/s (%.0f keys/s)  p50 %.3f  p90 %.3f  p99 %.3f  "
              "p99.9 %.3f  max %.3f ms  requests %llu  errors %llu  unfinished %llu  client CPU %.2f cores  "
              "conns %d x depth %d, threads %d\n",
              label.c_str(), cfg.rate > 0 ? "open " : "closed",
              cfg.rate > 0 ? (std::to_string(static_cast<long>(cfg.rate)) + " req/s").c_str() : "-",
              r.achieved_rps, r.achieved_rps * cfg.keys_per_request, r.p50, r.p90, r.p99, r.p999, r.max,
              static_cast<unsigned long long>(r.requests), static_cast<unsigned long long>(r.errors),
              static_cast<unsigned long long>(r.unfinished), cpu, cfg.connections, cfg.depth, cfg.threads);
  if (!g_first_error.empty()) std::printf("first error: %s\n", g_first_error.c_str());
  std::printf("%s\n",
              Json({{"mode", Str("run")}, {"target", Str(cfg.target)},
                    {"method", Str(cfg.target == "kosh" ? cfg.method : "mget")},
                    {"loop", Str(cfg.rate > 0 ? "open" : "closed")}, {"offered_rps", Num(cfg.rate)},
                    {"achieved_rps", Num(r.achieved_rps)}, {"p50_ms", Num(r.p50)}, {"p90_ms", Num(r.p90)},
                    {"p99_ms", Num(r.p99)}, {"p999_ms", Num(r.p999)}, {"max_ms", Num(r.max)},
                    {"mean_ms", Num(r.mean)}, {"requests", Num(double(r.requests))},
                    {"errors", Num(double(r.errors))}, {"unfinished", Num(double(r.unfinished))},
                    {"mismatches", Num(double(g_mismatches.load()))}, {"client_cpu_cores", Num(cpu)},
                    {"connections", Num(cfg.connections)}, {"depth", Num(cfg.depth)},
                    {"threads", Num(cfg.threads)}, {"keys_per_request", Num(cfg.keys_per_request)},
                    {"duration_s", Num(cfg.duration)}, {"ok", failed ? "false" : "true"}})
                  .c_str());
  return failed ? 1 : 0;
}

// --- rocksdb-inproc ------------------------------------------------------------------------------

// The storage key Kosh uses (features::StorageKey): 4-byte big-endian group id, varint length, key.
void RocksKey(uint32_t group_id, uint32_t i, char* out) {
  out[0] = static_cast<char>(group_id >> 24);
  out[1] = static_cast<char>(group_id >> 16);
  out[2] = static_cast<char>(group_id >> 8);
  out[3] = static_cast<char>(group_id);
  out[4] = static_cast<char>(kKeyLen);
  KeyName(i, out + 5);
}
constexpr size_t kRocksKeyLen = 5 + kKeyLen;

void CheckRocks(const rocksdb::Status& s, const std::string& what) {
  if (!s.ok()) Die(what + ": " + s.ToString());
}

int RocksInproc() {
  const std::string dir = Flag("db", "/tmp/fs_load_rocksdb");
  const uint32_t n = static_cast<uint32_t>(IntFlag("keys", 1000000));
  const uint32_t k = static_cast<uint32_t>(IntFlag("keys-per-request", 100));
  const int threads = static_cast<int>(IntFlag("threads", 2));
  const double duration = DoubleFlag("duration", 10);
  const uint64_t seed = static_cast<uint64_t>(IntFlag("seed", 1));
  constexpr uint32_t kGroupId = 1;

  // The same table options as src/storage/rocksdb_engine.cc.
  auto cache = rocksdb::NewLRUCache(256ull << 20);
  rocksdb::Options o;
  o.create_if_missing = true;
  o.max_background_jobs = 2;
  o.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  o.keep_log_file_num = 3;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.block_size = 8 * 1024;
  table.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  o.write_buffer_size = 64ull << 20;
  o.compression = rocksdb::kLZ4Compression;
  o.bottommost_compression = rocksdb::kZSTD;
  o.level_compaction_dynamic_level_bytes = true;
  CheckRocks(rocksdb::DestroyDB(dir, o), "destroying " + dir);

  // The encoded row, exactly as Kosh's Persist stores it.
  std::vector<kosh::v1::FeatureSpec> specs(kFeatures);
  for (int j = 0; j < kFeatures; ++j) {
    specs[j].set_name("f" + std::to_string(j));
    specs[j].set_type(v1::FLOAT32);
  }
  kosh::features::Layout layout(1, specs);
  std::vector<int> fields(kFeatures);
  for (int j = 0; j < kFeatures; ++j) fields[j] = j;
  auto encode = [&](uint32_t i, std::string* out) {
    std::vector<v1::Value> vals(kFeatures);
    std::vector<const v1::Value*> ptrs(kFeatures);
    for (int j = 0; j < kFeatures; ++j) {
      vals[j].set_float32_value(FeatureValue(i, j));
      ptrs[j] = &vals[j];
    }
    auto s = kosh::features::EncodeRow(layout, fields, ptrs, 0, kosh::features::CodecOptions(), "", out);
    if (!s.ok()) Die("EncodeRow: " + s.ToString());
  };
  {
    v1::EntityKey ek;
    ek.add_parts(KeyName(12345));
    char key[kRocksKeyLen];
    RocksKey(kGroupId, 12345, key);
    if (kosh::features::StorageKey(kGroupId, ek) != std::string(key, kRocksKeyLen)) {
      Die("storage key layout differs from features::StorageKey");
    }
  }

  rocksdb::DB* raw = nullptr;
  CheckRocks(rocksdb::DB::Open(o, dir, &raw), "opening " + dir);
  std::unique_ptr<rocksdb::DB> db(raw);
  const int64_t l0 = NowNs();
  std::string value;
  size_t value_bytes = 0;
  for (uint32_t start = 0; start < n; start += 1000) {
    rocksdb::WriteBatch wb;
    for (uint32_t i = start; i < std::min(n, start + 1000); ++i) {
      char key[kRocksKeyLen];
      RocksKey(kGroupId, i, key);
      encode(i, &value);
      value_bytes = value.size();
      wb.Put(rocksdb::Slice(key, kRocksKeyLen), value);
    }
    rocksdb::WriteOptions wo;
    wo.disableWAL = true;
    CheckRocks(db->Write(wo, &wb), "write");
  }
  CheckRocks(db->Flush(rocksdb::FlushOptions()), "flush");
  rocksdb::CompactRangeOptions cro;
  CheckRocks(db->CompactRange(cro, nullptr, nullptr), "compact");
  const double load_s = (NowNs() - l0) / 1e9;

  // One timed phase: `secs` seconds of MultiGet of k keys per call from `threads` threads.
  struct PhaseResult {
    uint64_t calls = 0, found = 0;
    std::vector<int64_t> lat;
  };
  auto phase = [&](double secs, bool sequential) {
    std::vector<PhaseResult> per(static_cast<size_t>(threads));
    std::atomic<uint32_t> next_seq{0};
    const int64_t end = NowNs() + static_cast<int64_t>(secs * 1e9);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        Rng rng(seed * 31337 + static_cast<uint64_t>(t));
        PhaseResult& pr = per[static_cast<size_t>(t)];
        std::vector<char> keys(k * kRocksKeyLen);
        std::vector<rocksdb::Slice> slices(k);
        std::vector<rocksdb::PinnableSlice> vals(k);
        std::vector<rocksdb::Status> sts(k);
        std::vector<uint32_t> ids(k);
        std::vector<float> out(size_t{k} * kFeatures);
        std::string scratch;
        rocksdb::ReadOptions ro;
        uint64_t iter = 0;
        for (;;) {
          uint32_t nk = k;
          if (sequential) {
            uint32_t s = next_seq.fetch_add(k);
            if (s >= n) break;
            nk = std::min(k, n - s);
            for (uint32_t r = 0; r < nk; ++r) ids[r] = s + r;
          } else {
            if ((iter & 7) == 0 && NowNs() >= end) break;
            for (uint32_t r = 0; r < k; ++r) ids[r] = rng.Below(n);
          }
          for (uint32_t r = 0; r < nk; ++r) {
            RocksKey(kGroupId, ids[r], keys.data() + r * kRocksKeyLen);
            slices[r] = rocksdb::Slice(keys.data() + r * kRocksKeyLen, kRocksKeyLen);
          }
          int64_t c0 = NowNs();
          db->MultiGet(ro, db->DefaultColumnFamily(), nk, slices.data(), vals.data(), sts.data());
          for (uint32_t r = 0; r < nk; ++r) {
            if (!sts[r].ok()) continue;
            auto row = kosh::features::ParseRow(absl::string_view(vals[r].data(), vals[r].size()), &scratch);
            if (row.ok() && row->payload.size() == sizeof(float) * kFeatures) {
              std::memcpy(out.data() + size_t{r} * kFeatures, row->payload.data(), row->payload.size());
              ++pr.found;
            }
            vals[r].Reset();
          }
          pr.lat.push_back(NowNs() - c0);
          ++pr.calls;
          if (!sequential && (iter % 64) == 0) Verify(ids.data(), nk, out.data());
          ++iter;
        }
      });
    }
    for (auto& t : ts) t.join();
    PhaseResult all;
    for (auto& p : per) {
      all.calls += p.calls;
      all.found += p.found;
      all.lat.insert(all.lat.end(), p.lat.begin(), p.lat.end());
    }
    std::sort(all.lat.begin(), all.lat.end());
    return all;
  };
  phase(0, true);  // warm: read every key once so the data blocks are in the block cache
  const int64_t m0 = NowNs();
  PhaseResult r = phase(duration, false);
  const double secs = (NowNs() - m0) / 1e9;
  const double lookups = double(r.calls) * k / secs;
  auto q = [&](double p) {
    return r.lat.empty() ? 0.0 : r.lat[std::min(r.lat.size() - 1, size_t(p * double(r.lat.size())))] / 1e6;
  };
  const bool ok = r.found == r.calls * k && g_mismatches.load() == 0;
  db.reset();
  rocksdb::DestroyDB(dir, o);
  std::printf("rocksdb-inproc: %u keys (key %zu B, value %zu B) loaded+compacted in %.1f s; MultiGet of %u "
              "keys from %d threads: %.0f lookups/s (%.0f calls/s), per call p50 %.3f p99 %.3f ms%s\n",
              n, kRocksKeyLen, value_bytes, load_s, k, threads, lookups, r.calls / secs, q(0.5), q(0.99),
              ok ? "" : "  (MISSING OR WRONG VALUES)");
  std::printf("%s\n", Json({{"mode", Str("rocksdb-inproc")}, {"lookups_per_s", Num(lookups)},
                            {"multiget_calls_per_s", Num(r.calls / secs)}, {"threads", Num(threads)},
                            {"keys_per_call", Num(k)}, {"call_p50_ms", Num(q(0.5))},
                            {"call_p99_ms", Num(q(0.99))}, {"value_bytes", Num(double(value_bytes))},
                            {"load_seconds", Num(load_s)}, {"ok", ok ? "true" : "false"}})
                          .c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil is built without NDEBUG: absl::Mutex (which gRPC uses) would otherwise track
  // lock order for deadlock detection on every Lock. The server turns it off too.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  ParseFlags(argc, argv);
  std::string mode = Flag("mode", "");
  if (mode == "load-kosh") return LoadKosh();
  if (mode == "load-redis") return LoadRedis();
  if (mode == "warm-kosh") return WarmKosh();
  if (mode == "rocksdb-inproc") return RocksInproc();
  if (mode == "run") return RunMode();
  Die("--mode: load-kosh, load-redis, warm-kosh, rocksdb-inproc or run (see the top of bench/fs_load.cc)");
}
