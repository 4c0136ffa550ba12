// The datasets family: bulk-loaded, versioned, read-only key -> value datasets (src/datasets).
// No keyspace in the shared engine: every dataset version is its own immutable store under
// `datasets.root`. Methods are served under /v1/datasets/ and as the kosh.v1.Datasets gRPC
// service. Configured by the `datasets:` section of the server's YAML file (docs/operations.md).
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::server {

std::unique_ptr<Family> NewDatasetFamily();

}  // namespace kosh::server
