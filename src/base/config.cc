#include "base/config.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kosh::base {

absl::StatusOr<std::string> ExpandEnv(
    absl::string_view text,
    const std::function<std::optional<std::string>(const std::string&)>& lookup) {
  auto get = [&](const std::string& name) -> std::optional<std::string> {
    if (lookup) return lookup(name);
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  std::string out;
  out.reserve(text.size());
  int line = 1;
  bool comment_line = false;  // YAML comment lines are copied verbatim
  bool line_start = true;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') {
      ++line;
      comment_line = false;
      line_start = true;
    } else if (line_start && c != ' ' && c != '\t') {
      comment_line = c == '#';
      line_start = false;
    }
    if (c != '$' || comment_line) {
      out.push_back(c);
      continue;
    }
    if (i + 1 < text.size() && text[i + 1] == '$') {
      out.push_back('$');
      ++i;
      continue;
    }
    if (i + 1 >= text.size() || text[i + 1] != '{') {
      out.push_back(c);
      continue;
    }
    size_t close = text.find('}', i + 2);
    size_t newline = text.find('\n', i + 2);
    if (close == absl::string_view::npos || (newline != absl::string_view::npos && newline < close)) {
      return absl::InvalidArgumentError(
          absl::StrCat("line ", line, ": unterminated \"${\" in configuration"));
    }
    absl::string_view inner = text.substr(i + 2, close - i - 2);
    std::string name;
    std::optional<std::string> fallback;
    size_t sep = inner.find(":-");
    if (sep == absl::string_view::npos) {
      name = std::string(inner);
    } else {
      name = std::string(inner.substr(0, sep));
      fallback = std::string(inner.substr(sep + 2));
    }
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", line, ": empty variable name in \"${}\""));
    }
    for (char n : name) {
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(n)) || n == '_')) {
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line, ": invalid variable name \"", name, "\""));
      }
    }
    std::optional<std::string> value = get(name);
    if (value.has_value() && !(value->empty() && fallback.has_value())) {
      out += *value;
    } else if (fallback.has_value()) {
      out += *fallback;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "line ", line, ": environment variable ", name,
          " is not set and has no default (write ${", name, ":-value})"));
    }
    i = close;
  }
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

absl::StatusOr<YAML::Node> ParseYaml(absl::string_view text, absl::string_view source_name) {
  auto expanded = ExpandEnv(text);
  if (!expanded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", expanded.status().message()));
  }
  try {
    return YAML::Load(*expanded);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": line ", e.mark.line + 1,
                                                   ", column ", e.mark.column + 1, ": ", e.msg));
  }
}

absl::StatusOr<YAML::Node> LoadYamlFile(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  return ParseYaml(*text, path);
}

absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  struct Unit {
    absl::string_view suffix;
    int64_t ms;
  };
  static constexpr Unit kUnits[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
  for (const Unit& u : kUnits) {
    if (t.size() > u.suffix.size() && absl::EndsWith(t, u.suffix)) {
      absl::string_view num = t.substr(0, t.size() - u.suffix.size());
      double v;
      if (absl::SimpleAtod(num, &v) && v >= 0) return static_cast<int64_t>(v * u.ms);
      break;
    }
  }
  double secs;
  if (absl::SimpleAtod(t, &secs) && secs >= 0) return static_cast<int64_t>(secs * 1000);
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not a duration (examples: 500ms, 30s, 5m, 1h)"));
}

absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  struct Unit {
    absl::string_view suffix;
    uint64_t mult;
  };
  static constexpr Unit kUnits[] = {{"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
                                    {"KB", 1000},        {"MB", 1000000},    {"GB", 1000000000},
                                    {"B", 1}};
  for (const Unit& u : kUnits) {
    if (t.size() > u.suffix.size() && absl::EndsWith(t, u.suffix)) {
      double v;
      if (absl::SimpleAtod(absl::StripAsciiWhitespace(t.substr(0, t.size() - u.suffix.size())), &v) &&
          v >= 0) {
        return static_cast<uint64_t>(v * static_cast<double>(u.mult));
      }
      break;
    }
  }
  uint64_t v;
  if (absl::SimpleAtoi(t, &v)) return v;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", text, "\" is not a size (examples: 4096, 64MiB, 1GiB)"));
}

