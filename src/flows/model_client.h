// A client for external model servers speaking the KServe v2 / Triton inference protocol
// ("open inference protocol"), used by flows whose model component is `kind: kserve`.
//
// One ModelClient serves one configured model: it scores a dense float matrix (one row per
// target, one column per feature) and returns one float per row. The rows are cut into batches of
// `batch_size`; all batches of a call go out concurrently to ONE endpoint, picked per call by the
// configured percentage split (so a 90/10 canary gets ~10% of calls, each call whole on one side).
// Two wire forms are supported per endpoint:
//   grpc: inference.GRPCInferenceService/ModelInfer (proto/inference/grpc_service.proto), input as
//         raw_input_contents (FP32, little-endian); output read from raw_output_contents or from
//         contents.fp32_contents.
//   http: POST /v2/models/{name}[/versions/{version}]/infer with the JSON form
//         {"inputs":[{"name","shape":[rows,cols],"datatype":"FP32","data":[...]}],
//          "outputs":[{"name"}]}; output read from outputs[name].data (nested arrays are flattened).
// The output tensor must be FP32 with one element per row (shape [rows] or [rows, 1]).
//
// The YAML form (in a flow's model component; `kind` may be present and must be "kserve"):
//
//   model:
//     kind: kserve
//     name: ctr                      # required; [A-Za-z0-9_.-]+
//     version: "1"                   # optional; empty = the server's choice
//     input: INPUT0                  # input tensor name (default INPUT0)
//     output: OUTPUT0                # output tensor name (default OUTPUT0)
//     batch_size: 64                 # rows per infer request (default 64, 1..65536)
//     timeout: 20ms                  # per Score call, on top of the caller's deadline (default 100ms)
//     max_idle_connections: 16       # HTTP keep-alive connections kept per endpoint (default 16)
//     endpoints:                     # required, 1..16
//       - {address: 127.0.0.1:8001, protocol: grpc, weight: 90}   # protocol: grpc (default) | http
//       - {address: canary:8000, protocol: http, weight: 10}
//
// Weights are percentages: they must sum to 100, or all be 0 (or absent) for an equal split. An
// endpoint with weight 0 in a split that sums to 100 receives nothing (a parked canary).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "base/metrics.h"
#include "yaml-cpp/yaml.h"

namespace kosh::flows {

struct ModelEndpoint {
  enum class Protocol : uint8_t { kGrpc, kHttp };
  std::string address;  // "host:port" ("[v6addr]:port" for IPv6 literals)
  Protocol protocol = Protocol::kGrpc;
  uint32_t weight_percent = 0;  // share of Score calls, see the file comment
};

// "grpc" or "http".
const char* ModelProtocolName(ModelEndpoint::Protocol protocol);

struct ModelCallOptions {
  std::string model_name;
  std::string model_version;  // empty: the server's choice
  std::string input_name = "INPUT0";
  std::string output_name = "OUTPUT0";
  uint32_t batch_size = 64;                 // rows per infer request
  int64_t timeout_ms = 100;                 // bound of one Score call (also bounded by its deadline)
  uint32_t max_idle_connections = 16;       // per HTTP endpoint; 0 = a new connection per request
  std::vector<ModelEndpoint> endpoints;
};

inline constexpr uint32_t kMaxModelBatchSize = 65536;
inline constexpr size_t kMaxModelEndpoints = 16;
inline constexpr int64_t kMaxModelTimeoutMs = 600000;

// Checks `options`; INVALID_ARGUMENT naming the field under `path`, e.g.
// `components[3] (ctr).model.endpoints[1].address: "canary" is not host:port`. Checks: name
// (required, [A-Za-z0-9_.-], at most 128 bytes), version (same charset, may be empty), input and
// output (required, at most 256 bytes), batch_size (1..kMaxModelBatchSize), timeout
// (1..kMaxModelTimeoutMs), max_idle_connections (0..1024), endpoints (1..kMaxModelEndpoints; each
// address host:port with port 1..65535; no address listed twice; each weight 0..100; weights sum
// to 100 or are all 0).
absl::Status ValidateModelCallOptions(const ModelCallOptions& options, absl::string_view path);

// Parses the YAML mapping shown in the file comment (the value of `model:`) and validates it with
// ValidateModelCallOptions. `path` names the mapping in errors (e.g. "components[3] (ctr).model");
// unknown keys, wrong types and bad values are INVALID_ARGUMENT naming "<path>.<key>" (and
// "<path>.endpoints[i].<key>" inside the list).
absl::StatusOr<ModelCallOptions> ParseModelCallOptions(const YAML::Node& node, absl::string_view path);

// Scores rows on a model server. Create one per flow version and share it: Score is thread-safe
// and cheap to call concurrently. It keeps one gRPC channel per gRPC endpoint and up to
// max_idle_connections kept-alive HTTP connections per HTTP endpoint (served by one I/O thread
// that the client starts only when it has an HTTP endpoint). Creating a client connects to
// nothing; connections are made on first use and re-made after failures.
class ModelClient {
 public:
  // Validates `options` (ValidateModelCallOptions, path "model"). With `metrics` (which must
  // outlive the client and its calls), every infer request is counted in
  //   kosh_model_requests_total{model,endpoint,protocol,code}     (code: OK, DEADLINE_EXCEEDED, ...)
  //   kosh_model_request_seconds{model,endpoint,protocol}         (histogram, send to answer)
  // where code is the status that request produced (see Score for the codes).
  static absl::StatusOr<std::unique_ptr<ModelClient>> Create(ModelCallOptions options,
                                                             base::MetricsRegistry* metrics = nullptr);
  // Waits for requests abandoned by earlier Score calls (each is bounded by its own deadline, so
  // this is bounded by timeout_ms), then closes channels and connections. No Score call may be
  // running. Channels are released on the destroying thread, which should not be a gRPC callback
  // thread unless something else (a gRPC server, another client) keeps gRPC's callback machinery
  // alive, as in `kosh serve`.
  ~ModelClient();
  ModelClient(const ModelClient&) = delete;
  ModelClient& operator=(const ModelClient&) = delete;

