// The kosh binary: `kosh serve` runs the server; the other subcommands are a small gRPC client.
// Run `kosh help` for usage.
#include <malloc.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/config.h"
#include "base/logging.h"
#include "base/status.h"
#include "cli/dataset_command.h"
#include "cli/flags.h"
#include "features/schema_yaml.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "kosh/v1/feature_store.grpc.pb.h"
#include "kosh/v1/registry.grpc.pb.h"
#include "server/options.h"
#include "server/server.h"

namespace kosh {
namespace {

constexpr const char* kUsage = R"(kosh: an online feature store.

usage:
  kosh serve [--config FILE] [--grpc-address HOST:PORT] [--http-address HOST:PORT]
             [--data-dir DIR] [--schema FILE]... [--port-file FILE] [--log-level LEVEL]
             [--grace-period DURATION] [--cache SIZE] [--sync-writes true|false]
  kosh get --entity E --key K[,K2...] [--key ...] --features G.F[,G.*...] [--matrix]
  kosh put --entity E --group G [--version N] --key K[,K2...] NAME=VALUE...
  kosh put --file FILE        (a PersistRequest as JSON, or one per line)
  kosh schema apply FILE      (the YAML schema format of examples/schema.yaml)
  kosh schema list [--entity E]
  kosh schema get --entity E --group G
  kosh dataset build|load|list|rollback|delete|get ...   (`kosh dataset help`)

client options (any subcommand but serve):
  --server HOST:PORT   gRPC address of the server (default $KOSH_SERVER or localhost:7070)
  --token TOKEN        bearer token when auth is on (default $KOSH_TOKEN)

Values in NAME=VALUE are YAML: age=31, ok=true, city=Pune, emb=[0.1,0.2,0.3].
Output is JSON (the proto3 JSON mapping of the response).
)";

int Fail(const absl::Status& s) {
  std::cerr << "kosh: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// --- serve ---------------------------------------------------------------------------------------

int Serve(const std::vector<std::string>& args) {
  // Keep freed memory for reuse instead of handing it back to the kernel: blocks up to 32 MiB come
  // from malloc's arenas (not from mmap, whose munmap gives them back at every free), and an
  // arena gives back its free top only beyond 1 GiB. A dataset load allocates its version's index
  // and filter blocks (tens of MB) while a dropped version frees as much; with glibc's defaults
  // every load faulted all of it in afresh (5,900 page faults, ~0.1 s of a 0.14 s ingest at 5 GB
  // on this project's VM, with readers' latency up while it lasted). The price: the process's
  // resident size stays at its high-water mark.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  std::string config_path;
  std::vector<std::string> rest;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      config_path = args[++i];
    } else if (args[i].rfind("--config=", 0) == 0) {
      config_path = args[i].substr(9);
    } else {
      rest.push_back(args[i]);
    }
  }
  YAML::Node root(YAML::NodeType::Map);
  if (!config_path.empty()) {
    auto loaded = base::LoadYamlFile(config_path);
    if (!loaded.ok()) return Fail(loaded.status());
    root = *loaded;
  }
  auto options = server::ParseServerOptions(root);
  if (!options.ok()) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat(config_path.empty() ? "config" : config_path, ": ", options.status().message())));
  }
  if (auto s = server::ApplyFlags(rest, &*options); !s.ok()) return Fail(s);
  if (auto s = base::InitLogging(options->log_level); !s.ok()) return Fail(s);

  // Block the stop signals in every thread; the main thread waits for them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  auto srv = server::Server::Start(*options);
  if (!srv.ok()) return Fail(srv.status());
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    (*srv)->Shutdown();
    done = true;
  });
  // A second signal forces an immediate exit.
  while (!done) {
    timespec ts{0, 50 * 1000 * 1000};
    if (sigtimedwait(&set, nullptr, &ts) > 0) {
      spdlog::warn("second signal: exiting without waiting for in-flight calls");
      std::_Exit(1);
    }
  }
  stopper.join();
  srv->reset();
  return 0;
}

// --- client --------------------------------------------------------------------------------------

struct ClientFlags {
  std::string server;
  std::string token;
  std::map<std::string, std::vector<std::string>> flags;  // --name -> values
  std::vector<std::string> positional;
  bool matrix = false;
};

