#include "datasets/value_codec.h"

#include <cmath>
#include <cstring>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "base/config.h"
#include "base/status.h"
#include "features/registry.h"
#include "features/schema_yaml.h"
#include "google/protobuf/util/message_differencer.h"

namespace kosh::datasets {
namespace {

constexpr uint8_t kFormatV1 = 0x10;
constexpr uint8_t kRecsNumericIds = 0x01;
constexpr size_t kMaxItemIdBytes = 1024;
constexpr uint32_t kMaxRecordStringBytes = 1 << 20;

// Canonical decimal uint64: no sign, no leading zero (except "0" itself), fits 64 bits.
bool CanonicalUint64(absl::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return false;
  uint64_t r = 0;
  if (s.size() < 20) {  // at most 19 digits: cannot overflow
    for (char c : s) {
      unsigned d = static_cast<unsigned char>(c) - '0';
      if (d > 9) return false;
      r = r * 10 + d;
    }
    *v = r;
    return true;
  }
  for (char c : s) {
    unsigned d = static_cast<unsigned char>(c) - '0';
    if (d > 9 || __builtin_mul_overflow(r, 10, &r) || __builtin_add_overflow(r, d, &r)) return false;
  }
  *v = r;
  return true;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

// Trims ASCII whitespace from both ends of [*b, *e).
void TrimRange(const char** b, const char** e) {
  while (*b < *e && IsSpace(**b)) ++*b;
  while (*e > *b && IsSpace((*e)[-1])) --*e;
}

// Decimal "[+-]digits[.digits]" with at most 18 significant and 18 fractional digits, parsed as
// mantissa / 10^k in double and rounded once more to float. Anything else (exponents, inf, nan,
// long mantissas) returns false and the caller falls back to absl::SimpleAtof.
bool FastParseFloat(const char* p, const char* e, float* out) {
  static constexpr double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8, 1e9,
                                      1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18};
  bool neg = false;
  if (p < e && (*p == '-' || *p == '+')) neg = *p++ == '-';
  uint64_t mant = 0;
  int sig = 0, frac = 0;
  bool dot = false, any = false;
  for (; p < e; ++p) {
    unsigned d = static_cast<unsigned char>(*p) - '0';
    if (d <= 9) {
      if (mant != 0 || d != 0) {
        if (++sig > 18) return false;
      }
      mant = mant * 10 + d;
      if (dot && ++frac > 18) return false;
      any = true;
    } else if (*p == '.' && !dot) {
      dot = true;
    } else {
      return false;
    }
  }
  if (!any) return false;
  double v = static_cast<double>(mant) / kPow10[frac];
  *out = static_cast<float>(neg ? -v : v);
  return true;
}

absl::string_view Trim(absl::string_view s) { return absl::StripAsciiWhitespace(s); }

absl::Status Corrupt(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("stored value is corrupt: ", what));
}

}  // namespace

// --- kinds and schemas --------------------------------------------------------------------------

absl::StatusOr<DatasetKind> ParseKind(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  absl::string_view n = lower;
  absl::ConsumePrefix(&n, "dataset_kind_");
  if (n == "bytes") return v1::DATASET_KIND_BYTES;
  if (n == "json") return v1::DATASET_KIND_JSON;
  if (n == "recs" || n == "recommendations") return v1::DATASET_KIND_RECS;
  if (n == "record") return v1::DATASET_KIND_RECORD;
  return absl::InvalidArgumentError(absl::StrCat("unknown dataset kind \"", name, "\" (bytes, json, recs, record)"));
}

absl::string_view KindName(DatasetKind kind) {
  switch (kind) {
    case v1::DATASET_KIND_BYTES: return "bytes";
    case v1::DATASET_KIND_JSON: return "json";
    case v1::DATASET_KIND_RECS: return "recs";
    case v1::DATASET_KIND_RECORD: return "record";
    default: return "unspecified";
  }
}

bool ValueSchema::operator==(const ValueSchema& other) const {
  if (kind != other.kind || fields.size() != other.fields.size()) return false;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (!google::protobuf::util::MessageDifferencer::Equals(fields[i], other.fields[i])) return false;
  }
  return true;
}

