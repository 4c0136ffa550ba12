#include "flows/expr.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"

namespace kosh::flows {

class ExprParser {
 public:
  ExprParser(absl::string_view text, Expr* out) : text_(text), out_(out) {}

  absl::Status Run() {
    if (absl::Status s = ParseCmp(); !s.ok()) return s;
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected input");
    // Stack depth: simulate.
    int depth = 0, max_depth = 0;
    for (const auto& n : out_->program_) {
      switch (n.op) {
        case Expr::Op::kConst:
        case Expr::Op::kCol:
          ++depth;
          break;
        case Expr::Op::kNeg:
        case Expr::Op::kLog1p:
        case Expr::Op::kLog:
        case Expr::Op::kExp:
        case Expr::Op::kSqrt:
        case Expr::Op::kAbs:
          break;
        case Expr::Op::kMin:
        case Expr::Op::kMax:
          depth -= n.index - 1;
          break;
        default:
          --depth;
      }
      max_depth = std::max(max_depth, depth);
    }
    out_->max_stack_ = max_depth;
    return absl::OkStatus();
  }

 private:
  using Op = Expr::Op;

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(what, " at offset ", pos_, " of \"", text_, "\""));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool Eat(absl::string_view tok) {
    SkipSpace();
    if (text_.substr(pos_, tok.size()) == tok) {
      pos_ += tok.size();
      return true;
    }
    return false;
  }
  void Emit(Op op, double value = 0, int index = 0) { out_->program_.push_back({op, value, index}); }

  absl::Status ParseCmp() {
    if (absl::Status s = ParseSum(); !s.ok()) return s;
    static const std::pair<absl::string_view, Op> kOps[] = {
        {"<=", Op::kLe}, {">=", Op::kGe}, {"==", Op::kEq}, {"!=", Op::kNe}, {"<", Op::kLt}, {">", Op::kGt}};
    for (const auto& [tok, op] : kOps) {
      if (Eat(tok)) {
        if (absl::Status s = ParseSum(); !s.ok()) return s;
        Emit(op);
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }
  absl::Status ParseSum() {
    if (absl::Status s = ParseProd(); !s.ok()) return s;
    while (true) {
      Op op;
      if (Eat("+")) {
        op = Op::kAdd;
      } else if (Eat("-")) {
        op = Op::kSub;
      } else {
        return absl::OkStatus();
      }
      if (absl::Status s = ParseProd(); !s.ok()) return s;
      Emit(op);
    }
  }
  absl::Status ParseProd() {
    if (absl::Status s = ParseUnary(); !s.ok()) return s;
    while (true) {
      Op op;
      if (Eat("*")) {
        op = Op::kMul;
      } else if (Eat("/")) {
        op = Op::kDiv;
      } else {
        return absl::OkStatus();
      }
      if (absl::Status s = ParseUnary(); !s.ok()) return s;
      Emit(op);
    }
  }
  absl::Status ParseUnary() {
    if (++depth_ > 64) return Error("expression nested too deeply");
    absl::Status s;
    if (Eat("-")) {
      s = ParseUnary();
      if (s.ok()) Emit(Op::kNeg);
    } else {
      s = ParseAtom();
    }
    --depth_;
    return s;
  }
  absl::Status ParseAtom() {
    SkipSpace();
    if (pos_ >= text_.size()) return Error("expected a number, column or function");
    char c = text_[pos_];
    if (c == '(') {
      ++pos_;
      if (absl::Status s = ParseCmp(); !s.ok()) return s;
      if (!Eat(")")) return Error("expected \")\"");
      return absl::OkStatus();
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      std::string num(text_.substr(pos_, 64));
      char* end = nullptr;
      double v = std::strtod(num.c_str(), &end);
      if (end == num.c_str()) return Error("malformed number");
      pos_ += static_cast<size_t>(end - num.c_str());
      if (!std::isfinite(v)) return Error("number out of range");
      Emit(Op::kConst, v);
      return absl::OkStatus();
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t start = pos_;
      while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) ||
                                     text_[pos_] == '_' || text_[pos_] == '.')) {
        ++pos_;
      }
      std::string name(text_.substr(start, pos_ - start));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == '(') return ParseCall(name, start);
      auto& cols = out_->columns_;
      auto it = std::find(cols.begin(), cols.end(), name);
      int idx = static_cast<int>(it - cols.begin());
      if (it == cols.end()) cols.push_back(name);
      Emit(Op::kCol, 0, idx);
      return absl::OkStatus();
    }
    return Error(absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }
  absl::Status ParseCall(const std::string& name, size_t start) {
    static const std::pair<absl::string_view, Op> kFuncs[] = {
        {"log1p", Op::kLog1p}, {"log", Op::kLog}, {"exp", Op::kExp}, {"sqrt", Op::kSqrt},
        {"abs", Op::kAbs},     {"min", Op::kMin}, {"max", Op::kMax}};
    Op op = Op::kConst;
    bool found = false;
    for (const auto& [fname, fop] : kFuncs) {
      if (name == fname) {
        op = fop;
        found = true;
      }
    }
    if (!found) {
      pos_ = start;
      return Error(absl::StrCat("unknown function \"", name, "\" (known: log1p, log, exp, sqrt, abs, min, max)"));
    }
    ++pos_;  // '('
    int args = 0;
    do {
      if (absl::Status s = ParseCmp(); !s.ok()) return s;
      ++args;
    } while (Eat(","));
    if (!Eat(")")) return Error("expected \")\" or \",\"");
    bool variadic = op == Op::kMin || op == Op::kMax;
    if (variadic ? args < 2 : args != 1) {
      pos_ = start;
      return Error(absl::StrCat(name, "() takes ", variadic ? "two or more arguments" : "one argument", ", got ",
                                args));
    }
    Emit(op, 0, args);
    return absl::OkStatus();
  }

  absl::string_view text_;
  Expr* out_;
  size_t pos_ = 0;
  int depth_ = 0;
};

