// ds_bench: the tools of the datasets benchmark (bench/datasets.sh).
//
//   ds_bench MODE [--flag value | --flag=value]...
//
// Modes
//   gen      Writes the input: --files CSV files under --out with ceil(--input-gb * 1e9 / 540)
//            users in total, "u<id>,<item>:<score>|<item>:<score>|..." with 20 to 50 items per user
//            (item ids 1..20,000,000, scores 0.0000..0.9999), ~570 bytes a line. Every user's line
//            is a function of (--seed, id) only, so the input is the same on every run; files are
//            written in parallel by --threads threads. Prints {"users": N, "bytes": B, "files": F}.
//   reader   Open-loop reader: --rate MultiGet requests/s of 3 random keys "u<0..keys-1>" of
//            --dataset, sent at fixed intended times over --connections channels whether or not
//            earlier calls returned; latency runs from the intended send time to the response
//            (no coordinated omission). Runs until SIGINT/SIGTERM or --duration seconds, then
//            writes one record per request to --out (binary: i64 intended unix ns, u32 latency
//            us, u32 status: 0 ok, 1 RPC error, 2 a key missing, 3 not sent in time).
//   analyze  Reads --records and --phases (lines "name start_unix_ns end_unix_ns"; windows with
//            the same name are pooled) and prints one JSON object: per phase the request count,
//            achieved rate, errors, p50/p99/p99.9/max latency in ms.
//   loads    The load side of the bulk path, as one long-lived process so that no process start
//            lands in a measured window: --rounds rounds of (idle window, LoadVersion of the next
//            of --builds (comma-separated, used in turn) with the server's default verification
//            (the whole-file checksum check after the swap), idle window, LoadVersion of the next
//            build with VERIFY_BEFORE_SWAP). A load window starts with the call and lasts
//            max(--window seconds, the load, the end of its after-swap check: ListVersions is
//            polled every 20 ms); the idle window before it lasts as long as the previous load
//            window (--window for the first). Appends the windows to --phases ("idle.v<i>",
//            "load.<i>", "idle.b<i>", "before.<i>", then "idle.last"; and "check.load.<i>", the
//            part of "load.<i>" until its check ended; "swapped.before.<i>", the first 0.3 s of
//            "before.<i>" after its swap), writes each
//            LoadVersionResponse as JSON to --out-dir/<window name>.json and the check's end to
//            <window name>.check.json ({"check_end_s", "checksum_seconds", "checksums"}).
//   online   The online write path: reads the same CSV --inputs, encodes each user's list the way
//            datasets store it (src/datasets/value_codec.h) and writes it through
//            FeatureStore.Persist into --entity/--group as the single BYTES feature --feature,
//            --batch rows per request, --writers requests in flight (synchronous callers). Stops
//            after --max-seconds (0 = all rows). Prints {"rows", "seconds", "rows_per_s",
//            "capped", "batches", "errors"}.
//
// Flags (defaults in brackets): --out, --input-gb [5], --files [8], --threads [2], --seed [42],
// --server [127.0.0.1:7070], --dataset [recs], --keys, --rate [1000], --connections [4],
// --duration [0 = until a signal], --records, --phases, --entity [user], --group [recs],
// --feature [recs], --batch [50], --writers [4], --max-seconds [0], --inputs (comma-separated),
// --builds, --rounds [8], --window [3], --out-dir.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "datasets/value_codec.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "kosh/v1/datasets.grpc.pb.h"
#include "kosh/v1/feature_store.grpc.pb.h"

namespace {

using SysClock = std::chrono::system_clock;
using Steady = std::chrono::steady_clock;

std::map<std::string, std::string> g_flags;

std::string Flag(const std::string& name, const std::string& def = "") {
  auto it = g_flags.find(name);
  return it == g_flags.end() ? def : it->second;
}
int64_t IntFlag(const std::string& name, int64_t def) {
  int64_t v;
  return absl::SimpleAtoi(Flag(name), &v) ? v : def;
}
double DoubleFlag(const std::string& name, double def) {
  double v;
  return absl::SimpleAtod(Flag(name), &v) ? v : def;
}
int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SysClock::now().time_since_epoch()).count();
}

uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

char* PutUint(char* p, uint64_t v) {
  char buf[24];
  int n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *p++ = buf[--n];
  return p;
}

// --- gen --------------------------------------------------------------------------------------------

int Gen() {
  const std::string out = Flag("--out");
  if (out.empty()) {
    std::cerr << "gen: --out DIR is required\n";
    return 2;
  }
  const double gb = DoubleFlag("--input-gb", 5);
  const int files = static_cast<int>(IntFlag("--files", 8));
  const int threads = static_cast<int>(IntFlag("--threads", 2));
  const uint64_t seed = static_cast<uint64_t>(IntFlag("--seed", 42));
  const uint64_t users = static_cast<uint64_t>(std::ceil(gb * 1e9 / 540));
  std::atomic<int> next{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      std::string buf;
      buf.reserve(8 << 20);
      for (int f = next.fetch_add(1); f < files; f = next.fetch_add(1)) {
        std::string path = absl::StrCat(out, "/part-", f, ".csv");
        FILE* fp = std::fopen(path.c_str(), "wb");
        if (fp == nullptr) {
          failed = true;
          return;
        }
        const uint64_t from = users * f / files, to = users * (f + 1) / files;
        char line[2048];
        for (uint64_t u = from; u < to; ++u) {
          uint64_t s = seed * 0x100000001b3ull ^ u;
          char* p = line;
          *p++ = 'u';
          p = PutUint(p, u);
          *p++ = ',';
          const int n = 20 + static_cast<int>(SplitMix(s) % 31);
          for (int i = 0; i < n; ++i) {
            if (i) *p++ = '|';
            p = PutUint(p, 1 + SplitMix(s) % 20000000);
            const uint64_t score = SplitMix(s) % 10000;
            *p++ = ':';
            *p++ = '0';
            *p++ = '.';
            *p++ = static_cast<char>('0' + score / 1000);
            *p++ = static_cast<char>('0' + score / 100 % 10);
            *p++ = static_cast<char>('0' + score / 10 % 10);
            *p++ = static_cast<char>('0' + score % 10);
          }
          *p++ = '\n';
          buf.append(line, p - line);
          if (buf.size() >= (8 << 20) - 4096) {
            if (std::fwrite(buf.data(), 1, buf.size(), fp) != buf.size()) failed = true;
            bytes += buf.size();
            buf.clear();
          }
        }
        if (std::fwrite(buf.data(), 1, buf.size(), fp) != buf.size()) failed = true;
        bytes += buf.size();
        buf.clear();
        if (std::fclose(fp) != 0) failed = true;
      }
    });
  }
  for (auto& t : ts) t.join();
  if (failed) {
    std::cerr << "gen: writing under " << out << " failed\n";
    return 1;
  }
  std::cout << "{\"users\": " << users << ", \"bytes\": " << bytes.load() << ", \"files\": " << files << "}\n";
  return 0;
}

// --- reader -----------------------------------------------------------------------------------------

struct Record {
  int64_t intended_ns;
  uint32_t latency_us;
  uint32_t status;
};

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

struct Call {
  grpc::ClientContext ctx;
  kosh::v1::DatasetMultiGetRequest req;
  kosh::v1::DatasetMultiGetResponse resp;
  int64_t intended_ns = 0;
  Steady::time_point intended;
};