std::string ValueSchema::Describe() const {
  std::string out = absl::AsciiStrToUpper(KindName(kind));
  if (kind == v1::DATASET_KIND_RECORD) {
    std::vector<std::string> parts;
    for (const auto& f : fields) {
      std::string p = absl::StrCat(f.name(), " ", features::TypeName(f.type()));
      if (f.vector_length() > 0) absl::StrAppend(&p, "(", f.vector_length(), ")");
      parts.push_back(std::move(p));
    }
    absl::StrAppend(&out, "(", absl::StrJoin(parts, ", "), ")");
  }
  return out;
}

absl::StatusOr<ValueSchema> MakeSchema(DatasetKind kind, std::vector<v1::FeatureSpec> fields) {
  if (kind == v1::DATASET_KIND_UNSPECIFIED || !v1::DatasetKind_IsValid(kind)) {
    return absl::InvalidArgumentError("kind: a dataset needs a kind (bytes, json, recs, record)");
  }
  ValueSchema s;
  s.kind = kind;
  if (kind != v1::DATASET_KIND_RECORD) {
    if (!fields.empty()) return absl::InvalidArgumentError("fields: only RECORD datasets declare fields");
    return s;
  }
  if (fields.empty()) return absl::InvalidArgumentError("fields: a RECORD dataset needs at least one field");
  if (fields.size() > 1024) return absl::InvalidArgumentError("fields: at most 1024 fields");
  std::set<std::string> seen;
  for (size_t i = 0; i < fields.size(); ++i) {
    const v1::FeatureSpec& f = fields[i];
    std::string where = absl::StrCat("fields[", i, "]");
    if (!features::IsValidName(f.name())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".name: \"", f.name(),
                                                     "\" is not a valid name ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters)"));
    }
    if (!seen.insert(f.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".name: duplicate field \"", f.name(), "\""));
    }
    if (f.type() == v1::FEATURE_TYPE_UNSPECIFIED || !v1::FeatureType_IsValid(f.type())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".type: field \"", f.name(), "\" needs a type"));
    }
    if (features::IsVectorType(f.type())) {
      if (f.vector_length() == 0 || f.vector_length() > 65536) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".length: ", features::TypeName(f.type()), " field \"",
                                                       f.name(), "\" needs a length from 1 to 65536"));
      }
    } else if (f.vector_length() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".length: only vector types take a length"));
    }
    if (f.max_length() != 0 && !features::IsVariableWidth(f.type())) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".max_length: only STRING and BYTES take a max_length"));
    }
    if (f.has_default_value()) {
      absl::Status st = features::ValidateValue(f, f.default_value(), kMaxRecordStringBytes);
      if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ".default: ", st.message()));
    }
  }
  s.layout = std::make_shared<const features::Layout>(1, fields);
  s.fields = std::move(fields);
  return s;
}

absl::StatusOr<std::vector<v1::FeatureSpec>> ParseRecordFields(const YAML::Node& list, const std::string& where) {
  auto err = [&](const std::string& at, absl::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(at, ": ", msg));
  };
  if (!list || !list.IsSequence()) return err(where, "expected a list of {name, type} mappings");
  std::vector<v1::FeatureSpec> out;
  for (size_t i = 0; i < list.size(); ++i) {
    std::string at = absl::StrCat(where, "[", i, "]");
    const YAML::Node n = list[i];
    if (!n.IsMap()) return err(at, "expected a mapping with name and type");
    base::YamlReader fr(n, at);
    RETURN_IF_ERROR(fr.CheckKeys({"name", "type", "length", "max_length", "default"}));
    v1::FeatureSpec f;
    std::string name, type;
    RETURN_IF_ERROR(fr.GetString("name", &name));
    RETURN_IF_ERROR(fr.GetString("type", &type));
    if (name.empty()) return err(at + ".name", "missing");
    if (type.empty()) return err(at + ".type", "missing");
    f.set_name(name);
    auto t = features::ParseTypeName(type);
    if (!t.ok()) return err(at + ".type", t.status().message());
    f.set_type(*t);
    uint64_t len = 0;
    RETURN_IF_ERROR(fr.GetUint("length", &len));
    if (len > 65536) return err(at + ".length", "at most 65536");
    f.set_vector_length(static_cast<uint32_t>(len));
    uint64_t max_len = 0;
    RETURN_IF_ERROR(fr.GetUint("max_length", &max_len));
    f.set_max_length(static_cast<uint32_t>(std::min<uint64_t>(max_len, UINT32_MAX)));
    if (n["default"]) {
      auto v = features::ParseYamlValue(f, n["default"]);
      if (!v.ok()) return err(at + ".default", v.status().message());
      *f.mutable_default_value() = *v;
    }
    out.push_back(std::move(f));
  }
  auto schema = MakeSchema(v1::DATASET_KIND_RECORD, out);
  if (!schema.ok()) return err(where, schema.status().message());
  return out;
}

