// The HTTP/JSON front end (Boost.Beast): the API mirrored with the proto3 JSON mapping, plus
// /healthz, /readyz and /metrics. Every API call is POST <path> with a JSON body (an empty body
// is an empty request); responses are JSON, errors are {"code": "...", "message": "..."} with the
// HTTP status from HttpStatusFor.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/service.h"

namespace kosh::server {

class HttpServer {
 public:
  HttpServer(Service* service, int threads, uint64_t body_limit);
  ~HttpServer();

  // Binds `address` ("host:port", port 0 picks one) and starts serving. Returns the bound port.
  absl::StatusOr<int> Start(const std::string& address);
  // Stops accepting connections, answers requests that arrive from now on with 503, waits for the
  // requests in flight to finish (until `deadline`), then stops. Idempotent.
  void Shutdown(absl::Time deadline);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kosh::server
