#include "cli/dataset_command.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/config.h"
#include "base/status.h"
#include "cli/flags.h"
#include "datasets/builder.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "kosh/v1/datasets.grpc.pb.h"

namespace kosh::cli {
namespace {

constexpr const char* kUsage = R"(kosh dataset: bulk-loaded, versioned key -> value datasets.

usage:
  kosh dataset build --dataset NAME --kind bytes|json|recs|record --output DIR [options] INPUT...
      Runs without a server. INPUT: CSV, TSV or JSON Lines files, optionally .gz or .zst.
      --format csv|tsv|jsonl    default: from the first input's name
      --schema FILE             RECORD: the fields (YAML: fields: [{name, type, length}])
      --header                  CSV/TSV: the first line of every file names the columns
      --key-column C            CSV/TSV: the key column, a header name or a 0-based index (default 0)
      --value-column C          CSV/TSV: the value column (default: the column after the key)
      --key-field F             JSONL: the key member (default "key")
      --value-field F           JSONL: the value member (default "value")
      --bytes-encoding E        BYTES values as written: raw (default), base64 or hex
      --on-duplicate error|last duplicate keys: fail (default, with line numbers) or keep the last
      --max-bad-rows N          malformed rows to skip and report before failing (default 0)
      --partitions N            key partitions, i.e. parallel files (default 16)
      --partition I/N           build only partition I of N (one job per partition, same --output)
      --memory SIZE             memory budget of the external sort (default 1GiB)
      --threads N               worker threads (default: every core)
      --tmp-dir DIR             spill files (default: inside --output)
      --file-size SIZE          target size of one data file (default 256MiB)
      --compression none|lz4|zstd   data block compression (default: none for recs, else lz4)
      --label TEXT              stored in the manifest and shown by `list`
  kosh dataset load --dataset NAME [--no-activate] [--warm] [--rate-limit SIZE]
                    [--allow-schema-change] [--verify MODE | --no-verify] [--wait true|false]
                    [--timeout DURATION] DIR
      DIR is a build output directory as the server sees it (made absolute here).
      --verify when every file's CRC-32C is compared with the manifest (default: the server's
      datasets.verify, after-swap unless configured):
        before-swap     first; the version serves only if every file matches (O(size))
        after-swap      by a background pass right after the swap; a mismatch, or a read that
                        meets a corrupt block first, fails the version and the previous one
                        serves again (`list` shows checksums PENDING until the pass ends)
        structure-only  never (sizes, footers, key ranges and row counts only)
      --no-verify is --verify structure-only. Every read checks the CRC of each block it reads.
      --wait false (or --no-wait) returns once the version exists (state BUILDING) and leaves the
      load running on the server; poll `kosh dataset list` for CURRENT/READY or FAILED.
  kosh dataset list [--dataset NAME]
  kosh dataset rollback --dataset NAME [--version N]     (default: the newest older backup)
  kosh dataset delete --dataset NAME --version N
  kosh dataset get --dataset NAME [--version N] KEY...

client options: --server HOST:PORT (default $KOSH_SERVER or localhost:7070), --token TOKEN
(default $KOSH_TOKEN). Output is JSON.
)";

const std::set<std::string> kBoolFlags = {"--header", "--no-activate", "--warm", "--allow-schema-change",
                                          "--no-verify", "--no-wait"};

struct Args {
  std::map<std::string, std::string> flags;
  std::set<std::string> bools;
  std::vector<std::string> positional;
  std::string server;
  std::string token;

  bool Has(const std::string& f) const { return flags.count(f) > 0; }
  std::string Get(const std::string& f, const std::string& def = "") const {
    auto it = flags.find(f);
    return it == flags.end() ? def : it->second;
  }
};

int Fail(const absl::Status& s) {
  std::cerr << "kosh: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::StatusOr<Args> Parse(const std::vector<std::string>& in) {
  Args a;
  const char* env_server = std::getenv("KOSH_SERVER");
  const char* env_token = std::getenv("KOSH_TOKEN");
  a.server = env_server ? env_server : "localhost:7070";
  a.token = env_token ? env_token : "";
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& s = in[i];
    if (s.rfind("--", 0) != 0 || s == "--") {
      a.positional.push_back(s);
      continue;
    }
    if (kBoolFlags.count(s)) {
      a.bools.insert(s);
      continue;
    }
    std::string name, value;
    RETURN_IF_ERROR(ReadFlagValue(in, &i, &name, &value));
    if (name == "--server") a.server = value;
    else if (name == "--token") a.token = value;
    else a.flags[name] = value;
  }
  return a;
}

