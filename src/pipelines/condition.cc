#include "pipelines/condition.h"

#include <cctype>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kosh::pipelines {

struct Condition::Val {
  bool is_num = false;
  double num = 0;
  absl::string_view str;
  bool Truthy() const { return is_num ? num != 0 : !str.empty(); }
};

class ConditionParser {
 public:
  ConditionParser(absl::string_view text, Condition* c) : text_(text), c_(c) {}

  absl::Status Run() {
    Next();
    if (!status_.ok()) return status_;
    int root = Or();
    if (!status_.ok()) return status_;
    if (tok_.kind != Tok::kEnd) {
      Error(tok_.pos, absl::StrCat("unexpected \"", tok_.text, "\""));
      return status_;
    }
    c_->root_ = root;
    return absl::OkStatus();
  }

 private:
  struct Tok {
    enum Kind { kEnd, kNum, kStr, kIdent, kOp, kLParen, kRParen } kind = kEnd;
    std::string text;
    double num = 0;
    size_t pos = 0;
  };

  void Error(size_t pos, absl::string_view what) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat("at offset ", pos, ": ", what));
  }

  void Next() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    tok_ = Tok();
    tok_.pos = pos_;
    if (pos_ >= text_.size()) return;
    char c = text_[pos_];
    if (std::isdigit(static_cast<unsigned char>(c)) ||
        (c == '.' && pos_ + 1 < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_ + 1])))) {
      size_t start = pos_;
      while (pos_ < text_.size() &&
             (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '.' ||
              ((text_[pos_] == '-' || text_[pos_] == '+') && (text_[pos_ - 1] == 'e' || text_[pos_ - 1] == 'E')))) {
        ++pos_;
      }
      tok_.kind = Tok::kNum;
      tok_.text = std::string(text_.substr(start, pos_ - start));
      if (!absl::SimpleAtod(tok_.text, &tok_.num)) Error(start, absl::StrCat("bad number \"", tok_.text, "\""));
      return;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t start = pos_;
      while (pos_ < text_.size() &&
             (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_' || text_[pos_] == '.')) {
        ++pos_;
      }
      tok_.kind = Tok::kIdent;
      tok_.text = std::string(text_.substr(start, pos_ - start));
      return;
    }
    if (c == '\'' || c == '"') {
      size_t start = pos_++;
      std::string s;
      while (pos_ < text_.size() && text_[pos_] != c) {
        if (text_[pos_] == '\\' && pos_ + 1 < text_.size()) ++pos_;
        s.push_back(text_[pos_++]);
      }
      if (pos_ >= text_.size()) {
        Error(start, "unterminated string");
        return;
      }
      ++pos_;
      tok_.kind = Tok::kStr;
      tok_.text = std::move(s);
      return;
    }
    if (c == '(' || c == ')') {
      ++pos_;
      tok_.kind = c == '(' ? Tok::kLParen : Tok::kRParen;
      tok_.text = std::string(1, c);
      return;
    }
    static const char* kOps[] = {"==", "!=", "<=", ">=", "&&", "||", "<", ">", "!"};
    for (const char* op : kOps) {
      if (absl::StartsWith(text_.substr(pos_), op)) {
        tok_.kind = Tok::kOp;
        tok_.text = op;
        pos_ += tok_.text.size();
        return;
      }
    }
    Error(pos_, absl::StrCat("unexpected character '", std::string(1, c), "'"));
    tok_.kind = Tok::kEnd;
  }

  int Add(Condition::Node n) {
    c_->ast_.push_back(std::move(n));
    return static_cast<int>(c_->ast_.size()) - 1;
  }
  int Binary(Condition::Op op, int a, int b) {
    Condition::Node n;
    n.op = op;
    n.a = a;
    n.b = b;
    return Add(std::move(n));
  }

  bool IsWord(absl::string_view w) const { return tok_.kind == Tok::kIdent && tok_.text == w; }
  bool IsOp(absl::string_view o) const { return tok_.kind == Tok::kOp && tok_.text == o; }

  int Or() {
    int a = And();
    while (status_.ok() && (IsWord("or") || IsOp("||"))) {
      Next();
      a = Binary(Condition::Op::kOr, a, And());
    }
    return a;
  }
  int And() {
    int a = Unary();
    while (status_.ok() && (IsWord("and") || IsOp("&&"))) {
      Next();
      a = Binary(Condition::Op::kAnd, a, Unary());
    }
    return a;
  }
  int Unary() {
    if (IsWord("not") || IsOp("!")) {
      Next();
      return Binary(Condition::Op::kNot, Unary(), -1);
    }
    return Cmp();
  }
  int Cmp() {
    int a = Operand();
    static const std::pair<const char*, Condition::Op> kCmp[] = {
        {"==", Condition::Op::kEq}, {"!=", Condition::Op::kNe}, {"<", Condition::Op::kLt},
        {"<=", Condition::Op::kLe}, {">", Condition::Op::kGt},  {">=", Condition::Op::kGe}};
    for (const auto& [text, op] : kCmp) {
      if (status_.ok() && IsOp(text)) {
        Next();
        return Binary(op, a, Operand());
      }
    }
    return a;
  }

  // "(" ident ")" after a function name; returns the identifier.
  std::string FunctionArg(const std::string& fn) {
    Next();
    if (tok_.kind != Tok::kLParen) {
      Error(tok_.pos, absl::StrCat("expected \"(\" after ", fn));
      return "";
    }
    Next();
    if (tok_.kind != Tok::kIdent) {
      Error(tok_.pos, absl::StrCat(fn, "(...) takes a name"));
      return "";
    }
    std::string arg = tok_.text;
    Next();
    if (tok_.kind != Tok::kRParen) {
      Error(tok_.pos, absl::StrCat("expected \")\" after ", fn, "(", arg));
      return "";
    }
    Next();
    return arg;
  }

  int Operand() {
    if (!status_.ok()) return -1;
    Condition::Node n;
    switch (tok_.kind) {
      case Tok::kNum:
        n.op = Condition::Op::kNum;
        n.num = tok_.num;
        Next();
        return Add(std::move(n));
      case Tok::kStr:
        n.op = Condition::Op::kStr;
        n.str = tok_.text;
        Next();
        return Add(std::move(n));
      case Tok::kLParen: {
        Next();
        int inner = Or();
        if (status_.ok() && tok_.kind != Tok::kRParen) Error(tok_.pos, "expected \")\"");
        Next();
        return inner;
      }
      case Tok::kIdent: {
        const std::string word = tok_.text;
        const size_t pos = tok_.pos;
        if (word == "true" || word == "false") {
          n.op = Condition::Op::kNum;
          n.num = word == "true" ? 1 : 0;
          Next();
          return Add(std::move(n));
        }
        if (absl::StartsWith(word, "context.")) {
          n.op = Condition::Op::kContext;
          n.str = word.substr(8);
          if (n.str.empty() || absl::StrContains(n.str, ".")) {
            Error(pos, absl::StrCat("\"", word, "\" is not context.NAME"));
            return -1;
          }
          Next();
          return Add(std::move(n));
        }
        if (word == "count") {
          std::string node = FunctionArg(word);
          if (!status_.ok()) return -1;
          n.op = Condition::Op::kCount;
          n.index = -1;
          for (size_t i = 0; i < c_->nodes_.size(); ++i) {
            if (c_->nodes_[i] == node) n.index = static_cast<int>(i);
          }
          if (n.index < 0) {
            n.index = static_cast<int>(c_->nodes_.size());
            c_->nodes_.push_back(node);
          }
          return Add(std::move(n));
        }
        if (word == "has") {
          std::string arg = FunctionArg(word);
          if (!status_.ok()) return -1;
          if (!absl::StartsWith(arg, "context.") || arg.size() == 8) {
            Error(pos, "has(...) takes context.NAME");
            return -1;
          }
          n.op = Condition::Op::kHas;
          n.str = arg.substr(8);
          return Add(std::move(n));
        }
        Error(pos,
              absl::StrCat("unknown name \"", word,
                           "\" (expected context.NAME, has(context.NAME), count(NODE), a number or a quoted string)"));
        return -1;
      }
      case Tok::kEnd:
        Error(tok_.pos, "unexpected end of condition");
        return -1;
      default:
        Error(tok_.pos, absl::StrCat("unexpected \"", tok_.text, "\""));
        return -1;
    }
  }

  absl::string_view text_;
  Condition* c_;
  size_t pos_ = 0;
  Tok tok_;
  absl::Status status_;
};

