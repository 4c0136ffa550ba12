#include "features/schema_yaml.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/config.h"
#include "base/status.h"
#include "features/codec.h"

namespace kosh::features {
namespace {

absl::Status Err(absl::string_view source, const std::string& where, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", where, ": ", msg));
}

template <typename T>
bool As(const YAML::Node& n, T* out) {
  if (!n.IsScalar()) return false;
  try {
    *out = n.as<T>();
    return true;
  } catch (const YAML::Exception&) {
    return false;
  }
}

absl::Status CheckKeys(const YAML::Node& n, absl::string_view source, const std::string& where,
                       std::initializer_list<absl::string_view> allowed) {
  base::YamlReader r(n, where);
  absl::Status s = r.CheckKeys(allowed);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", s.message()));
  return absl::OkStatus();
}

absl::StatusOr<v1::FeatureSpec> ParseFeature(const YAML::Node& n, absl::string_view source,
                                             const std::string& where) {
  if (!n.IsMap()) return Err(source, where, "expected a mapping with name and type");
  RETURN_IF_ERROR(CheckKeys(n, source, where, {"name", "type", "length", "default", "max_length"}));
  v1::FeatureSpec f;
  std::string name, type;
  if (!As(n["name"], &name)) return Err(source, where + ".name", "missing or not a string");
  f.set_name(name);
  if (!As(n["type"], &type)) return Err(source, where + ".type", "missing or not a string");
  auto t = ParseTypeName(type);
  if (!t.ok()) return Err(source, where + ".type", t.status().message());
  f.set_type(*t);
  if (n["length"]) {
    uint32_t len;
    if (!As(n["length"], &len)) return Err(source, where + ".length", "expected a positive integer");
    f.set_vector_length(len);
  }
  if (n["max_length"]) {
    uint32_t len;
    if (!As(n["max_length"], &len)) return Err(source, where + ".max_length", "expected a positive integer");
    f.set_max_length(len);
  }
  if (n["default"]) {
    auto v = ParseYamlValue(f, n["default"]);
    if (!v.ok()) return Err(source, where + ".default", v.status().message());
    *f.mutable_default_value() = *v;
  }
  return f;
}

absl::Status ParseFeatures(const YAML::Node& n, absl::string_view source, const std::string& where,
                           google::protobuf::RepeatedPtrField<v1::FeatureSpec>* out) {
  if (!n.IsSequence()) return Err(source, where, "expected a list of features");
  for (size_t i = 0; i < n.size(); ++i) {
    ASSIGN_OR_RETURN(*out->Add(), ParseFeature(n[i], source, absl::StrCat(where, "[", i, "]")));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::FeatureType> ParseTypeName(absl::string_view name) {
  std::string upper = absl::AsciiStrToUpper(name);
  v1::FeatureType t;
  if (!v1::FeatureType_Parse(upper, &t) || t == v1::FEATURE_TYPE_UNSPECIFIED) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown type \"", name,
        "\" (bool, int32, int64, float32, float64, string, bytes, float32_vector, float16_vector, "
        "int8_vector, int32_vector, int64_vector)"));
  }
  return t;
}

absl::StatusOr<v1::Value> ParseYamlValue(const v1::FeatureSpec& spec, const YAML::Node& node) {
  v1::Value v;
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("not a valid ", TypeName(spec.type()), " value"));
  };
  switch (spec.type()) {
    case v1::BOOL: {
      bool b;
      if (!As(node, &b)) return bad();
      v.set_bool_value(b);
      break;
    }
    case v1::INT32: {
      int32_t x;
      if (!As(node, &x)) return bad();
      v.set_int32_value(x);
      break;
    }
    case v1::INT64: {
      int64_t x;
      if (!As(node, &x)) return bad();
      v.set_int64_value(x);
      break;
    }
    case v1::FLOAT32: {
      float x;
      if (!As(node, &x)) return bad();
      v.set_float32_value(x);
      break;
    }
    case v1::FLOAT64: {
      double x;
      if (!As(node, &x)) return bad();
      v.set_float64_value(x);
      break;
    }
    case v1::STRING:
    case v1::BYTES: {
      std::string s;
      if (!As(node, &s)) return bad();
      if (spec.type() == v1::STRING) v.set_string_value(s); else v.set_bytes_value(s);
      break;
    }
    case v1::FLOAT32_VECTOR:
    case v1::FLOAT16_VECTOR:
    case v1::INT8_VECTOR:
    case v1::INT32_VECTOR:
    case v1::INT64_VECTOR: {
      if (!node.IsSequence()) return absl::InvalidArgumentError("expected a list");
      for (size_t i = 0; i < node.size(); ++i) {
        bool ok;
        if (spec.type() == v1::FLOAT32_VECTOR || spec.type() == v1::FLOAT16_VECTOR) {
          float x;
          ok = As(node[i], &x);
          if (ok) v.mutable_float_list()->add_values(x);
        } else if (spec.type() == v1::INT64_VECTOR) {
          int64_t x;
          ok = As(node[i], &x);
          if (ok) v.mutable_int64_list()->add_values(x);
        } else {
          int32_t x;
          ok = As(node[i], &x);
          if (ok) v.mutable_int32_list()->add_values(x);
        }
        if (!ok) return absl::InvalidArgumentError(absl::StrCat("element ", i, " is not a number"));
      }
      if (node.size() == 0) {
        // An empty list still selects the list member so that the length check reports it.
        if (spec.type() == v1::INT64_VECTOR) v.mutable_int64_list();
        else if (spec.type() == v1::INT8_VECTOR || spec.type() == v1::INT32_VECTOR) v.mutable_int32_list();
        else v.mutable_float_list();
      }
      break;
    }
    default:
      return bad();
  }
  return v;
}

