// The protocol-independent service: every API method once, with authorisation and metrics.
// The gRPC and HTTP front ends decode requests, call Handle, and encode the response or status,
// so both protocols share one code path and one set of errors.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "features/feature_store.h"
#include "features/registry.h"
#include "google/protobuf/message.h"
#include "server/options.h"
#include "storage/engine.h"

namespace kosh::server {

enum class Method : int {
  kRetrieve,
  kRetrieveMatrix,
  kPersist,
  kCreateEntity,
  kGetEntity,
  kListEntities,
  kCreateFeatureGroup,
  kGetFeatureGroup,
  kListFeatureGroups,
  kAddFeatureGroupVersion,
  kApplySchema,
  kCount,
};

enum class Protocol : int { kGrpc, kHttp, kCount };

struct MethodInfo {
  const char* name;       // e.g. "Retrieve"
  const char* http_path;  // e.g. "/v1/features/retrieve"
  Scope scope;
};
const MethodInfo& Info(Method m);
// Fresh request and response messages of a method's types.
std::unique_ptr<google::protobuf::Message> NewRequest(Method m);
std::unique_ptr<google::protobuf::Message> NewResponse(Method m);

class Service {
 public:
  // Opens the storage engine, loads the registry and applies the configured schema files.
  static absl::StatusOr<std::unique_ptr<Service>> Open(const ServerOptions& options);
  ~Service();

  // Checks `authorization` ("Bearer <token>", may be empty) for method `m`. OK when auth is off.
  absl::Status Authorize(Method m, absl::string_view authorization) const;

  // Runs method `m`. `req` and `resp` must be of the method's types (see NewRequest/NewResponse).
  absl::Status Handle(Method m, const google::protobuf::Message& req, google::protobuf::Message* resp);

  // Records one finished call for /metrics.
  void Record(Protocol p, Method m, absl::StatusCode code, double seconds);

  // Readiness: true once open, false from BeginDrain on.
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  void BeginDrain() { ready_.store(false, std::memory_order_release); }
  // Flushes the storage engine so that a restart need not replay its log.
  absl::Status Flush() { return engine_->Flush(); }

  base::MetricsRegistry* metrics() { return &metrics_; }
  const ServerOptions& options() const { return options_; }
  features::FeatureStore* store() { return store_.get(); }

 private:
  explicit Service(ServerOptions options) : options_(std::move(options)) {}

  ServerOptions options_;
  base::MetricsRegistry metrics_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<features::Registry> registry_;
  std::unique_ptr<features::FeatureStore> store_;
  std::atomic<bool> ready_{false};

  struct MethodMetrics {
    base::Histogram* latency = nullptr;
    std::array<base::Counter*, 17> by_code{};
  };
  MethodMetrics method_metrics_[static_cast<int>(Protocol::kCount)][static_cast<int>(Method::kCount)];
};

// Maps a status to the HTTP status code the JSON API returns for it.
int HttpStatusFor(absl::StatusCode code);

}  // namespace kosh::server
