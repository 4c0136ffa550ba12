#include "features/codec.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "zstd.h"

namespace kosh::features {
namespace {

constexpr uint8_t kMagic = 0x10;           // high nibble: format version 1
constexpr uint8_t kFlagCompressed = 0x01;  // payload is a zstd frame
constexpr uint8_t kFlagPresence = 0x02;    // a presence bitmap follows the version
constexpr size_t kFixedHeader = 5;         // format byte + u32 expiry

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(absl::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift <= 63 && !in->empty(); shift += 7) {
    uint8_t b = static_cast<uint8_t>((*in)[0]);
    in->remove_prefix(1);
    result |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = result;
      return true;
    }
  }
  return false;
}

template <typename T>
void Store(char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <typename T>
T Load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

absl::string_view CaseName(const Value& v) {
  switch (v.kind_case()) {
    case Value::kBoolValue: return "bool_value";
    case Value::kInt32Value: return "int32_value";
    case Value::kInt64Value: return "int64_value";
    case Value::kFloat32Value: return "float32_value";
    case Value::kFloat64Value: return "float64_value";
    case Value::kStringValue: return "string_value";
    case Value::kBytesValue: return "bytes_value";
    case Value::kFloatList: return "float_list";
    case Value::kInt32List: return "int32_list";
    case Value::kInt64List: return "int64_list";
    case Value::KIND_NOT_SET: return "no value";
  }
  return "unknown";
}

absl::Status TypeError(const FeatureSpec& spec, const Value& v) {
  return absl::InvalidArgumentError(
      absl::StrCat("expected ", TypeName(spec.type()), ", got ", CaseName(v)));
}

// Reads an integer from any integral member; false if the value is not an integer.
bool AsInt64(const Value& v, int64_t* out) {
  switch (v.kind_case()) {
    case Value::kInt32Value: *out = v.int32_value(); return true;
    case Value::kInt64Value: *out = v.int64_value(); return true;
    default: return false;
  }
}

// Reads a number from any numeric scalar member (not bool).
bool AsDouble(const Value& v, double* out) {
  switch (v.kind_case()) {
    case Value::kInt32Value: *out = v.int32_value(); return true;
    case Value::kInt64Value: *out = static_cast<double>(v.int64_value()); return true;
    case Value::kFloat32Value: *out = v.float32_value(); return true;
    case Value::kFloat64Value: *out = v.float64_value(); return true;
    default: return false;
  }
}

}  // namespace

absl::string_view TypeName(FeatureType t) {
  switch (t) {
    case v1::BOOL: return "BOOL";
    case v1::INT32: return "INT32";
    case v1::INT64: return "INT64";
    case v1::FLOAT32: return "FLOAT32";
    case v1::FLOAT64: return "FLOAT64";
    case v1::STRING: return "STRING";
    case v1::BYTES: return "BYTES";
    case v1::FLOAT32_VECTOR: return "FLOAT32_VECTOR";
    case v1::FLOAT16_VECTOR: return "FLOAT16_VECTOR";
    case v1::INT8_VECTOR: return "INT8_VECTOR";
    case v1::INT32_VECTOR: return "INT32_VECTOR";
    case v1::INT64_VECTOR: return "INT64_VECTOR";
    default: return "UNSPECIFIED";
  }
}

bool IsVectorType(FeatureType t) {
  return t == v1::FLOAT32_VECTOR || t == v1::FLOAT16_VECTOR || t == v1::INT8_VECTOR ||
         t == v1::INT32_VECTOR || t == v1::INT64_VECTOR;
}
bool IsVariableWidth(FeatureType t) { return t == v1::STRING || t == v1::BYTES; }
bool IsNumeric(FeatureType t) { return !IsVariableWidth(t) && t != v1::FEATURE_TYPE_UNSPECIFIED; }

