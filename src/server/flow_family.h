// The flows family: flow configs (keyspace "flows"), their execution, and the kosh.v1.Flows gRPC
// service (PutFlow, GetFlow, ListFlows, Infer) with its HTTP/JSON mirror under /v1/flows/.
// Starts after the feature, interaction and dataset families, whose state it uses through
// FamilyContext::shared; sets shared->flow_registry and flow_executor.
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::server {

std::unique_ptr<Family> NewFlowFamily();

}  // namespace kosh::server
