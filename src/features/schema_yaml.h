// The declarative schema file: entities and feature groups in YAML, turned into an
// ApplySchemaRequest. docs/api.md shows the format; examples/schema.yaml is a complete example.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "kosh/v1/registry.pb.h"
#include "yaml-cpp/yaml.h"

namespace kosh::features {

// Errors name the YAML path (e.g. "feature_groups[1].features[2].type") and the source.
absl::StatusOr<v1::ApplySchemaRequest> ParseSchemaYaml(const YAML::Node& root, absl::string_view source);

// Parses a type name such as "float32", "FLOAT32_VECTOR" or "int8_vector" (case-insensitive).
absl::StatusOr<v1::FeatureType> ParseTypeName(absl::string_view name);

// Converts a YAML scalar or sequence into a Value of the given feature's type.
absl::StatusOr<v1::Value> ParseYamlValue(const v1::FeatureSpec& spec, const YAML::Node& node);

}  // namespace kosh::features
