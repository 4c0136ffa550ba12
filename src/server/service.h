// The protocol-independent service: a table of API methods, each with its authorisation scope,
// HTTP path, message types and handler, plus per-method metrics.
//
// Subsystems plug in as Families (feature_family.cc, and later datasets, interactions, flows): a
// family names the storage keyspaces it needs, opens its state on the shared engine, registers its
// methods, and supplies its gRPC services. The gRPC and HTTP front ends decode a request, call
// Service::Call, and encode the response or status, so both protocols share one code path and one
// set of errors.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/metrics.h"
#include "base/thread_group.h"
#include "google/protobuf/message.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/service_type.h"
#include "server/options.h"
#include "storage/config_store.h"
#include "storage/engine.h"

namespace kosh::features {
class Registry;
class FeatureStore;
}  // namespace kosh::features
namespace kosh::interactions {
class InteractionStore;
}  // namespace kosh::interactions
namespace kosh::datasets {
class DatasetManager;
}  // namespace kosh::datasets
namespace kosh::flows {
class FlowRegistry;
class Executor;
}  // namespace kosh::flows

namespace kosh::server {

enum class Protocol : int { kGrpc, kHttp, kCount };

using Handler = std::function<absl::Status(const google::protobuf::Message& req, google::protobuf::Message* resp)>;

struct MethodDef {
  std::string name;       // e.g. "Retrieve"; the metrics label
  std::string http_path;  // e.g. "/v1/features/retrieve"
  Scope scope;
  const google::protobuf::Message* request_prototype;   // default instance of the request type
  const google::protobuf::Message* response_prototype;  // default instance of the response type
  Handler handler;
  // Takes seconds or more (a dataset load): both front ends run it on a thread of its own instead
  // of one of their serving threads (gRPC's callback threads, the HTTP I/O threads), so it does not
  // hold up other requests. Over gRPC, CallCancelled() tells it when the client cancelled.
  bool long_running = false;
};

class Service;

// What families share with the families started after them: flows read through the feature store,
// the interaction store and datasets; pipelines run flows. Each family sets its own fields in
// Start (families start in the order server.cc lists them); a field a family needs but finds null
// means it was listed before its dependency. The pointees live until the Service is destroyed
// (families are destroyed in reverse order of start).
struct Subsystems {
  features::Registry* feature_registry = nullptr;
  features::FeatureStore* feature_store = nullptr;
  interactions::InteractionStore* interactions = nullptr;
  datasets::DatasetManager* datasets = nullptr;
  flows::FlowRegistry* flow_registry = nullptr;
  flows::Executor* flow_executor = nullptr;
};

// What a family gets when it starts.
struct FamilyContext {
  const ServerOptions* options;
  storage::Engine* engine;
  std::vector<storage::Keyspace> keyspaces;  // the family's own, in the order it declared them
  base::MetricsRegistry* metrics;
  Service* service;
  Subsystems* shared;
  std::vector<std::string> keyspace_names;  // parallel to `keyspaces`

  // The definitions store of namespace `ns` ("registry", "flows", "pipelines"), as configured by
  // options->registry_store. Embedded (the default): over this family's own keyspace named `ns`,
  // which the family must declare in Keyspaces() (FAILED_PRECONDITION otherwise). ZooKeeper: a new
  // session to the ensemble on znode <root>/<ns>; UNAVAILABLE naming the hosts when it cannot
  // connect within the connect timeout. Adds the store's kosh_registry_zookeeper_connected gauge:
  // the family must keep the store until the Service is destroyed.
  absl::StatusOr<std::unique_ptr<storage::ConfigStore>> OpenConfigStore(const std::string& ns) const;
};

class Family {
 public:
  virtual ~Family() = default;
  // The keyspaces this family stores data in (names unique across families).
  virtual std::vector<storage::KeyspaceOptions> Keyspaces() const = 0;
  // Opens the family's state and registers its methods with ctx.service.
  virtual absl::Status Start(const FamilyContext& ctx) = 0;
  // The gRPC services to register; owned by the family.
  virtual std::vector<grpc::Service*> GrpcServices() = 0;
};

class Service {
 public:
  // Opens the storage engine with every family's keyspaces and starts each family.
  static absl::StatusOr<std::unique_ptr<Service>> Open(const ServerOptions& options,
                                                       std::vector<std::unique_ptr<Family>> families);
  ~Service();

  // Adds a method; returns its id for Call. Only during Family::Start.
  int Register(MethodDef def);
  const MethodDef& method(int id) const { return methods_[id]->def; }
  // The id of the method served at `path`, or -1.
  int FindHttpPath(absl::string_view path) const;

  // Authorises, runs and records one call. `req` and `resp` are of the method's types.
  absl::Status Call(Protocol p, int id, absl::string_view authorization, const google::protobuf::Message& req,
                    google::protobuf::Message* resp);

  // Records a call that was rejected before it reached Call (e.g. a malformed body).
  void Record(Protocol p, int id, absl::StatusCode code, double seconds);

  // Checks `authorization` ("Bearer <token>", may be empty) for `scope`. OK when auth is off.
  absl::Status Authorize(Scope scope, absl::string_view method_name, absl::string_view authorization) const;

  // Readiness: true once open, false from BeginDrain on.
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  void BeginDrain() { ready_.store(false, std::memory_order_release); }
  // Runs `fn` on a thread of its own, waited for before any family is destroyed; false if no
  // thread could be started. For long-running gRPC calls (RunUnary).
  bool SpawnLongRunning(std::function<void()> fn) { return long_running_.Spawn(std::move(fn)); }
  // Flushes the storage engine so that a restart need not replay its log.
  absl::Status Flush() { return engine_->Flush(); }

  std::vector<grpc::Service*> GrpcServices();
  base::MetricsRegistry* metrics() { return &metrics_; }
  const ServerOptions& options() const { return options_; }

 private:
  explicit Service(ServerOptions options) : options_(std::move(options)) {}

  struct Method {
    MethodDef def;
    base::Histogram* latency[static_cast<int>(Protocol::kCount)];
    std::array<base::Counter*, 17> by_code[static_cast<int>(Protocol::kCount)];
  };

  ServerOptions options_;
  base::MetricsRegistry metrics_;
  std::unique_ptr<storage::Engine> engine_;
  Subsystems shared_;
  std::vector<std::unique_ptr<Family>> families_;  // destroyed before engine_
  std::vector<std::unique_ptr<Method>> methods_;
  absl::flat_hash_map<std::string, int> http_paths_;
  std::atomic<bool> ready_{false};
  base::ThreadGroup long_running_;
};

// Maps a status to the HTTP status code the JSON API returns for it.
int HttpStatusFor(absl::StatusCode code);
// Converts an absl status to a gRPC status (same code numbering).
grpc::Status ToGrpcStatus(const absl::Status& s);
// The "authorization" metadata of a gRPC call, or empty.
absl::string_view GrpcAuthorization(grpc::CallbackServerContext* ctx);

// Called within a long-running method's handler: a test of whether the gRPC client cancelled this
// call, usable from any thread while the call runs. Always false for other calls (HTTP gives no
// such signal).
std::function<bool()> CallCancelled();

// Runs method `id` for a unary gRPC callback handler and finishes the call; a long-running method
// on a thread of its own (Service::SpawnLongRunning), UNAVAILABLE if none can be started.
grpc::ServerUnaryReactor* RunUnary(Service* service, int id, grpc::CallbackServerContext* ctx,
                                   const google::protobuf::Message* req, google::protobuf::Message* resp);

}  // namespace kosh::server
