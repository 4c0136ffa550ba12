// The feature-store family: the registry and the online feature store, their keyspaces
// ("registry", "features"), their methods and the kosh.v1.FeatureStore and kosh.v1.Registry gRPC
// services.
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::server {

// Sets ctx.shared->feature_registry and feature_store when it starts.
std::unique_ptr<Family> NewFeatureFamily();

}  // namespace kosh::server