  // Scores `num_rows` rows of `num_cols` floats each (`rows` is row-major, num_rows * num_cols
  // values, only read during the call) and returns one score per row, in row order.
  // The call ends by min(deadline, now + timeout_ms) whatever the servers do. On the first failed
  // batch it returns at once (the other batches are cancelled or left to expire); no partial
  // result is returned. Errors name the model and the endpoint ("127.0.0.1:8001 (grpc)"):
  //   INVALID_ARGUMENT     num_cols == 0, rows == nullptr with num_rows > 0, or (HTTP only) a
  //                        NaN/Inf input, which the JSON form cannot carry (names row and column)
  //   DEADLINE_EXCEEDED    the deadline passed first (or had passed already)
  //   UNAVAILABLE          the endpoint cannot be reached (connect refused, reset, HTTP 502/503)
  //   FAILED_PRECONDITION  the server rejected the request as not matching the model (unknown
  //                        model/version, wrong input name, shape or datatype: gRPC
  //                        INVALID_ARGUMENT/NOT_FOUND/..., HTTP 4xx); the message carries its text
  //   RESOURCE_EXHAUSTED   the server is overloaded (gRPC RESOURCE_EXHAUSTED, HTTP 429)
  //   INTERNAL             a server error (gRPC INTERNAL/UNKNOWN, HTTP 5xx) or a malformed
  //                        response (no such output, not FP32, wrong shape or element count,
  //                        bad JSON)
  // num_rows == 0 returns an empty vector without a request.
  absl::StatusOr<std::vector<float>> Score(const float* rows, size_t num_rows, size_t num_cols,
                                           absl::Time deadline) const;

  // Score on endpoint `endpoint` (an index into options().endpoints) instead of the weighted
  // choice; OUT_OF_RANGE for a bad index. For health checks and tests.
  absl::StatusOr<std::vector<float>> ScoreOn(size_t endpoint, const float* rows, size_t num_rows,
                                             size_t num_cols, absl::Time deadline) const;

  // The endpoint a Score call would use now: a random draw by the weights (thread-safe).
  size_t PickEndpoint() const;

  const ModelCallOptions& options() const;

 private:
  struct Impl;
  explicit ModelClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;  // gRPC and Boost types stay out of this header
};

}  // namespace kosh::flows
