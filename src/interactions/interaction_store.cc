#include "interactions/interaction_store.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "interactions/payload.h"
#include "spdlog/spdlog.h"

namespace kosh::interactions {

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string HistoryKeyPrefix(absl::string_view user) {
  std::string k;
  k.reserve(user.size() + 2);
  PutVarint(&k, user.size());
  k.append(user.data(), user.size());
  return k;
}

std::string HistoryKey(absl::string_view user, uint32_t type_id) {
  std::string k;
  k.reserve(user.size() + 4);
  PutVarint(&k, user.size());
  k.append(user.data(), user.size());
  PutVarint(&k, type_id);
  return k;
}

bool ParseHistoryKey(absl::string_view key, absl::string_view* user, uint32_t* type_id) {
  uint64_t len, id;
  if (!GetVarint(&key, &len) || len > key.size()) return false;
  if (user != nullptr) *user = key.substr(0, len);
  key.remove_prefix(len);
  if (!GetVarint(&key, &id) || !key.empty() || id > UINT32_MAX) return false;
  *type_id = static_cast<uint32_t>(id);
  return true;
}

storage::MergeFn HistoryMergeFn(std::shared_ptr<TypeTableSlot> slot, ClockMs clock, uint32_t fallback_cap) {
  return [slot = std::move(slot), clock = std::move(clock), fallback_cap](
             absl::string_view key, const absl::string_view* existing,
             absl::Span<const absl::string_view> operands, std::string* out) {
    TrimSpec trim;
    trim.cap = fallback_cap;
    uint32_t id;
    if (ParseHistoryKey(key, nullptr, &id)) {
      std::shared_ptr<const TypeTable> table = slot->Load();
      const TypeInfo* ti = table == nullptr ? nullptr : table->FindId(id);
      if (ti != nullptr) trim = ti->TrimAt(clock());
    }
    absl::InlinedVector<absl::string_view, 8> blocks;
    if (existing != nullptr) blocks.push_back(*existing);
    blocks.insert(blocks.end(), operands.begin(), operands.end());
    return MergeBlocks(blocks, trim, out);
  };
}

bool HistoryExpired(absl::string_view value, int64_t /*now_unix_s*/) { return IsEmptyBlock(value); }

namespace {

constexpr size_t kMaxListedErrors = 10;

// Calls fn(event) for the events of `block` that a read serves, newest first: among the type's
// newest `cap` events and not older than its retention, those with since <= ts < until, at most
// `limit`. False if the block is corrupt.
template <typename Fn>
bool ScanBlock(absl::string_view block, const TypeInfo& ti, int64_t now_ms, int64_t since, int64_t until,
               uint64_t limit, Fn&& fn) {
  if (block.empty()) return true;
  BlockReader r(block);
  const int64_t cutoff = ti.retention_ms > 0 ? now_ms - ti.retention_ms : std::numeric_limits<int64_t>::min();
  const int64_t lower = std::max(cutoff, since);
  EventView ev;
  uint64_t seen = 0, emitted = 0;
  while (emitted < limit && seen < ti.cap && r.Next(&ev)) {
    ++seen;
    if (ev.ts_ms < lower) break;
    if (ev.ts_ms >= until) continue;
    fn(ev);
    ++emitted;
  }
  return !r.corrupt();
}

}  // namespace

struct InteractionStore::Query {
  std::shared_ptr<const TypeTable> table;
  std::vector<absl::string_view> users;
  std::vector<const TypeInfo*> types;
  int64_t now = 0;
  int64_t since = std::numeric_limits<int64_t>::min();  // inclusive
  int64_t until = std::numeric_limits<int64_t>::max();  // exclusive
  uint64_t limit = std::numeric_limits<uint64_t>::max();
  bool merge = false;
  bool any_payload = false;
};

struct InteractionStore::Fetched {
  std::vector<std::shared_ptr<const std::string>> records;  // per user, when served from a record
  std::vector<std::optional<std::string>> values;           // cold values read directly
  std::vector<absl::string_view> blocks;                    // [user * types + type]
};

InteractionStore::InteractionStore(storage::Engine* engine, storage::Keyspace histories_ks,
                                   InteractionOptions options, ClockMs clock)
    : engine_(engine),
      ks_(histories_ks),
      options_(std::move(options)),
      clock_(std::move(clock)),
      hot_(options_.hot_budget_bytes, options_.inactivity_ms) {}

absl::StatusOr<std::unique_ptr<InteractionStore>> InteractionStore::Open(
    storage::Engine* engine, storage::Keyspace types_ks, storage::Keyspace histories_ks, InteractionOptions options,
    std::shared_ptr<TypeTableSlot> slot, base::MetricsRegistry* metrics, ClockMs clock, bool start_sweeper) {
  std::unique_ptr<InteractionStore> s(new InteractionStore(engine, histories_ks, std::move(options), std::move(clock)));
  ASSIGN_OR_RETURN(s->registry_, EventTypeRegistry::Open(engine, types_ks, s->options_.types, std::move(slot)));
  for (size_t i = 0; i < s->options_.event_types.size(); ++i) {
    const std::string where = i < s->options_.event_type_sources.size() ? s->options_.event_type_sources[i]
                                                                           : absl::StrCat("event_types[", i, "]");
    ASSIGN_OR_RETURN(auto r, s->registry_->Register(s->options_.event_types[i], where));
    if (r.created() || r.changed()) {
      spdlog::info("event type {} {} (id {}, cap {}, retention {} s, {} payload fields)", r.event_type().name(),
                   r.created() ? "registered" : "updated", r.event_type().id(), r.event_type().cap(),
                   r.event_type().retention_seconds(), r.event_type().payload_size());
    }
  }

  InteractionStore* p = s.get();
  s->events_written_ = metrics->GetCounter("kosh_interactions_events_written_total",
                                           "Events acknowledged by Write and Ingest (duplicates included).");
  s->events_served_ = metrics->GetCounter("kosh_interactions_events_served_total",
                                          "Events returned by LastK and Window.");
  s->cold_reads_ = metrics->GetCounter("kosh_interactions_cold_reads_total",
                                       "Histories read from the cold tier (loads and direct reads).");
  s->corrupt_ = metrics->GetCounter("kosh_interactions_corrupt_histories_total",
                                    "Stored histories that failed to decode (served as DATA_LOSS).");
  using Samples = std::vector<std::pair<base::Labels, double>>;
  metrics->AddGauge("kosh_interactions_hot_users", "Users in the hot tier.",
                    [p] { return Samples{{{}, double(p->hot_.users())}}; });
  metrics->AddGauge("kosh_interactions_hot_bytes", "Bytes held by the hot tier (records and overhead).",
                    [p] { return Samples{{{}, double(p->hot_.bytes())}}; });
  metrics->AddGauge("kosh_interactions_hot_budget_bytes", "The hot tier's budget (interactions.hot_budget).",
                    [p] { return Samples{{{}, double(p->hot_.budget_bytes())}}; });
  metrics->AddGauge("kosh_interactions_hot_loads_total", "Users loaded from the cold tier into the hot tier.",
                    [p] { return Samples{{{}, double(p->hot_.loads())}}; });
  metrics->AddGauge("kosh_interactions_hot_evictions_total", "Users evicted from the hot tier, by reason.", [p] {
    return Samples{{{{"reason", "inactive"}}, double(p->hot_.evictions_idle())},
                   {{{"reason", "memory"}}, double(p->hot_.evictions_memory())},
                   {{{"reason", "other"}}, double(p->hot_.evictions_other())}};
  });
  metrics->AddGauge("kosh_interactions_hot_lookups_total", "Hot-tier lookups of users by reads, by result.", [p] {
    return Samples{{{{"result", "hit"}}, double(p->hot_.hits())}, {{{"result", "miss"}}, double(p->hot_.misses())}};
  });
  metrics->AddGauge("kosh_interactions_hot_hit_ratio", "Hot-tier hits / lookups since start.", [p] {
    double h = double(p->hot_.hits()), m = double(p->hot_.misses());
    return Samples{{{}, h + m > 0 ? h / (h + m) : 0.0}};
  });
  metrics->AddGauge("kosh_interactions_event_types", "Registered event types.",
                    [p] { return Samples{{{}, double(p->registry_->snapshot()->types.size())}}; });

  if (start_sweeper && s->hot_.enabled()) s->sweeper_ = std::thread([p] { p->SweepLoop(); });
  return s;
}

InteractionStore::~InteractionStore() {
  {
    absl::MutexLock lock(&sweep_mu_);
    stop_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

void InteractionStore::SweepLoop() {
  const int64_t interval_ms = std::clamp<int64_t>(options_.inactivity_ms / 4, 10, 1000);
  absl::MutexLock lock(&sweep_mu_);
  while (!stop_) {
    sweep_mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(interval_ms));
    if (stop_) break;
    sweep_mu_.Unlock();
    hot_.EvictIdle(clock_());
    sweep_mu_.Lock();
  }
}

size_t InteractionStore::SweepIdle() { return hot_.EvictIdle(clock_()); }

absl::Status InteractionStore::RegisterEventType(const v1::RegisterEventTypeRequest& req,
                                                 v1::RegisterEventTypeResponse* resp) {
  ASSIGN_OR_RETURN(*resp, registry_->Register(req.event_type(), "event_type"));
  // Hot records were trimmed with the old cap and retention; start over from the cold tier.
  if (resp->changed()) hot_.Clear();
  return absl::OkStatus();
}

absl::Status InteractionStore::ListEventTypes(const v1::ListEventTypesRequest&, v1::ListEventTypesResponse* resp) {
  for (auto& t : registry_->List()) *resp->add_event_types() = std::move(t);
  return absl::OkStatus();
}

bool InteractionStore::MergeRecord(const TypeTable& table, int64_t now_ms, absl::string_view record,
                                   absl::Span<const RecordEntry> ops, std::string* out) const {
  std::vector<RecordEntry> entries;
  if (!ParseRecord(record, &entries)) return false;
  std::map<uint32_t, absl::InlinedVector<absl::string_view, 4>> by_type;
  for (const RecordEntry& op : ops) by_type[op.type_id].push_back(op.block);
  out->clear();
  out->reserve(record.size() + 64);
  size_t i = 0;
  auto it = by_type.begin();
  std::string merged;
  absl::InlinedVector<absl::string_view, 8> blocks;
  while (i < entries.size() || it != by_type.end()) {
    if (it == by_type.end() || (i < entries.size() && entries[i].type_id < it->first)) {
      AppendRecordEntry(entries[i].type_id, entries[i].block, out);
      ++i;
      continue;
    }
    const uint32_t id = it->first;
    blocks.clear();
    if (i < entries.size() && entries[i].type_id == id) blocks.push_back(entries[i++].block);
    blocks.insert(blocks.end(), it->second.begin(), it->second.end());
    const TypeInfo* ti = table.FindId(id);
    TrimSpec trim;
    if (ti != nullptr) {
      trim = ti->TrimAt(now_ms);
    } else {
      trim.cap = options_.types.max_cap;
    }
    if (!MergeBlocks(blocks, trim, &merged)) return false;
    if (!IsEmptyBlock(merged)) AppendRecordEntry(id, merged, out);
    ++it;
  }
  return true;
}

// --- writes --------------------------------------------------------------------------------------

absl::Status InteractionStore::Write(const v1::WriteRequest& req, v1::WriteResponse* resp) {
  const int n = req.events_size();
  if (static_cast<uint32_t>(n) > options_.max_events_per_write) {
    return absl::ResourceExhaustedError(absl::StrCat("events: ", n, " events exceeds the limit of ",
                                                     options_.max_events_per_write,
                                                     " per write (interactions.max_events_per_write)"));
  }
  if (n == 0) {
    resp->set_events_written(0);
    return absl::OkStatus();
  }
  std::shared_ptr<const TypeTable> table = registry_->snapshot();
  const int64_t now = clock_();
  const int64_t latest = now + options_.max_future_skew_ms;

  struct Group {
    absl::string_view user;
    uint32_t type_id;
    absl::InlinedVector<EventView, 2> events;
  };
  std::vector<Group> groups;
  absl::flat_hash_map<std::string, uint32_t> group_of;
  group_of.reserve(static_cast<size_t>(n));
  std::vector<std::string> payloads;  // encoded payloads; reserved so that views stay valid
  payloads.reserve(static_cast<size_t>(n));
  std::vector<std::string> errors;  // the first kMaxListedErrors messages
  size_t bad = 0, error_count = 0;  // invalid events, errors in all
  auto add_error = [&](std::string msg) {
    if (++error_count <= kMaxListedErrors) errors.push_back(std::move(msg));
  };
  auto fail = [&](int i, absl::string_view msg) { add_error(absl::StrCat("events[", i, "].", msg)); };
  const uint32_t max_id = options_.max_id_bytes;
  for (int i = 0; i < n; ++i) {
    const v1::Event& e = req.events(i);
    const size_t errors_before = error_count;
    if (e.user_id().empty()) {
      fail(i, "user_id: missing");
    } else if (e.user_id().size() > max_id) {
      fail(i, absl::StrCat("user_id: ", e.user_id().size(), " bytes exceeds the limit of ", max_id,
                           " (interactions.max_id_bytes)"));
    }
    const TypeInfo* ti = nullptr;
    if (e.type().empty()) {
      fail(i, "type: missing");
    } else if ((ti = table->Find(e.type())) == nullptr) {
      fail(i, absl::StrCat("type: unknown event type \"", e.type(), "\""));
    }
    if (e.item_id().empty()) {
      fail(i, "item_id: missing");
    } else if (e.item_id().size() > max_id) {
      fail(i, absl::StrCat("item_id: ", e.item_id().size(), " bytes exceeds the limit of ", max_id,
                           " (interactions.max_id_bytes)"));
    }
    if (e.timestamp_ms() == 0) {
      fail(i, "timestamp_ms: missing (milliseconds since the Unix epoch)");
    } else if (e.timestamp_ms() < 0) {
      fail(i, absl::StrCat("timestamp_ms: ", e.timestamp_ms(), " is negative"));
    } else if (e.timestamp_ms() > latest) {
      fail(i, absl::StrCat("timestamp_ms: ", e.timestamp_ms(), " is ", e.timestamp_ms() - now,
                           " ms ahead of the server clock (the limit is ", options_.max_future_skew_ms,
                           " ms, interactions.max_future_skew)"));
    }
    std::string payload;
    if (ti != nullptr && !e.payload().empty()) {
      absl::Status s = EncodePayload(ti->payload.get(), e.payload(), options_.max_payload_bytes,
                                     absl::StrCat("events[", i, "].payload"), &payload);
      if (!s.ok()) {
        add_error(std::string(s.message()));
      } else if (payload.size() > options_.max_payload_bytes) {
        fail(i, absl::StrCat("payload: ", payload.size(), " bytes encoded exceeds the limit of ",
                             options_.max_payload_bytes, " (interactions.max_payload_bytes)"));
      }
    }
    if (error_count != errors_before) ++bad;
    if (bad > 0) continue;  // once the batch is rejected, only validate the rest
    EventView v;
    v.ts_ms = e.timestamp_ms();
    SetItem(e.item_id(), &v);
    if (!payload.empty()) {
      payloads.push_back(std::move(payload));
      v.payload = payloads.back();
    }
    auto [it, inserted] = group_of.try_emplace(HistoryKey(e.user_id(), ti->id), static_cast<uint32_t>(groups.size()));
    if (inserted) groups.push_back({e.user_id(), ti->id, {}});
    groups[it->second].events.push_back(v);
  }
  if (bad > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        bad, " of ", n, " events ", bad == 1 ? "is" : "are", " invalid; the batch was rejected and nothing was written: ",
        absl::StrJoin(errors, "; "),
        error_count > errors.size() ? absl::StrCat("; and ", error_count - errors.size(), " more errors") : ""));
  }

