#include "server/options.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/config.h"
#include "base/status.h"

namespace kosh::server {

absl::Status CheckAddress(const std::string& address, const std::string& field) {
  size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": \"", address, "\" is not host:port (e.g. 0.0.0.0:7070; port 0 picks a free one)"));
  }
  return absl::OkStatus();
}

absl::Status CheckRegistryStore(const RegistryStoreOptions& o) {
  const storage::ZooKeeperOptions& zo = o.zookeeper;
  if (zo.hosts.empty()) return absl::InvalidArgumentError("registry.zookeeper.hosts: empty");
  for (absl::string_view host : absl::StrSplit(zo.hosts, ',')) {
    // The C client also accepts a chroot suffix ("h:2181/app") on the last host.
    absl::string_view hp = host.substr(0, host.find('/'));
    RETURN_IF_ERROR(CheckAddress(std::string(hp), "registry.zookeeper.hosts"));
  }
  if (zo.root.empty() || zo.root[0] != '/' || (zo.root.size() > 1 && zo.root.back() == '/')) {
    return absl::InvalidArgumentError(
        absl::StrCat("registry.zookeeper.root: \"", zo.root, "\" must be an absolute znode path without a trailing /"));
  }
  if (zo.session_timeout_ms < 100 || zo.session_timeout_ms > 3600000) {
    return absl::InvalidArgumentError("registry.zookeeper.session_timeout: expected 100ms to 1h");
  }
  if (zo.connect_timeout_ms < 1 || zo.connect_timeout_ms > 600000) {
    return absl::InvalidArgumentError("registry.zookeeper.connect_timeout: expected 1ms to 10m");
  }
  return absl::OkStatus();
}

