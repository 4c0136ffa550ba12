// Configuration of the interaction store: the `interactions:` section of the server's YAML file.
// Every option has a default, so `kosh serve` runs without the section. docs/operations.md lists
// them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "interactions/event_types.h"
#include "kosh/v1/interactions.pb.h"
#include "yaml-cpp/yaml.h"

namespace kosh::interactions {

struct InteractionOptions {
  // Hot tier.
  uint64_t hot_budget_bytes = 256ull << 20;  // 0 disables the hot tier (every read goes cold)
  int64_t inactivity_ms = 30 * 60 * 1000;    // a hot user untouched this long is evicted

  // Event types.
  EventTypeLimits types;  // default_cap, max_cap, max_types, payload limits

  // Request limits.
  uint32_t max_events_per_write = 10000;  // events per Write or Ingest batch
  uint32_t max_users_per_request = 1000;  // users per LastK, Window, Count, DeleteUser, Trim
  uint32_t max_events_per_read = 10000;   // k or limit per history
  uint32_t max_payload_bytes = 1024;      // one event's encoded payload
  uint32_t max_id_bytes = 256;            // user_id and item_id
  int64_t max_future_skew_ms = 5 * 60 * 1000;  // how far ahead of the server clock a timestamp may be

  // Threads that run Write and Ingest batches (validation and the durable engine write), so that
  // waiting for the WAL fsync neither blocks gRPC's few callback threads (which then keep serving
  // reads) nor serialises writers: concurrent batches share one fsync (group commit).
  uint32_t write_threads = 8;

  // Types registered (idempotently) at start-up: `event_types` inline and `event_type_files`.
  std::vector<v1::EventType> event_types;
  std::vector<std::string> event_type_sources;  // per event_types[i]: where it was defined (for errors)
};

// Parses the `interactions` section (`node` may be null or undefined: all defaults). Errors are
// INVALID_ARGUMENT naming the path, e.g. "interactions.hot_budget: ...".
absl::StatusOr<InteractionOptions> ParseInteractionOptions(const YAML::Node& node);

// Parses a list of event types in YAML (the `event_types:` list of the config section or of an
// event-type file, see examples/event_types.yaml). `where` names the list in errors.
absl::StatusOr<std::vector<v1::EventType>> ParseEventTypesYaml(const YAML::Node& list, const std::string& where);

}  // namespace kosh::interactions