absl::StatusOr<std::vector<v1::FeatureSpec>> LoadRecordFields(const std::string& path) {
  ASSIGN_OR_RETURN(YAML::Node root, base::LoadYamlFile(path));
  base::YamlReader r(root, "");
  absl::Status keys = r.CheckKeys({"fields", "kind", "dataset", "description"});
  if (!keys.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", keys.message()));
  const YAML::Node& croot = root;
  auto fields = ParseRecordFields(croot["fields"], "fields");
  if (!fields.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", fields.status().message()));
  return fields;
}

// --- encoding ------------------------------------------------------------------------------------

absl::StatusOr<BytesEncoding> ParseBytesEncoding(absl::string_view name) {
  if (name == "raw") return BytesEncoding::kRaw;
  if (name == "base64") return BytesEncoding::kBase64;
  if (name == "hex") return BytesEncoding::kHex;
  return absl::InvalidArgumentError(absl::StrCat("unknown bytes encoding \"", name, "\" (raw, base64, hex)"));
}

void EncodeBytes(absl::string_view bytes, std::string* out) {
  out->clear();
  out->reserve(bytes.size() + 1);
  out->push_back(static_cast<char>(kFormatV1));
  out->append(bytes.data(), bytes.size());
}

absl::Status EncodeBytesText(absl::string_view text, BytesEncoding enc, std::string* out) {
  switch (enc) {
    case BytesEncoding::kRaw:
      EncodeBytes(text, out);
      return absl::OkStatus();
    case BytesEncoding::kBase64: {
      std::string decoded;
      if (!absl::Base64Unescape(text, &decoded)) return absl::InvalidArgumentError("value: invalid base64");
      EncodeBytes(decoded, out);
      return absl::OkStatus();
    }
    case BytesEncoding::kHex: {
      if (text.size() % 2 != 0) return absl::InvalidArgumentError("value: hex text of odd length");
      for (char c : text) {
        if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
          return absl::InvalidArgumentError("value: invalid hex digit");
        }
      }
      EncodeBytes(absl::HexStringToBytes(text), out);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unknown bytes encoding");
}

void EncodeJson(absl::string_view minified_json, std::string* out) { EncodeBytes(minified_json, out); }

absl::Status EncodeRecs(absl::Span<const RecItemView> items, std::string* out) {
  bool numeric = true;
  for (size_t i = 0; i < items.size(); ++i) {
    const RecItemView& it = items[i];
    if (it.id.empty()) return absl::InvalidArgumentError(absl::StrCat("items[", i, "]: empty item id"));
    if (it.id.size() > kMaxItemIdBytes) {
      return absl::InvalidArgumentError(absl::StrCat("items[", i, "]: item id longer than ", kMaxItemIdBytes, " bytes"));
    }
    if (!std::isfinite(it.score)) {
      return absl::InvalidArgumentError(absl::StrCat("items[", i, "]: score is not a finite number"));
    }
    uint64_t v;
    if (numeric && !CanonicalUint64(it.id, &v)) numeric = false;
  }
  if (!numeric) {
    for (size_t i = 0; i < items.size(); ++i) {
      if (!IsValidUtf8(items[i].id)) {
        return absl::InvalidArgumentError(absl::StrCat("items[", i, "]: item id is not valid UTF-8"));
      }
    }
  }
  out->clear();
  out->reserve(1 + 10 + items.size() * 16);
  out->push_back(static_cast<char>(kFormatV1 | (numeric ? kRecsNumericIds : 0)));
  PutVarint(out, items.size());
  for (const auto& it : items) {
    if (numeric) {
      uint64_t v = 0;
      CanonicalUint64(it.id, &v);
      PutVarint(out, v);
    } else {
      PutVarint(out, it.id.size());
      out->append(it.id.data(), it.id.size());
    }
  }
  size_t base = out->size();
  out->resize(base + 4 * items.size());
  char* p = out->data() + base;
  for (const auto& it : items) {
    std::memcpy(p, &it.score, 4);  // little-endian hosts only (x86-64, arm64)
    p += 4;
  }
  return absl::OkStatus();
}

absl::Status EncodeRecsText(absl::string_view text, std::string* out) {
  thread_local std::vector<absl::string_view> ids;
  thread_local std::vector<uint64_t> nums;
  thread_local std::vector<float> scores;
  ids.clear();
  nums.clear();
  scores.clear();
  const char* p = text.data();
  const char* end = p + text.size();
  TrimRange(&p, &end);
  bool numeric = true;
  while (p < end) {
    const char* bar = static_cast<const char*>(std::memchr(p, '|', end - p));
    if (bar == nullptr) bar = end;
    const char* colon = static_cast<const char*>(memrchr(p, ':', bar - p));
    const size_t n = ids.size();
    if (colon == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("value: item ", n, " \"",
                                                     absl::string_view(p, std::min<size_t>(bar - p, 64)),
                                                     "\" is not item_id:score"));
    }
    const char *ib = p, *ie = colon, *sb = colon + 1, *se = bar;
    if (IsSpace(*ib) || (ie > ib && IsSpace(ie[-1]))) TrimRange(&ib, &ie);
    if (sb < se && (IsSpace(*sb) || IsSpace(se[-1]))) TrimRange(&sb, &se);
    if (ie == ib) return absl::InvalidArgumentError(absl::StrCat("value: item ", n, ": empty item id"));
    float score;
    if (!FastParseFloat(sb, se, &score) && !absl::SimpleAtof(absl::string_view(sb, se - sb), &score)) {
      score = NAN;
    }
    if (!std::isfinite(score)) {
      return absl::InvalidArgumentError(absl::StrCat("value: item ", n, ": score \"",
                                                     absl::string_view(sb, std::min<size_t>(se - sb, 64)),
                                                     "\" is not a finite number"));
    }
    absl::string_view id(ib, ie - ib);
    if (id.size() > kMaxItemIdBytes) {
      return absl::InvalidArgumentError(absl::StrCat("items[", n, "]: item id longer than ", kMaxItemIdBytes, " bytes"));
    }
    uint64_t v = 0;
    if (numeric && !CanonicalUint64(id, &v)) numeric = false;
    ids.push_back(id);
    nums.push_back(v);
    scores.push_back(score);
    if (bar == end) break;
    p = bar + 1;
    if (p == end) {  // a trailing '|': an empty last item
      return absl::InvalidArgumentError(absl::StrCat("value: item ", n + 1, " \"\" is not item_id:score"));
    }
  }
  if (!numeric) {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!IsValidUtf8(ids[i])) return absl::InvalidArgumentError(absl::StrCat("items[", i, "]: item id is not valid UTF-8"));
    }
  }
  // Worst case: format byte, count varint, ids (10-byte varints, or length + bytes), scores.
  size_t max = 1 + 10 + 4 * scores.size();
  for (size_t i = 0; i < ids.size(); ++i) max += numeric ? 10 : 10 + ids[i].size();
  out->resize(max);
  char* w = out->data();
  auto put = [&w](uint64_t v) {
    while (v >= 0x80) {
      *w++ = static_cast<char>(v | 0x80);
      v >>= 7;
    }
    *w++ = static_cast<char>(v);
  };
  *w++ = static_cast<char>(kFormatV1 | (numeric ? kRecsNumericIds : 0));
  put(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (numeric) {
      put(nums[i]);
    } else {
      put(ids[i].size());
      std::memcpy(w, ids[i].data(), ids[i].size());
      w += ids[i].size();
    }
  }
  std::memcpy(w, scores.data(), 4 * scores.size());
  w += 4 * scores.size();
  out->resize(static_cast<size_t>(w - out->data()));
  return absl::OkStatus();
}

