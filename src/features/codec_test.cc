#include "features/codec.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "features/test_values.h"
#include "gtest/gtest.h"

namespace kosh::features {
namespace {

using namespace test_values;  // NOLINT: value builders

FeatureSpec Spec(const std::string& name, FeatureType type, uint32_t vector_length = 0) {
  FeatureSpec s;
  s.set_name(name);
  s.set_type(type);
  s.set_vector_length(vector_length);
  return s;
}

Value Ints(std::vector<int32_t> xs) {
  Value v;
  v.mutable_int32_list();
  for (int32_t x : xs) v.mutable_int32_list()->add_values(x);
  return v;
}
Value Longs(std::vector<int64_t> xs) {
  Value v;
  v.mutable_int64_list();
  for (int64_t x : xs) v.mutable_int64_list()->add_values(x);
  return v;
}

// One feature of every type. Indices are used by the tests below.
enum : int { kB, kI32, kI64, kF32, kF64, kS, kBy, kFv, kHv, kI8v, kI32v, kI64v, kNumFeatures };

std::vector<FeatureSpec> AllTypeSpecs() {
  return {Spec("b", v1::BOOL),
          Spec("i32", v1::INT32),
          Spec("i64", v1::INT64),
          Spec("f32", v1::FLOAT32),
          Spec("f64", v1::FLOAT64),
          Spec("s", v1::STRING),
          Spec("by", v1::BYTES),
          Spec("fv", v1::FLOAT32_VECTOR, 3),
          Spec("hv", v1::FLOAT16_VECTOR, 4),
          Spec("i8v", v1::INT8_VECTOR, 5),
          Spec("i32v", v1::INT32_VECTOR, 2),
          Spec("i64v", v1::INT64_VECTOR, 2)};
}

// Values for AllTypeSpecs; all exactly representable after the round trip.
std::vector<Value> AllTypeValues() {
  return {Bool(true),
          I32(-123456),
          I64(int64_t{1} << 50),
          F32(3.25f),
          F64(-0.1),
          Str("hello, world"),
          Bytes(std::string("\x00\x01\xff\x7f", 4)),
          Floats({1.5f, -0.25f, 1e20f}),
          Floats({1.0f, -2.5f, 65504.0f, 0.5f}),
          Ints({-128, 127, 0, -1, 5}),
          Ints({std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()}),
          Longs({std::numeric_limits<int64_t>::min(), 42})};
}

std::vector<int> Iota(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

std::vector<const Value*> Ptrs(const std::vector<Value>& vs) {
  std::vector<const Value*> out;
  for (const auto& v : vs) out.push_back(&v);
  return out;
}

absl::Status Encode(const Layout& layout, const std::vector<int>& fields,
                    const std::vector<Value>& values, std::string* out, uint32_t expiry = 0,
                    const CodecOptions& options = CodecOptions(), absl::string_view where = "") {
  std::vector<const Value*> ptrs = Ptrs(values);
  return EncodeRow(layout, fields, ptrs, expiry, options, where, out);
}

bool SameValue(const Value& a, const Value& b) { return a.SerializeAsString() == b.SerializeAsString(); }

// ---------------------------------------------------------------------------------------------
// Type helpers

TEST(CodecTypes, TypeNamesAndClassification) {
  EXPECT_EQ(TypeName(v1::FLOAT16_VECTOR), "FLOAT16_VECTOR");
  EXPECT_EQ(TypeName(v1::INT32), "INT32");
  EXPECT_EQ(TypeName(v1::FEATURE_TYPE_UNSPECIFIED), "UNSPECIFIED");
  EXPECT_TRUE(IsVectorType(v1::INT8_VECTOR));
  EXPECT_FALSE(IsVectorType(v1::INT64));
  EXPECT_TRUE(IsVariableWidth(v1::STRING));
  EXPECT_TRUE(IsVariableWidth(v1::BYTES));
  EXPECT_FALSE(IsVariableWidth(v1::BOOL));
  EXPECT_TRUE(IsNumeric(v1::BOOL));
  EXPECT_TRUE(IsNumeric(v1::FLOAT16_VECTOR));
  EXPECT_FALSE(IsNumeric(v1::STRING));
  EXPECT_FALSE(IsNumeric(v1::FEATURE_TYPE_UNSPECIFIED));
  EXPECT_EQ(ElementWidth(v1::FLOAT16_VECTOR), 2u);
  EXPECT_EQ(ElementWidth(v1::INT64_VECTOR), 8u);
  EXPECT_EQ(ElementWidth(v1::STRING), 0u);
  EXPECT_EQ(MatrixWidth(Spec("x", v1::FLOAT32_VECTOR, 7)), 7u);
  EXPECT_EQ(MatrixWidth(Spec("x", v1::INT64)), 1u);
}

// ---------------------------------------------------------------------------------------------
// Float16

TEST(Float16, ExactValues) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.5f), 0xC100);
  EXPECT_EQ(FloatToHalf(0.5f), 0x3800);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);  // largest finite half
  EXPECT_EQ(FloatToHalf(-65504.0f), 0xFBFF);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(HalfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xC100), -2.5f);
  EXPECT_EQ(HalfToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
  EXPECT_EQ(HalfToFloat(0x8000), 0.0f);
}

TEST(Float16, Subnormals) {
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);          // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1023.0f, -24)), 0x03FF);       // largest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(-3.0f, -24)), 0x8003);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(HalfToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  // Too small for a subnormal: flushes to a signed zero.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  // Exactly half the smallest subnormal is a tie between 0 and 1: rounds to even (0).
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);
  // Just above that tie rounds up.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);
  // 1.5 * 2^-24 is a tie between 1 and 2 ulps: rounds to even (2).
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);
  // 2.5 * 2^-24 is a tie between 2 and 3: rounds to even (2).
  EXPECT_EQ(FloatToHalf(std::ldexp(5.0f, -25)), 0x0002);
  // Rounding the largest subnormal up carries into the smallest normal.
  EXPECT_EQ(FloatToHalf(std::ldexp(2047.0f, -25)), 0x0400);
}

