// A running Kosh server: the Service with its gRPC and HTTP front ends.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/service_type.h"
#include "server/http_server.h"
#include "server/options.h"
#include "server/service.h"

namespace kosh::server {

class Server {
 public:
  // Opens storage, applies schema files, starts listening on both ports and writes the port file.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // Graceful stop: readiness goes false, no new calls are accepted, calls in flight get until the
  // grace period ends, then storage is flushed and closed. Idempotent.
  void Shutdown();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  Service* service() { return service_.get(); }

 private:
  Server() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<HttpServer> http_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  bool stopped_ = false;
};

}  // namespace kosh::server