absl::StatusOr<ClientFlags> ParseClientFlags(const std::vector<std::string>& args) {
  ClientFlags f;
  const char* env_server = std::getenv("KOSH_SERVER");
  const char* env_token = std::getenv("KOSH_TOKEN");
  f.server = env_server ? env_server : "localhost:7070";
  f.token = env_token ? env_token : "";
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--matrix") {
      f.matrix = true;
    } else if (a.rfind("--", 0) == 0) {
      std::string name, value;
      RETURN_IF_ERROR(cli::ReadFlagValue(args, &i, &name, &value));
      if (name == "--server") f.server = value;
      else if (name == "--token") f.token = value;
      else f.flags[name].push_back(value);
    } else {
      f.positional.push_back(a);
    }
  }
  return f;
}

std::string One(const ClientFlags& f, const std::string& name) {
  auto it = f.flags.find(name);
  return it == f.flags.end() || it->second.empty() ? "" : it->second.back();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

class Client {
 public:
  explicit Client(const ClientFlags& f)
      : channel_(grpc::CreateChannel(f.server, grpc::InsecureChannelCredentials())),
        store_(v1::FeatureStore::NewStub(channel_)),
        registry_(v1::Registry::NewStub(channel_)),
        token_(f.token) {}

  template <typename Stub, typename Req, typename Resp>
  absl::Status Call(Stub* stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
    grpc::Status s = (stub->*method)(&ctx, req, resp);
    if (s.ok()) return absl::OkStatus();
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  v1::FeatureStore::Stub* store() { return store_.get(); }
  v1::Registry::Stub* registry() { return registry_.get(); }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::FeatureStore::Stub> store_;
  std::unique_ptr<v1::Registry::Stub> registry_;
  std::string token_;
};

v1::EntityKey ParseKey(const std::string& s) {
  v1::EntityKey k;
  for (absl::string_view part : absl::StrSplit(s, ',')) k.add_parts(std::string(part));
  return k;
}

int Get(const ClientFlags& f) {
  v1::RetrieveRequest req;
  req.set_entity(One(f, "--entity"));
  if (req.entity().empty()) return Fail(absl::InvalidArgumentError("get: --entity is required"));
  auto keys = f.flags.find("--key");
  if (keys == f.flags.end()) return Fail(absl::InvalidArgumentError("get: --key is required"));
  for (const auto& k : keys->second) *req.add_keys() = ParseKey(k);
  auto features = f.flags.find("--features");
  if (features == f.flags.end()) return Fail(absl::InvalidArgumentError("get: --features is required"));
  for (const auto& list : features->second) {
    for (absl::string_view ref : absl::StrSplit(list, ',', absl::SkipEmpty())) req.add_features(std::string(ref));
  }
  Client c(f);
  if (f.matrix) {
    v1::RetrieveMatrixResponse resp;
    auto s = c.Call(c.store(), &v1::FeatureStore::Stub::RetrieveMatrix, req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << ToJson(resp);
  } else {
    v1::RetrieveResponse resp;
    auto s = c.Call(c.store(), &v1::FeatureStore::Stub::Retrieve, req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << ToJson(resp);
  }
  return 0;
}

absl::Status PutFile(Client& c, const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, base::ReadFile(path));
  // Either one JSON document, or one PersistRequest per line.
  std::vector<std::string> docs;
  v1::PersistRequest probe;
  if (google::protobuf::util::JsonStringToMessage(text, &probe).ok()) {
    docs.push_back(text);
  } else {
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) docs.emplace_back(line);
  }
  uint64_t rows = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    v1::PersistRequest req;
    auto parsed = google::protobuf::util::JsonStringToMessage(docs[i], &req);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": document ", i + 1, ": ", std::string(parsed.message())));
    }
    v1::PersistResponse resp;
    auto s = c.Call(c.store(), &v1::FeatureStore::Stub::Persist, req, &resp);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(path, ": document ", i + 1, ": ", s.message()));
    rows += resp.rows_written();
  }
  std::cout << "{\"rows_written\": " << rows << "}\n";
  return absl::OkStatus();
}