TEST(Float16, OverflowAndSpecials) {
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7BFF);  // below the tie: stays finite
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);  // the tie rounds to even, which is infinity
  EXPECT_EQ(FloatToHalf(1e6f), 0x7C00);
  EXPECT_EQ(FloatToHalf(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7C00)));
  EXPECT_GT(HalfToFloat(0x7C00), 0.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0xFC00)));
  EXPECT_LT(HalfToFloat(0xFC00), 0.0f);
  uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(HalfToFloat(nan)));
}

TEST(Float16, RoundToNearestEven) {
  const float ulp = std::ldexp(1.0f, -10);  // half ulp at 1.0
  // Halfway between 1.0 (even mantissa) and 1 + ulp: down to 1.0.
  EXPECT_EQ(FloatToHalf(1.0f + ulp / 2), 0x3C00);
  // Halfway between 1 + ulp (odd) and 1 + 2ulp: up to even.
  EXPECT_EQ(FloatToHalf(1.0f + 3 * ulp / 2), 0x3C02);
  // Slightly above / below the tie.
  EXPECT_EQ(FloatToHalf(1.0f + ulp / 2 + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(FloatToHalf(1.0f + ulp / 2 - std::ldexp(1.0f, -20)), 0x3C00);
  // A tie at the top of a binade carries into the exponent: 2047.5 -> 2048.
  EXPECT_EQ(FloatToHalf(2047.5f), 0x6800);
  EXPECT_EQ(HalfToFloat(0x6800), 2048.0f);
  // 0.1 is not representable: the nearest half is 0x2E66.
  EXPECT_EQ(FloatToHalf(0.1f), 0x2E66);
}

TEST(Float16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7C00, 0x7C00u) << h;
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h << " -> " << f;
  }
}

TEST(Float16, RelativeErrorIsBounded) {
  // Round to nearest: the error is at most half an ulp, i.e. 2^-11 relative for normal halves.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  for (int i = 0; i < 20000; ++i) {
    float f = dist(rng);
    float back = HalfToFloat(FloatToHalf(f));
    if (std::fabs(f) >= 65520.0f) {
      EXPECT_TRUE(std::isinf(back)) << f;
      continue;
    }
    // Relative error of half precision is at most 2^-11.
    EXPECT_LE(std::fabs(back - f), std::fabs(f) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25))
        << f;
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(CodecRoundTrip, EveryType) {
  Layout layout(3, AllTypeSpecs());
  ASSERT_EQ(layout.size(), static_cast<size_t>(kNumFeatures));
  std::vector<Value> values = AllTypeValues();
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(kNumFeatures), values, &enc).ok());

  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ(row->version, 3u);
  EXPECT_EQ(row->expiry_unix_s, 0u);
  EXPECT_TRUE(row->presence.empty());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  for (int i = 0; i < kNumFeatures; ++i) {
    EXPECT_TRUE(row->Present(i)) << i;
    Value out;
    DecodeValue(layout, *row, i, &out);
    EXPECT_TRUE(SameValue(out, values[i]))
        << layout.spec(i).name() << ": got " << out.ShortDebugString() << ", want "
        << values[i].ShortDebugString();
  }
}

TEST(CodecRoundTrip, DecodeFloatsEveryNumericType) {
  Layout layout(1, AllTypeSpecs());
  std::vector<Value> values = AllTypeValues();
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(kNumFeatures), values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());

  auto floats = [&](int i) {
    std::vector<float> out(MatrixWidth(layout.spec(i)), -999.0f);
    DecodeFloats(layout, *row, i, out.data());
    return out;
  };
  EXPECT_EQ(floats(kB), std::vector<float>({1.0f}));
  EXPECT_EQ(floats(kI32), std::vector<float>({-123456.0f}));
  EXPECT_EQ(floats(kI64), std::vector<float>({std::ldexp(1.0f, 50)}));
  EXPECT_EQ(floats(kF32), std::vector<float>({3.25f}));
  EXPECT_EQ(floats(kF64), std::vector<float>({-0.1f}));
  EXPECT_EQ(floats(kFv), std::vector<float>({1.5f, -0.25f, 1e20f}));
  EXPECT_EQ(floats(kHv), std::vector<float>({1.0f, -2.5f, 65504.0f, 0.5f}));
  EXPECT_EQ(floats(kI8v), std::vector<float>({-128.0f, 127.0f, 0.0f, -1.0f, 5.0f}));
  EXPECT_EQ(floats(kI32v), std::vector<float>({-2147483648.0f, 2147483648.0f}));
  EXPECT_EQ(floats(kI64v), std::vector<float>({-9223372036854775808.0f, 42.0f}));
}

TEST(CodecRoundTrip, BoolFalseAndZeroes) {
  Layout layout(1, {Spec("b", v1::BOOL), Spec("s", v1::STRING), Spec("by", v1::BYTES)});
  std::vector<Value> values = {Bool(false), Str(""), Bytes("")};
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(3), values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  Value b, s, by;
  DecodeValue(layout, *row, 0, &b);
  DecodeValue(layout, *row, 1, &s);
  DecodeValue(layout, *row, 2, &by);
  EXPECT_EQ(b.kind_case(), Value::kBoolValue);
  EXPECT_FALSE(b.bool_value());
  EXPECT_EQ(s.kind_case(), Value::kStringValue);
  EXPECT_EQ(s.string_value(), "");
  EXPECT_EQ(by.kind_case(), Value::kBytesValue);
}

