#include "base/logging.h"

#include "absl/strings/str_cat.h"

namespace kosh::base {

absl::Status InitLogging(absl::string_view level) {
  spdlog::level::level_enum lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(
        absl::StrCat("log.level: unknown level \"", level, "\" (debug, info, warn, error, off)"));
  }
  spdlog::set_level(lvl);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  return absl::OkStatus();
}

}  // namespace kosh::base
