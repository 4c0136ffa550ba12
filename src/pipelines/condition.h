// `when` conditions of pipeline nodes: a small boolean language over the request context and the
// candidate counts of nodes that have already finished. Parsed once per pipeline version.
//
// Grammar (usual precedence; keywords are lower case):
//   cond    := or
//   or      := and (("or" | "||") and)*
//   and     := unary (("and" | "&&") unary)*
//   unary   := ("not" | "!") unary | cmp
//   cmp     := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
//   operand := number | 'text' | "text" | true | false
//            | context.NAME          the request's context value (the empty string when absent)
//            | has(context.NAME)     1 when the request carries the key, else 0
//            | count(NODE)           candidates NODE produced (0 when it failed or was skipped)
//            | "(" cond ")"
// Semantics: two numbers compare numerically, two strings by bytes; a string compared with a
// number is read as a number, and when it is not one, == is false, != true and orderings false.
// A bare operand is true when it is a non-zero number or a non-empty string.
// Examples: "context.segment == 'new_user'", "count(recs) < 10 and has(context.user_id)".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "google/protobuf/map.h"

namespace kosh::pipelines {

class Condition {
 public:
  // Parses `text`. INVALID_ARGUMENT naming the character offset of the problem.
  static absl::StatusOr<Condition> Parse(absl::string_view text);

  // The distinct node names count(...) reads, in order of first use; Evaluate's `counts` follow it.
  const std::vector<std::string>& nodes() const { return nodes_; }
  const std::string& text() const { return text_; }

  // Evaluates against the request context and counts[i] = candidates of nodes()[i].
  // Thread-safe (const).
  bool Evaluate(const google::protobuf::Map<std::string, std::string>& context, absl::Span<const int64_t> counts) const;

 private:
  enum class Op : uint8_t { kNum, kStr, kContext, kHas, kCount, kNot, kAnd, kOr, kEq, kNe, kLt, kLe, kGt, kGe };
  struct Node {
    Op op;
    double num = 0;
    std::string str;     // kStr literal; kContext / kHas: the key
    int index = 0;       // kCount: index into nodes_
    int a = -1, b = -1;  // children
  };
  struct Val;
  friend class ConditionParser;
  Val Eval(int n, const google::protobuf::Map<std::string, std::string>& context,
           absl::Span<const int64_t> counts) const;

  std::string text_;
  std::vector<Node> ast_;
  int root_ = -1;
  std::vector<std::string> nodes_;
};

}  // namespace kosh::pipelines