absl::Status CheckFlags(const Args& a, std::initializer_list<const char*> allowed) {
  std::set<std::string> ok(allowed.begin(), allowed.end());
  for (const auto& [f, v] : a.flags) {
    if (!ok.count(f)) return absl::InvalidArgumentError(absl::StrCat("unknown option ", f));
  }
  for (const auto& f : a.bools) {
    if (!ok.count(f)) return absl::InvalidArgumentError(absl::StrCat("unknown option ", f));
  }
  return absl::OkStatus();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

// --- build ---------------------------------------------------------------------------------------

int Build(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset", "--kind", "--output", "--format", "--schema", "--header", "--key-column",
                              "--value-column", "--key-field", "--value-field", "--bytes-encoding", "--on-duplicate",
                              "--max-bad-rows", "--partitions", "--partition", "--memory", "--threads", "--tmp-dir",
                              "--file-size", "--compression", "--label"});
      !s.ok()) {
    return Fail(s);
  }
  datasets::BuildOptions o;
  o.dataset = a.Get("--dataset");
  o.output_dir = a.Get("--output");
  o.inputs = a.positional;
  if (o.dataset.empty() || !a.Has("--kind") || o.output_dir.empty() || o.inputs.empty()) {
    return Fail(absl::InvalidArgumentError("build: --dataset, --kind, --output and at least one INPUT are required"));
  }
  auto kind = datasets::ParseKind(a.Get("--kind"));
  if (!kind.ok()) return Fail(kind.status());
  std::vector<v1::FeatureSpec> fields;
  if (*kind == v1::DATASET_KIND_RECORD) {
    if (!a.Has("--schema")) return Fail(absl::InvalidArgumentError("build: --kind record needs --schema FILE"));
    auto f = datasets::LoadRecordFields(a.Get("--schema"));
    if (!f.ok()) return Fail(f.status());
    fields = std::move(*f);
  } else if (a.Has("--schema")) {
    return Fail(absl::InvalidArgumentError("build: --schema is for --kind record"));
  }
  auto schema = datasets::MakeSchema(*kind, std::move(fields));
  if (!schema.ok()) return Fail(schema.status());
  o.schema = std::move(*schema);
  if (a.Has("--format")) {
    auto f = datasets::ParseInputFormat(a.Get("--format"));
    if (!f.ok()) return Fail(f.status());
    o.format = *f;
  }
  o.parser.header = a.bools.count("--header") > 0;
  o.parser.key_column = a.Get("--key-column");
  o.parser.value_column = a.Get("--value-column");
  o.parser.key_field = a.Get("--key-field", "key");
  o.parser.value_field = a.Get("--value-field", "value");
  if (a.Has("--bytes-encoding")) {
    auto e = datasets::ParseBytesEncoding(a.Get("--bytes-encoding"));
    if (!e.ok()) return Fail(e.status());
    o.parser.bytes_encoding = *e;
  }
  std::string dup = a.Get("--on-duplicate", "error");
  if (dup == "last") o.on_duplicate = datasets::OnDuplicate::kLastWins;
  else if (dup != "error") return Fail(absl::InvalidArgumentError("--on-duplicate: error or last"));
  auto uint_flag = [&](const char* f, uint64_t* out) -> absl::Status {
    if (!a.Has(f)) return absl::OkStatus();
    if (!absl::SimpleAtoi(a.Get(f), out)) return absl::InvalidArgumentError(absl::StrCat(f, ": expected a number"));
    return absl::OkStatus();
  };
  auto bytes_flag = [&](const char* f, uint64_t* out) -> absl::Status {
    if (!a.Has(f)) return absl::OkStatus();
    auto b = base::ParseBytes(a.Get(f));
    if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat(f, ": ", b.status().message()));
    *out = *b;
    return absl::OkStatus();
  };
  uint64_t partitions = o.partitions, threads = 0;
  absl::Status st = uint_flag("--max-bad-rows", &o.max_bad_rows);
  if (st.ok()) st = uint_flag("--partitions", &partitions);
  if (st.ok()) st = uint_flag("--threads", &threads);
  if (st.ok()) st = bytes_flag("--memory", &o.memory_budget);
  if (st.ok()) st = bytes_flag("--file-size", &o.target_file_bytes);
  if (!st.ok()) return Fail(st);
  o.partitions = static_cast<uint32_t>(std::min<uint64_t>(partitions, UINT32_MAX));
  o.threads = static_cast<int>(std::min<uint64_t>(threads, 1024));
  if (a.Has("--partition")) {
    std::vector<std::string> parts = absl::StrSplit(a.Get("--partition"), '/');
    uint32_t i = 0, n = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &i) || !absl::SimpleAtoi(parts[1], &n) || n == 0) {
      return Fail(absl::InvalidArgumentError("--partition: expected I/N, e.g. 3/16"));
    }
    if (a.Has("--partitions") && n != o.partitions) {
      return Fail(absl::InvalidArgumentError("--partition I/N and --partitions disagree on N"));
    }
    o.partitions = n;
    o.partition = i;
  }
  if (a.Has("--compression")) {
    auto c = storage::ParseCompression(a.Get("--compression"));
    if (!c.ok()) return Fail(c.status());
    o.compression = *c;
  }
  o.tmp_dir = a.Get("--tmp-dir");
  o.label = a.Get("--label");
  datasets::BuildReport report;
  absl::Status s = datasets::Build(o, &report);
  std::cout << report.ToJson() << std::endl;
  if (!s.ok()) return Fail(s);
  std::cerr << "kosh: built " << report.rows_written << " rows of dataset \"" << o.dataset << "\" into "
            << report.files << " files in " << report.total_seconds << " s ("
            << (report.total_seconds > 0 ? report.input_bytes / 1e6 / report.total_seconds : 0) << " MB/s of input"
            << (report.bad_rows ? absl::StrCat(", ", report.bad_rows, " malformed rows skipped") : "") << ")\n";
  return 0;
}

