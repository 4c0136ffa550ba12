#include <chrono>
#include <map>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "storage/engine.h"

namespace kosh::storage {
namespace {

class MemoryEngine : public Engine {
 public:
  explicit MemoryEngine(std::vector<KeyspaceOptions> keyspaces)
      : keyspaces_(std::move(keyspaces)), data_(keyspaces_.size()) {}

  absl::Status Write(const WriteBatch& batch) override {
    absl::MutexLock lock(&mu_);
    for (const auto& op : batch.ops()) {
      if (op.ks < 0 || op.ks >= static_cast<int>(data_.size())) {
        return absl::InvalidArgumentError("write to an unknown keyspace");
      }
      if (op.kind == WriteBatch::Op::kMerge && !keyspaces_[op.ks].merge) {
        return absl::InvalidArgumentError("merge on a keyspace without a merge function");
      }
    }
    // Apply to a copy of each touched keyspace so that a failed merge leaves nothing changed.
    std::map<Keyspace, std::map<std::string, std::string, std::less<>>> staged;
    for (const auto& op : batch.ops()) {
      auto it = staged.find(op.ks);
      if (it == staged.end()) it = staged.emplace(op.ks, data_[op.ks]).first;
      auto& m = it->second;
      switch (op.kind) {
        case WriteBatch::Op::kPut: m[op.key] = op.value; break;
        case WriteBatch::Op::kDelete: m.erase(op.key); break;
        case WriteBatch::Op::kMerge: {
          auto cur = m.find(op.key);
          absl::string_view existing;
          if (cur != m.end()) existing = cur->second;
          absl::string_view operand = op.value;
          std::string out;
          if (!keyspaces_[op.ks].merge(op.key, cur != m.end() ? &existing : nullptr,
                                       absl::MakeConstSpan(&operand, 1), &out)) {
            return absl::DataLossError("merge failed");
          }
          m[op.key] = std::move(out);
          break;
        }
      }
    }
    for (auto& [ks, m] : staged) data_[ks] = std::move(m);
    return absl::OkStatus();
  }

  absl::Status MultiGet(Keyspace ks, absl::Span<const absl::string_view> keys,
                        std::vector<std::optional<std::string>>* values) override {
    absl::ReaderMutexLock lock(&mu_);
    values->assign(keys.size(), std::nullopt);
    for (size_t i = 0; i < keys.size(); ++i) {
      auto it = data_[ks].find(std::string(keys[i]));
      if (it != data_[ks].end()) (*values)[i] = it->second;
    }
    return absl::OkStatus();
  }

  absl::Status Scan(Keyspace ks, absl::string_view prefix,
                    const std::function<bool(absl::string_view, absl::string_view)>& fn) override {
    std::vector<std::pair<std::string, std::string>> rows;
    {
      absl::ReaderMutexLock lock(&mu_);
      for (auto it = data_[ks].lower_bound(std::string(prefix));
           it != data_[ks].end() && absl::StartsWith(it->first, prefix); ++it) {
        rows.push_back(*it);
      }
    }
    for (const auto& [k, v] : rows) {
      if (!fn(k, v)) break;
    }
    return absl::OkStatus();
  }

  absl::Status CompactAll(Keyspace ks) override {
    if (!keyspaces_[ks].expired) return absl::OkStatus();
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    absl::MutexLock lock(&mu_);
    for (auto it = data_[ks].begin(); it != data_[ks].end();) {
      it = keyspaces_[ks].expired(it->second, now) ? data_[ks].erase(it) : std::next(it);
    }
    return absl::OkStatus();
  }

  std::vector<std::pair<std::string, double>> Stats() override {
    absl::ReaderMutexLock lock(&mu_);
    std::vector<std::pair<std::string, double>> out;
    for (size_t i = 0; i < data_.size(); ++i) {
      out.push_back({"estimate_num_keys{keyspace=\"" + keyspaces_[i].name + "\"}",
                     static_cast<double>(data_[i].size())});
    }
    return out;
  }

  absl::Status Flush() override { return absl::OkStatus(); }

 private:
  std::vector<KeyspaceOptions> keyspaces_;
  absl::Mutex mu_;
  std::vector<std::map<std::string, std::string, std::less<>>> data_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<Engine> NewMemoryEngine(std::vector<KeyspaceOptions> keyspaces) {
  return std::make_unique<MemoryEngine>(std::move(keyspaces));
}

}  // namespace kosh::storage
