// Process-wide logging set-up: spdlog, one line per event, to stderr.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "spdlog/spdlog.h"

namespace kosh::base {

// Sets the global level ("debug", "info", "warn", "error") and the line format.
absl::Status InitLogging(absl::string_view level);

}  // namespace kosh::base
