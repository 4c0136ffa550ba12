// The gRPC front end: kosh.v1.FeatureStore and kosh.v1.Registry on the callback API. Handlers run
// on gRPC's callback threads and call Service::Handle inline (no hop to another pool).
#pragma once

#include <memory>

#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/service_type.h"
#include "server/service.h"

namespace kosh::server {

// Registers both services on `builder`. The returned object must outlive the built server.
std::unique_ptr<grpc::Service> NewFeatureStoreGrpc(Service* service);
std::unique_ptr<grpc::Service> NewRegistryGrpc(Service* service);

// Converts between absl and gRPC statuses (same code numbering).
grpc::Status ToGrpcStatus(const absl::Status& s);

}  // namespace kosh::server