int Put(const ClientFlags& f) {
  Client c(f);
  if (!One(f, "--file").empty()) {
    auto s = PutFile(c, One(f, "--file"));
    return s.ok() ? 0 : Fail(s);
  }
  v1::PersistRequest req;
  req.set_entity(One(f, "--entity"));
  req.set_group(One(f, "--group"));
  if (req.entity().empty() || req.group().empty() || One(f, "--key").empty()) {
    return Fail(absl::InvalidArgumentError("put: --entity, --group and --key are required (or --file)"));
  }
  if (!One(f, "--version").empty()) req.set_version(static_cast<uint32_t>(std::stoul(One(f, "--version"))));
  v1::GetFeatureGroupRequest greq;
  greq.set_entity(req.entity());
  greq.set_name(req.group());
  v1::FeatureGroup group;
  auto s = c.Call(c.registry(), &v1::Registry::Stub::GetFeatureGroup, greq, &group);
  if (!s.ok()) return Fail(s);
  const v1::FeatureGroupVersion& version =
      req.version() == 0 || req.version() > static_cast<uint32_t>(group.versions_size())
          ? group.versions(group.versions_size() - 1)
          : group.versions(static_cast<int>(req.version()) - 1);
  auto* row = req.add_rows();
  *row->mutable_key() = ParseKey(One(f, "--key"));
  if (f.positional.empty()) return Fail(absl::InvalidArgumentError("put: give at least one NAME=VALUE"));
  for (size_t i = 0; i < f.positional.size(); ++i) {
    const std::string& kv = f.positional[i];
    size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("put: \"", kv, "\" is not NAME=VALUE")));
    }
    std::string name = kv.substr(0, eq);
    const v1::FeatureSpec* spec = nullptr;
    for (const auto& fs : version.features()) {
      if (fs.name() == name) spec = &fs;
    }
    if (spec == nullptr) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("put: group \"", req.group(), "\" version ",
                                                          version.version(), " has no feature \"", name, "\"")));
    }
    YAML::Node node;
    try {
      node = YAML::Load(kv.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("put: ", name, ": ", e.what())));
    }
    auto value = features::ParseYamlValue(*spec, node);
    if (!value.ok()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("put: ", name, ": ", value.status().message())));
    }
    req.add_features(name);
    *row->add_values() = *value;
  }
  v1::PersistResponse resp;
  s = c.Call(c.store(), &v1::FeatureStore::Stub::Persist, req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << ToJson(resp);
  return 0;
}

int Schema(const ClientFlags& f) {
  if (f.positional.empty()) return Fail(absl::InvalidArgumentError("schema: apply, list or get"));
  Client c(f);
  const std::string& verb = f.positional[0];
  if (verb == "apply") {
    std::string path = f.positional.size() > 1 ? f.positional[1] : One(f, "--file");
    if (path.empty()) return Fail(absl::InvalidArgumentError("schema apply: name the YAML file"));
    auto doc = base::LoadYamlFile(path);
    if (!doc.ok()) return Fail(doc.status());
    auto req = features::ParseSchemaYaml(*doc, path);
    if (!req.ok()) return Fail(req.status());
    v1::ApplySchemaResponse resp;
    auto s = c.Call(c.registry(), &v1::Registry::Stub::ApplySchema, *req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << ToJson(resp);
    return 0;
  }
  if (verb == "list") {
    v1::ListFeatureGroupsRequest req;
    req.set_entity(One(f, "--entity"));
    v1::ListFeatureGroupsResponse groups;
    v1::ListEntitiesResponse entities;
    auto s = c.Call(c.registry(), &v1::Registry::Stub::ListEntities, v1::ListEntitiesRequest(), &entities);
    if (s.ok()) s = c.Call(c.registry(), &v1::Registry::Stub::ListFeatureGroups, req, &groups);
    if (!s.ok()) return Fail(s);
    std::cout << ToJson(entities) << ToJson(groups);
    return 0;
  }
  if (verb == "get") {
    v1::GetFeatureGroupRequest req;
    req.set_entity(One(f, "--entity"));
    req.set_name(One(f, "--group"));
    v1::FeatureGroup g;
    auto s = c.Call(c.registry(), &v1::Registry::Stub::GetFeatureGroup, req, &g);
    if (!s.ok()) return Fail(s);
    std::cout << ToJson(g);
    return 0;
  }
  return Fail(absl::InvalidArgumentError(absl::StrCat("schema: unknown verb \"", verb, "\"")));
}

}  // namespace
}  // namespace kosh

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << kosh::kUsage;
    return args.empty() ? 2 : 0;
  }
  std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "serve") return kosh::Serve(args);
  if (cmd == "dataset") return kosh::cli::DatasetMain(args);
  auto flags = kosh::ParseClientFlags(args);
  if (!flags.ok()) return kosh::Fail(flags.status());
  if (cmd == "get") return kosh::Get(*flags);
  if (cmd == "put") return kosh::Put(*flags);
  if (cmd == "schema") return kosh::Schema(*flags);
  std::cerr << "kosh: unknown command \"" << cmd << "\"\n\n" << kosh::kUsage;
  return 2;
}