TEST(CodecRoundTrip, Float16VectorRoundsToHalf) {
  Layout layout(1, {Spec("h", v1::FLOAT16_VECTOR, 3)});
  std::vector<Value> values = {Floats({0.1f, 1e6f, std::ldexp(1.0f, -24)})};
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  Value out;
  DecodeValue(layout, *row, 0, &out);
  ASSERT_EQ(out.float_list().values_size(), 3);
  EXPECT_EQ(out.float_list().values(0), HalfToFloat(0x2E66));
  EXPECT_NE(out.float_list().values(0), 0.1f);
  EXPECT_TRUE(std::isinf(out.float_list().values(1)));
  EXPECT_EQ(out.float_list().values(2), std::ldexp(1.0f, -24));
}

TEST(CodecRoundTrip, NumericWideningConversions) {
  // INT64 accepts int32_value, INT32 accepts an in-range int64_value, FLOAT32/FLOAT64 accept
  // integers, INT64_VECTOR accepts int32_list.
  Layout layout(1, {Spec("a", v1::INT64), Spec("b", v1::INT32), Spec("c", v1::FLOAT32),
                    Spec("d", v1::FLOAT64), Spec("e", v1::INT64_VECTOR, 2), Spec("f", v1::FLOAT32)});
  std::vector<Value> values = {I32(-7), I64(2147483647), I32(12), I64(int64_t{1} << 40),
                               Ints({-3, 4}), F64(0.5)};
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(6), values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  Value out;
  DecodeValue(layout, *row, 0, &out);
  EXPECT_EQ(out.int64_value(), -7);
  DecodeValue(layout, *row, 1, &out);
  EXPECT_EQ(out.int32_value(), 2147483647);
  DecodeValue(layout, *row, 2, &out);
  EXPECT_EQ(out.float32_value(), 12.0f);
  DecodeValue(layout, *row, 3, &out);
  EXPECT_EQ(out.float64_value(), 1099511627776.0);
  out.Clear();
  DecodeValue(layout, *row, 4, &out);
  ASSERT_EQ(out.kind_case(), Value::kInt64List);
  EXPECT_EQ(out.int64_list().values(0), -3);
  EXPECT_EQ(out.int64_list().values(1), 4);
  DecodeValue(layout, *row, 5, &out);
  EXPECT_EQ(out.float32_value(), 0.5f);
}

