// The pipelines family: pipeline configs (keyspace "pipelines", or the "pipelines" namespace of
// the shared registry store), their execution, and the kosh.v1.Pipelines gRPC service
// (PutPipeline, GetPipeline, ListPipelines, RunPipeline) with its HTTP/JSON mirror under
// /v1/pipelines/. Starts after the flows family: its nodes read datasets, the interaction store
// and flows through FamilyContext::shared.
#pragma once

#include <memory>

#include "server/service.h"

namespace kosh::server {

std::unique_ptr<Family> NewPipelineFamily();

}  // namespace kosh::server