int Reader() {
  const std::string server = Flag("--server", "127.0.0.1:7070");
  const std::string dataset = Flag("--dataset", "recs");
  const uint64_t keys = static_cast<uint64_t>(IntFlag("--keys", 0));
  const double rate = DoubleFlag("--rate", 1000);
  const int conns = static_cast<int>(IntFlag("--connections", 4));
  const double duration = DoubleFlag("--duration", 0);
  const std::string out = Flag("--out");
  if (keys == 0 || out.empty() || rate <= 0) {
    std::cerr << "reader: --keys N, --out FILE and a positive --rate are required\n";
    return 2;
  }
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  std::vector<std::unique_ptr<kosh::v1::Datasets::Stub>> stubs;
  for (int c = 0; c < conns; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    stubs.push_back(kosh::v1::Datasets::NewStub(
        grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args)));
  }
  std::mutex mu;
  std::vector<Record> records;
  records.reserve(static_cast<size_t>(rate * 3600));
  std::atomic<int64_t> in_flight{0};
  uint64_t rng = 12345;
  const auto period = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / rate));
  const auto start = Steady::now() + std::chrono::milliseconds(100);
  const int64_t start_ns = NowNs() + 100'000'000;
  uint64_t i = 0;
  while (!g_stop.load()) {
    const auto intended = start + period * i;
    if (duration > 0 && intended - start > std::chrono::duration<double>(duration)) break;
    std::this_thread::sleep_until(intended);
    auto* call = new Call();
    call->intended = intended;
    call->intended_ns = start_ns + static_cast<int64_t>(period.count()) * static_cast<int64_t>(i);
    call->req.set_dataset(dataset);
    for (int k = 0; k < 3; ++k) call->req.add_keys(absl::StrCat("u", SplitMix(rng) % keys));
    call->ctx.set_deadline(SysClock::now() + std::chrono::seconds(10));
    in_flight++;
    stubs[i % stubs.size()]->async()->MultiGet(&call->ctx, &call->req, &call->resp, [&, call](grpc::Status s) {
      const auto done = Steady::now();
      Record r;
      r.intended_ns = call->intended_ns;
      r.latency_us = static_cast<uint32_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(done - call->intended).count());
      r.status = !s.ok() ? 1 : (call->resp.found() != 3 ? 2 : 0);
      if (!s.ok() && getenv("DS_BENCH_VERBOSE")) std::cerr << "reader: " << s.error_message() << "\n";
      {
        std::lock_guard<std::mutex> l(mu);
        records.push_back(r);
      }
      delete call;
      in_flight--;
    });
    ++i;
  }
  for (int w = 0; w < 1500 && in_flight.load() > 0; ++w) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::lock_guard<std::mutex> l(mu);
  std::sort(records.begin(), records.end(),
            [](const Record& a, const Record& b) { return a.intended_ns < b.intended_ns; });
  FILE* fp = std::fopen(out.c_str(), "wb");
  if (fp == nullptr) return 1;
  std::fwrite(records.data(), sizeof(Record), records.size(), fp);
  std::fclose(fp);
  std::cerr << "reader: " << records.size() << " requests recorded, " << in_flight.load() << " unanswered\n";
  return 0;
}

// --- analyze ----------------------------------------------------------------------------------------