absl::StatusOr<Condition> Condition::Parse(absl::string_view text) {
  Condition c;
  c.text_ = std::string(text);
  ConditionParser p(c.text_, &c);
  absl::Status s = p.Run();
  if (!s.ok()) return s;
  return c;
}

Condition::Val Condition::Eval(int n, const google::protobuf::Map<std::string, std::string>& context,
                               absl::Span<const int64_t> counts) const {
  const Node& node = ast_[n];
  Val v;
  auto boolean = [](bool b) {
    Val r;
    r.is_num = true;
    r.num = b ? 1 : 0;
    return r;
  };
  switch (node.op) {
    case Op::kNum:
      v.is_num = true;
      v.num = node.num;
      return v;
    case Op::kStr:
      v.str = node.str;
      return v;
    case Op::kContext: {
      auto it = context.find(node.str);
      if (it != context.end()) v.str = it->second;
      return v;
    }
    case Op::kHas:
      return boolean(context.find(node.str) != context.end());
    case Op::kCount:
      v.is_num = true;
      v.num = static_cast<double>(counts[node.index]);
      return v;
    case Op::kNot:
      return boolean(!Eval(node.a, context, counts).Truthy());
    case Op::kAnd:
      return boolean(Eval(node.a, context, counts).Truthy() && Eval(node.b, context, counts).Truthy());
    case Op::kOr:
      return boolean(Eval(node.a, context, counts).Truthy() || Eval(node.b, context, counts).Truthy());
    default:
      break;
  }
  Val a = Eval(node.a, context, counts), b = Eval(node.b, context, counts);
  int cmp = 0;
  if (!a.is_num && !b.is_num) {
    cmp = a.str.compare(b.str);
  } else {
    double x = a.num, y = b.num;
    bool ok = (a.is_num || absl::SimpleAtod(a.str, &x)) && (b.is_num || absl::SimpleAtod(b.str, &y));
    if (!ok) return boolean(node.op == Op::kNe);
    cmp = x < y ? -1 : (x > y ? 1 : 0);
  }
  switch (node.op) {
    case Op::kEq:
      return boolean(cmp == 0);
    case Op::kNe:
      return boolean(cmp != 0);
    case Op::kLt:
      return boolean(cmp < 0);
    case Op::kLe:
      return boolean(cmp <= 0);
    case Op::kGt:
      return boolean(cmp > 0);
    case Op::kGe:
      return boolean(cmp >= 0);
    default:
      return boolean(false);
  }
}

bool Condition::Evaluate(const google::protobuf::Map<std::string, std::string>& context,
                         absl::Span<const int64_t> counts) const {
  return Eval(root_, context, counts).Truthy();
}

}  // namespace kosh::pipelines
