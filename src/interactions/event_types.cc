#include "interactions/event_types.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "features/registry.h"
#include "google/protobuf/util/message_differencer.h"

namespace kosh::interactions {
namespace {

constexpr absl::string_view kTypePrefix = "type/";

std::shared_ptr<const TypeTable> BuildTable(std::vector<std::shared_ptr<const TypeInfo>> types) {
  auto t = std::make_shared<TypeTable>();
  std::sort(types.begin(), types.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  t->types = std::move(types);
  for (const auto& ti : t->types) {
    t->by_name[ti->def.name()] = ti.get();
    t->by_id[ti->id] = ti.get();
  }
  return t;
}

bool SamePayload(const v1::EventType& a, const v1::EventType& b) {
  if (a.payload_size() != b.payload_size()) return false;
  for (int i = 0; i < a.payload_size(); ++i) {
    if (!google::protobuf::util::MessageDifferencer::Equals(a.payload(i), b.payload(i))) return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const TypeInfo> CompileType(const v1::EventType& def) {
  auto t = std::make_shared<TypeInfo>();
  t->def = def;
  t->id = def.id();
  t->cap = def.cap();
  t->retention_ms = def.retention_seconds() * 1000;
  if (def.payload_size() > 0) {
    t->payload = std::make_shared<const features::Layout>(
        1, std::vector<v1::FeatureSpec>(def.payload().begin(), def.payload().end()));
  }
  return t;
}

absl::StatusOr<std::unique_ptr<EventTypeRegistry>> EventTypeRegistry::Open(storage::Engine* engine,
                                                                           storage::Keyspace ks,
                                                                           EventTypeLimits limits,
                                                                           std::shared_ptr<TypeTableSlot> slot) {
  std::unique_ptr<EventTypeRegistry> r(new EventTypeRegistry(engine, ks, limits, std::move(slot)));
  std::vector<std::shared_ptr<const TypeInfo>> types;
  absl::Status parse_error;
  RETURN_IF_ERROR(engine->Scan(ks, kTypePrefix, [&](absl::string_view k, absl::string_view v) {
    v1::EventType t;
    if (!t.ParseFromArray(v.data(), static_cast<int>(v.size())) || t.id() == 0 || t.cap() == 0) {
      parse_error = absl::DataLossError(absl::StrCat("event type record ", k, " is corrupt"));
      return false;
    }
    types.push_back(CompileType(t));
    return true;
  }));
  RETURN_IF_ERROR(parse_error);
  r->slot_->Store(BuildTable(std::move(types)));
  return r;
}

absl::Status EventTypeRegistry::Validate(const v1::EventType& t, const std::string& where) const {
  if (!features::IsValidName(t.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ".name: \"", t.name(), "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
  }
  if (t.cap() > limits_.max_cap) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".cap: ", t.cap(), " exceeds the limit of ",
                                                   limits_.max_cap, " (interactions.max_cap)"));
  }
  if (t.retention_seconds() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".retention_seconds: must not be negative"));
  }
  if (t.retention_seconds() > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".retention_seconds: too large"));
  }
  if (static_cast<uint32_t>(t.payload_size()) > limits_.max_payload_fields) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".payload: ", t.payload_size(),
                                                   " fields exceeds the limit of ", limits_.max_payload_fields));
  }
  std::set<std::string> seen;
  for (int i = 0; i < t.payload_size(); ++i) {
    const v1::FeatureSpec& f = t.payload(i);
    std::string field = absl::StrCat(where, ".payload[", i, "]");
    if (!features::IsValidName(f.name())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: \"", f.name(), "\" is not a valid name"));
    }
    if (!seen.insert(f.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".name: duplicate field \"", f.name(), "\""));
    }
    if (f.type() == v1::FEATURE_TYPE_UNSPECIFIED || !v1::FeatureType_IsValid(f.type())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".type: field \"", f.name(), "\" needs a type"));
    }
    if (features::IsVectorType(f.type())) {
      if (f.vector_length() == 0 || f.vector_length() > 4096) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".vector_length: ", features::TypeName(f.type()),
                                                       " field \"", f.name(), "\" needs a length from 1 to 4096"));
      }
    } else if (f.vector_length() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".vector_length: only vector types take a length"));
    }
    if (f.max_length() != 0 && !features::IsVariableWidth(f.type())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".max_length: only STRING and BYTES take a max_length"));
    }
    if (f.has_default_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".default_value: payload fields take no default (unset fields are absent)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::RegisterEventTypeResponse> EventTypeRegistry::Register(const v1::EventType& type,
                                                                          const std::string& where) {
  RETURN_IF_ERROR(Validate(type, where));
  absl::MutexLock lock(&mu_);
  std::shared_ptr<const TypeTable> cur = slot_->Load();
  v1::EventType def = type;
  if (def.cap() == 0) def.set_cap(limits_.default_cap);
  v1::RegisterEventTypeResponse resp;
  const TypeInfo* existing = cur->Find(def.name());
  if (existing != nullptr) {
    if (!SamePayload(existing->def, def)) {
      return absl::FailedPreconditionError(absl::StrCat(
          where, ".payload: event type \"", def.name(),
          "\" exists with a different payload; payloads cannot change (register a new type)"));
    }
    def.set_id(existing->id);
    if (google::protobuf::util::MessageDifferencer::Equals(existing->def, def)) {
      *resp.mutable_event_type() = existing->def;
      return resp;
    }
    resp.set_changed(true);
  } else {
    if (cur->types.size() >= limits_.max_types) {
      return absl::ResourceExhaustedError(absl::StrCat(where, ": the limit of ", limits_.max_types,
                                                       " event types is reached (interactions.max_event_types)"));
    }
    uint32_t next = cur->types.empty() ? 1 : cur->types.back()->id + 1;
    def.set_id(next);
    resp.set_created(true);
  }
  storage::WriteBatch batch;
  batch.Put(ks_, absl::StrCat(kTypePrefix, def.name()), def.SerializeAsString());
  RETURN_IF_ERROR(engine_->Write(batch));
  std::vector<std::shared_ptr<const TypeInfo>> types;
  for (const auto& t : cur->types) {
    if (t->id != def.id()) types.push_back(t);
  }
  types.push_back(CompileType(def));
  slot_->Store(BuildTable(std::move(types)));
  *resp.mutable_event_type() = def;
  return resp;
}

std::vector<v1::EventType> EventTypeRegistry::List() const {
  std::vector<v1::EventType> out;
  for (const auto& t : slot_->Load()->types) out.push_back(t->def);
  return out;
}

}  // namespace kosh::interactions