absl::Status ParseRecsText(absl::string_view text, std::vector<RecItemView>* items) {
  items->clear();
  text = Trim(text);
  if (text.empty()) return absl::OkStatus();
  size_t i = 0;
  while (true) {
    size_t bar = text.find('|', i);
    absl::string_view pair = text.substr(i, bar == absl::string_view::npos ? absl::string_view::npos : bar - i);
    size_t colon = pair.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("value: item ", items->size(), " \"", pair.substr(0, 64),
                                                     "\" is not item_id:score"));
    }
    RecItemView it;
    it.id = Trim(pair.substr(0, colon));
    absl::string_view score = Trim(pair.substr(colon + 1));
    if (!absl::SimpleAtof(score, &it.score) || !std::isfinite(it.score)) {
      return absl::InvalidArgumentError(absl::StrCat("value: item ", items->size(), ": score \"", score.substr(0, 64),
                                                     "\" is not a finite number"));
    }
    if (it.id.empty()) return absl::InvalidArgumentError(absl::StrCat("value: item ", items->size(), ": empty item id"));
    items->push_back(it);
    if (bar == absl::string_view::npos) break;
    i = bar + 1;
  }
  return absl::OkStatus();
}

absl::Status EncodeRecord(const ValueSchema& schema, absl::Span<const int> fields,
                          absl::Span<const v1::Value* const> values, std::string* out) {
  features::CodecOptions opts;
  opts.max_string_bytes = kMaxRecordStringBytes;
  for (size_t j = 0; j < values.size(); ++j) {
    const v1::Value& v = *values[j];
    if (v.kind_case() == v1::Value::kStringValue && !IsValidUtf8(v.string_value())) {
      return absl::InvalidArgumentError(absl::StrCat("field \"", schema.fields[fields[j]].name(),
                                                     "\": STRING value is not valid UTF-8"));
    }
  }
  return features::EncodeRow(*schema.layout, fields, values, 0, opts, "", out);
}

