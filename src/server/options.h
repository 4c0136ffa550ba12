// Server configuration: one YAML file (with ${VAR} substitution), defaults for everything, and
// command-line flags that override it. docs/operations.md lists every option.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "features/feature_store.h"
#include "features/registry.h"
#include "storage/config_store.h"
#include "storage/engine.h"
#include "yaml-cpp/yaml.h"

namespace kosh::server {

enum class Scope : uint8_t { kRead = 1, kWrite = 2, kAdmin = 4 };

struct Caller {
  std::string name;
  uint8_t scopes = 0;  // bit set of Scope
};

struct AuthOptions {
  bool enabled = false;
  // token -> caller
  std::vector<std::pair<std::string, Caller>> tokens;
};

// Where the definitions (feature schemas, flows, pipelines) live: YAML section `registry:`.
struct RegistryStoreOptions {
  enum class Backend : uint8_t { kEmbedded, kZooKeeper };
  // kEmbedded (the default): each family's own keyspace in the server's RocksDB. kZooKeeper: one
  // ensemble shared by several servers, which hot-reload each other's changes.
  Backend backend = Backend::kEmbedded;
  storage::ZooKeeperOptions zookeeper;  // used with kZooKeeper
};

struct ServerOptions {
  std::string grpc_address = "0.0.0.0:7070";
  std::string http_address = "0.0.0.0:7080";
  int http_threads = 2;
  int64_t grace_period_ms = 10000;
  uint64_t max_message_bytes = 16ull << 20;
  std::string port_file;  // if set, {"grpc": port, "http": port} is written here once listening

  storage::RocksDbOptions storage;  // storage.path defaults to ./data
  features::FeatureStoreOptions features;
  features::RegistryLimits registry;
  RegistryStoreOptions registry_store;
  std::vector<std::string> schema_files;
  AuthOptions auth;
  std::string log_level = "info";

  // Sections owned by other families, kept as YAML and parsed by the family itself (with errors that
  // name their path, e.g. "interactions.hot_budget"). Null when absent.
  YAML::Node interactions;
  YAML::Node datasets;
  YAML::Node flows;
  YAML::Node pipelines;
};

// Parses a configuration document (already loaded YAML). Unknown options are errors naming their
// path, so a typo never silently falls back to a default.
absl::StatusOr<ServerOptions> ParseServerOptions(const YAML::Node& root);

// Applies command-line flags of `kosh serve` to `options`: --config is handled by the caller;
// --grpc-address, --http-address, --data-dir, --schema (repeatable), --port-file, --log-level,
// --grace-period, --registry-zookeeper HOSTS (registry.backend zookeeper with those hosts).
// `args` are the flags after the subcommand.
absl::Status ApplyFlags(const std::vector<std::string>& args, ServerOptions* options);

// Checks the `registry:` section (hosts are host:port, root is absolute, timeouts in range);
// INVALID_ARGUMENT naming the option.
absl::Status CheckRegistryStore(const RegistryStoreOptions& options);

// Splits "host:port"; INVALID_ARGUMENT naming `field` if malformed.
absl::Status CheckAddress(const std::string& address, const std::string& field);

}  // namespace kosh::server