int Analyze() {
  std::vector<Record> records;
  {
    std::ifstream in(Flag("--records"), std::ios::binary);
    Record r;
    while (in.read(reinterpret_cast<char*>(&r), sizeof(r))) records.push_back(r);
  }
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> windows;
  {
    std::ifstream in(Flag("--phases"));
    std::string name;
    int64_t a, b;
    while (in >> name >> a >> b) {
      if (!windows.count(name)) order.push_back(name);
      windows[name].push_back({a, b});
    }
  }
  std::string json = "{";
  for (size_t k = 0; k < order.size(); ++k) {
    const auto& ws = windows[order[k]];
    std::vector<uint32_t> lat;
    uint64_t errors = 0, missing = 0;
    double seconds = 0;
    for (const auto& [a, b] : ws) {
      seconds += (b - a) / 1e9;
      auto lo = std::lower_bound(records.begin(), records.end(), a,
                                 [](const Record& r, int64_t v) { return r.intended_ns < v; });
      for (auto it = lo; it != records.end() && it->intended_ns < b; ++it) {
        lat.push_back(it->latency_us);
        errors += it->status == 1;
        missing += it->status == 2;
      }
    }
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double p) {
      if (lat.empty()) return 0.0;
      size_t idx = std::min(lat.size() - 1, static_cast<size_t>(std::ceil(p * lat.size())) - (p > 0 ? 1 : 0));
      return lat[idx] / 1000.0;
    };
    char buf[512];
    std::snprintf(buf, sizeof(buf),
                  "%s\"%s\": {\"windows\": %zu, \"seconds\": %.2f, \"requests\": %zu, \"rate\": %.1f, "
                  "\"errors\": %llu, \"missing\": %llu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, "
                  "\"max_ms\": %.3f}",
                  k ? ", " : "", order[k].c_str(), ws.size(), seconds, lat.size(),
                  seconds > 0 ? lat.size() / seconds : 0.0, static_cast<unsigned long long>(errors),
                  static_cast<unsigned long long>(missing), pct(0.50), pct(0.99), pct(0.999),
                  lat.empty() ? 0.0 : lat.back() / 1000.0);
    json += buf;
  }
  json += "}";
  std::cout << json << "\n";
  return 0;
}

// --- loads ------------------------------------------------------------------------------------------

