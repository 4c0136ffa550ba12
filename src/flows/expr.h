// Derived-column expressions: a small arithmetic language over named numeric columns, parsed once
// per flow version and evaluated per row.
//
// Grammar (usual precedence, left-associative):
//   expr   := cmp
//   cmp    := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//   sum    := prod (("+" | "-") prod)*
//   prod   := unary (("*" | "/") unary)*
//   unary  := "-" unary | atom
//   atom   := number | column | func "(" expr ("," expr)* ")" | "(" expr ")"
//   func   := log1p | log | exp | sqrt | abs (one argument); min | max (two or more)
// A column is an identifier with dots, e.g. product.product_stats.price. Comparisons yield 1 or 0.
// Arithmetic is in double precision; division by zero yields 0 (a feature pipeline must not emit
// inf/NaN because one row has a zero denominator).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kosh::flows {

class Expr {
 public:
  // Parses `text`. INVALID_ARGUMENT with the character offset of the problem.
  static absl::StatusOr<Expr> Parse(absl::string_view text);

  // The distinct column names the expression reads, in order of first use. Evaluate's `inputs`
  // follow this order.
  const std::vector<std::string>& columns() const { return columns_; }

  // Evaluates with inputs[i] the value of columns()[i]. Thread-safe (const).
  double Evaluate(absl::Span<const double> inputs) const;

 private:
  enum class Op : uint8_t {
    kConst, kCol, kNeg, kAdd, kSub, kMul, kDiv, kLt, kLe, kGt, kGe, kEq, kNe,
    kLog1p, kLog, kExp, kSqrt, kAbs, kMin, kMax
  };
  struct Node {
    Op op;
    double value = 0;  // kConst
    int index = 0;     // kCol: column index; kMin/kMax: argument count
  };
  friend class ExprParser;
  // Postfix program, evaluated on a small stack.
  std::vector<Node> program_;
  std::vector<std::string> columns_;
  int max_stack_ = 0;
};

}  // namespace kosh::flows