TEST(CodecRoundTrip, FieldsInAnyOrder) {
  Layout layout(1, AllTypeSpecs());
  std::vector<Value> all = AllTypeValues();
  std::vector<int> fields;
  std::vector<Value> values;
  for (int i = kNumFeatures - 1; i >= 0; --i) {
    fields.push_back(i);
    values.push_back(all[i]);
  }
  std::string enc;
  ASSERT_TRUE(Encode(layout, fields, values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  EXPECT_TRUE(row->presence.empty());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  for (int i = 0; i < kNumFeatures; ++i) {
    Value out;
    DecodeValue(layout, *row, i, &out);
    EXPECT_TRUE(SameValue(out, all[i])) << i;
  }
}

TEST(CodecRoundTrip, ManyStringsKeepTheirBoundaries) {
  std::vector<FeatureSpec> specs;
  std::vector<Value> values;
  for (int i = 0; i < 20; ++i) {
    specs.push_back(Spec(absl::StrCat("s", i), i % 2 ? v1::STRING : v1::BYTES));
    std::string s(static_cast<size_t>(i * 3 % 7), static_cast<char>('a' + i));
    values.push_back(i % 2 ? Str(s) : Bytes(s));
  }
  specs.push_back(Spec("tail", v1::INT32));
  values.push_back(I32(99));
  Layout layout(1, specs);
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(21), values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  for (int i = 0; i < 21; ++i) {
    Value out;
    DecodeValue(layout, *row, i, &out);
    EXPECT_TRUE(SameValue(out, values[i])) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// Partial writes and presence

TEST(CodecPresence, PartialWriteHasBitmap) {
  Layout layout(2, AllTypeSpecs());
  std::vector<Value> all = AllTypeValues();
  std::vector<int> fields = {kI64, kS, kHv};
  std::vector<Value> values = {all[kI64], all[kS], all[kHv]};
  std::string enc;
  ASSERT_TRUE(Encode(layout, fields, values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->version, 2u);
  EXPECT_EQ(row->presence.size(), 2u);  // 12 features -> 2 bytes
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  for (int i = 0; i < kNumFeatures; ++i) {
    bool want = i == kI64 || i == kS || i == kHv;
    EXPECT_EQ(row->Present(i), want) << layout.spec(i).name();
  }
  for (int i : fields) {
    Value out;
    DecodeValue(layout, *row, i, &out);
    EXPECT_TRUE(SameValue(out, all[i])) << i;
  }
  // Unset strings read as empty.
  Value by;
  DecodeValue(layout, *row, kBy, &by);
  EXPECT_EQ(by.bytes_value(), "");
}

TEST(CodecPresence, EmptyWriteHasNothingPresent) {
  Layout layout(1, AllTypeSpecs());
  std::string enc;
  ASSERT_TRUE(Encode(layout, {}, {}, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_FALSE(row->presence.empty());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  for (int i = 0; i < kNumFeatures; ++i) EXPECT_FALSE(row->Present(i)) << i;
}

TEST(CodecPresence, DuplicateFieldsDoNotCountAsComplete) {
  // Two values for feature 0 and none for feature 1: feature 1 must read as absent even though
  // the number of values equals the number of features.
  Layout layout(1, {Spec("a", v1::INT32), Spec("b", v1::INT32)});
  std::vector<Value> values = {I32(1), I32(2)};
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0, 0}, values, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  EXPECT_TRUE(row->Present(0));
  EXPECT_FALSE(row->Present(1));
  Value out;
  DecodeValue(layout, *row, 0, &out);
  EXPECT_EQ(out.int32_value(), 2);  // the last value for a field wins
}

TEST(CodecPresence, ShortBitmapIsDataLoss) {
  // A row written for a 3-feature layout has a 1-byte bitmap; a 9-feature layout needs 2 bytes.
  std::vector<FeatureSpec> small = {Spec("a", v1::BOOL), Spec("b", v1::BOOL), Spec("c", v1::BOOL)};
  Layout layout_small(1, small);
  std::vector<FeatureSpec> big = small;
  for (int i = 0; i < 6; ++i) big.push_back(Spec(absl::StrCat("x", i), v1::BOOL));
  Layout layout_big(1, big);
  std::string enc;
  ASSERT_TRUE(Encode(layout_small, {1}, {Bool(true)}, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout_small, *row).ok());
  // Give it enough payload so that only the bitmap is the problem.
  RowView padded = *row;
  std::string long_payload(64, '\0');
  padded.payload = long_payload;
  absl::Status s = CheckPayload(layout_big, padded);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

// ---------------------------------------------------------------------------------------------
// Expiry

TEST(CodecExpiry, StoredAndPeeked) {
  Layout layout(1, {Spec("a", v1::INT32)});
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {I32(5)}, &enc, /*expiry=*/1700000000).ok());
  uint32_t expiry = 0;
  ASSERT_TRUE(PeekExpiry(enc, &expiry));
  EXPECT_EQ(expiry, 1700000000u);
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->expiry_unix_s, 1700000000u);
  EXPECT_FALSE(row->Expired(1699999999));
  EXPECT_TRUE(row->Expired(1700000000));
  EXPECT_TRUE(row->Expired(1800000000));
}

TEST(CodecExpiry, ZeroMeansNever) {
  Layout layout(1, {Spec("a", v1::INT32)});
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {I32(5)}, &enc, /*expiry=*/0).ok());
  uint32_t expiry = 123;
  ASSERT_TRUE(PeekExpiry(enc, &expiry));
  EXPECT_EQ(expiry, 0u);
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  EXPECT_FALSE(row->Expired(0));
  EXPECT_FALSE(row->Expired(std::numeric_limits<int64_t>::max()));
}

TEST(CodecExpiry, MaxExpiryAndCompressedRow) {
  Layout layout(1, {Spec("s", v1::STRING)});
  std::string enc;
  ASSERT_TRUE(
      Encode(layout, {0}, {Str(std::string(4096, 'z'))}, &enc, std::numeric_limits<uint32_t>::max())
          .ok());
  uint32_t expiry = 0;
  ASSERT_TRUE(PeekExpiry(enc, &expiry));
  EXPECT_EQ(expiry, std::numeric_limits<uint32_t>::max());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  EXPECT_FALSE(row->Expired(4294967294LL));
  EXPECT_TRUE(row->Expired(4294967295LL));
}

TEST(CodecExpiry, PeekRejectsNonRows) {
  uint32_t expiry = 77;
  EXPECT_FALSE(PeekExpiry("", &expiry));
  EXPECT_FALSE(PeekExpiry(std::string("\x10\x01\x02", 3), &expiry));  // too short
  EXPECT_FALSE(PeekExpiry(std::string("\x20\x01\x02\x03\x04\x01", 6), &expiry));  // bad magic
  EXPECT_EQ(expiry, 77u);
}

// ---------------------------------------------------------------------------------------------
// Compression

TEST(CodecCompression, LargeCompressiblePayloadIsCompressed) {
  Layout layout(1, {Spec("id", v1::INT64), Spec("s", v1::STRING)});
  std::string big;
  while (big.size() < 4096) big += "feature-store ";
  std::vector<Value> values = {I64(77), Str(big)};
  std::string enc;
  ASSERT_TRUE(Encode(layout, Iota(2), values, &enc).ok());
  EXPECT_LT(enc.size(), big.size() / 2) << "a repetitive 4 KB string should compress well";
  EXPECT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0x01) << "compressed flag (docs/formats.md)";

  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok()) << row.status();
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  Value id, s;
  DecodeValue(layout, *row, 0, &id);
  DecodeValue(layout, *row, 1, &s);
  EXPECT_EQ(id.int64_value(), 77);
  EXPECT_EQ(s.string_value(), big);
}

TEST(CodecCompression, CompressedPartialRowKeepsPresence) {
  Layout layout(1, {Spec("a", v1::INT32), Spec("s", v1::STRING), Spec("c", v1::BOOL)});
  std::string big(8000, 'q');
  std::string enc;
  ASSERT_TRUE(Encode(layout, {1}, {Str(big)}, &enc).ok());
  EXPECT_LT(enc.size(), 1000u);
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  EXPECT_FALSE(row->Present(0));
  EXPECT_TRUE(row->Present(1));
  EXPECT_FALSE(row->Present(2));
  Value s;
  DecodeValue(layout, *row, 1, &s);
  EXPECT_EQ(s.string_value(), big);
}

TEST(CodecCompression, SmallPayloadIsNotCompressed) {
  Layout layout(1, {Spec("s", v1::STRING)});
  std::string small(200, 'a');  // compressible but below compress_min_bytes
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {Str(small)}, &enc).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0);
  EXPECT_GT(enc.size(), small.size());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  // An uncompressed row is parsed in place.
  EXPECT_GE(row->payload.data(), enc.data());
  EXPECT_LE(row->payload.data() + row->payload.size(), enc.data() + enc.size());
}

