// The registry of entities and versioned feature-group schemas.
//
// Definitions are durable (stored in a storage::ConfigStore: the embedded store's "registry"
// keyspace, or a ZooKeeper namespace shared by several servers) and served from an immutable
// in-memory Snapshot that is swapped atomically on every change, so readers never lock: a request
// takes one Snapshot and uses it throughout. Mutations are serialised by a mutex and are
// all-or-nothing: a rejected definition changes nothing.
//
// Several servers on one shared store: when another server changes the definitions, the store's
// watch makes the registry re-read them all and publish a new Snapshot (then it tells its
// listeners, e.g. the flow registry, which recompiles). A mutation is built from this server's
// Snapshot; if another server wrote in between, the store refuses the write (ABORTED) and the
// registry reloads and re-applies the mutation to the fresh definitions, up to kMutationAttempts
// times, so no update is lost and no group id is handed out twice.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "features/codec.h"
#include "kosh/v1/registry.pb.h"
#include "kosh/v1/types.pb.h"
#include "storage/config_store.h"

namespace kosh::features {

struct RegistryLimits {
  uint32_t max_features_per_group = 1024;
  uint32_t max_vector_length = 65536;
  uint32_t max_key_columns = 8;
  uint32_t max_string_bytes = 65536;
};

// One feature group as served: its definition and the compiled layout of every version.
struct GroupInfo {
  v1::FeatureGroup def;
  std::vector<std::shared_ptr<const Layout>> layouts;  // layouts[v-1] is version v
  // Every feature name of any version -> its spec in the latest version that has it.
  absl::flat_hash_map<std::string, FeatureSpec> all_features;
  // Names in the order "group.*" expands to: the latest version's features.
  std::vector<std::string> latest_names;

  const Layout& latest() const { return *layouts.back(); }
  // The layout of version v, or nullptr.
  const Layout* layout(uint32_t v) const {
    return v >= 1 && v <= layouts.size() ? layouts[v - 1].get() : nullptr;
  }
};

struct EntityInfo {
  v1::Entity def;
  absl::flat_hash_map<std::string, std::shared_ptr<const GroupInfo>> groups;
};

struct Snapshot {
  absl::flat_hash_map<std::string, std::shared_ptr<const EntityInfo>> entities;

  const EntityInfo* FindEntity(absl::string_view name) const {
    auto it = entities.find(name);
    return it == entities.end() ? nullptr : it->second.get();
  }
};

class Registry {
 public:
  // How often a mutation is re-applied after another server's concurrent write (ABORTED).
  static constexpr int kMutationAttempts = 5;

  // Loads every definition in `store` (which must outlive the registry) and watches it for changes
  // made by other servers.
  static absl::StatusOr<std::unique_ptr<Registry>> Open(storage::ConfigStore* store, RegistryLimits limits = {});
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Re-reads every definition from the store and publishes them as a new Snapshot, then calls the
  // listeners. Called by the store's watch; safe to call any time (thread-safe). On error the
  // current Snapshot stays.
  absl::Status Reload();

  // Adds `fn`, called after the definitions were reloaded because another server changed them (not
  // after this registry's own mutations). Runs on the reloading thread (a store thread, or the
  // request thread of a mutation that met a concurrent change) with no registry lock held; it may
  // read snapshot(). `fn` must stay callable while the registry exists (capture a guard).
  void AddListener(std::function<void()> fn);

  // The current definitions. Cheap; thread-safe; the result stays valid while held.
  std::shared_ptr<const Snapshot> snapshot() const {
    return std::atomic_load_explicit(&snapshot_, std::memory_order_acquire);
  }

  // ALREADY_EXISTS if an entity of that name exists (even with an identical definition).
  absl::StatusOr<v1::Entity> CreateEntity(const v1::Entity& entity);
  absl::StatusOr<v1::FeatureGroup> CreateFeatureGroup(const v1::CreateFeatureGroupRequest& req);
  // Adds version latest+1 with `features`. FAILED_PRECONDITION if it equals the latest version.
  absl::StatusOr<v1::FeatureGroup> AddVersion(const v1::AddFeatureGroupVersionRequest& req);
  // Declarative apply: see ApplySchemaRequest in registry.proto. Either everything applies or
  // nothing does; a conflict is FAILED_PRECONDITION naming the entity, group and version.
  absl::StatusOr<v1::ApplySchemaResponse> Apply(const v1::ApplySchemaRequest& req);

  absl::StatusOr<v1::Entity> GetEntity(const std::string& name) const;
  absl::StatusOr<v1::FeatureGroup> GetFeatureGroup(const std::string& entity,
                                                   const std::string& name) const;
  std::vector<v1::Entity> ListEntities() const;
  // Groups of `entity`, or of all entities when empty. NOT_FOUND for an unknown entity.
  absl::StatusOr<std::vector<v1::FeatureGroup>> ListFeatureGroups(const std::string& entity) const;

  const RegistryLimits& limits() const { return limits_; }

 private:
  Registry(storage::ConfigStore* store, RegistryLimits limits)
      : store_(store), limits_(limits), snapshot_(std::make_shared<Snapshot>()) {}

  // A mutable working copy of the definitions used while applying changes.
  struct Draft;
  // Builds a mutation from the current snapshot into the draft (and the value to return); an error
  // is returned as is and nothing is written.
  template <typename T>
  using BuildFn = std::function<absl::StatusOr<T>(const Snapshot& snap, Draft* draft)>;
  // Runs build + Commit under mu_, reloading and rebuilding after a concurrent change (ABORTED).
  template <typename T>
  absl::StatusOr<T> Mutate(const BuildFn<T>& build);
  absl::Status ValidateEntity(const v1::Entity& e, const std::string& where) const;
  absl::Status ValidateFeatures(const google::protobuf::RepeatedPtrField<FeatureSpec>& features,
                                const std::string& where) const;
  // Persists the changed definitions in `draft` and publishes a new snapshot.
  absl::Status Commit(Draft& draft) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads everything from the store and publishes it.
  absl::Status ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyListeners();

  // Shared with the store's watch callback, which may outlive the registry: the destructor clears
  // `self` (waiting for a callback in progress).
  struct WatchGuard {
    absl::Mutex mu;
    Registry* self ABSL_GUARDED_BY(mu) = nullptr;
  };

  storage::ConfigStore* store_;
  RegistryLimits limits_;
  absl::Mutex mu_;  // serialises mutations and reloads
  uint32_t next_group_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::shared_ptr<const Snapshot> snapshot_;
  std::shared_ptr<WatchGuard> guard_ = std::make_shared<WatchGuard>();
  absl::Mutex listeners_mu_;
  std::vector<std::function<void()>> listeners_ ABSL_GUARDED_BY(listeners_mu_);
};

// Builds the served form of a group definition (compiles the layouts).
std::shared_ptr<const GroupInfo> CompileGroup(const v1::FeatureGroup& def);

// True if a name is a valid identifier for entities, groups, features and key columns:
// [A-Za-z_][A-Za-z0-9_]*, at most 64 characters.
bool IsValidName(absl::string_view name);

}  // namespace kosh::features
