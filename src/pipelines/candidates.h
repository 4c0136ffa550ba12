// The data that flows along a pipeline's edges: a list of candidates (item id, score, named
// columns). Columns are typed values (the feature store's v1::Value); a candidate that has no
// value for a column holds an unset Value (kind_case() == KIND_NOT_SET).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "kosh/v1/types.pb.h"

namespace kosh::pipelines {

struct Candidate {
  std::string item_id;
  double score = 0;
  std::vector<v1::Value> values;  // parallel to CandidateSet::columns (may be shorter: unset)
};

struct CandidateSet {
  std::vector<std::string> columns;
  std::vector<Candidate> items;

  // The index of column `name`, or -1.
  int ColumnIndex(absl::string_view name) const;
  // Adds a column (or finds an existing one of that name) and returns its index.
  int AddColumn(const std::string& name);
  // The value of column `col` of item `i`, or nullptr when unset.
  const v1::Value* Get(size_t i, int col) const;
  // Sets column `col` of item `i` (growing its values as needed).
  void Set(size_t i, int col, v1::Value v);
};

// The numeric reading of a value: bools 0/1, ints and floats as doubles; a numeric string is
// parsed; anything else (unset, other strings, lists) is 0 with *present = false.
double NumberOf(const v1::Value* v, bool* present = nullptr);

// The names an expression may use besides columns: the candidate's score.
inline constexpr absl::string_view kScoreColumn = "score";

}  // namespace kosh::pipelines