TEST(CodecCompression, IncompressiblePayloadIsStoredRaw) {
  Layout layout(1, {Spec("b", v1::BYTES)});
  std::mt19937 rng(42);
  std::string noise(4096, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {Bytes(noise)}, &enc).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0);
  EXPECT_GT(enc.size(), noise.size());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  Value out;
  DecodeValue(layout, *row, 0, &out);
  EXPECT_EQ(out.bytes_value(), noise);
}

TEST(CodecCompression, OptionsControlTheThreshold) {
  Layout layout(1, {Spec("s", v1::STRING)});
  std::string s(300, 'x');
  CodecOptions eager;
  eager.compress_min_bytes = 64;
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {Str(s)}, &enc, 0, eager).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0x01);
  EXPECT_LT(enc.size(), s.size());

  CodecOptions never;
  never.compress_min_bytes = std::numeric_limits<uint32_t>::max();
  std::string big(10000, 'x');
  ASSERT_TRUE(Encode(layout, {0}, {Str(big)}, &enc, 0, never).ok());
  EXPECT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0);
  EXPECT_GT(enc.size(), big.size());
}

// ---------------------------------------------------------------------------------------------
// Validation errors

class CodecValidation : public ::testing::Test {
 protected:
  // "rows[3]" style where; the bad value is always values[1].
  absl::Status EncodeBad(const FeatureSpec& spec, const Value& bad, const CodecOptions& options = {}) {
    Layout layout(1, {Spec("ok", v1::INT32), spec});
    std::vector<Value> values = {I32(1), bad};
    std::string enc = "untouched";
    absl::Status s = Encode(layout, {0, 1}, values, &enc, 0, options, "rows[3]");
    return s;
  }
  void ExpectRejected(const FeatureSpec& spec, const Value& bad, absl::string_view detail,
                      const CodecOptions& options = {}) {
    absl::Status s = EncodeBad(spec, bad, options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    std::string prefix = absl::StrCat("rows[3].values[1] (feature \"", spec.name(), "\"): ");
    EXPECT_TRUE(absl::StartsWith(s.message(), prefix)) << s.message();
    EXPECT_TRUE(absl::StrContains(s.message(), detail)) << s.message() << " lacks " << detail;
  }
};

TEST_F(CodecValidation, WrongOneofForType) {
  ExpectRejected(Spec("age", v1::INT32), Str("7"), "expected INT32, got string_value");
  ExpectRejected(Spec("flag", v1::BOOL), I32(1), "expected BOOL, got int32_value");
  ExpectRejected(Spec("n", v1::INT64), F64(1.0), "expected INT64, got float64_value");
  ExpectRejected(Spec("x", v1::FLOAT32), Bool(true), "expected FLOAT32, got bool_value");
  ExpectRejected(Spec("x", v1::FLOAT64), Str("1.0"), "expected FLOAT64, got string_value");
  ExpectRejected(Spec("name", v1::STRING), Bytes("abc"), "expected STRING, got bytes_value");
  ExpectRejected(Spec("blob", v1::BYTES), Str("abc"), "expected BYTES, got string_value");
  ExpectRejected(Spec("emb", v1::FLOAT32_VECTOR, 2), Ints({1, 2}), "got int32_list");
  ExpectRejected(Spec("emb", v1::FLOAT16_VECTOR, 2), Longs({1, 2}), "got int64_list");
  ExpectRejected(Spec("q", v1::INT8_VECTOR, 2), Floats({1, 2}), "got float_list");
  ExpectRejected(Spec("q", v1::INT32_VECTOR, 2), Longs({1, 2}), "got int64_list");
  ExpectRejected(Spec("q", v1::INT64_VECTOR, 2), Floats({1, 2}), "got float_list");
  ExpectRejected(Spec("age", v1::INT32), Value(), "got no value");
}

TEST_F(CodecValidation, WrongVectorLength) {
  ExpectRejected(Spec("emb", v1::FLOAT32_VECTOR, 3), Floats({1, 2}), "expected 3 elements, got 2");
  ExpectRejected(Spec("emb", v1::FLOAT16_VECTOR, 1), Floats({1, 2}), "expected 1 elements, got 2");
  ExpectRejected(Spec("q", v1::INT8_VECTOR, 2), Ints({}), "expected 2 elements, got 0");
  ExpectRejected(Spec("q", v1::INT32_VECTOR, 2), Ints({1, 2, 3}), "expected 2 elements, got 3");
  ExpectRejected(Spec("q", v1::INT64_VECTOR, 2), Longs({1}), "expected 2 elements, got 1");
  ExpectRejected(Spec("q", v1::INT64_VECTOR, 2), Ints({1}), "expected 2 elements, got 1");
}

TEST_F(CodecValidation, Int8ElementOutOfRange) {
  ExpectRejected(Spec("q", v1::INT8_VECTOR, 3), Ints({0, 128, 1}), "element 1 = 128 does not fit INT8");
  ExpectRejected(Spec("q", v1::INT8_VECTOR, 3), Ints({-129, 0, 1}), "element 0 = -129 does not fit INT8");
  // The bounds themselves are fine.
  EXPECT_TRUE(EncodeBad(Spec("q", v1::INT8_VECTOR, 2), Ints({-128, 127})).ok());
}

TEST_F(CodecValidation, Int32OverflowFromInt64) {
  ExpectRejected(Spec("age", v1::INT32), I64(int64_t{1} << 31), "value 2147483648 does not fit INT32");
  ExpectRejected(Spec("age", v1::INT32), I64(-(int64_t{1} << 31) - 1),
                 "value -2147483649 does not fit INT32");
  EXPECT_TRUE(EncodeBad(Spec("age", v1::INT32), I64(-(int64_t{1} << 31))).ok());
}

TEST_F(CodecValidation, StringLimits) {
  FeatureSpec limited = Spec("name", v1::STRING);
  limited.set_max_length(5);
  EXPECT_TRUE(EncodeBad(limited, Str("12345")).ok());
  ExpectRejected(limited, Str("123456"), "length 6 exceeds the limit of 5 bytes");

  CodecOptions small;
  small.max_string_bytes = 10;
  EXPECT_TRUE(EncodeBad(Spec("blob", v1::BYTES), Bytes(std::string(10, 'b')), small).ok());
  ExpectRejected(Spec("blob", v1::BYTES), Bytes(std::string(11, 'b')),
                 "length 11 exceeds the limit of 10 bytes", small);
  ExpectRejected(Spec("name", v1::STRING), Str(std::string(65537, 'b')),
                 "length 65537 exceeds the limit of 65536 bytes");
}

TEST_F(CodecValidation, ErrorLeavesOutputAlone) {
  Layout layout(1, {Spec("a", v1::INT32)});
  std::string enc = "previous";
  absl::Status s = Encode(layout, {0}, {Str("x")}, &enc);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(enc, "previous");
  // Without a where, the message starts at the value index.
  EXPECT_TRUE(absl::StartsWith(s.message(), "values[0] (feature \"a\"): ")) << s.message();
}

TEST_F(CodecValidation, FieldAndValueCountsMustMatch) {
  Layout layout(1, {Spec("a", v1::INT32), Spec("b", v1::INT32)});
  std::vector<Value> values = {I32(1)};
  std::string enc;
  absl::Status s = Encode(layout, {0, 1}, values, &enc, 0, {}, "rows[0]");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "rows[0]: expected 2 values, got 1")) << s.message();
}

