// The embedded ConfigStore: one keyspace of the server's own Engine.
#include "storage/config_store.h"

namespace kosh::storage {
namespace {

class EngineConfigStore final : public ConfigStore {
 public:
  EngineConfigStore(Engine* engine, Keyspace ks) : engine_(engine), ks_(ks) {}

  absl::Status Scan(absl::string_view prefix,
                    const std::function<bool(absl::string_view key, absl::string_view value)>& fn) override {
    return engine_->Scan(ks_, prefix, fn);
  }

  absl::Status Write(const std::vector<std::pair<std::string, std::string>>& puts) override {
    if (puts.empty()) return absl::OkStatus();
    WriteBatch batch;
    for (const auto& [key, value] : puts) batch.Put(ks_, key, value);
    return engine_->Write(batch);
  }

  // One process owns the engine: nobody else can change the keyspace.
  void Watch(std::function<void()>) override {}

 private:
  Engine* engine_;
  Keyspace ks_;
};

}  // namespace

std::unique_ptr<ConfigStore> NewEngineConfigStore(Engine* engine, Keyspace ks) {
  return std::make_unique<EngineConfigStore>(engine, ks);
}

}  // namespace kosh::storage
