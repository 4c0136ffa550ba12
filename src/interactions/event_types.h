// The registry of event types (click, order, add_to_cart, ... and custom ones).
//
// Definitions are durable (keyspace "interaction_types", one record per type) and served from an
// immutable TypeTable published through a TypeTableSlot, so readers, writers and the storage
// engine's merge function (which runs on RocksDB's threads and trims by each type's cap and
// retention) take one table and never lock. Registrations are serialised by a mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "features/codec.h"
#include "interactions/history.h"
#include "kosh/v1/interactions.pb.h"
#include "storage/engine.h"

namespace kosh::interactions {

// One registered type as served.
struct TypeInfo {
  v1::EventType def;  // as stored: id set, cap effective (never 0)
  uint32_t id = 0;
  uint32_t cap = 0;
  int64_t retention_ms = 0;  // 0 = no retention limit
  std::shared_ptr<const features::Layout> payload;  // null when the type has no payload fields

  // The trim that applies at `now_ms`: the cap, and the retention cutoff if any.
  TrimSpec TrimAt(int64_t now_ms) const {
    TrimSpec t;
    t.cap = cap;
    if (retention_ms > 0) t.cutoff_ms = now_ms - retention_ms;
    return t;
  }
};

// An immutable set of types.
struct TypeTable {
  std::vector<std::shared_ptr<const TypeInfo>> types;  // ascending id
  absl::flat_hash_map<std::string, const TypeInfo*> by_name;
  absl::flat_hash_map<uint32_t, const TypeInfo*> by_id;

  const TypeInfo* Find(absl::string_view name) const {
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : it->second;
  }
  const TypeInfo* FindId(uint32_t id) const {
    auto it = by_id.find(id);
    return it == by_id.end() ? nullptr : it->second;
  }
};

// Where the registry publishes its current table; shared with the merge function, which exists
// before the registry is opened (the engine needs it at open) and may outlive it.
class TypeTableSlot {
 public:
  // The current table, or null before the registry has loaded. Thread-safe.
  std::shared_ptr<const TypeTable> Load() const {
    return std::atomic_load_explicit(&table_, std::memory_order_acquire);
  }
  void Store(std::shared_ptr<const TypeTable> t) {
    std::atomic_store_explicit(&table_, std::move(t), std::memory_order_release);
  }

 private:
  std::shared_ptr<const TypeTable> table_;
};

struct EventTypeLimits {
  uint32_t default_cap = 500;
  uint32_t max_cap = 10000;
  uint32_t max_types = 1000;
  uint32_t max_payload_fields = 64;
  uint32_t max_string_bytes = 1024;  // STRING/BYTES payload fields without their own max_length
};

class EventTypeRegistry {
 public:
  // Loads every type stored in keyspace `ks` of `engine` (which must outlive the registry) and
  // publishes the table to `slot`. DATA_LOSS if a stored record is corrupt.
  static absl::StatusOr<std::unique_ptr<EventTypeRegistry>> Open(storage::Engine* engine, storage::Keyspace ks,
                                                                 EventTypeLimits limits,
                                                                 std::shared_ptr<TypeTableSlot> slot);

  // The current types. Cheap and thread-safe; the table stays valid while held.
  std::shared_ptr<const TypeTable> snapshot() const { return slot_->Load(); }

  // Registers `type`, or updates the cap, retention and description of the type of that name.
  // Errors start with `where` (e.g. "event_type" or "interactions.event_types[2]"):
  // INVALID_ARGUMENT for a bad definition, FAILED_PRECONDITION for a payload change,
  // RESOURCE_EXHAUSTED beyond max_types. Nothing changes on error. Thread-safe.
  absl::StatusOr<v1::RegisterEventTypeResponse> Register(const v1::EventType& type, const std::string& where);

  // Every type, by id.
  std::vector<v1::EventType> List() const;

  const EventTypeLimits& limits() const { return limits_; }

 private:
  EventTypeRegistry(storage::Engine* engine, storage::Keyspace ks, EventTypeLimits limits,
                    std::shared_ptr<TypeTableSlot> slot)
      : engine_(engine), ks_(ks), limits_(limits), slot_(std::move(slot)) {}

  absl::Status Validate(const v1::EventType& t, const std::string& where) const;

  storage::Engine* engine_;
  storage::Keyspace ks_;
  EventTypeLimits limits_;
  std::shared_ptr<TypeTableSlot> slot_;
  absl::Mutex mu_;  // serialises Register
};

// Builds the served form of a stored definition.
std::shared_ptr<const TypeInfo> CompileType(const v1::EventType& def);

}  // namespace kosh::interactions
