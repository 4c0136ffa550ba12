// The binary encoding of one feature-group row: a small header and a packed typed payload.
// docs/formats.md describes the format byte by byte.
//
// A Layout is compiled once per (group, schema version) and is immutable; it tells where each
// feature sits in the payload so that a reader decodes only the features it was asked for.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kosh/v1/types.pb.h"

namespace kosh::features {

using v1::FeatureSpec;
using v1::FeatureType;
using v1::Value;

// Human-readable name of a type, e.g. "FLOAT32_VECTOR".
absl::string_view TypeName(FeatureType t);
bool IsVectorType(FeatureType t);
bool IsVariableWidth(FeatureType t);  // STRING, BYTES
bool IsNumeric(FeatureType t);        // everything but STRING and BYTES
// Bytes one element occupies in the payload (0 for variable-width types).
uint32_t ElementWidth(FeatureType t);
// Number of float32 columns the feature occupies in a dense matrix (vector_length or 1).
uint32_t MatrixWidth(const FeatureSpec& spec);

// IEEE 754 half precision conversions (round to nearest even; overflow saturates to infinity).
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

struct FieldLayout {
  FeatureType type = v1::FEATURE_TYPE_UNSPECIFIED;
  uint32_t vector_length = 0;
  uint32_t offset = 0;     // byte offset in the fixed region (fixed-width features)
  int var_index = -1;      // index among the variable-width features, or -1
  uint32_t width = 0;      // bytes in the fixed region
};

class Layout {
 public:
  // Compiles the layout of one schema version. `specs` must already be validated.
  Layout(uint32_t version, std::vector<FeatureSpec> specs);

  uint32_t version() const { return version_; }
  size_t size() const { return specs_.size(); }
  const FeatureSpec& spec(size_t i) const { return specs_[i]; }
  const FieldLayout& field(size_t i) const { return fields_[i]; }
  uint32_t fixed_size() const { return fixed_size_; }
  uint32_t num_var() const { return num_var_; }
  // Index of feature `name`, or -1.
  int IndexOf(absl::string_view name) const;
  // The default of feature i as matrix floats (MatrixWidth values).
  absl::Span<const float> DefaultFloats(size_t i) const { return default_floats_[i]; }

 private:
  uint32_t version_;
  std::vector<FeatureSpec> specs_;
  std::vector<FieldLayout> fields_;
  std::vector<std::vector<float>> default_floats_;
  absl::flat_hash_map<std::string, int> index_;
  uint32_t fixed_size_ = 0;
  uint32_t num_var_ = 0;
};

// Encoding knobs.
struct CodecOptions {
  uint32_t compress_min_bytes = 512;    // payloads smaller than this are never compressed
  double compress_max_ratio = 0.8;      // keep the compressed form only if it is this much smaller
  uint32_t max_string_bytes = 65536;    // limit for STRING/BYTES features without max_length
};

// Encodes one row. `fields[j]` is the index in `layout` of the feature `values[j]` sets; features
// of the layout not named in `fields` are stored as unset. `expiry_unix_s` is 0 for "never".
// Errors are INVALID_ARGUMENT and start with `where` (e.g. "rows[3]"), then name the value index
// and the feature, e.g. "rows[3].values[1] (feature \"age\"): expected INT32, got string_value".
absl::Status EncodeRow(const Layout& layout, absl::Span<const int> fields,
                       absl::Span<const Value* const> values, uint32_t expiry_unix_s,
                       const CodecOptions& options, absl::string_view where, std::string* out);

// Checks that `value` is acceptable for a feature of `spec` (type, vector length, string length).
absl::Status ValidateValue(const FeatureSpec& spec, const Value& value, uint32_t max_string_bytes);

// A parsed row header with a view of its payload. Parse does not copy unless the payload is
// compressed, in which case the decompressed payload is kept in `scratch`.
struct RowView {
  uint32_t version = 0;
  uint32_t expiry_unix_s = 0;
  absl::string_view presence;  // empty: every feature is present
  absl::string_view payload;

  bool Present(size_t i) const {
    return presence.empty() || (static_cast<uint8_t>(presence[i / 8]) >> (i % 8)) & 1;
  }
  bool Expired(int64_t now_unix_s) const {
    return expiry_unix_s != 0 && now_unix_s >= static_cast<int64_t>(expiry_unix_s);
  }
};

// Parses the header of an encoded row. DATA_LOSS if it is malformed.
absl::StatusOr<RowView> ParseRow(absl::string_view encoded, std::string* scratch);

// Reads only the expiry from an encoded row (used by the compaction filter). Returns false if the
// value is too short to be a row.
bool PeekExpiry(absl::string_view encoded, uint32_t* expiry_unix_s);

// Decodes feature i of a row written with `layout`. The payload must have been checked against
// the layout by CheckPayload.
void DecodeValue(const Layout& layout, const RowView& row, size_t i, Value* out);
// Writes MatrixWidth(spec(i)) floats of feature i to `out`.
void DecodeFloats(const Layout& layout, const RowView& row, size_t i, float* out);
// DATA_LOSS if the payload is too short for `layout` or its variable-width offsets are out of range.
absl::Status CheckPayload(const Layout& layout, const RowView& row);

// The zero value of a type (with vector_length elements for vectors).
Value ZeroValue(const FeatureSpec& spec);
// The spec's default_value if set, else ZeroValue.
Value DefaultValue(const FeatureSpec& spec);

}  // namespace kosh::features
