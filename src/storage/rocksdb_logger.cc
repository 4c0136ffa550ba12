#include "storage/rocksdb_logger.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>

#include "spdlog/spdlog.h"

namespace kosh::storage {
namespace {

class ProcessLogger final : public rocksdb::Logger {
 public:
  ProcessLogger(std::string name, rocksdb::InfoLogLevel level) : rocksdb::Logger(level), name_(std::move(name)) {}

  using rocksdb::Logger::Logv;
  // RocksDB calls the leveled form only for messages at or above GetInfoLogLevel().
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buf[1024];
    int len = std::vsnprintf(buf, sizeof(buf), format, ap);
    if (len < 0) return;
    size_t n = std::min(static_cast<size_t>(len), sizeof(buf) - 1);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) --n;  // RocksDB ends some with newlines
    buf[n] = '\0';
    switch (level) {
      case rocksdb::InfoLogLevel::DEBUG_LEVEL:
        spdlog::debug("{}: {}", name_, buf);
        break;
      case rocksdb::InfoLogLevel::INFO_LEVEL:
      case rocksdb::InfoLogLevel::HEADER_LEVEL:
        spdlog::info("{}: {}", name_, buf);
        break;
      case rocksdb::InfoLogLevel::WARN_LEVEL:
        spdlog::warn("{}: {}", name_, buf);
        break;
      default:
        spdlog::error("{}: {}", name_, buf);
        break;
    }
  }
  // Unleveled messages (rare in RocksDB itself) are logged as info.
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }

 private:
  const std::string name_;
};

}  // namespace

std::shared_ptr<rocksdb::Logger> NewProcessLogger(std::string name, rocksdb::InfoLogLevel level) {
  return std::make_shared<ProcessLogger>(std::move(name), level);
}

}  // namespace kosh::storage
