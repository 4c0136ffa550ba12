#include "interactions/options.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "features/schema_yaml.h"

namespace kosh::interactions {
namespace {

absl::Status Err(const std::string& where, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", msg));
}

// A retention: a duration ("30s", "24h") or a number of days ("180d").
absl::StatusOr<int64_t> ParseRetentionSeconds(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  if (t.size() > 1 && absl::EndsWith(t, "d")) {
    double days;
    if (absl::SimpleAtod(t.substr(0, t.size() - 1), &days) && days >= 0 && days < 1e7) {
      return static_cast<int64_t>(days * 86400);
    }
  } else {
    auto ms = base::ParseDurationMs(t);
    if (ms.ok()) return *ms / 1000;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not a retention (examples: 180d, 24h, 30m, 0 = none)"));
}

absl::Status ParseUint32(const base::YamlReader& r, const std::string& key, uint32_t* out, uint64_t max) {
  uint64_t v = *out;
  RETURN_IF_ERROR(r.GetUint(key, &v));
  if (v > max) return Err(absl::StrCat(r.path(), ".", key), absl::StrCat("at most ", max));
  *out = static_cast<uint32_t>(v);
  return absl::OkStatus();
}

absl::StatusOr<v1::FeatureSpec> ParsePayloadField(const YAML::Node& n, const std::string& where) {
  if (!n.IsMap()) return Err(where, "expected a mapping with name and type");
  base::YamlReader r(n, where);
  RETURN_IF_ERROR(r.CheckKeys({"name", "type", "length", "max_length"}));
  v1::FeatureSpec f;
  std::string name, type;
  RETURN_IF_ERROR(r.GetString("name", &name));
  RETURN_IF_ERROR(r.GetString("type", &type));
  if (name.empty()) return Err(where + ".name", "missing");
  if (type.empty()) return Err(where + ".type", "missing");
  f.set_name(name);
  auto t = features::ParseTypeName(type);
  if (!t.ok()) return Err(where + ".type", t.status().message());
  f.set_type(*t);
  uint32_t len = 0;
  RETURN_IF_ERROR(ParseUint32(r, "length", &len, 1u << 20));
  f.set_vector_length(len);
  uint32_t max_length = 0;
  RETURN_IF_ERROR(ParseUint32(r, "max_length", &max_length, 1u << 20));
  f.set_max_length(max_length);
  return f;
}

}  // namespace

absl::StatusOr<std::vector<v1::EventType>> ParseEventTypesYaml(const YAML::Node& list, const std::string& where) {
  std::vector<v1::EventType> out;
  if (!list.IsDefined() || list.IsNull()) return out;
  if (!list.IsSequence()) return Err(where, "expected a list of event types");
  for (size_t i = 0; i < list.size(); ++i) {
    std::string w = absl::StrCat(where, "[", i, "]");
    const YAML::Node& n = list[i];
    if (!n.IsMap()) return Err(w, "expected a mapping with at least a name");
    base::YamlReader r(n, w);
    RETURN_IF_ERROR(r.CheckKeys({"name", "cap", "retention", "payload", "description"}));
    v1::EventType t;
    std::string s;
    RETURN_IF_ERROR(r.GetString("name", &s));
    if (s.empty()) return Err(w + ".name", "missing");
    t.set_name(s);
    uint32_t cap = 0;
    RETURN_IF_ERROR(ParseUint32(r, "cap", &cap, UINT32_MAX));
    t.set_cap(cap);
    if (r.Has("retention")) {
      std::string ret;
      RETURN_IF_ERROR(r.GetString("retention", &ret));
      auto secs = ParseRetentionSeconds(ret);
      if (!secs.ok()) return Err(w + ".retention", secs.status().message());
      t.set_retention_seconds(*secs);
    }
    s.clear();
    RETURN_IF_ERROR(r.GetString("description", &s));
    t.set_description(s);
    if (r.Has("payload")) {
      const YAML::Node& p = r.node()["payload"];
      if (!p.IsSequence()) return Err(w + ".payload", "expected a list of fields");
      for (size_t j = 0; j < p.size(); ++j) {
        ASSIGN_OR_RETURN(*t.add_payload(), ParsePayloadField(p[j], absl::StrCat(w, ".payload[", j, "]")));
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<InteractionOptions> ParseInteractionOptions(const YAML::Node& node) {
  InteractionOptions o;
  if (!node.IsDefined() || node.IsNull()) return o;
  const std::string root = "interactions";
  if (!node.IsMap()) return Err(root, "expected a mapping");
  base::YamlReader r(node, root);
  RETURN_IF_ERROR(r.CheckKeys({"hot_budget", "inactivity", "default_cap", "max_cap", "max_event_types",
                               "max_events_per_write", "max_users_per_request", "max_events_per_read",
                               "max_payload_bytes", "max_id_bytes", "max_future_skew", "write_threads",
                               "event_types", "event_type_files"}));
  RETURN_IF_ERROR(r.GetBytes("hot_budget", &o.hot_budget_bytes));
  RETURN_IF_ERROR(r.GetDurationMs("inactivity", &o.inactivity_ms));
  if (o.inactivity_ms < 10) return Err(root + ".inactivity", "at least 10ms");
  RETURN_IF_ERROR(ParseUint32(r, "max_cap", &o.types.max_cap, 1000000));
  RETURN_IF_ERROR(ParseUint32(r, "default_cap", &o.types.default_cap, o.types.max_cap));
  if (o.types.default_cap == 0) return Err(root + ".default_cap", "must be positive");
  if (o.types.default_cap > o.types.max_cap) {
    return Err(root + ".default_cap", absl::StrCat("exceeds max_cap (", o.types.max_cap, ")"));
  }
  RETURN_IF_ERROR(ParseUint32(r, "max_event_types", &o.types.max_types, 1000000));
  RETURN_IF_ERROR(ParseUint32(r, "max_events_per_write", &o.max_events_per_write, 10000000));
  RETURN_IF_ERROR(ParseUint32(r, "max_users_per_request", &o.max_users_per_request, 10000000));
  RETURN_IF_ERROR(ParseUint32(r, "max_events_per_read", &o.max_events_per_read, 10000000));
  uint64_t b = o.max_payload_bytes;
  RETURN_IF_ERROR(r.GetBytes("max_payload_bytes", &b));
  if (b > (1u << 20)) return Err(root + ".max_payload_bytes", "at most 1MiB");
  o.max_payload_bytes = static_cast<uint32_t>(b);
  o.types.max_string_bytes = o.max_payload_bytes;
  b = o.max_id_bytes;
  RETURN_IF_ERROR(r.GetBytes("max_id_bytes", &b));
  if (b == 0 || b > 65536) return Err(root + ".max_id_bytes", "expected 1 to 65536 bytes");
  o.max_id_bytes = static_cast<uint32_t>(b);
  RETURN_IF_ERROR(r.GetDurationMs("max_future_skew", &o.max_future_skew_ms));
  RETURN_IF_ERROR(ParseUint32(r, "write_threads", &o.write_threads, 256));
  if (o.write_threads == 0) return Err(root + ".write_threads", "must be positive");
  for (auto [key, v] : {std::pair{"max_events_per_write", o.max_events_per_write},
                        std::pair{"max_users_per_request", o.max_users_per_request},
                        std::pair{"max_events_per_read", o.max_events_per_read},
                        std::pair{"max_event_types", o.types.max_types}}) {
    if (v == 0) return Err(absl::StrCat(root, ".", key), "must be positive");
  }

  if (r.Has("event_types")) {
    ASSIGN_OR_RETURN(auto types, ParseEventTypesYaml(r.node()["event_types"], root + ".event_types"));
    for (size_t i = 0; i < types.size(); ++i) {
      o.event_types.push_back(std::move(types[i]));
      o.event_type_sources.push_back(absl::StrCat(root, ".event_types[", i, "]"));
    }
  }
  if (r.Has("event_type_files")) {
    const YAML::Node& files = r.node()["event_type_files"];
    if (!files.IsSequence()) return Err(root + ".event_type_files", "expected a list of paths");
    for (size_t i = 0; i < files.size(); ++i) {
      std::string where = absl::StrCat(root, ".event_type_files[", i, "]");
      if (!files[i].IsScalar()) return Err(where, "expected a path");
      const std::string path = files[i].Scalar();
      auto doc = base::LoadYamlFile(path);
      if (!doc.ok()) return Err(where, doc.status().message());
      base::YamlReader f(*doc, path);
      if (!doc->IsMap()) return Err(path, "expected a mapping with an event_types list");
      RETURN_IF_ERROR(f.CheckKeys({"event_types"}));
      ASSIGN_OR_RETURN(auto types, ParseEventTypesYaml((*doc)["event_types"], path + ": event_types"));
      for (size_t j = 0; j < types.size(); ++j) {
        o.event_types.push_back(std::move(types[j]));
        o.event_type_sources.push_back(absl::StrCat(path, ": event_types[", j, "]"));
      }
    }
  }
  return o;
}

}  // namespace kosh::interactions