std::string YamlReader::Where(const std::string& key) const {
  return path_.empty() ? key : absl::StrCat(path_, ".", key);
}

namespace {
template <typename T>
absl::Status GetScalar(const YAML::Node& node, const std::string& where, const char* what, T* out) {
  if (!node.IsScalar()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": expected ", what));
  }
  try {
    *out = node.as<T>();
  } catch (const YAML::Exception&) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected ", what, ", got \"", node.Scalar(), "\""));
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status YamlReader::GetString(const std::string& key, std::string* out) const {
  if (!Has(key)) return absl::OkStatus();
  return GetScalar(node_[key], Where(key), "a string", out);
}
absl::Status YamlReader::GetInt(const std::string& key, int64_t* out) const {
  if (!Has(key)) return absl::OkStatus();
  return GetScalar(node_[key], Where(key), "an integer", out);
}
absl::Status YamlReader::GetUint(const std::string& key, uint64_t* out) const {
  if (!Has(key)) return absl::OkStatus();
  int64_t v = 0;
  if (auto s = GetScalar(node_[key], Where(key), "a non-negative integer", &v); !s.ok()) return s;
  if (v < 0) {
    return absl::InvalidArgumentError(absl::StrCat(Where(key), ": expected a non-negative integer"));
  }
  *out = static_cast<uint64_t>(v);
  return absl::OkStatus();
}
absl::Status YamlReader::GetDouble(const std::string& key, double* out) const {
  if (!Has(key)) return absl::OkStatus();
  return GetScalar(node_[key], Where(key), "a number", out);
}
absl::Status YamlReader::GetBool(const std::string& key, bool* out) const {
  if (!Has(key)) return absl::OkStatus();
  return GetScalar(node_[key], Where(key), "true or false", out);
}
absl::Status YamlReader::GetDurationMs(const std::string& key, int64_t* out) const {
  if (!Has(key)) return absl::OkStatus();
  std::string s;
  if (auto st = GetScalar(node_[key], Where(key), "a duration", &s); !st.ok()) return st;
  auto v = ParseDurationMs(s);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat(Where(key), ": ", v.status().message()));
  *out = *v;
  return absl::OkStatus();
}
absl::Status YamlReader::GetBytes(const std::string& key, uint64_t* out) const {
  if (!Has(key)) return absl::OkStatus();
  std::string s;
  if (auto st = GetScalar(node_[key], Where(key), "a size", &s); !st.ok()) return st;
  auto v = ParseBytes(s);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat(Where(key), ": ", v.status().message()));
  *out = *v;
  return absl::OkStatus();
}
absl::StatusOr<YamlReader> YamlReader::Child(const std::string& key) const {
  if (!Has(key) || node_[key].IsNull()) return YamlReader(YAML::Node(YAML::NodeType::Map), Where(key));
  if (!node_[key].IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(Where(key), ": expected a mapping"));
  }
  return YamlReader(node_[key], Where(key));
}
absl::Status YamlReader::CheckKeys(std::initializer_list<absl::string_view> allowed) const {
  if (!node_.IsDefined() || node_.IsNull()) return absl::OkStatus();
  if (!node_.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(path_.empty() ? "config" : path_, ": expected a mapping"));
  }
  for (const auto& kv : node_) {
    std::string k = kv.first.as<std::string>();
    bool ok = false;
    for (absl::string_view a : allowed) ok = ok || a == k;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          Where(k), ": unknown option (known: ", absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<YAML::Node> ParseConfigText(absl::string_view text) {
  try {
    YAML::Node n = YAML::Load(std::string(text));
    if (!n.IsMap()) return absl::InvalidArgumentError("config: expected a mapping (YAML or JSON object)");
    return n;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  }
}

absl::Status GetStringList(const YAML::Node& node, const std::string& key, const std::string& path,
                           std::vector<std::string>* out) {
  YAML::Node n = node[key];
  if (!n.IsDefined() || n.IsNull()) return absl::OkStatus();
  if (!n.IsSequence()) return absl::InvalidArgumentError(absl::StrCat(path, ".", key, ": expected a list"));
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".", key, "[", i, "]: expected a string"));
    }
    out->push_back(n[i].Scalar());
  }
  return absl::OkStatus();
}

}  // namespace kosh::base
