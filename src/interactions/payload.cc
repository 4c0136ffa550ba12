#include "interactions/payload.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "interactions/history.h"

namespace kosh::interactions {

absl::Status EncodePayload(const features::Layout* layout, const PayloadMap& fields,
                           uint32_t max_string_bytes, absl::string_view where, std::string* out) {
  out->clear();
  if (fields.empty()) return absl::OkStatus();
  std::vector<int> idx;
  std::vector<const v1::Value*> values;
  idx.reserve(fields.size());
  values.reserve(fields.size());
  // Map iteration order is unspecified: sort by field index so errors are deterministic.
  struct Field {
    int index;
    const std::string* name;
    const v1::Value* value;
  };
  std::vector<Field> sorted;
  for (const auto& kv : fields) {
    int i = layout == nullptr ? -1 : layout->IndexOf(kv.first);
    if (i < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "[\"", kv.first, "\"]: unknown payload field",
          layout == nullptr ? " (this event type has no payload)" : ""));
    }
    sorted.push_back({i, &kv.first, &kv.second});
  }
  std::sort(sorted.begin(), sorted.end(), [](const Field& a, const Field& b) { return a.index < b.index; });
  for (const Field& f : sorted) {
    absl::Status s = features::ValidateValue(layout->spec(f.index), *f.value, max_string_bytes);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, "[\"", *f.name, "\"]: ", s.message()));
    }
    idx.push_back(f.index);
    values.push_back(f.value);
  }
  features::CodecOptions no_compression;
  no_compression.compress_min_bytes = std::numeric_limits<uint32_t>::max();
  no_compression.max_string_bytes = max_string_bytes;
  std::string row;
  absl::Status s = features::EncodeRow(*layout, idx, values, 0, no_compression, where, &row);
  if (!s.ok()) return s;
  std::string scratch;
  auto view = features::ParseRow(row, &scratch);
  if (!view.ok()) return absl::InternalError(absl::StrCat(where, ": ", view.status().message()));
  PutVarint(out, view->presence.size());
  out->append(view->presence.data(), view->presence.size());
  out->append(view->payload.data(), view->payload.size());
  return absl::OkStatus();
}

absl::Status DecodePayload(const features::Layout& layout, absl::string_view encoded, PayloadMap* out) {
  if (encoded.empty()) return absl::OkStatus();
  uint64_t plen;
  if (!GetVarint(&encoded, &plen) || plen > encoded.size()) {
    return absl::DataLossError("stored event payload has a bad presence bitmap");
  }
  features::RowView row;
  row.version = 1;
  row.presence = encoded.substr(0, plen);
  row.payload = encoded.substr(plen);
  absl::Status s = features::CheckPayload(layout, row);
  if (!s.ok()) return absl::DataLossError(absl::StrCat("stored event payload: ", s.message()));
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!row.Present(i)) continue;
    features::DecodeValue(layout, row, i, &(*out)[layout.spec(i).name()]);
  }
  return absl::OkStatus();
}

}  // namespace kosh::interactions