uint32_t ElementWidth(FeatureType t) {
  switch (t) {
    case v1::BOOL: return 1;
    case v1::INT32: return 4;
    case v1::INT64: return 8;
    case v1::FLOAT32: return 4;
    case v1::FLOAT64: return 8;
    case v1::FLOAT32_VECTOR: return 4;
    case v1::FLOAT16_VECTOR: return 2;
    case v1::INT8_VECTOR: return 1;
    case v1::INT32_VECTOR: return 4;
    case v1::INT64_VECTOR: return 8;
    default: return 0;
  }
}

uint32_t MatrixWidth(const FeatureSpec& spec) {
  return IsVectorType(spec.type()) ? spec.vector_length() : 1;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t exp = (x >> 23) & 0xff;
  uint32_t mant = x & 0x7fffff;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));  // inf / nan
  int32_t e = static_cast<int32_t>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00);  // overflow -> inf
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);  // underflow -> signed zero
    mant |= 0x800000;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // may carry into the exponent: ok
  return static_cast<uint16_t>(half);
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      x = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000 | (mant << 13);
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

Value ZeroValue(const FeatureSpec& spec) {
  Value v;
  uint32_t n = spec.vector_length();
  switch (spec.type()) {
    case v1::BOOL: v.set_bool_value(false); break;
    case v1::INT32: v.set_int32_value(0); break;
    case v1::INT64: v.set_int64_value(0); break;
    case v1::FLOAT32: v.set_float32_value(0); break;
    case v1::FLOAT64: v.set_float64_value(0); break;
    case v1::STRING: v.set_string_value(""); break;
    case v1::BYTES: v.set_bytes_value(""); break;
    case v1::FLOAT32_VECTOR:
    case v1::FLOAT16_VECTOR: v.mutable_float_list()->mutable_values()->Resize(n, 0.0f); break;
    case v1::INT8_VECTOR:
    case v1::INT32_VECTOR: v.mutable_int32_list()->mutable_values()->Resize(n, 0); break;
    case v1::INT64_VECTOR: v.mutable_int64_list()->mutable_values()->Resize(n, 0); break;
    default: break;
  }
  return v;
}

Value DefaultValue(const FeatureSpec& spec) {
  return spec.has_default_value() ? spec.default_value() : ZeroValue(spec);
}

