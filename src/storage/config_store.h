// Where definitions live: the feature registry, flows and pipelines keep their (small, rarely
// changing) records in a ConfigStore, one per namespace. Two backends:
//
//  - embedded (the default): a keyspace of the server's own storage Engine. One server, no
//    watches; a write never conflicts.
//  - ZooKeeper: the namespace is the znode <root>/<ns>; every key is a child znode. Several Kosh
//    servers share it: writes are atomic multi-ops guarded by a generation (the version of the
//    namespace znode), and a watch tells every other server to reload.
//
// Everything ZooKeeper-specific (the C client's header included) stays in
// zookeeper_config_store.cc.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/engine.h"

namespace kosh::storage {

// A small durable store of definitions (feature schemas, flows, pipelines): one instance per
// namespace ("registry", "flows", "pipelines"). Keys are arbitrary bytes.
//
// Thread-safe. Consistency with a shared backend: Write checks the generation this store last saw
// through Scan (or its own last successful Write), so a caller that reads a namespace, decides, and
// writes, is refused (ABORTED) if another server wrote in between. A caller that builds one decision
// from several reads should therefore read with a single Scan("") and filter itself: each Scan
// records the generation it read.
class ConfigStore {
 public:
  virtual ~ConfigStore() = default;
  // Calls fn(key, value) for every entry whose key starts with `prefix`, in key order, until fn returns false.
  virtual absl::Status Scan(absl::string_view prefix,
                            const std::function<bool(absl::string_view key, absl::string_view value)>& fn) = 0;
  // Writes every (key, value) of `puts` or none, durably. With a shared backend another server may have written
  // in between: a conflicting write (e.g. the same new key, or a changed generation) fails with ABORTED and changes nothing.
  virtual absl::Status Write(const std::vector<std::pair<std::string, std::string>>& puts) = 0;
  // Registers `on_change`, called on a store thread (never while a caller's lock is needed) after another process
  // or server changed this namespace. The embedded store never calls it.
  virtual void Watch(std::function<void()> on_change) = 0;

  // --- additions to the contract above -------------------------------------------------------

  // Whether the backend can be reached right now (for /metrics). The embedded store always can.
  // Cheap; thread-safe.
  virtual bool Connected() const { return true; }
};

// A ConfigStore over keyspace `ks` of `engine`, which must outlive it. Write is one atomic
// Engine::Write (durable as the engine's writes are); it never returns ABORTED; Watch never fires.
std::unique_ptr<ConfigStore> NewEngineConfigStore(Engine* engine, Keyspace ks);

struct ZooKeeperOptions {
  // Comma-separated host:port list of the ensemble, e.g. "10.0.0.1:2181,10.0.0.2:2181".
  std::string hosts = "127.0.0.1:2181";
  // Parent znode of every namespace; created (with its ancestors) when missing. Absolute path,
  // no trailing slash.
  std::string root = "/kosh";
  // The session timeout asked of the server (the server clamps it to [2, 20] ticks). A server
  // that loses its session (e.g. a long network partition) opens a new one and reloads.
  int64_t session_timeout_ms = 10000;
  // How long NewZooKeeperConfigStore waits for the first connection before UNAVAILABLE.
  int64_t connect_timeout_ms = 5000;
};

// Opens namespace `ns` (a znode name: [A-Za-z0-9_.-]+) under options.root on the ensemble, creating
// the znodes when missing. Layout: <root>/<ns> holds the generation (its data version counts the
// writes); each key is a child znode whose name is the key escaped (bytes other than
// [A-Za-z0-9_-] become %XX; the empty key is "%") and whose data is the value.
//
// Errors: INVALID_ARGUMENT for bad options; UNAVAILABLE naming the hosts when no server answers
// within options.connect_timeout_ms. Afterwards the store reconnects by itself: while
// disconnected, Scan and Write return UNAVAILABLE; a lost session is replaced by a new one, the
// watches re-armed and on_change called once so that readers reload. Write's UNAVAILABLE after
// a lost connection means "unknown": the write may have been applied (the next Scan shows it).
// Values are limited to ZooKeeper's znode size (1 MiB less some headroom; RESOURCE_EXHAUSTED).
absl::StatusOr<std::unique_ptr<ConfigStore>> NewZooKeeperConfigStore(const ZooKeeperOptions& options,
                                                                     const std::string& ns);

// For tests: ends the ZooKeeper session of `store` (made by NewZooKeeperConfigStore) from the
// server side, as a long partition would, so that the store sees its session expire.
absl::Status ExpireZooKeeperSessionForTest(ConfigStore* store);

// The znode name of a key and back (see NewZooKeeperConfigStore). Exposed for tests and tools.
std::string EscapeZnodeName(absl::string_view key);
// False if `name` is not a name EscapeZnodeName produces.
bool UnescapeZnodeName(absl::string_view name, std::string* key);

}  // namespace kosh::storage