// --- client --------------------------------------------------------------------------------------

class Client {
 public:
  explicit Client(const Args& a) : token_(a.token) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 << 20);
    stub_ = v1::Datasets::NewStub(grpc::CreateCustomChannel(a.server, grpc::InsecureChannelCredentials(), args));
  }
  template <typename Req, typename Resp>
  absl::Status Call(grpc::Status (v1::Datasets::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
    grpc::Status s = (stub_.get()->*method)(&ctx, req, resp);
    if (s.ok()) return absl::OkStatus();
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }

 private:
  std::string token_;
  std::unique_ptr<v1::Datasets::Stub> stub_;
};

absl::StatusOr<uint64_t> VersionFlag(const Args& a, bool required) {
  if (!a.Has("--version")) {
    if (required) return absl::InvalidArgumentError("--version N is required");
    return 0;
  }
  uint64_t v;
  if (!absl::SimpleAtoi(a.Get("--version"), &v)) return absl::InvalidArgumentError("--version: expected a number");
  return v;
}

int Load(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset", "--no-activate", "--warm", "--rate-limit", "--allow-schema-change",
                              "--no-verify", "--verify", "--wait", "--no-wait", "--timeout"});
      !s.ok()) {
    return Fail(s);
  }
  if (!a.Has("--dataset") || a.positional.size() != 1) {
    return Fail(absl::InvalidArgumentError("load: --dataset NAME and one build directory are required"));
  }
  v1::LoadVersionRequest req;
  req.set_dataset(a.Get("--dataset"));
  std::error_code ec;
  req.set_path(std::filesystem::absolute(a.positional[0], ec).lexically_normal().string());
  if (!req.path().empty() && req.path().size() > 1 && req.path().back() == '/') req.mutable_path()->pop_back();
  if (a.bools.count("--no-activate")) req.set_activate(false);
  if (a.bools.count("--warm")) req.set_warm(true);
  if (a.bools.count("--allow-schema-change")) req.set_allow_schema_change(true);
  if (a.Has("--verify")) {
    const std::string m = a.Get("--verify");
    if (a.bools.count("--no-verify")) {
      return Fail(absl::InvalidArgumentError("--verify and --no-verify: give one of them"));
    }
    if (m == "before-swap") {
      req.set_verify(v1::VERIFY_BEFORE_SWAP);
    } else if (m == "after-swap") {
      req.set_verify(v1::VERIFY_AFTER_SWAP);
    } else if (m == "structure-only") {
      req.set_verify(v1::VERIFY_STRUCTURE_ONLY);
    } else {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--verify: \"", m, "\" is not one of before-swap, after-swap, structure-only")));
    }
  }
  if (a.bools.count("--no-verify")) req.set_verify(v1::VERIFY_STRUCTURE_ONLY);
  if (a.Has("--wait")) {
    const std::string w = a.Get("--wait");
    if (w != "true" && w != "false") return Fail(absl::InvalidArgumentError("--wait: expected true or false"));
    if (a.bools.count("--no-wait") && w == "true") {
      return Fail(absl::InvalidArgumentError("--wait true and --no-wait contradict each other"));
    }
    req.set_wait(w == "true");
  }
  if (a.bools.count("--no-wait")) req.set_wait(false);
  if (a.Has("--rate-limit")) {
    auto b = base::ParseBytes(a.Get("--rate-limit"));
    if (!b.ok()) return Fail(absl::InvalidArgumentError(absl::StrCat("--rate-limit: ", b.status().message())));
    req.set_rate_limit_bytes_per_second(*b);
  }
  int64_t timeout_ms = 3600 * 1000;
  if (a.Has("--timeout")) {
    auto t = base::ParseDurationMs(a.Get("--timeout"));
    if (!t.ok()) return Fail(absl::InvalidArgumentError(absl::StrCat("--timeout: ", t.status().message())));
    timeout_ms = *t;
  }
  Client c(a);
  v1::LoadVersionResponse resp;
  absl::Status s = c.Call(&v1::Datasets::Stub::LoadVersion, req, &resp, std::chrono::milliseconds(timeout_ms));
  if (!s.ok()) return Fail(s);
  std::cout << ToJson(resp);
  return 0;
}

