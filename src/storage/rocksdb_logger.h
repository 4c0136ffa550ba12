#pragma once

#include <memory>
#include <string>

#include "rocksdb/env.h"

namespace kosh::storage {

// A RocksDB info log that writes to the process log (spdlog) instead of a LOG file in the
// database's directory. Besides keeping the directory to the files that matter, this keeps a full
// disk from crashing the server: Debian's RocksDB 7.8 is built with assertions, and once an append
// to a LOG file has failed with ENOSPC, the next message aborts the process inside
// WritableFileWriter. Messages below `level` are dropped; each message is prefixed with `name`.
std::shared_ptr<rocksdb::Logger> NewProcessLogger(std::string name, rocksdb::InfoLogLevel level);

}  // namespace kosh::storage