  // One operand per history: its events of this batch, in order and without duplicates. The
  // operands go into the batch in key order: RocksDB inserts a batch into its memtable skiplist
  // remembering where the previous key went, which costs little for sorted keys and a lot (most of
  // the ingest CPU, measured) for keys in hash order.
  std::vector<std::pair<absl::string_view, uint32_t>> ordered(group_of.begin(), group_of.end());
  std::sort(ordered.begin(), ordered.end());
  storage::WriteBatch batch;
  std::vector<uint32_t> op_group;
  op_group.reserve(groups.size());
  std::string operand;
  std::vector<EventView> sorted;
  for (const auto& [key, gi] : ordered) {
    Group& g = groups[gi];
    if (g.events.size() == 1) {
      EncodeBlock(g.events, &operand);
    } else {
      sorted.assign(g.events.begin(), g.events.end());
      SortUnique(&sorted);
      EncodeBlock(sorted, &operand);
    }
    batch.Merge(ks_, std::string(key), operand);
    op_group.push_back(gi);
  }
  RETURN_IF_ERROR(engine_->Write(batch));
  events_written_->Inc(static_cast<uint64_t>(n));
  resp->set_events_written(static_cast<uint32_t>(n));

  // Durable: now update the users that are hot (or being loaded).
  if (hot_.enabled()) {
    absl::flat_hash_map<absl::string_view, absl::InlinedVector<RecordEntry, 2>> by_user;
    const auto& ops = batch.ops();
    for (size_t k = 0; k < ops.size(); ++k) {
      const Group& g = groups[op_group[k]];
      by_user[g.user].push_back({g.type_id, ops[k].value});
    }
    auto merger = [this, &table, now](absl::string_view record, absl::Span<const RecordEntry> o, std::string* out) {
      return MergeRecord(*table, now, record, o, out);
    };
    for (const auto& [user, user_ops] : by_user) hot_.ApplyWrite(user, user_ops, merger, now);
  }
  return absl::OkStatus();
}

