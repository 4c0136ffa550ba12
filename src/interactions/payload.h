// Event payloads: the small typed record an event type may carry (catalog_id, price, quantity...),
// encoded with the feature store's codec (the same types, validation and packed layout) but
// without the row header, since an event's payload has neither an expiry nor schema versions.
//
// Stored form (docs/formats.md): empty when the event set no field; otherwise
//   varint presence-bitmap length (0 = every field set) | presence bitmap | payload
// where payload is the feature codec's packed layout of the type's payload fields.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "features/codec.h"
#include "google/protobuf/map.h"
#include "kosh/v1/types.pb.h"

namespace kosh::interactions {

using PayloadMap = google::protobuf::Map<std::string, v1::Value>;

// Validates `fields` against `layout` (the event type's payload fields) and encodes them into
// *out. `layout` may be null (the type has no payload): then any field is an error. Errors are
// INVALID_ARGUMENT and start with `where`, e.g. `events[3].payload["price"]: expected FLOAT32, got
// string_value`.
absl::Status EncodePayload(const features::Layout* layout, const PayloadMap& fields,
                           uint32_t max_string_bytes, absl::string_view where, std::string* out);

// Decodes a stored payload into *out (fields that were not set are left out). DATA_LOSS if it does
// not match the layout.
absl::Status DecodePayload(const features::Layout& layout, absl::string_view encoded, PayloadMap* out);

}  // namespace kosh::interactions
