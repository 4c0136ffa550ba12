// The interaction-store family: event types and per-user event histories, their keyspaces
// ("interaction_types", "interactions"), their methods (HTTP under /v1/interactions/) and the
// kosh.v1.Interactions gRPC service, including the client-streaming Ingest. Configured by the
// `interactions:` section of the server's YAML file (docs/operations.md).
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::server {

std::unique_ptr<Family> NewInteractionFamily();

}  // namespace kosh::server
