// The feature-store family: the registry and the online feature store, their keyspaces
// ("registry", "features"), their methods and the kosh.v1.FeatureStore and kosh.v1.Registry gRPC
// services.
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::features {
class Registry;
class FeatureStore;
}  // namespace kosh::features

namespace kosh::server {

// What the feature family shares with families started after it (flows read features through the
// same store and validate against the same registry). Filled in by its Start; the pointees live as
// long as the family.
struct FeatureHandles {
  features::Registry* registry = nullptr;
  features::FeatureStore* store = nullptr;
};

// `handles`, when given, must outlive the family's Start.
std::unique_ptr<Family> NewFeatureFamily(FeatureHandles* handles = nullptr);

}  // namespace kosh::server
