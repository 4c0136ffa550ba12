// The flows family: flow configs (keyspace "flows"), their execution, and the kosh.v1.Flows gRPC
// service (PutFlow, GetFlow, ListFlows, Infer) with its HTTP/JSON mirror under /v1/flows/.
// Starts after the feature family, whose registry and store it uses through `handles`.
#pragma once

#include <memory>

#include "server/feature_family.h"
#include "server/service.h"

namespace kosh::server {

std::unique_ptr<Family> NewFlowFamily(std::shared_ptr<FeatureHandles> handles);

}  // namespace kosh::server