int List(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset"}); !s.ok()) return Fail(s);
  v1::ListVersionsRequest req;
  req.set_dataset(a.Get("--dataset"));
  v1::ListVersionsResponse resp;
  Client c(a);
  absl::Status s = c.Call(&v1::Datasets::Stub::ListVersions, req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << ToJson(resp);
  return 0;
}

int Rollback(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset", "--version"}); !s.ok()) return Fail(s);
  auto v = VersionFlag(a, false);
  if (!v.ok()) return Fail(v.status());
  v1::RollbackRequest req;
  req.set_dataset(a.Get("--dataset"));
  req.set_version(*v);
  v1::RollbackResponse resp;
  Client c(a);
  absl::Status s = c.Call(&v1::Datasets::Stub::Rollback, req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << ToJson(resp);
  return 0;
}

int Delete(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset", "--version"}); !s.ok()) return Fail(s);
  auto v = VersionFlag(a, true);
  if (!v.ok()) return Fail(v.status());
  v1::DeleteVersionRequest req;
  req.set_dataset(a.Get("--dataset"));
  req.set_version(*v);
  v1::DeleteVersionResponse resp;
  Client c(a);
  absl::Status s = c.Call(&v1::Datasets::Stub::DeleteVersion, req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << "{\"deleted\": " << *v << "}\n";
  return 0;
}

int Get(const Args& a) {
  if (auto s = CheckFlags(a, {"--dataset", "--version"}); !s.ok()) return Fail(s);
  auto v = VersionFlag(a, false);
  if (!v.ok()) return Fail(v.status());
  if (a.positional.empty()) return Fail(absl::InvalidArgumentError("get: give at least one KEY"));
  v1::DatasetMultiGetRequest req;
  req.set_dataset(a.Get("--dataset"));
  req.set_version(*v);
  for (const auto& k : a.positional) req.add_keys(k);
  v1::DatasetMultiGetResponse resp;
  Client c(a);
  absl::Status s = c.Call(&v1::Datasets::Stub::MultiGet, req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << ToJson(resp);
  return 0;
}

}  // namespace

const char* DatasetUsage() { return kUsage; }

int DatasetMain(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  auto parsed = Parse(std::vector<std::string>(args.begin() + 1, args.end()));
  if (!parsed.ok()) return Fail(parsed.status());
  const std::string& verb = args[0];
  if (verb == "build") return Build(*parsed);
  if (verb == "load") return Load(*parsed);
  if (verb == "list") return List(*parsed);
  if (verb == "rollback") return Rollback(*parsed);
  if (verb == "delete") return Delete(*parsed);
  if (verb == "get") return Get(*parsed);
  std::cerr << "kosh dataset: unknown command \"" << verb << "\"\n\n" << kUsage;
  return 2;
}

}  // namespace kosh::cli
