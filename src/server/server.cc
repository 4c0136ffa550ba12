#include "server/server.h"

#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status.h"
#include "server/dataset_family.h"
#include "server/feature_family.h"
#include "server/flow_family.h"
#include "server/interaction_family.h"
#include "server/pipeline_family.h"
#include "spdlog/spdlog.h"

namespace kosh::server {

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  // Debian's Abseil is built without NDEBUG, so absl::Mutex (ours and gRPC's) tracks lock order
  // for deadlock detection on every Lock: a process-wide graph behind a global spinlock, a debug
  // aid that the read path (100 row-cache locks per request) pays for. Release builds of Abseil
  // have it off; so does the server.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::unique_ptr<Server> s(new Server());
  std::vector<std::unique_ptr<Family>> families;
  families.push_back(NewFeatureFamily());
  families.push_back(NewInteractionFamily());
  families.push_back(NewDatasetFamily());
  families.push_back(NewFlowFamily());
  families.push_back(NewPipelineFamily());
  ASSIGN_OR_RETURN(s->service_, Service::Open(options, std::move(families)));

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.grpc_address, grpc::InsecureServerCredentials(), &s->grpc_port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  for (grpc::Service* svc : s->service_->GrpcServices()) builder.RegisterService(svc);
  s->grpc_ = builder.BuildAndStart();
  if (s->grpc_ == nullptr || s->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", options.grpc_address));
  }
  s->http_ = std::make_unique<HttpServer>(s->service_.get(), options.http_threads, options.max_message_bytes);
  ASSIGN_OR_RETURN(s->http_port_, s->http_->Start(options.http_address));

  if (!options.port_file.empty()) {
    std::string tmp = options.port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << "{\"grpc\": " << s->grpc_port_ << ", \"http\": " << s->http_port_ << "}\n";
      if (!out) return absl::InternalError(absl::StrCat("cannot write port file ", options.port_file));
    }
    if (std::rename(tmp.c_str(), options.port_file.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot write port file ", options.port_file));
    }
  }
  spdlog::info("kosh serving: gRPC on port {}, HTTP on port {}, data in {}", s->grpc_port_, s->http_port_,
               options.storage.path);
  return s;
}

Server::~Server() { Shutdown(); }

void Server::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  // Start may have failed part way (bad schema file, locked data directory, port in use); the
  // destructor then gets here with only some parts built.
  if (service_ == nullptr) return;
  service_->BeginDrain();
  absl::Time deadline = absl::Now() + absl::Milliseconds(service_->options().grace_period_ms);
  spdlog::info("draining: readiness is false; in-flight calls have until the grace period ends ({} ms)",
               service_->options().grace_period_ms);
  // Stop both front ends in parallel: each waits for its own in-flight calls.
  std::thread http_stop([&] {
    if (http_ != nullptr) http_->Shutdown(deadline);
  });
  if (grpc_ != nullptr) grpc_->Shutdown(absl::ToChronoTime(deadline));
  http_stop.join();
  if (grpc_ != nullptr) grpc_->Wait();
  absl::Status flushed = service_->Flush();
  if (!flushed.ok()) spdlog::error("flush on shutdown: {}", flushed.ToString());
  spdlog::info("stopped");
}

}  // namespace kosh::server