TEST(ValidateValue, Direct) {
  EXPECT_TRUE(ValidateValue(Spec("x", v1::FLOAT32), I64(5), 10).ok());
  EXPECT_TRUE(ValidateValue(Spec("x", v1::INT64_VECTOR, 2), Ints({1, 2}), 10).ok());
  EXPECT_EQ(ValidateValue(Spec("x", v1::FEATURE_TYPE_UNSPECIFIED), I64(5), 10).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateValue(Spec("x", v1::STRING), Str("abcdefghijk"), 10).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Corrupted input

std::string FullRow(const Layout& layout, bool partial = false) {
  std::vector<Value> all = AllTypeValues();
  std::string enc;
  absl::Status s;
  if (partial) {
    s = Encode(layout, {kI32, kS, kBy}, {all[kI32], all[kS], all[kBy]}, &enc);
  } else {
    s = Encode(layout, Iota(kNumFeatures), all, &enc);
  }
  EXPECT_TRUE(s.ok()) << s;
  return enc;
}

// ParseRow then CheckPayload: the status of reading `enc` against `layout`.
absl::Status ParseAndCheck(const Layout& layout, absl::string_view enc) {
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  if (!row.ok()) return row.status();
  return CheckPayload(layout, *row);
}

TEST(CodecCorruption, EveryTruncationIsDataLoss) {
  Layout layout(1, AllTypeSpecs());
  for (bool partial : {false, true}) {
    std::string enc = FullRow(layout, partial);
    ASSERT_TRUE(ParseAndCheck(layout, enc).ok());
    for (size_t len = 0; len < enc.size(); ++len) {
      absl::Status s = ParseAndCheck(layout, absl::string_view(enc).substr(0, len));
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "partial=" << partial << " len=" << len;
    }
  }
}

TEST(CodecCorruption, TruncatedCompressedRowIsDataLoss) {
  Layout layout(1, {Spec("s", v1::STRING)});
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {Str(std::string(5000, 'k') + "tail")}, &enc).ok());
  ASSERT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0x01);
  ASSERT_TRUE(ParseAndCheck(layout, enc).ok());
  for (size_t len = 0; len < enc.size(); ++len) {
    absl::Status s = ParseAndCheck(layout, absl::string_view(enc).substr(0, len));
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "len=" << len;
  }
  // Garbage after the frame, or a wrong declared length, is caught too.
  EXPECT_EQ(ParseAndCheck(layout, enc + "junk").code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, BadMagicIsDataLoss) {
  Layout layout(1, AllTypeSpecs());
  std::string enc = FullRow(layout);
  for (uint8_t magic : {0x00, 0x20, 0xF0, 0x30}) {
    std::string bad = enc;
    bad[0] = static_cast<char>(magic | (static_cast<uint8_t>(enc[0]) & 0x0f));
    std::string scratch;
    auto row = ParseRow(bad, &scratch);
    EXPECT_EQ(row.status().code(), absl::StatusCode::kDataLoss) << int(magic);
    uint32_t expiry;
    EXPECT_FALSE(PeekExpiry(bad, &expiry));
  }
}

