#include "pipelines/candidates.h"

#include "absl/strings/numbers.h"

namespace kosh::pipelines {

int CandidateSet::ColumnIndex(absl::string_view name) const {
  for (size_t i = 0; i < columns.size(); ++i) {
    if (columns[i] == name) return static_cast<int>(i);
  }
  return -1;
}

int CandidateSet::AddColumn(const std::string& name) {
  int i = ColumnIndex(name);
  if (i >= 0) return i;
  columns.push_back(name);
  return static_cast<int>(columns.size()) - 1;
}

const v1::Value* CandidateSet::Get(size_t i, int col) const {
  if (col < 0) return nullptr;
  const auto& vals = items[i].values;
  if (static_cast<size_t>(col) >= vals.size() || vals[col].kind_case() == v1::Value::KIND_NOT_SET) return nullptr;
  return &vals[col];
}

void CandidateSet::Set(size_t i, int col, v1::Value v) {
  auto& vals = items[i].values;
  if (vals.size() <= static_cast<size_t>(col)) vals.resize(static_cast<size_t>(col) + 1);
  vals[col] = std::move(v);
}

double NumberOf(const v1::Value* v, bool* present) {
  if (present != nullptr) *present = true;
  if (v != nullptr) {
    switch (v->kind_case()) {
      case v1::Value::kBoolValue:
        return v->bool_value() ? 1 : 0;
      case v1::Value::kInt32Value:
        return v->int32_value();
      case v1::Value::kInt64Value:
        return static_cast<double>(v->int64_value());
      case v1::Value::kFloat32Value:
        return v->float32_value();
      case v1::Value::kFloat64Value:
        return v->float64_value();
      case v1::Value::kStringValue: {
        double d = 0;
        if (absl::SimpleAtod(v->string_value(), &d)) return d;
        break;
      }
      default:
        break;
    }
  }
  if (present != nullptr) *present = false;
  return 0;
}

}  // namespace kosh::pipelines