int Loads() {
  const std::string server = Flag("--server", "127.0.0.1:7070");
  const std::string dataset = Flag("--dataset", "recs");
  const std::vector<std::string> builds = absl::StrSplit(Flag("--builds"), ',', absl::SkipEmpty());
  const int rounds = static_cast<int>(IntFlag("--rounds", 8));
  const double window = DoubleFlag("--window", 3);
  const std::string phases = Flag("--phases"), out_dir = Flag("--out-dir");
  if (builds.empty() || phases.empty() || out_dir.empty()) {
    std::cerr << "loads: --builds DIR[,DIR...], --phases FILE and --out-dir DIR are required\n";
    return 2;
  }
  auto stub = kosh::v1::Datasets::NewStub(grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
  std::ofstream ph(phases, std::ios::app);
  size_t next_build = 0;
  double last = window;
  auto sleep_s = [](double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); };
  auto idle = [&](const std::string& name) {
    const int64_t a = NowNs();
    sleep_s(last);
    ph << name << " " << a << " " << NowNs() << std::endl;
  };
  // The version's state once its after-swap checksum check has ended (polled every 20 ms, for at
  // most an hour; the version is returned as last listed if it never ends).
  auto await_check = [&](uint64_t version) -> kosh::v1::VersionInfo {
    kosh::v1::VersionInfo last;
    const auto give_up = Steady::now() + std::chrono::hours(1);
    while (Steady::now() < give_up) {
      kosh::v1::ListVersionsRequest lr;
      lr.set_dataset(dataset);
      kosh::v1::ListVersionsResponse out;
      grpc::ClientContext c;
      c.set_deadline(SysClock::now() + std::chrono::seconds(10));
      if (stub->ListVersions(&c, lr, &out).ok() && out.datasets_size() == 1) {
        for (const auto& v : out.datasets(0).versions()) {
          if (v.version() != version) continue;
          if (v.checksums() != kosh::v1::CHECKSUMS_PENDING) return v;
          last = v;
        }
      }
      sleep_s(0.02);
    }
    std::cerr << "loads: version " << version << ": its checksum check did not end within an hour\n";
    return last;
  };
  auto load = [&](const std::string& name, kosh::v1::VerifyMode verify) -> bool {
    kosh::v1::LoadVersionRequest req;
    req.set_dataset(dataset);
    req.set_path(builds[next_build++ % builds.size()]);
    req.set_verify(verify);
    kosh::v1::LoadVersionResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(SysClock::now() + std::chrono::hours(1));
    const int64_t a = NowNs();
    const auto start = Steady::now();
    grpc::Status st = stub->LoadVersion(&ctx, req, &resp);
    // With the check after the swap, the window also covers the check: it ends when the check does.
    double check_end = 0;
    kosh::v1::VersionInfo checked;
    if (st.ok() && resp.version().checksums() == kosh::v1::CHECKSUMS_PENDING) {
      checked = await_check(resp.version().version());
      check_end = std::chrono::duration<double>(Steady::now() - start).count();
    }
    const double took = std::chrono::duration<double>(Steady::now() - start).count();
    if (took < window) sleep_s(window - took);
    const int64_t b = NowNs();
    ph << name << " " << a << " " << b << std::endl;
    // The part of the window from the call to the end of the check, also on its own.
    if (check_end > 0) ph << "check." << name << " " << a << " " << a + static_cast<int64_t>(check_end * 1e9) << std::endl;
    // For a load checked before its swap, the first 0.3 s after the swap (the new version's caches
    // are cold, as they are while an after-swap check runs).
    if (st.ok() && verify == kosh::v1::VERIFY_BEFORE_SWAP) {
      const int64_t swapped = a + static_cast<int64_t>(resp.total_seconds() * 1e9);
      ph << "swapped." << name << " " << swapped << " " << swapped + 300'000'000 << std::endl;
    }
    last = (b - a) / 1e9;
    if (!st.ok()) {
      std::cerr << "loads: " << name << ": " << st.error_message() << "\n";
      return false;
    }
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(resp, &json, opts);
    std::ofstream(out_dir + "/" + name + ".json") << json << "\n";
    std::ofstream(out_dir + "/" + name + ".check.json")
        << absl::StrFormat("{\"check_end_s\": %.3f, \"checksum_seconds\": %.3f, \"checksums\": \"%s\"}\n", check_end,
                           checked.checksum_seconds(), kosh::v1::ChecksumState_Name(checked.checksums()));
    std::cerr << "loads: " << name << " " << req.path() << ": " << resp.total_seconds() << " s (verify "
              << resp.verify_seconds() << ", ingest " << resp.ingest_seconds() << ", swap " << resp.swap_seconds()
              << ")";
    if (check_end > 0) {
      std::cerr << "; checksums " << kosh::v1::ChecksumState_Name(checked.checksums()) << " " << check_end
                << " s after the call (the check took " << checked.checksum_seconds() << " s)";
    }
    std::cerr << "\n";
    return true;
  };
  for (int i = 1; i <= rounds; ++i) {
    idle(absl::StrCat("idle.v", i));
    if (!load(absl::StrCat("load.", i), kosh::v1::VERIFY_DEFAULT)) return 1;
    idle(absl::StrCat("idle.b", i));
    if (!load(absl::StrCat("before.", i), kosh::v1::VERIFY_BEFORE_SWAP)) return 1;
  }
  idle("idle.last");
  return 0;
}

// --- online -----------------------------------------------------------------------------------------