absl::Status ValidateValue(const FeatureSpec& spec, const Value& v, uint32_t max_string_bytes) {
  const FeatureType t = spec.type();
  int64_t i64;
  double d;
  switch (t) {
    case v1::BOOL:
      if (v.kind_case() != Value::kBoolValue) return TypeError(spec, v);
      return absl::OkStatus();
    case v1::INT32:
      if (!AsInt64(v, &i64)) return TypeError(spec, v);
      if (i64 < std::numeric_limits<int32_t>::min() || i64 > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat("value ", i64, " does not fit INT32"));
      }
      return absl::OkStatus();
    case v1::INT64:
      if (!AsInt64(v, &i64)) return TypeError(spec, v);
      return absl::OkStatus();
    case v1::FLOAT32:
    case v1::FLOAT64:
      if (!AsDouble(v, &d)) return TypeError(spec, v);
      return absl::OkStatus();
    case v1::STRING:
    case v1::BYTES: {
      if (t == v1::STRING && v.kind_case() != Value::kStringValue) return TypeError(spec, v);
      if (t == v1::BYTES && v.kind_case() != Value::kBytesValue) return TypeError(spec, v);
      const std::string& s = t == v1::STRING ? v.string_value() : v.bytes_value();
      uint32_t limit = spec.max_length() > 0 ? spec.max_length() : max_string_bytes;
      if (s.size() > limit) {
        return absl::InvalidArgumentError(
            absl::StrCat("length ", s.size(), " exceeds the limit of ", limit, " bytes"));
      }
      return absl::OkStatus();
    }
    case v1::FLOAT32_VECTOR:
    case v1::FLOAT16_VECTOR:
      if (v.kind_case() != Value::kFloatList) return TypeError(spec, v);
      if (static_cast<uint32_t>(v.float_list().values_size()) != spec.vector_length()) {
        return absl::InvalidArgumentError(absl::StrCat("expected ", spec.vector_length(),
                                                       " elements, got ", v.float_list().values_size()));
      }
      return absl::OkStatus();
    case v1::INT8_VECTOR:
    case v1::INT32_VECTOR: {
      if (v.kind_case() != Value::kInt32List) return TypeError(spec, v);
      if (static_cast<uint32_t>(v.int32_list().values_size()) != spec.vector_length()) {
        return absl::InvalidArgumentError(absl::StrCat("expected ", spec.vector_length(),
                                                       " elements, got ", v.int32_list().values_size()));
      }
      if (t == v1::INT8_VECTOR) {
        for (int k = 0; k < v.int32_list().values_size(); ++k) {
          int32_t e = v.int32_list().values(k);
          if (e < -128 || e > 127) {
            return absl::InvalidArgumentError(
                absl::StrCat("element ", k, " = ", e, " does not fit INT8"));
          }
        }
      }
      return absl::OkStatus();
    }
    case v1::INT64_VECTOR: {
      const int n = v.kind_case() == Value::kInt64List   ? v.int64_list().values_size()
                    : v.kind_case() == Value::kInt32List ? v.int32_list().values_size()
                                                         : -1;
      if (n < 0) return TypeError(spec, v);
      if (static_cast<uint32_t>(n) != spec.vector_length()) {
        return absl::InvalidArgumentError(
            absl::StrCat("expected ", spec.vector_length(), " elements, got ", n));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError("feature has no type");
  }
}

Layout::Layout(uint32_t version, std::vector<FeatureSpec> specs)
    : version_(version), specs_(std::move(specs)) {
  fields_.resize(specs_.size());
  default_floats_.resize(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) {
    const FeatureSpec& s = specs_[i];
    FieldLayout& f = fields_[i];
    f.type = s.type();
    f.vector_length = s.vector_length();
    if (IsVariableWidth(s.type())) {
      f.var_index = static_cast<int>(num_var_++);
    } else {
      f.offset = fixed_size_;
      f.width = ElementWidth(s.type()) * (IsVectorType(s.type()) ? s.vector_length() : 1);
      fixed_size_ += f.width;
    }
    index_[s.name()] = static_cast<int>(i);
  }
  // Default floats: encode the default into a one-feature scratch row and decode it, so that the
  // conversion rules are exactly those of stored values.
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (!IsNumeric(specs_[i].type())) continue;
    Layout single(1, {});  // any version but 0, which ParseRow rejects
    single.specs_ = {specs_[i]};
    single.fields_ = {fields_[i]};
    single.fields_[0].offset = 0;
    single.fixed_size_ = fields_[i].width;
    Value def = DefaultValue(specs_[i]);
    std::string encoded;
    int field = 0;
    const Value* vp = &def;
    default_floats_[i].assign(MatrixWidth(specs_[i]), 0.0f);
    CodecOptions no_compress;
    no_compress.compress_min_bytes = std::numeric_limits<uint32_t>::max();
    if (EncodeRow(single, absl::MakeConstSpan(&field, 1), absl::MakeConstSpan(&vp, 1), 0,
                  no_compress, "", &encoded)
            .ok()) {
      std::string scratch;
      auto row = ParseRow(encoded, &scratch);
      if (row.ok()) DecodeFloats(single, *row, 0, default_floats_[i].data());
    }
  }
}

