// Value builders shared by the features/ unit tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kosh/v1/types.pb.h"

namespace kosh::features::test_values {

using v1::Value;

inline Value Bool(bool b) {
  Value v;
  v.set_bool_value(b);
  return v;
}
inline Value I32(int32_t x) {
  Value v;
  v.set_int32_value(x);
  return v;
}
inline Value I64(int64_t x) {
  Value v;
  v.set_int64_value(x);
  return v;
}
inline Value F32(float x) {
  Value v;
  v.set_float32_value(x);
  return v;
}
inline Value F64(double x) {
  Value v;
  v.set_float64_value(x);
  return v;
}
inline Value Str(const std::string& s) {
  Value v;
  v.set_string_value(s);
  return v;
}
inline Value Bytes(const std::string& s) {
  Value v;
  v.set_bytes_value(s);
  return v;
}
inline Value Floats(std::vector<float> xs) {
  Value v;
  v.mutable_float_list();  // set the oneof even when empty
  for (float x : xs) v.mutable_float_list()->add_values(x);
  return v;
}

}  // namespace kosh::features::test_values