TEST(CodecCorruption, BadVersionIsDataLoss) {
  std::string scratch;
  // Version 0.
  std::string v0("\x10\0\0\0\0\x00", 6);
  EXPECT_EQ(ParseRow(v0, &scratch).status().code(), absl::StatusCode::kDataLoss);
  // An unterminated varint.
  std::string unterminated("\x10\0\0\0\0\xff\xff", 7);
  EXPECT_EQ(ParseRow(unterminated, &scratch).status().code(), absl::StatusCode::kDataLoss);
  // A version beyond uint32.
  std::string huge("\x10\0\0\0\0\xff\xff\xff\xff\x7f", 10);
  EXPECT_EQ(ParseRow(huge, &scratch).status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, BadPresenceLengthIsDataLoss) {
  // Presence flag with a bitmap length longer than the row.
  std::string bad("\x12\0\0\0\0\x01\x7f\x01", 8);
  std::string scratch;
  EXPECT_EQ(ParseRow(bad, &scratch).status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, BadCompressedLengthIsDataLoss) {
  Layout layout(1, {Spec("s", v1::STRING)});
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0}, {Str(std::string(5000, 'k'))}, &enc).ok());
  ASSERT_EQ(static_cast<uint8_t>(enc[0]) & 0x01, 0x01);
  // Header: format, 4 bytes expiry, version varint (1 byte), raw length varint.
  std::string scratch;
  std::string huge = enc.substr(0, 6) + std::string("\xff\xff\xff\xff\x0f", 5) + enc.substr(8);
  EXPECT_EQ(ParseRow(huge, &scratch).status().code(), absl::StatusCode::kDataLoss);
  // A plausible but wrong raw length.
  std::string wrong = enc;
  wrong[6] = static_cast<char>(static_cast<uint8_t>(wrong[6]) ^ 0x01);
  EXPECT_EQ(ParseRow(wrong, &scratch).status().code(), absl::StatusCode::kDataLoss);
  // Not a zstd frame at all.
  std::string garbage = enc.substr(0, 8) + std::string(100, 'g');
  EXPECT_EQ(ParseRow(garbage, &scratch).status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, BadOffsetsAreDataLoss) {
  // Two strings: the payload is [offset0 u32][offset1 u32][data].
  Layout layout(1, {Spec("a", v1::STRING), Spec("b", v1::STRING)});
  std::string enc;
  ASSERT_TRUE(Encode(layout, {0, 1}, {Str("abc"), Str("defgh")}, &enc).ok());
  std::string scratch;
  auto row = ParseRow(enc, &scratch);
  ASSERT_TRUE(row.ok());
  ASSERT_TRUE(CheckPayload(layout, *row).ok());
  const size_t payload_at = static_cast<size_t>(row->payload.data() - enc.data());
  auto with_offsets = [&](uint32_t o0, uint32_t o1) {
    std::string bad = enc;
    std::memcpy(bad.data() + payload_at, &o0, 4);
    std::memcpy(bad.data() + payload_at + 4, &o1, 4);
    return ParseAndCheck(layout, bad);
  };
  EXPECT_TRUE(with_offsets(3, 8).ok());
  EXPECT_TRUE(with_offsets(0, 8).ok());  // still a valid split of the data
  EXPECT_EQ(with_offsets(9, 8).code(), absl::StatusCode::kDataLoss);           // decreasing
  EXPECT_EQ(with_offsets(3, 9).code(), absl::StatusCode::kDataLoss);           // past the end
  EXPECT_EQ(with_offsets(0xFFFFFFFF, 8).code(), absl::StatusCode::kDataLoss);  // huge
  EXPECT_EQ(with_offsets(3, 0xFFFFFFFF).code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, RowOfAnotherLayoutIsDataLoss) {
  // A row that is too short for the layout it is checked against.
  Layout small(1, {Spec("a", v1::INT32)});
  Layout big(1, {Spec("a", v1::INT32), Spec("v", v1::FLOAT32_VECTOR, 16), Spec("s", v1::STRING)});
  std::string enc;
  ASSERT_TRUE(Encode(small, {0}, {I32(1)}, &enc).ok());
  EXPECT_TRUE(ParseAndCheck(small, enc).ok());
  EXPECT_EQ(ParseAndCheck(big, enc).code(), absl::StatusCode::kDataLoss);
}

TEST(CodecCorruption, RandomBytesNeverCrash) {
  Layout layout(1, AllTypeSpecs());
  std::string good = FullRow(layout);
  std::mt19937 rng(1234);
  int ok = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bad = good;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bad[rng() % bad.size()] = static_cast<char>(rng());
    std::string scratch;
    auto row = ParseRow(bad, &scratch);
    if (!row.ok()) {
      EXPECT_EQ(row.status().code(), absl::StatusCode::kDataLoss);
      continue;
    }
    absl::Status s = CheckPayload(layout, *row);
    if (!s.ok()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
      continue;
    }
    // A row that passes the checks decodes without reading out of bounds.
    for (size_t i = 0; i < layout.size(); ++i) {
      Value v;
      DecodeValue(layout, *row, i, &v);
      if (IsNumeric(layout.spec(i).type())) {
        std::vector<float> fl(MatrixWidth(layout.spec(i)));
        DecodeFloats(layout, *row, i, fl.data());
      }
    }
    ++ok;
  }
  EXPECT_GT(ok, 0);  // flips inside fixed values keep the row valid
}

// ---------------------------------------------------------------------------------------------
// Layout

TEST(LayoutTest, IndexOfAndOffsets) {
  Layout layout(4, AllTypeSpecs());
  EXPECT_EQ(layout.version(), 4u);
  for (int i = 0; i < kNumFeatures; ++i) EXPECT_EQ(layout.IndexOf(layout.spec(i).name()), i);
  EXPECT_EQ(layout.IndexOf("missing"), -1);
  EXPECT_EQ(layout.IndexOf(""), -1);
  EXPECT_EQ(layout.IndexOf("I32"), -1);  // case-sensitive
  EXPECT_EQ(layout.num_var(), 2u);
  EXPECT_EQ(layout.field(kS).var_index, 0);
  EXPECT_EQ(layout.field(kBy).var_index, 1);
  EXPECT_EQ(layout.field(kB).var_index, -1);
  // bool 1 + i32 4 + i64 8 + f32 4 + f64 8 + fv 12 + hv 8 + i8v 5 + i32v 8 + i64v 16
  EXPECT_EQ(layout.fixed_size(), 1u + 4 + 8 + 4 + 8 + 12 + 8 + 5 + 8 + 16);
  EXPECT_EQ(layout.field(kI32).offset, 1u);
  EXPECT_EQ(layout.field(kHv).width, 8u);
}