int Layout::IndexOf(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

namespace {

// Writes value `v` (already validated against `spec`) into the fixed region at `p`.
void WriteFixed(const FeatureSpec& spec, const Value& v, char* p) {
  int64_t i64 = 0;
  double d = 0;
  switch (spec.type()) {
    case v1::BOOL: *p = v.bool_value() ? 1 : 0; break;
    case v1::INT32: AsInt64(v, &i64); Store<int32_t>(p, static_cast<int32_t>(i64)); break;
    case v1::INT64: AsInt64(v, &i64); Store<int64_t>(p, i64); break;
    case v1::FLOAT32: AsDouble(v, &d); Store<float>(p, static_cast<float>(d)); break;
    case v1::FLOAT64: AsDouble(v, &d); Store<double>(p, d); break;
    case v1::FLOAT32_VECTOR:
      std::memcpy(p, v.float_list().values().data(), 4ull * spec.vector_length());
      break;
    case v1::FLOAT16_VECTOR:
      for (uint32_t k = 0; k < spec.vector_length(); ++k) {
        Store<uint16_t>(p + 2 * k, FloatToHalf(v.float_list().values(k)));
      }
      break;
    case v1::INT8_VECTOR:
      for (uint32_t k = 0; k < spec.vector_length(); ++k) {
        p[k] = static_cast<char>(static_cast<int8_t>(v.int32_list().values(k)));
      }
      break;
    case v1::INT32_VECTOR:
      std::memcpy(p, v.int32_list().values().data(), 4ull * spec.vector_length());
      break;
    case v1::INT64_VECTOR:
      if (v.kind_case() == Value::kInt64List) {
        std::memcpy(p, v.int64_list().values().data(), 8ull * spec.vector_length());
      } else {
        for (uint32_t k = 0; k < spec.vector_length(); ++k) {
          Store<int64_t>(p + 8 * k, v.int32_list().values(k));
        }
      }
      break;
    default: break;
  }
}

}  // namespace

absl::Status EncodeRow(const Layout& layout, absl::Span<const int> fields,
                       absl::Span<const Value* const> values, uint32_t expiry_unix_s,
                       const CodecOptions& options, absl::string_view where, std::string* out) {
  if (fields.size() != values.size()) {
    return absl::InvalidArgumentError(absl::StrCat(where, where.empty() ? "" : ": ", "expected ",
                                                   fields.size(), " values, got ", values.size()));
  }
  const size_t n = layout.size();
  std::vector<const Value*> by_field(n, nullptr);
  for (size_t j = 0; j < fields.size(); ++j) {
    const FeatureSpec& spec = layout.spec(fields[j]);
    absl::Status s = ValidateValue(spec, *values[j], options.max_string_bytes);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, where.empty() ? "" : ".", "values[", j,
                                                     "] (feature \"", spec.name(), "\"): ",
                                                     s.message()));
    }
    by_field[fields[j]] = values[j];
  }

  // Payload: fixed region, then var-length end offsets, then var-length data.
  std::string payload(layout.fixed_size() + 4ull * layout.num_var(), '\0');
  uint32_t var_end = 0;
  std::vector<absl::string_view> var_data(layout.num_var());
  for (size_t i = 0; i < n; ++i) {
    const FieldLayout& f = layout.field(i);
    const Value* v = by_field[i];
    if (f.var_index >= 0) {
      if (v != nullptr) {
        var_data[f.var_index] =
            f.type == v1::STRING ? absl::string_view(v->string_value()) : absl::string_view(v->bytes_value());
      }
    } else if (v != nullptr) {
      WriteFixed(layout.spec(i), *v, payload.data() + f.offset);
    }
  }
  for (uint32_t k = 0; k < layout.num_var(); ++k) {
    var_end += static_cast<uint32_t>(var_data[k].size());
    Store<uint32_t>(payload.data() + layout.fixed_size() + 4 * k, var_end);
  }
  for (uint32_t k = 0; k < layout.num_var(); ++k) payload.append(var_data[k].data(), var_data[k].size());

  // Fields may repeat if the caller passed duplicates, so count distinct ones even when
  // fields.size() == n (e.g. {0, 0} for two features leaves feature 1 unset).
  size_t distinct = 0;
  for (const Value* v : by_field) distinct += v != nullptr;
  const bool all_present = distinct == n;

  std::string compressed;
  bool use_compressed = false;
  if (payload.size() >= options.compress_min_bytes) {
    compressed.resize(ZSTD_compressBound(payload.size()));
    size_t c = ZSTD_compress(compressed.data(), compressed.size(), payload.data(), payload.size(), 1);
    if (!ZSTD_isError(c) && static_cast<double>(c) <= options.compress_max_ratio * payload.size()) {
      compressed.resize(c);
      use_compressed = true;
    }
  }

  out->clear();
  uint8_t format = kMagic | (use_compressed ? kFlagCompressed : 0) | (all_present ? 0 : kFlagPresence);
  out->push_back(static_cast<char>(format));
  char exp[4];
  Store<uint32_t>(exp, expiry_unix_s);
  out->append(exp, 4);
  PutVarint(out, layout.version());
  if (!all_present) {
    std::string bitmap((n + 7) / 8, '\0');
    PutVarint(out, bitmap.size());
    for (size_t i = 0; i < n; ++i) {
      if (by_field[i] != nullptr) bitmap[i / 8] = static_cast<char>(bitmap[i / 8] | (1 << (i % 8)));
    }
    out->append(bitmap);
  }
  if (use_compressed) {
    PutVarint(out, payload.size());
    out->append(compressed);
  } else {
    out->append(payload);
  }
  return absl::OkStatus();
}

