// Helpers for writing a Family: typed method definitions.
#pragma once

#include <functional>
#include <string>

#include "server/service.h"

namespace kosh::server {

// A MethodDef whose handler takes the concrete message types.
template <typename Req, typename Resp>
MethodDef TypedMethod(std::string name, std::string http_path, Scope scope,
                      std::function<absl::Status(const Req&, Resp*)> fn) {
  MethodDef d;
  d.name = std::move(name);
  d.http_path = std::move(http_path);
  d.scope = scope;
  d.request_prototype = &Req::default_instance();
  d.response_prototype = &Resp::default_instance();
  d.handler = [fn = std::move(fn)](const google::protobuf::Message& req, google::protobuf::Message* resp) {
    return fn(static_cast<const Req&>(req), static_cast<Resp*>(resp));
  };
  return d;
}

}  // namespace kosh::server