absl::StatusOr<v1::ApplySchemaRequest> ParseSchemaYaml(const YAML::Node& root, absl::string_view source) {
  v1::ApplySchemaRequest req;
  if (!root.IsDefined() || root.IsNull()) return req;
  if (!root.IsMap()) return Err(source, "schema", "expected a mapping with entities and feature_groups");
  RETURN_IF_ERROR(CheckKeys(root, source, "", {"entities", "feature_groups"}));
  const YAML::Node entities = root["entities"];
  if (entities) {
    if (!entities.IsSequence()) return Err(source, "entities", "expected a list");
    for (size_t i = 0; i < entities.size(); ++i) {
      std::string where = absl::StrCat("entities[", i, "]");
      const YAML::Node& e = entities[i];
      if (!e.IsMap()) return Err(source, where, "expected a mapping with name and key_columns");
      RETURN_IF_ERROR(CheckKeys(e, source, where, {"name", "key_columns", "description"}));
      auto* out = req.add_entities();
      std::string s;
      if (!As(e["name"], &s)) return Err(source, where + ".name", "missing or not a string");
      out->set_name(s);
      if (e["description"] && As(e["description"], &s)) out->set_description(s);
      const YAML::Node& keys = e["key_columns"];
      if (!keys || !keys.IsSequence()) return Err(source, where + ".key_columns", "expected a list of names");
      for (size_t k = 0; k < keys.size(); ++k) {
        if (!As(keys[k], &s)) return Err(source, absl::StrCat(where, ".key_columns[", k, "]"), "not a string");
        out->add_key_columns(s);
      }
    }
  }
  const YAML::Node groups = root["feature_groups"];
  if (groups) {
    if (!groups.IsSequence()) return Err(source, "feature_groups", "expected a list");
    for (size_t i = 0; i < groups.size(); ++i) {
      std::string where = absl::StrCat("feature_groups[", i, "]");
      const YAML::Node& g = groups[i];
      if (!g.IsMap()) return Err(source, where, "expected a mapping");
      RETURN_IF_ERROR(CheckKeys(g, source, where,
                                {"entity", "name", "ttl", "description", "features", "versions"}));
      auto* out = req.add_groups();
      std::string s;
      if (!As(g["entity"], &s)) return Err(source, where + ".entity", "missing or not a string");
      out->set_entity(s);
      if (!As(g["name"], &s)) return Err(source, where + ".name", "missing or not a string");
      out->set_name(s);
      if (g["description"] && As(g["description"], &s)) out->set_description(s);
      if (g["ttl"]) {
        if (!As(g["ttl"], &s)) return Err(source, where + ".ttl", "expected a duration such as 0, 3600s, 30m, 24h");
        auto ms = base::ParseDurationMs(s);
        if (!ms.ok()) return Err(source, where + ".ttl", ms.status().message());
        out->set_ttl_seconds(*ms / 1000);
      }
      if (g["features"] && g["versions"]) {
        return Err(source, where, "give either features (one version) or versions, not both");
      }
      if (g["features"]) {
        auto* v = out->add_versions();
        v->set_version(1);
        RETURN_IF_ERROR(ParseFeatures(g["features"], source, where + ".features", v->mutable_features()));
      } else if (g["versions"]) {
        const YAML::Node& versions = g["versions"];
        if (!versions.IsSequence()) return Err(source, where + ".versions", "expected a list");
        for (size_t j = 0; j < versions.size(); ++j) {
          std::string vwhere = absl::StrCat(where, ".versions[", j, "]");
          const YAML::Node& vn = versions[j];
          if (!vn.IsMap()) return Err(source, vwhere, "expected a mapping with features");
          RETURN_IF_ERROR(CheckKeys(vn, source, vwhere, {"version", "features"}));
          auto* v = out->add_versions();
          uint32_t num = static_cast<uint32_t>(j + 1);
          if (vn["version"] && !As(vn["version"], &num)) {
            return Err(source, vwhere + ".version", "expected a positive integer");
          }
          v->set_version(num);
          RETURN_IF_ERROR(ParseFeatures(vn["features"], source, vwhere + ".features", v->mutable_features()));
        }
      } else {
        return Err(source, where, "needs features (or versions)");
      }
    }
  }
  return req;
}

}  // namespace kosh::features
