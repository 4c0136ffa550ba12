// Command-line flag parsing shared by the kosh subcommands.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kosh::cli {

// Splits the flag at args[*i], "--name=value" or "--name value" (then *i moves past the value).
// INVALID_ARGUMENT "<flag>: needs a value" when the value is missing.
inline absl::Status ReadFlagValue(const std::vector<std::string>& args, size_t* i, std::string* name,
                                  std::string* value) {
  const std::string& a = args[*i];
  size_t eq = a.find('=');
  if (eq != std::string::npos) {
    *name = a.substr(0, eq);
    *value = a.substr(eq + 1);
  } else if (*i + 1 < args.size()) {
    *name = a;
    *value = args[++*i];
  } else {
    return absl::InvalidArgumentError(absl::StrCat(a, ": needs a value"));
  }
  return absl::OkStatus();
}

}  // namespace kosh::cli