bool PeekExpiry(absl::string_view encoded, uint32_t* expiry_unix_s) {
  if (encoded.size() < kFixedHeader || (static_cast<uint8_t>(encoded[0]) & 0xf0) != kMagic) {
    return false;
  }
  *expiry_unix_s = Load<uint32_t>(encoded.data() + 1);
  return true;
}

absl::StatusOr<RowView> ParseRow(absl::string_view encoded, std::string* scratch) {
  RowView row;
  if (!PeekExpiry(encoded, &row.expiry_unix_s)) {
    return absl::DataLossError("stored row has a bad header");
  }
  uint8_t format = static_cast<uint8_t>(encoded[0]);
  absl::string_view in = encoded.substr(kFixedHeader);
  uint64_t version;
  if (!GetVarint(&in, &version) || version == 0 || version > UINT32_MAX) {
    return absl::DataLossError("stored row has a bad schema version");
  }
  row.version = static_cast<uint32_t>(version);
  if (format & kFlagPresence) {
    uint64_t len;
    if (!GetVarint(&in, &len) || len > in.size()) {
      return absl::DataLossError("stored row has a bad presence bitmap");
    }
    row.presence = in.substr(0, len);
    in.remove_prefix(len);
  }
  if (format & kFlagCompressed) {
    uint64_t raw;
    if (!GetVarint(&in, &raw) || raw > (1ull << 30)) {
      return absl::DataLossError("stored row has a bad compressed length");
    }
    scratch->resize(raw);
    size_t d = ZSTD_decompress(scratch->data(), raw, in.data(), in.size());
    if (ZSTD_isError(d) || d != raw) return absl::DataLossError("stored row fails to decompress");
    row.payload = *scratch;
  } else {
    row.payload = in;
  }
  return row;
}

absl::Status CheckPayload(const Layout& layout, const RowView& row) {
  const size_t head = layout.fixed_size() + 4ull * layout.num_var();
  if (row.payload.size() < head) {
    return absl::DataLossError(absl::StrCat("stored row of version ", layout.version(), " is ",
                                            row.payload.size(), " bytes, shorter than its layout"));
  }
  if (!row.presence.empty() && row.presence.size() < (layout.size() + 7) / 8) {
    return absl::DataLossError("stored row has a short presence bitmap");
  }
  uint32_t prev = 0;
  const size_t var_bytes = row.payload.size() - head;
  for (uint32_t k = 0; k < layout.num_var(); ++k) {
    uint32_t end = Load<uint32_t>(row.payload.data() + layout.fixed_size() + 4 * k);
    if (end < prev || end > var_bytes) return absl::DataLossError("stored row has bad offsets");
    prev = end;
  }
  return absl::OkStatus();
}