TEST(LayoutTest, IndexOfAcrossVersions) {
  // Version 2 drops "b", adds "d" and reorders: each layout answers for its own version.
  Layout first(1, {Spec("a", v1::INT32), Spec("b", v1::STRING), Spec("c", v1::FLOAT32)});
  Layout second(2, {Spec("c", v1::FLOAT32), Spec("d", v1::BOOL), Spec("a", v1::INT64)});
  EXPECT_EQ(first.IndexOf("a"), 0);
  EXPECT_EQ(first.IndexOf("b"), 1);
  EXPECT_EQ(first.IndexOf("c"), 2);
  EXPECT_EQ(first.IndexOf("d"), -1);
  EXPECT_EQ(second.IndexOf("a"), 2);
  EXPECT_EQ(second.IndexOf("b"), -1);
  EXPECT_EQ(second.IndexOf("c"), 0);
  EXPECT_EQ(second.IndexOf("d"), 1);
  EXPECT_EQ(second.spec(second.IndexOf("a")).type(), v1::INT64);
}

TEST(LayoutTest, EmptyLayout) {
  Layout layout(1, {});
  EXPECT_EQ(layout.size(), 0u);
  EXPECT_EQ(layout.fixed_size(), 0u);
  std::string enc;
  ASSERT_TRUE(Encode(layout, {}, {}, &enc).ok());
  EXPECT_TRUE(ParseAndCheck(layout, enc).ok());
}

TEST(LayoutTest, DefaultFloatsWithoutDefaults) {
  Layout layout(1, AllTypeSpecs());
  for (int i = 0; i < kNumFeatures; ++i) {
    auto d = layout.DefaultFloats(i);
    if (!IsNumeric(layout.spec(i).type())) {
      EXPECT_TRUE(d.empty()) << i;
      continue;
    }
    ASSERT_EQ(d.size(), MatrixWidth(layout.spec(i))) << i;
    for (float f : d) EXPECT_EQ(f, 0.0f) << i;
  }
}

TEST(LayoutTest, DefaultFloatsWithDefaults) {
  std::vector<FeatureSpec> specs = {Spec("b", v1::BOOL), Spec("i", v1::INT32), Spec("f", v1::FLOAT64),
                                    Spec("h", v1::FLOAT16_VECTOR, 2), Spec("q", v1::INT8_VECTOR, 3),
                                    Spec("l", v1::INT64_VECTOR, 2), Spec("s", v1::STRING),
                                    Spec("x", v1::FLOAT32)};
  *specs[0].mutable_default_value() = Bool(true);
  *specs[1].mutable_default_value() = I32(-7);
  *specs[2].mutable_default_value() = F64(2.5);
  *specs[3].mutable_default_value() = Floats({0.1f, -3.0f});
  *specs[4].mutable_default_value() = Ints({-1, 0, 100});
  *specs[5].mutable_default_value() = Ints({9, -9});  // int32_list for INT64_VECTOR
  *specs[6].mutable_default_value() = Str("n/a");
  *specs[7].mutable_default_value() = I32(4);  // integer default for a float feature
  Layout layout(1, specs);
  auto vec = [&](int i) {
    auto d = layout.DefaultFloats(i);
    return std::vector<float>(d.begin(), d.end());
  };
  EXPECT_EQ(vec(0), std::vector<float>({1.0f}));
  EXPECT_EQ(vec(1), std::vector<float>({-7.0f}));
  EXPECT_EQ(vec(2), std::vector<float>({2.5f}));
  // Float16 defaults follow the stored precision.
  EXPECT_EQ(vec(3), std::vector<float>({HalfToFloat(FloatToHalf(0.1f)), -3.0f}));
  EXPECT_EQ(vec(4), std::vector<float>({-1.0f, 0.0f, 100.0f}));
  EXPECT_EQ(vec(5), std::vector<float>({9.0f, -9.0f}));
  EXPECT_TRUE(vec(6).empty());
  EXPECT_EQ(vec(7), std::vector<float>({4.0f}));
}

TEST(LayoutTest, ZeroAndDefaultValues) {
  FeatureSpec v = Spec("v", v1::INT8_VECTOR, 3);
  Value z = ZeroValue(v);
  ASSERT_EQ(z.kind_case(), Value::kInt32List);
  EXPECT_EQ(z.int32_list().values_size(), 3);
  EXPECT_EQ(ZeroValue(Spec("h", v1::FLOAT16_VECTOR, 2)).float_list().values_size(), 2);
  EXPECT_EQ(ZeroValue(Spec("l", v1::INT64_VECTOR, 4)).int64_list().values_size(), 4);
  EXPECT_EQ(ZeroValue(Spec("s", v1::STRING)).kind_case(), Value::kStringValue);
  EXPECT_EQ(ZeroValue(Spec("b", v1::BYTES)).kind_case(), Value::kBytesValue);
  EXPECT_EQ(ZeroValue(Spec("b", v1::BOOL)).kind_case(), Value::kBoolValue);
  EXPECT_EQ(ZeroValue(Spec("d", v1::FLOAT64)).kind_case(), Value::kFloat64Value);
  FeatureSpec with = Spec("s", v1::STRING);
  *with.mutable_default_value() = Str("unknown");
  EXPECT_EQ(DefaultValue(with).string_value(), "unknown");
  EXPECT_EQ(DefaultValue(Spec("s", v1::STRING)).string_value(), "");
}

}  // namespace
}  // namespace kosh::features