absl::StatusOr<ServerOptions> ParseServerOptions(const YAML::Node& root) {
  ServerOptions o;
  o.storage.path = "./data";
  base::YamlReader r(root, "");
  RETURN_IF_ERROR(r.CheckKeys(
      {"server", "storage", "features", "schema", "auth", "log", "interactions", "datasets", "flows", "pipelines",
       "registry"}));
  if (root.IsMap()) {
    const YAML::Node& croot = root;  // const lookups do not insert keys
    for (auto [name, node] : {std::pair{"interactions", &o.interactions}, std::pair{"datasets", &o.datasets},
                              std::pair{"flows", &o.flows}, std::pair{"pipelines", &o.pipelines}}) {
      if (croot[name]) node->reset(croot[name]);
    }
  }

  ASSIGN_OR_RETURN(auto server, r.Child("server"));
  RETURN_IF_ERROR(server.CheckKeys({"grpc_address", "http_address", "http_threads", "grace_period",
                                    "max_message_bytes", "port_file"}));
  RETURN_IF_ERROR(server.GetString("grpc_address", &o.grpc_address));
  RETURN_IF_ERROR(server.GetString("http_address", &o.http_address));
  RETURN_IF_ERROR(CheckAddress(o.grpc_address, "server.grpc_address"));
  RETURN_IF_ERROR(CheckAddress(o.http_address, "server.http_address"));
  int64_t threads = o.http_threads;
  RETURN_IF_ERROR(server.GetInt("http_threads", &threads));
  if (threads < 1 || threads > 256) {
    return absl::InvalidArgumentError("server.http_threads: expected 1 to 256");
  }
  o.http_threads = static_cast<int>(threads);
  RETURN_IF_ERROR(server.GetDurationMs("grace_period", &o.grace_period_ms));
  RETURN_IF_ERROR(server.GetBytes("max_message_bytes", &o.max_message_bytes));
  if (o.max_message_bytes < 1024 || o.max_message_bytes > (1ull << 30)) {
    return absl::InvalidArgumentError("server.max_message_bytes: expected 1KiB to 1GiB");
  }
  RETURN_IF_ERROR(server.GetString("port_file", &o.port_file));

  ASSIGN_OR_RETURN(auto storage, r.Child("storage"));
  RETURN_IF_ERROR(storage.CheckKeys({"path", "sync_writes", "block_cache", "write_buffer", "background_jobs"}));
  RETURN_IF_ERROR(storage.GetString("path", &o.storage.path));
  RETURN_IF_ERROR(storage.GetBool("sync_writes", &o.storage.sync_writes));
  RETURN_IF_ERROR(storage.GetBytes("block_cache", &o.storage.block_cache_bytes));
  RETURN_IF_ERROR(storage.GetBytes("write_buffer", &o.storage.write_buffer_bytes));
  int64_t jobs = o.storage.background_jobs;
  RETURN_IF_ERROR(storage.GetInt("background_jobs", &jobs));
  if (jobs < 1 || jobs > 64) return absl::InvalidArgumentError("storage.background_jobs: expected 1 to 64");
  o.storage.background_jobs = static_cast<int>(jobs);

  ASSIGN_OR_RETURN(auto features, r.Child("features"));
  RETURN_IF_ERROR(features.CheckKeys({"cache", "max_keys_per_request", "max_rows_per_write",
                                      "max_string_bytes", "max_key_part_bytes", "compress_min_bytes"}));
  RETURN_IF_ERROR(features.GetBytes("cache", &o.features.cache_bytes));
  uint64_t v = o.features.max_keys_per_request;
  RETURN_IF_ERROR(features.GetUint("max_keys_per_request", &v));
  o.features.max_keys_per_request = static_cast<uint32_t>(v);
  v = o.features.max_rows_per_write;
  RETURN_IF_ERROR(features.GetUint("max_rows_per_write", &v));
  o.features.max_rows_per_write = static_cast<uint32_t>(v);
  v = o.features.max_key_part_bytes;
  RETURN_IF_ERROR(features.GetBytes("max_key_part_bytes", &v));
  o.features.max_key_part_bytes = static_cast<uint32_t>(v);
  v = o.features.codec.max_string_bytes;
  RETURN_IF_ERROR(features.GetBytes("max_string_bytes", &v));
  o.features.codec.max_string_bytes = static_cast<uint32_t>(v);
  o.registry.max_string_bytes = o.features.codec.max_string_bytes;
  v = o.features.codec.compress_min_bytes;
  RETURN_IF_ERROR(features.GetBytes("compress_min_bytes", &v));
  o.features.codec.compress_min_bytes = static_cast<uint32_t>(v);
  if (o.features.max_keys_per_request == 0 || o.features.max_rows_per_write == 0) {
    return absl::InvalidArgumentError("features: limits must be positive");
  }

  ASSIGN_OR_RETURN(auto schema, r.Child("schema"));
  RETURN_IF_ERROR(schema.CheckKeys({"files"}));
  if (schema.Has("files")) {
    const YAML::Node& files = schema.node()["files"];
    if (!files.IsSequence()) return absl::InvalidArgumentError("schema.files: expected a list of paths");
    for (size_t i = 0; i < files.size(); ++i) {
      if (!files[i].IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat("schema.files[", i, "]: expected a path"));
      }
      o.schema_files.push_back(files[i].Scalar());
    }
  }

  ASSIGN_OR_RETURN(auto registry, r.Child("registry"));
  RETURN_IF_ERROR(registry.CheckKeys({"backend", "zookeeper"}));
  std::string backend = "embedded";
  RETURN_IF_ERROR(registry.GetString("backend", &backend));
  if (backend == "embedded") {
    o.registry_store.backend = RegistryStoreOptions::Backend::kEmbedded;
  } else if (backend == "zookeeper") {
    o.registry_store.backend = RegistryStoreOptions::Backend::kZooKeeper;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("registry.backend: \"", backend, "\" is not embedded or zookeeper"));
  }
  ASSIGN_OR_RETURN(auto zk, registry.Child("zookeeper"));
  RETURN_IF_ERROR(zk.CheckKeys({"hosts", "root", "session_timeout", "connect_timeout"}));
  storage::ZooKeeperOptions& zo = o.registry_store.zookeeper;
  RETURN_IF_ERROR(zk.GetString("hosts", &zo.hosts));
  RETURN_IF_ERROR(zk.GetString("root", &zo.root));
  RETURN_IF_ERROR(zk.GetDurationMs("session_timeout", &zo.session_timeout_ms));
  RETURN_IF_ERROR(zk.GetDurationMs("connect_timeout", &zo.connect_timeout_ms));
  RETURN_IF_ERROR(CheckRegistryStore(o.registry_store));

  ASSIGN_OR_RETURN(auto auth, r.Child("auth"));
  RETURN_IF_ERROR(auth.CheckKeys({"enabled", "tokens"}));
  RETURN_IF_ERROR(auth.GetBool("enabled", &o.auth.enabled));
  if (auth.Has("tokens")) {
    const YAML::Node& tokens = auth.node()["tokens"];
    if (!tokens.IsSequence()) return absl::InvalidArgumentError("auth.tokens: expected a list");
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string where = absl::StrCat("auth.tokens[", i, "]");
      base::YamlReader t(tokens[i], where);
      RETURN_IF_ERROR(t.CheckKeys({"name", "token", "scopes"}));
      Caller c;
      std::string token;
      RETURN_IF_ERROR(t.GetString("name", &c.name));
      RETURN_IF_ERROR(t.GetString("token", &token));
      if (token.size() < 8) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".token: missing or shorter than 8 characters"));
      }
      if (c.name.empty()) c.name = absl::StrCat("caller", i);
      const YAML::Node& scopes = tokens[i]["scopes"];
      if (!scopes || !scopes.IsSequence() || scopes.size() == 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".scopes: expected a list of read, write, admin"));
      }
      for (size_t k = 0; k < scopes.size(); ++k) {
        std::string s = scopes[k].IsScalar() ? scopes[k].Scalar() : "";
        if (s == "read") c.scopes |= static_cast<uint8_t>(Scope::kRead);
        else if (s == "write") c.scopes |= static_cast<uint8_t>(Scope::kWrite);
        else if (s == "admin") c.scopes |= static_cast<uint8_t>(Scope::kAdmin);
        else {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ".scopes[", k, "]: \"", s, "\" is not read, write or admin"));
        }
      }
      for (const auto& existing : o.auth.tokens) {
        if (existing.first == token) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".token: the same token is given twice"));
        }
      }
      o.auth.tokens.emplace_back(token, c);
    }
  }
  if (o.auth.enabled && o.auth.tokens.empty()) {
    return absl::InvalidArgumentError("auth.tokens: auth is enabled but no tokens are configured");
  }

  ASSIGN_OR_RETURN(auto log, r.Child("log"));
  RETURN_IF_ERROR(log.CheckKeys({"level"}));
  RETURN_IF_ERROR(log.GetString("level", &o.log_level));
  return o;
}