namespace {
absl::string_view VarField(const Layout& layout, const RowView& row, const FieldLayout& f) {
  const char* offsets = row.payload.data() + layout.fixed_size();
  uint32_t begin = f.var_index == 0 ? 0 : Load<uint32_t>(offsets + 4 * (f.var_index - 1));
  uint32_t end = Load<uint32_t>(offsets + 4 * f.var_index);
  size_t data = layout.fixed_size() + 4ull * layout.num_var();
  return row.payload.substr(data + begin, end - begin);
}
}  // namespace

void DecodeValue(const Layout& layout, const RowView& row, size_t i, Value* out) {
  const FieldLayout& f = layout.field(i);
  const char* p = row.payload.data() + f.offset;
  const uint32_t n = f.vector_length;
  switch (f.type) {
    case v1::BOOL: out->set_bool_value(*p != 0); break;
    case v1::INT32: out->set_int32_value(Load<int32_t>(p)); break;
    case v1::INT64: out->set_int64_value(Load<int64_t>(p)); break;
    case v1::FLOAT32: out->set_float32_value(Load<float>(p)); break;
    case v1::FLOAT64: out->set_float64_value(Load<double>(p)); break;
    case v1::STRING: out->set_string_value(std::string(VarField(layout, row, f))); break;
    case v1::BYTES: out->set_bytes_value(std::string(VarField(layout, row, f))); break;
    case v1::FLOAT32_VECTOR: {
      auto* vals = out->mutable_float_list()->mutable_values();
      vals->Resize(n, 0.0f);
      std::memcpy(vals->mutable_data(), p, 4ull * n);
      break;
    }
    case v1::FLOAT16_VECTOR: {
      auto* vals = out->mutable_float_list()->mutable_values();
      vals->Resize(n, 0.0f);
      for (uint32_t k = 0; k < n; ++k) vals->Set(k, HalfToFloat(Load<uint16_t>(p + 2 * k)));
      break;
    }
    case v1::INT8_VECTOR: {
      auto* vals = out->mutable_int32_list()->mutable_values();
      vals->Resize(n, 0);
      for (uint32_t k = 0; k < n; ++k) vals->Set(k, static_cast<int8_t>(p[k]));
      break;
    }
    case v1::INT32_VECTOR: {
      auto* vals = out->mutable_int32_list()->mutable_values();
      vals->Resize(n, 0);
      std::memcpy(vals->mutable_data(), p, 4ull * n);
      break;
    }
    case v1::INT64_VECTOR: {
      auto* vals = out->mutable_int64_list()->mutable_values();
      vals->Resize(n, 0);
      std::memcpy(vals->mutable_data(), p, 8ull * n);
      break;
    }
    default: break;
  }
}

void DecodeFloats(const Layout& layout, const RowView& row, size_t i, float* out) {
  const FieldLayout& f = layout.field(i);
  const char* p = row.payload.data() + f.offset;
  const uint32_t n = f.vector_length;
  switch (f.type) {
    case v1::BOOL: *out = *p != 0 ? 1.0f : 0.0f; break;
    case v1::INT32: *out = static_cast<float>(Load<int32_t>(p)); break;
    case v1::INT64: *out = static_cast<float>(Load<int64_t>(p)); break;
    case v1::FLOAT32: *out = Load<float>(p); break;
    case v1::FLOAT64: *out = static_cast<float>(Load<double>(p)); break;
    case v1::FLOAT32_VECTOR: std::memcpy(out, p, 4ull * n); break;
    case v1::FLOAT16_VECTOR:
      for (uint32_t k = 0; k < n; ++k) out[k] = HalfToFloat(Load<uint16_t>(p + 2 * k));
      break;
    case v1::INT8_VECTOR:
      for (uint32_t k = 0; k < n; ++k) out[k] = static_cast<int8_t>(p[k]);
      break;
    case v1::INT32_VECTOR:
      for (uint32_t k = 0; k < n; ++k) out[k] = static_cast<float>(Load<int32_t>(p + 4 * k));
      break;
    case v1::INT64_VECTOR:
      for (uint32_t k = 0; k < n; ++k) out[k] = static_cast<float>(Load<int64_t>(p + 8 * k));
      break;
    default: break;
  }
}

}  // namespace kosh::features
