// Dataset value kinds and the stored encoding of their values (docs/formats.md, "Dataset values").
//
// Every stored value starts with a format byte whose high nibble is the encoding version (1):
//   BYTES  : 0x10, then the bytes
//   JSON   : 0x10, then the minified JSON text
//   RECS   : 0x10 | 0x01 when every item id is a canonical decimal uint64 (stored as varints),
//            then varint n, the n ids (varints, or varint length + bytes), then n float32 scores
//   RECORD : a feature-store row (features/codec.h) of schema version 1, expiry 0
// Functions here are pure and thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "features/codec.h"
#include "kosh/v1/datasets.pb.h"
#include "kosh/v1/types.pb.h"
#include "yaml-cpp/yaml.h"

namespace kosh::datasets {

using v1::DatasetKind;

// "bytes", "json", "recs", "record" (case-insensitive; "DATASET_KIND_RECS" also accepted).
absl::StatusOr<DatasetKind> ParseKind(absl::string_view name);
absl::string_view KindName(DatasetKind kind);

// What a dataset's values are: its kind and, for RECORD, the fields (a compiled layout).
struct ValueSchema {
  DatasetKind kind = v1::DATASET_KIND_UNSPECIFIED;
  std::vector<v1::FeatureSpec> fields;            // RECORD only
  std::shared_ptr<const features::Layout> layout;  // RECORD only

  bool operator==(const ValueSchema& other) const;  // same kind and identical fields
  std::string Describe() const;                      // "RECS", "RECORD(age INT32, emb FLOAT32_VECTOR(4))"
};

// Validates `fields` (names, types, vector lengths, defaults; RECORD needs at least one field,
// other kinds none) and compiles the layout. Errors name "fields[i]...".
absl::StatusOr<ValueSchema> MakeSchema(DatasetKind kind, std::vector<v1::FeatureSpec> fields);

// The record schema file: a YAML mapping {fields: [{name, type, length, max_length, default}]}
// (the feature syntax of the schema files). Errors name the file and the YAML path.
absl::StatusOr<std::vector<v1::FeatureSpec>> LoadRecordFields(const std::string& path);
// The same list from a YAML node; errors name `where` (e.g. "datasets.declare[0].fields").
absl::StatusOr<std::vector<v1::FeatureSpec>> ParseRecordFields(const YAML::Node& list, const std::string& where);

// --- encoding --------------------------------------------------------------------------------

enum class BytesEncoding { kRaw, kBase64, kHex };
absl::StatusOr<BytesEncoding> ParseBytesEncoding(absl::string_view name);

void EncodeBytes(absl::string_view bytes, std::string* out);
// Decodes `text` per `enc` and encodes it. INVALID_ARGUMENT for malformed base64/hex.
absl::Status EncodeBytesText(absl::string_view text, BytesEncoding enc, std::string* out);
// `minified_json` must already be valid, minified JSON.
void EncodeJson(absl::string_view minified_json, std::string* out);

struct RecItemView {
  absl::string_view id;
  float score;
};
// Item ids must be non-empty valid UTF-8 of at most 1 KiB and scores finite (INVALID_ARGUMENT
// naming items[i] otherwise). An empty list is valid.
absl::Status EncodeRecs(absl::Span<const RecItemView> items, std::string* out);
// Parses and encodes the text form in one pass (the CSV/TSV hot path); the same rules and errors
// as ParseRecsText followed by EncodeRecs.
absl::Status EncodeRecsText(absl::string_view text, std::string* out);
// Parses the text form "id:score|id:score|..." (spaces around tokens are allowed; an empty text is an
// empty list). The views point into `text`.
absl::Status ParseRecsText(absl::string_view text, std::vector<RecItemView>* items);

// Encodes a record: values[j] sets field fields[j]; unset fields read back with present=false.
absl::Status EncodeRecord(const ValueSchema& schema, absl::Span<const int> fields,
                          absl::Span<const v1::Value* const> values, std::string* out);
// Parses one text cell (CSV/TSV) as a value of `spec`: numbers, true/false/1/0, raw text for
// STRING and BYTES, "[a, b, c]" (or "a b c") for vectors.
absl::Status ParseCell(const v1::FeatureSpec& spec, absl::string_view text, v1::Value* out);

// --- decoding --------------------------------------------------------------------------------

// Decodes a stored value into its API form. DATA_LOSS if it is malformed.
absl::Status DecodeValue(const ValueSchema& schema, absl::string_view stored, v1::DatasetValue* out);

// --- helpers ------------------------------------------------------------------------------------

bool IsValidUtf8(absl::string_view s);
void PutVarint(std::string* out, uint64_t v);
bool GetVarint(absl::string_view* in, uint64_t* v);

}  // namespace kosh::datasets