int Online() {
  const std::string server = Flag("--server", "127.0.0.1:7070");
  const int batch = static_cast<int>(IntFlag("--batch", 50));
  const int writers = static_cast<int>(IntFlag("--writers", 4));
  const double max_seconds = DoubleFlag("--max-seconds", 0);
  std::vector<std::string> inputs = absl::StrSplit(Flag("--inputs"), ',', absl::SkipEmpty());
  if (inputs.empty()) {
    std::cerr << "online: --inputs FILE[,FILE...] is required\n";
    return 2;
  }
  std::mutex mu;
  std::condition_variable cv_full, cv_empty;
  std::deque<kosh::v1::PersistRequest> queue;
  bool done_reading = false;
  std::atomic<bool> stop{false};
  const auto start = Steady::now();
  auto expired = [&] {
    return max_seconds > 0 && std::chrono::duration<double>(Steady::now() - start).count() >= max_seconds;
  };

  std::thread producer([&] {
    std::vector<kosh::datasets::RecItemView> items;
    std::string encoded;
    kosh::v1::PersistRequest req;
    auto flush = [&] {
      std::unique_lock<std::mutex> l(mu);
      cv_full.wait(l, [&] { return queue.size() < static_cast<size_t>(writers) * 4 || stop.load(); });
      queue.push_back(std::move(req));
      cv_empty.notify_one();
      req = kosh::v1::PersistRequest();
    };
    for (const auto& path : inputs) {
      std::ifstream in(path);
      std::string line;
      while (!stop.load() && std::getline(in, line)) {
        size_t comma = line.find(',');
        if (comma == std::string::npos) continue;
        absl::string_view text(line);
        if (!kosh::datasets::ParseRecsText(text.substr(comma + 1), &items).ok()) continue;
        if (!kosh::datasets::EncodeRecs(items, &encoded).ok()) continue;
        if (req.rows_size() == 0) {
          req.set_entity(Flag("--entity", "user"));
          req.set_group(Flag("--group", "recs"));
          req.add_features(Flag("--feature", "recs"));
        }
        auto* row = req.add_rows();
        row->mutable_key()->add_parts(line.substr(0, comma));
        row->add_values()->set_bytes_value(encoded);
        if (req.rows_size() == batch) flush();
      }
    }
    if (req.rows_size() > 0) flush();
    std::lock_guard<std::mutex> l(mu);
    done_reading = true;
    cv_empty.notify_all();
  });

  std::atomic<uint64_t> rows{0}, batches{0}, errors{0};
  std::vector<std::thread> ws;
  for (int w = 0; w < writers; ++w) {
    ws.emplace_back([&] {
      grpc::ChannelArguments args;
      args.SetInt("grpc.use_local_subchannel_pool", 1);
      auto stub = kosh::v1::FeatureStore::NewStub(
          grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
      while (true) {
        kosh::v1::PersistRequest req;
        {
          std::unique_lock<std::mutex> l(mu);
          cv_empty.wait(l, [&] { return !queue.empty() || done_reading || stop.load(); });
          if (queue.empty() || stop.load()) return;
          req = std::move(queue.front());
          queue.pop_front();
          cv_full.notify_one();
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(SysClock::now() + std::chrono::seconds(60));
        kosh::v1::PersistResponse resp;
        grpc::Status s = stub->Persist(&ctx, req, &resp);
        if (!s.ok()) {
          if (errors++ < 5) std::cerr << "online: " << s.error_message() << "\n";
          continue;
        }
        rows += resp.rows_written();
        batches++;
        if (expired()) {
          stop = true;
          cv_full.notify_all();
          cv_empty.notify_all();
        }
      }
    });
  }
  for (auto& w : ws) w.join();
  stop = true;
  cv_full.notify_all();
  producer.join();
  const double secs = std::chrono::duration<double>(Steady::now() - start).count();
  std::printf("{\"rows\": %llu, \"seconds\": %.2f, \"rows_per_s\": %.1f, \"capped\": %s, \"batches\": %llu, "
              "\"errors\": %llu}\n",
              static_cast<unsigned long long>(rows.load()), secs, rows.load() / secs,
              expired() ? "true" : "false", static_cast<unsigned long long>(batches.load()),
              static_cast<unsigned long long>(errors.load()));
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: ds_bench gen|reader|analyze|loads|online [--flag value]... (see the top of bench/ds_bench.cc)\n";
    return 2;
  }
  std::string mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      g_flags[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      g_flags[a] = argv[++i];
    } else {
      std::cerr << a << ": needs a value\n";
      return 2;
    }
  }
  if (mode == "gen") return Gen();
  if (mode == "reader") return Reader();
  if (mode == "analyze") return Analyze();
  if (mode == "online") return Online();
  if (mode == "loads") return Loads();
  std::cerr << "unknown mode " << mode << "\n";
  return 2;
}