absl::Status ParseCell(const v1::FeatureSpec& spec, absl::string_view text, v1::Value* out) {
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat("\"", text.substr(0, 64), "\" is not a valid ",
                                                   features::TypeName(spec.type()), " value"));
  };
  absl::string_view t = Trim(text);
  out->Clear();
  switch (spec.type()) {
    case v1::BOOL: {
      std::string lower = absl::AsciiStrToLower(t);
      if (lower == "true" || lower == "1") out->set_bool_value(true);
      else if (lower == "false" || lower == "0") out->set_bool_value(false);
      else return bad();
      return absl::OkStatus();
    }
    case v1::INT32: {
      int32_t x;
      if (!absl::SimpleAtoi(t, &x)) return bad();
      out->set_int32_value(x);
      return absl::OkStatus();
    }
    case v1::INT64: {
      int64_t x;
      if (!absl::SimpleAtoi(t, &x)) return bad();
      out->set_int64_value(x);
      return absl::OkStatus();
    }
    case v1::FLOAT32: {
      float x;
      if (!absl::SimpleAtof(t, &x)) return bad();
      out->set_float32_value(x);
      return absl::OkStatus();
    }
    case v1::FLOAT64: {
      double x;
      if (!absl::SimpleAtod(t, &x)) return bad();
      out->set_float64_value(x);
      return absl::OkStatus();
    }
    case v1::STRING: out->set_string_value(std::string(text)); return absl::OkStatus();
    case v1::BYTES: out->set_bytes_value(std::string(text)); return absl::OkStatus();
    default: break;
  }
  // Vectors: "[a, b, c]" or "a b c" (commas and/or spaces between elements).
  absl::string_view body = t;
  if (absl::ConsumePrefix(&body, "[") && !absl::ConsumeSuffix(&body, "]")) return bad();
  std::vector<absl::string_view> elems;
  size_t i = 0;
  while (i < body.size()) {
    while (i < body.size() && (body[i] == ',' || body[i] == ' ' || body[i] == '\t')) ++i;
    size_t j = i;
    while (j < body.size() && body[j] != ',' && body[j] != ' ' && body[j] != '\t') ++j;
    if (j > i) elems.push_back(body.substr(i, j - i));
    i = j;
  }
  for (absl::string_view e : elems) {
    switch (spec.type()) {
      case v1::FLOAT32_VECTOR:
      case v1::FLOAT16_VECTOR: {
        float x;
        if (!absl::SimpleAtof(e, &x)) return bad();
        out->mutable_float_list()->add_values(x);
        break;
      }
      case v1::INT8_VECTOR:
      case v1::INT32_VECTOR: {
        int32_t x;
        if (!absl::SimpleAtoi(e, &x)) return bad();
        out->mutable_int32_list()->add_values(x);
        break;
      }
      case v1::INT64_VECTOR: {
        int64_t x;
        if (!absl::SimpleAtoi(e, &x)) return bad();
        out->mutable_int64_list()->add_values(x);
        break;
      }
      default: return bad();
    }
  }
  if (elems.empty()) {  // an empty vector: set the member so that the length check reports it
    if (spec.type() == v1::FLOAT32_VECTOR || spec.type() == v1::FLOAT16_VECTOR) out->mutable_float_list();
    else if (spec.type() == v1::INT64_VECTOR) out->mutable_int64_list();
    else out->mutable_int32_list();
  }
  return absl::OkStatus();
}

