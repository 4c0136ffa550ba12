// The interaction store: per-user event histories with last-k, time-window and count queries over
// a hot in-memory tier and a durable cold tier.
//
// Cold tier: keyspace "interactions" of the storage engine (RocksDB by default), one value per
// (user, event type): a block of events newest first (history.h). A write appends its events as
// merge operands, never reading the stored history; the keyspace's MergeFn (HistoryMergeFn) sorts,
// de-duplicates and trims them by the type's cap and retention whenever the engine combines
// operands (reads, flushes, compactions). A write is acknowledged only once its batch is in the
// engine's write-ahead log, so durability never depends on the hot tier.
//
// Hot tier (hot_tier.h): a cache of the records of active users, loaded on a user's first read,
// updated in place by writes (after they are durable), evicted after inactivity or under memory
// pressure. Reads of hot users touch no storage.
//
// Reads apply the cap and retention again, with the same functions, so both tiers serve exactly
// the same events: the newest `cap` events of each history that are younger than its retention,
// newest first.
//
// Thread-safe. Time comes from an injectable clock (milliseconds since the epoch).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/metrics.h"
#include "interactions/event_types.h"
#include "interactions/hot_tier.h"
#include "interactions/options.h"
#include "kosh/v1/interactions.pb.h"
#include "storage/engine.h"

namespace kosh::interactions {

// Milliseconds since the Unix epoch.
using ClockMs = std::function<int64_t()>;
int64_t SystemNowMs();

// The storage key of one history: varint length of the user id, the user id, varint type id.
// One user's histories are contiguous (HistoryKeyPrefix is their common prefix).
std::string HistoryKey(absl::string_view user, uint32_t type_id);
std::string HistoryKeyPrefix(absl::string_view user);
// Splits a key; false if malformed.
bool ParseHistoryKey(absl::string_view key, absl::string_view* user, uint32_t* type_id);

// The cold tier's merge function: merges the existing block and operand blocks, trimmed by the
// cap and retention of the key's type in the table `slot` holds at the time of the merge (the
// limit `fallback_cap` and no retention when the type is unknown, e.g. before the registry has
// loaded). `clock` gives "now" for retention.
storage::MergeFn HistoryMergeFn(std::shared_ptr<TypeTableSlot> slot, ClockMs clock, uint32_t fallback_cap);
// The cold tier's expiry function: drops histories that no longer hold any event.
bool HistoryExpired(absl::string_view value, int64_t now_unix_s);

class InteractionStore {
 public:
  // Opens the store on `engine` (which must outlive it): `types_ks` holds the event-type registry,
  // `histories_ks` the histories (opened with HistoryMergeFn(slot, clock, ...) and HistoryExpired).
  // Registers options.event_types (idempotently; a conflict fails the open). Starts the hot tier's
  // inactivity sweeper thread when `start_sweeper` (tests call SweepIdle themselves).
  static absl::StatusOr<std::unique_ptr<InteractionStore>> Open(storage::Engine* engine, storage::Keyspace types_ks,
                                                                storage::Keyspace histories_ks,
                                                                InteractionOptions options,
                                                                std::shared_ptr<TypeTableSlot> slot,
                                                                base::MetricsRegistry* metrics,
                                                                ClockMs clock = SystemNowMs,
                                                                bool start_sweeper = true);
  // Stops the sweeper. In-flight calls must have finished.
  ~InteractionStore();

  absl::Status RegisterEventType(const v1::RegisterEventTypeRequest& req, v1::RegisterEventTypeResponse* resp);
  absl::Status ListEventTypes(const v1::ListEventTypesRequest& req, v1::ListEventTypesResponse* resp);

  // Validates every event, then writes all of them (one atomic, durable engine batch) or none.
  // INVALID_ARGUMENT names each bad event (events[i].field), up to 10; RESOURCE_EXHAUSTED for an
  // oversize batch.
  absl::Status Write(const v1::WriteRequest& req, v1::WriteResponse* resp);

  absl::Status LastK(const v1::LastKRequest& req, v1::HistoriesResponse* resp);
  absl::Status Window(const v1::WindowRequest& req, v1::HistoriesResponse* resp);
  absl::Status Count(const v1::CountRequest& req, v1::CountResponse* resp);

  // Deletes every history of the users in both tiers. Events written concurrently with the delete
  // may survive it; events acknowledged before it was called do not.
  absl::Status DeleteUser(const v1::DeleteUserRequest& req, v1::DeleteUserResponse* resp);
  // Rewrites histories that hold events past their cap or retention, then compacts the histories
  // keyspace, and empties the hot tier. Reads never serve such events, so Trim changes what is
  // stored, not what is served.
  absl::Status Trim(const v1::TrimRequest& req, v1::TrimResponse* resp);

  // Evicts idle hot users now (the sweeper does this periodically). Returns how many.
  size_t SweepIdle();

  const HotTier& hot() const { return hot_; }
  const InteractionOptions& options() const { return options_; }

 private:
  InteractionStore(storage::Engine* engine, storage::Keyspace histories_ks, InteractionOptions options,
                   ClockMs clock);

  struct Query;
  struct Fetched;
  absl::Status ResolveQuery(const google::protobuf::RepeatedPtrField<std::string>& users,
                            const google::protobuf::RepeatedPtrField<std::string>& types, const v1::TimeRange* range,
                            Query* q) const;
  // Reads the blocks of every (user, type) of `q` through the hot tier.
  absl::Status Fetch(const Query& q, Fetched* f);
  absl::Status Histories(const Query& q, v1::HistoriesResponse* resp);
  bool MergeRecord(const TypeTable& table, int64_t now_ms, absl::string_view record, absl::Span<const RecordEntry> ops,
                   std::string* out) const;
  void SweepLoop();

  storage::Engine* engine_;
  storage::Keyspace ks_;
  InteractionOptions options_;
  ClockMs clock_;
  std::unique_ptr<EventTypeRegistry> registry_;
  HotTier hot_;

  base::Counter* events_written_ = nullptr;
  base::Counter* events_served_ = nullptr;
  base::Counter* cold_reads_ = nullptr;
  base::Counter* corrupt_ = nullptr;

  absl::Mutex sweep_mu_;
  bool stop_ ABSL_GUARDED_BY(sweep_mu_) = false;
  std::thread sweeper_;
};

}  // namespace kosh::interactions