absl::Status ApplyFlags(const std::vector<std::string>& args, ServerOptions* o) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i];
    std::string value;
    size_t eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": needs a value"));
    }
    if (flag == "--grpc-address") {
      RETURN_IF_ERROR(CheckAddress(value, flag));
      o->grpc_address = value;
    } else if (flag == "--http-address") {
      RETURN_IF_ERROR(CheckAddress(value, flag));
      o->http_address = value;
    } else if (flag == "--data-dir") {
      o->storage.path = value;
    } else if (flag == "--schema") {
      o->schema_files.push_back(value);
    } else if (flag == "--port-file") {
      o->port_file = value;
    } else if (flag == "--log-level") {
      o->log_level = value;
    } else if (flag == "--grace-period") {
      auto ms = base::ParseDurationMs(value);
      if (!ms.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", ms.status().message()));
      o->grace_period_ms = *ms;
    } else if (flag == "--cache") {
      auto b = base::ParseBytes(value);
      if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", b.status().message()));
      o->features.cache_bytes = *b;
    } else if (flag == "--registry-zookeeper") {
      o->registry_store.backend = RegistryStoreOptions::Backend::kZooKeeper;
      o->registry_store.zookeeper.hosts = value;
      auto checked = CheckRegistryStore(o->registry_store);
      if (!checked.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", checked.message()));
    } else if (flag == "--sync-writes") {
      if (value != "true" && value != "false") {
        return absl::InvalidArgumentError("--sync-writes: expected true or false");
      }
      o->storage.sync_writes = value == "true";
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    }
  }
  return absl::OkStatus();
}

}  // namespace kosh::server