// --- decoding ------------------------------------------------------------------------------------

absl::Status DecodeValue(const ValueSchema& schema, absl::string_view stored, v1::DatasetValue* out) {
  if (stored.empty()) return Corrupt("empty");
  const uint8_t format = static_cast<uint8_t>(stored[0]);
  switch (schema.kind) {
    case v1::DATASET_KIND_BYTES:
      if (format != kFormatV1) return Corrupt("unknown format byte");
      out->set_bytes_value(stored.data() + 1, stored.size() - 1);
      return absl::OkStatus();
    case v1::DATASET_KIND_JSON:
      if (format != kFormatV1) return Corrupt("unknown format byte");
      out->set_json_value(stored.data() + 1, stored.size() - 1);
      return absl::OkStatus();
    case v1::DATASET_KIND_RECS: {
      if ((format & 0xF0) != kFormatV1 || (format & 0x0E) != 0) return Corrupt("unknown format byte");
      const bool numeric = (format & kRecsNumericIds) != 0;
      absl::string_view in = stored.substr(1);
      uint64_t n;
      if (!GetVarint(&in, &n) || n > in.size()) return Corrupt("bad item count");
      auto* items = out->mutable_recs()->mutable_items();
      items->Reserve(static_cast<int>(n));
      char buf[24];
      for (uint64_t i = 0; i < n; ++i) {
        auto* item = items->Add();
        if (numeric) {
          uint64_t id;
          if (!GetVarint(&in, &id)) return Corrupt("bad item id");
          char* end = absl::numbers_internal::FastIntToBuffer(id, buf);
          item->set_item_id(buf, static_cast<size_t>(end - buf));
        } else {
          uint64_t len;
          if (!GetVarint(&in, &len) || len > in.size()) return Corrupt("bad item id");
          item->set_item_id(in.data(), len);
          in.remove_prefix(len);
        }
      }
      if (in.size() != 4 * n) return Corrupt("bad score block");
      for (uint64_t i = 0; i < n; ++i) {
        float s;
        std::memcpy(&s, in.data() + 4 * i, 4);
        (*items)[static_cast<int>(i)].set_score(s);
      }
      return absl::OkStatus();
    }
    case v1::DATASET_KIND_RECORD: {
      std::string scratch;
      auto row = features::ParseRow(stored, &scratch);
      if (!row.ok()) return row.status();
      if (row->version != 1) return Corrupt("record schema version is not 1");
      RETURN_IF_ERROR(features::CheckPayload(*schema.layout, *row));
      auto* rec = out->mutable_record();
      for (size_t i = 0; i < schema.layout->size(); ++i) {
        const bool present = row->Present(i);
        if (present) {
          features::DecodeValue(*schema.layout, *row, i, rec->add_values());
        } else {
          *rec->add_values() = features::DefaultValue(schema.layout->spec(i));
        }
        rec->add_present(present);
      }
      return absl::OkStatus();
    }
    default: return absl::FailedPreconditionError("dataset has no kind");
  }
}

// --- helpers ---------------------------------------------------------------------------------------

bool IsValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    // Fast path: 8 ASCII bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

void PutVarint(std::string* out, uint64_t v) {
  char buf[10];
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out->append(buf, n);
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

}  // namespace kosh::datasets
