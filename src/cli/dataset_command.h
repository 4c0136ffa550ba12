// `kosh dataset ...`: build (offline, no server), load, list, rollback, delete, get.
#pragma once

#include <string>
#include <vector>

namespace kosh::cli {

// Runs `kosh dataset <args>` and returns the process exit code (0 ok, 2 bad usage or input, 1 other
// failures). Usage text: DatasetUsage().
int DatasetMain(const std::vector<std::string>& args);
const char* DatasetUsage();

}  // namespace kosh::cli
