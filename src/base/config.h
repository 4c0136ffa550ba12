// Reading the YAML configuration file: environment substitution and typed field access with
// errors that name the offending path.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "yaml-cpp/yaml.h"

namespace kosh::base {

// Returns `text` with every ${VAR} replaced by the value of environment variable VAR and every
// ${VAR:-default} by VAR's value, or `default` when VAR is unset or empty. "$$" stands for a
// literal "$". Lines whose first non-blank character is '#' (YAML comments) are left alone. An unset ${VAR} without a default, or an unterminated "${", is INVALID_ARGUMENT
// naming the variable and the line. `lookup` returns nullopt for an unset variable; it defaults
// to getenv.
absl::StatusOr<std::string> ExpandEnv(
    absl::string_view text,
    const std::function<std::optional<std::string>(const std::string&)>& lookup = nullptr);

// Parses YAML text after ExpandEnv. Syntax errors name the line and column.
absl::StatusOr<YAML::Node> ParseYaml(absl::string_view text, absl::string_view source_name);

// Reads a file and calls ParseYaml on it.
absl::StatusOr<YAML::Node> LoadYamlFile(const std::string& path);

// Parses a definition that arrived over the API (a flow or pipeline config, YAML or JSON): a
// mapping, no ${VAR} substitution (expanding the server's environment into it would leak it).
// Errors are INVALID_ARGUMENT "config: line L, column C: ...".
absl::StatusOr<YAML::Node> ParseConfigText(absl::string_view text);

// A list of strings at node[key] appended to *out (absent or null = nothing). Errors name
// "<path>.<key>" or "<path>.<key>[i]".
absl::Status GetStringList(const YAML::Node& node, const std::string& key, const std::string& path,
                           std::vector<std::string>* out);

// Reads the whole file at `path`.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Typed access to a YAML mapping. Each getter leaves `*out` untouched when the key is absent and
// returns INVALID_ARGUMENT naming "<path>.<key>" when the value has the wrong type. Unknown keys are
// reported by CheckKeys so that a typo in the config does not silently fall back to a default.
class YamlReader {
 public:
  YamlReader(YAML::Node node, std::string path) : node_(std::move(node)), path_(std::move(path)) {}

  bool Has(const std::string& key) const { return node_.IsMap() && node_[key].IsDefined(); }
  absl::Status GetString(const std::string& key, std::string* out) const;
  absl::Status GetInt(const std::string& key, int64_t* out) const;
  absl::Status GetUint(const std::string& key, uint64_t* out) const;
  absl::Status GetDouble(const std::string& key, double* out) const;
  absl::Status GetBool(const std::string& key, bool* out) const;
  // Parses durations such as "500ms", "30s", "5m", "1h" into milliseconds.
  absl::Status GetDurationMs(const std::string& key, int64_t* out) const;
  // Parses sizes such as "64MiB", "1GiB", "512KiB" or a plain byte count.
  absl::Status GetBytes(const std::string& key, uint64_t* out) const;
  // The sub-mapping at `key` (an empty reader when absent).
  absl::StatusOr<YamlReader> Child(const std::string& key) const;
  // INVALID_ARGUMENT naming the first key of this mapping that is not in `allowed`.
  absl::Status CheckKeys(std::initializer_list<absl::string_view> allowed) const;

  const YAML::Node& node() const { return node_; }
  const std::string& path() const { return path_; }

 private:
  std::string Where(const std::string& key) const;
  YAML::Node node_;
  std::string path_;
};

// "30s" -> 30000. Accepts ms, s, m, h suffixes; a bare number is seconds.
absl::StatusOr<int64_t> ParseDurationMs(absl::string_view text);
// "64MiB" -> 67108864. Accepts B, KiB, MiB, GiB, KB, MB, GB; a bare number is bytes.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);

}  // namespace kosh::base