absl::StatusOr<Expr> Expr::Parse(absl::string_view text) {
  Expr e;
  ExprParser p(text, &e);
  if (absl::Status s = p.Run(); !s.ok()) return s;
  return e;
}

double Expr::Evaluate(absl::Span<const double> inputs) const {
  absl::InlinedVector<double, 16> st;
  st.reserve(static_cast<size_t>(max_stack_));
  for (const Node& n : program_) {
    switch (n.op) {
      case Op::kConst:
        st.push_back(n.value);
        continue;
      case Op::kCol:
        st.push_back(inputs[static_cast<size_t>(n.index)]);
        continue;
      case Op::kNeg:
        st.back() = -st.back();
        continue;
      case Op::kLog1p:
        st.back() = st.back() > -1 ? std::log1p(st.back()) : 0.0;
        continue;
      case Op::kLog:
        st.back() = st.back() > 0 ? std::log(st.back()) : 0.0;
        continue;
      case Op::kExp:
        st.back() = std::exp(std::min(st.back(), 700.0));
        continue;
      case Op::kSqrt:
        st.back() = st.back() >= 0 ? std::sqrt(st.back()) : 0.0;
        continue;
      case Op::kAbs:
        st.back() = std::fabs(st.back());
        continue;
      case Op::kMin:
      case Op::kMax: {
        size_t first = st.size() - static_cast<size_t>(n.index);
        double v = st[first];
        for (size_t i = first + 1; i < st.size(); ++i) v = n.op == Op::kMin ? std::min(v, st[i]) : std::max(v, st[i]);
        st.resize(first);
        st.push_back(v);
        continue;
      }
      default:
        break;
    }
    double b = st.back();
    st.pop_back();
    double& a = st.back();
    switch (n.op) {
      case Op::kAdd: a = a + b; break;
      case Op::kSub: a = a - b; break;
      case Op::kMul: a = a * b; break;
      case Op::kDiv: a = b == 0 ? 0.0 : a / b; break;
      case Op::kLt: a = a < b; break;
      case Op::kLe: a = a <= b; break;
      case Op::kGt: a = a > b; break;
      case Op::kGe: a = a >= b; break;
      case Op::kEq: a = a == b; break;
      case Op::kNe: a = a != b; break;
      default: break;
    }
  }
  return st.empty() ? 0.0 : st.back();
}

}  // namespace kosh::flows