// --- reads ---------------------------------------------------------------------------------------

absl::Status InteractionStore::ResolveQuery(const google::protobuf::RepeatedPtrField<std::string>& users,
                                            const google::protobuf::RepeatedPtrField<std::string>& types,
                                            const v1::TimeRange* range, Query* q) const {
  if (users.empty()) return absl::InvalidArgumentError("user_ids: name at least one user");
  if (static_cast<uint32_t>(users.size()) > options_.max_users_per_request) {
    return absl::ResourceExhaustedError(absl::StrCat("user_ids: ", users.size(), " users exceeds the limit of ",
                                                     options_.max_users_per_request,
                                                     " per request (interactions.max_users_per_request)"));
  }
  for (int i = 0; i < users.size(); ++i) {
    if (users[i].empty()) return absl::InvalidArgumentError(absl::StrCat("user_ids[", i, "]: empty"));
    if (users[i].size() > options_.max_id_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("user_ids[", i, "]: ", users[i].size(),
                                                     " bytes exceeds the limit of ", options_.max_id_bytes));
    }
    q->users.push_back(users[i]);
  }
  q->table = registry_->snapshot();
  if (types.empty()) {
    for (const auto& t : q->table->types) q->types.push_back(t.get());
  } else {
    for (int j = 0; j < types.size(); ++j) {
      const TypeInfo* ti = q->table->Find(types[j]);
      if (ti == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("types[", j, "]: unknown event type \"", types[j], "\""));
      }
      q->types.push_back(ti);
    }
  }
  for (const TypeInfo* t : q->types) q->any_payload |= t->payload != nullptr;
  q->now = clock_();
  if (range != nullptr) {
    if (range->since_ms() < 0 || range->until_ms() < 0 || range->within_ms() < 0) {
      return absl::InvalidArgumentError("range: since_ms, until_ms and within_ms must not be negative");
    }
    if (range->within_ms() > 0 && range->since_ms() > 0) {
      return absl::InvalidArgumentError("range: give since_ms or within_ms, not both");
    }
    if (range->since_ms() > 0) q->since = range->since_ms();
    if (range->within_ms() > 0) q->since = q->now - range->within_ms();
    if (range->until_ms() > 0) q->until = range->until_ms();
    if (range->until_ms() > 0 && q->until <= q->since) {
      return absl::InvalidArgumentError(
          absl::StrCat("range: until_ms (", q->until, ") must be later than the start (", q->since, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status InteractionStore::Fetch(const Query& q, Fetched* f) {
  const size_t nu = q.users.size(), nt = q.types.size();
  f->blocks.assign(nu * nt, absl::string_view());
  f->records.assign(nu, nullptr);
  if (nt == 0) return absl::OkStatus();
  std::vector<size_t> load, cold;
  std::vector<HotTier::Ticket> tickets;
  for (size_t u = 0; u < nu; ++u) {
    HotTier::Ticket t;
    switch (hot_.Get(q.users[u], q.now, &f->records[u], &t)) {
      case HotTier::Lookup::kHit: break;
      case HotTier::Lookup::kLoad:
        load.push_back(u);
        tickets.push_back(t);
        break;
      case HotTier::Lookup::kCold: cold.push_back(u); break;
    }
  }
  if (!load.empty() || !cold.empty()) {
    // A load reads every type of the user (the session's later reads may ask for any of them); a
    // direct read only the requested ones. One MultiGet for all.
    const auto& all = q.table->types;
    std::vector<std::string> keys;
    keys.reserve(load.size() * all.size() + cold.size() * nt);
    for (size_t u : load) {
      for (const auto& t : all) keys.push_back(HistoryKey(q.users[u], t->id));
    }
    for (size_t u : cold) {
      for (const TypeInfo* t : q.types) keys.push_back(HistoryKey(q.users[u], t->id));
    }
    std::vector<absl::string_view> views(keys.begin(), keys.end());
    absl::Status st = engine_->MultiGet(ks_, views, &f->values);
    if (!st.ok()) {
      for (size_t i = 0; i < load.size(); ++i) hot_.AbortLoad(q.users[load[i]], tickets[i]);
      return st;
    }
    cold_reads_->Inc(keys.size());
    size_t k = 0;
    auto merger = [this, &q](absl::string_view record, absl::Span<const RecordEntry> o, std::string* out) {
      return MergeRecord(*q.table, q.now, record, o, out);
    };
    for (size_t i = 0; i < load.size(); ++i) {
      std::string record;
      for (const auto& t : all) {
        const std::optional<std::string>& v = f->values[k++];
        if (v.has_value() && !IsEmptyBlock(*v)) AppendRecordEntry(t->id, *v, &record);
      }
      f->records[load[i]] = hot_.FinishLoad(q.users[load[i]], tickets[i], std::move(record), merger, q.now);
    }
    for (size_t u : cold) {
      for (size_t t = 0; t < nt; ++t) {
        const std::optional<std::string>& v = f->values[k++];
        if (v.has_value()) f->blocks[u * nt + t] = *v;
      }
    }
  }
  for (size_t u = 0; u < nu; ++u) {
    if (f->records[u] == nullptr) continue;
    for (size_t t = 0; t < nt; ++t) f->blocks[u * nt + t] = FindBlock(*f->records[u], q.types[t]->id);
  }
  return absl::OkStatus();
}

absl::Status InteractionStore::Histories(const Query& q, v1::HistoriesResponse* resp) {
  Fetched f;
  RETURN_IF_ERROR(Fetch(q, &f));
  const size_t nt = q.types.size();
  uint64_t served = 0;
  auto corrupt = [&](size_t u, const TypeInfo& ti) {
    corrupt_->Inc();
    return absl::DataLossError(
        absl::StrCat("the stored history of user \"", q.users[u], "\", type \"", ti.def.name(), "\" is corrupt"));
  };
  // Appends one event to a history, with its payload when the history carries payloads: a
  // history of a type with payload fields, or a merged one where any requested type has them.
  auto emit = [&](const EventView& ev, const TypeInfo& ti, v1::History* h) -> absl::Status {
    AppendItemString(ev, h->add_item_ids());
    h->add_timestamps_ms(ev.ts_ms);
    if (q.merge) h->add_types(ti.def.name());
    if (q.merge ? q.any_payload : ti.payload != nullptr) {
      v1::EventPayload* p = h->add_payloads();
      if (ti.payload != nullptr && !ev.payload.empty()) {
        RETURN_IF_ERROR(DecodePayload(*ti.payload, ev.payload, p->mutable_fields()));
      }
    }
    ++served;
    return absl::OkStatus();
  };
  resp->mutable_users()->Reserve(static_cast<int>(q.users.size()));
  for (size_t u = 0; u < q.users.size(); ++u) {
    v1::UserHistory* uh = resp->add_users();
    uh->set_user_id(std::string(q.users[u]));
    if (!q.merge) {
      for (size_t t = 0; t < nt; ++t) {
        const TypeInfo& ti = *q.types[t];
        v1::History* h = uh->add_histories();
        h->set_type(ti.def.name());
        absl::Status st;
        bool ok = ScanBlock(f.blocks[u * nt + t], ti, q.now, q.since, q.until, q.limit, [&](const EventView& ev) {
          if (st.ok()) st = emit(ev, ti, h);
        });
        if (!ok) return corrupt(u, ti);
        if (!st.ok()) return corrupt(u, ti);
      }
      continue;
    }
    struct Candidate {
      EventView ev;
      const TypeInfo* ti;
    };
    std::vector<Candidate> cands;
    for (size_t t = 0; t < nt; ++t) {
      const TypeInfo* ti = q.types[t];
      bool ok = ScanBlock(f.blocks[u * nt + t], *ti, q.now, q.since, q.until, q.limit,
                          [&](const EventView& ev) { cands.push_back({ev, ti}); });
      if (!ok) return corrupt(u, *ti);
    }
    std::sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
      int c = CompareEvents(a.ev, b.ev);
      return c != 0 ? c < 0 : a.ti->id < b.ti->id;
    });
    if (cands.size() > q.limit) cands.resize(q.limit);
    v1::History* h = uh->add_histories();
    for (const Candidate& c : cands) {
      if (!emit(c.ev, *c.ti, h).ok()) return corrupt(u, *c.ti);
    }
  }
  events_served_->Inc(served);
  return absl::OkStatus();
}

absl::Status InteractionStore::LastK(const v1::LastKRequest& req, v1::HistoriesResponse* resp) {
  if (req.k() == 0) return absl::InvalidArgumentError("k: must be at least 1");
  if (req.k() > options_.max_events_per_read) {
    return absl::ResourceExhaustedError(absl::StrCat("k: ", req.k(), " exceeds the limit of ",
                                                     options_.max_events_per_read,
                                                     " (interactions.max_events_per_read)"));
  }
  Query q;
  RETURN_IF_ERROR(ResolveQuery(req.user_ids(), req.types(), nullptr, &q));
  q.limit = req.k();
  q.merge = req.merge_types();
  return Histories(q, resp);
}

absl::Status InteractionStore::Window(const v1::WindowRequest& req, v1::HistoriesResponse* resp) {
  if (req.limit() > options_.max_events_per_read) {
    return absl::ResourceExhaustedError(absl::StrCat("limit: ", req.limit(), " exceeds the limit of ",
                                                     options_.max_events_per_read,
                                                     " (interactions.max_events_per_read)"));
  }
  Query q;
  RETURN_IF_ERROR(ResolveQuery(req.user_ids(), req.types(), &req.range(), &q));
  q.limit = req.limit() == 0 ? options_.max_events_per_read : req.limit();
  q.merge = req.merge_types();
  return Histories(q, resp);
}

absl::Status InteractionStore::Count(const v1::CountRequest& req, v1::CountResponse* resp) {
  Query q;
  RETURN_IF_ERROR(ResolveQuery(req.user_ids(), req.types(), &req.range(), &q));
  Fetched f;
  RETURN_IF_ERROR(Fetch(q, &f));
  const size_t nt = q.types.size();
  for (size_t u = 0; u < q.users.size(); ++u) {
    v1::UserCounts* uc = resp->add_users();
    uc->set_user_id(std::string(q.users[u]));
    uint64_t total = 0;
    for (size_t t = 0; t < nt; ++t) {
      const TypeInfo& ti = *q.types[t];
      uint64_t c = 0;
      if (!ScanBlock(f.blocks[u * nt + t], ti, q.now, q.since, q.until, q.limit, [&](const EventView&) { ++c; })) {
        corrupt_->Inc();
        return absl::DataLossError(absl::StrCat("the stored history of user \"", q.users[u], "\", type \"",
                                                ti.def.name(), "\" is corrupt"));
      }
      v1::TypeCount* tc = uc->add_counts();
      tc->set_type(ti.def.name());
      tc->set_count(c);
      total += c;
    }
    uc->set_total(total);
  }
  return absl::OkStatus();
}

// --- deletes and trims ----------------------------------------------------------------------------

absl::Status InteractionStore::DeleteUser(const v1::DeleteUserRequest& req, v1::DeleteUserResponse* resp) {
  Query q;
  google::protobuf::RepeatedPtrField<std::string> no_types;
  RETURN_IF_ERROR(ResolveQuery(req.user_ids(), no_types, nullptr, &q));
  // Every registered type's key, whether or not it holds a history: no read needed, and nothing
  // written before the delete can be missed.
  storage::WriteBatch batch;
  for (absl::string_view user : q.users) {
    for (const auto& t : q.table->types) batch.Delete(ks_, HistoryKey(user, t->id));
  }
  if (!batch.empty()) RETURN_IF_ERROR(engine_->Write(batch));
  for (absl::string_view user : q.users) hot_.Erase(user);
  resp->set_users_deleted(static_cast<uint32_t>(q.users.size()));
  return absl::OkStatus();
}

absl::Status InteractionStore::Trim(const v1::TrimRequest& req, v1::TrimResponse* resp) {
  std::shared_ptr<const TypeTable> table = registry_->snapshot();
  const int64_t now = clock_();
  // A history is rewritten by appending an empty operand: the merge then trims it. Unlike a Put of
  // the trimmed value this cannot race with concurrent writes.
  std::string empty;
  EncodeBlock({}, &empty);
  storage::WriteBatch batch;
  absl::Status st;
  uint64_t scanned = 0, trimmed = 0, dropped = 0, removed = 0;
  std::string scratch;
  auto consider = [&](absl::string_view key, absl::string_view value) {
    uint32_t id;
    if (!ParseHistoryKey(key, nullptr, &id)) return true;
    const TypeInfo* ti = table->FindId(id);
    if (ti == nullptr) return true;
    ++scanned;
    MergeStats ms;
    absl::string_view v = value;
    if (!MergeBlocks(absl::MakeConstSpan(&v, 1), ti->TrimAt(now), &scratch, &ms)) {
      corrupt_->Inc();
      return true;  // leave it for an operator to inspect
    }
    removed += ms.events_out == 0;
    if (ms.dropped > 0) {
      ++trimmed;
      dropped += ms.dropped;
      batch.Merge(ks_, std::string(key), empty);
      if (batch.size() >= 1000) {
        st = engine_->Write(batch);
        batch = storage::WriteBatch();
        if (!st.ok()) return false;
      }
    }
    return true;
  };
  if (req.user_ids().empty()) {
    RETURN_IF_ERROR(engine_->Scan(ks_, "", consider));
  } else {
    Query q;
    google::protobuf::RepeatedPtrField<std::string> no_types;
    RETURN_IF_ERROR(ResolveQuery(req.user_ids(), no_types, nullptr, &q));
    std::vector<std::string> keys;
    for (absl::string_view user : q.users) {
      for (const auto& t : table->types) keys.push_back(HistoryKey(user, t->id));
    }
    std::vector<absl::string_view> views(keys.begin(), keys.end());
    std::vector<std::optional<std::string>> values;
    RETURN_IF_ERROR(engine_->MultiGet(ks_, views, &values));
    for (size_t i = 0; i < keys.size() && st.ok(); ++i) {
      if (values[i].has_value()) consider(keys[i], *values[i]);
    }
  }
  RETURN_IF_ERROR(st);
  if (!batch.empty()) RETURN_IF_ERROR(engine_->Write(batch));
  RETURN_IF_ERROR(engine_->CompactAll(ks_));
  // A compaction writes a history that its merge emptied as an empty value; only the next one
  // drops it (the expiry filter sees stored values, not merge results).
  if (removed > 0) RETURN_IF_ERROR(engine_->CompactAll(ks_));
  // Flush every keyspace: a write-ahead log file is deleted only once every keyspace with data in
  // it is flushed, and the event-type keyspace, written once at start-up, would otherwise keep the
  // whole ingest history's log on disk.
  RETURN_IF_ERROR(engine_->Flush());
  hot_.Clear();
  resp->set_histories_scanned(scanned);
  resp->set_histories_trimmed(trimmed);
  resp->set_events_dropped(dropped);
  resp->set_histories_removed(removed);
  return absl::OkStatus();
}

}  // namespace kosh::interactions
