// Helpers for writing a Family: typed method definitions.
#pragma once

#include <functional>
#include <string>

#include "google/protobuf/arena.h"
#include "grpcpp/support/message_allocator.h"
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

// Puts the request and the response of one gRPC call on one protobuf arena, freed in one go when
// the call ends. A read of 100 keys or a 100-row flow is hundreds to thousands of small messages;
// allocated one by one from the global heap they were the largest cost of the read path once the
// heap held a warm row cache (docs/benchmarks.md). Register with SetMessageAllocatorFor_<Method>.
// Thread-safe (stateless).
template <typename Req, typename Resp, size_t kStartBlock = 4096, size_t kMaxBlock = 65536>
class ArenaMessageAllocator final : public grpc::MessageAllocator<Req, Resp> {
 public:
  grpc::MessageHolder<Req, Resp>* AllocateMessages() override { return new Holder; }

 private:
  class Holder final : public grpc::MessageHolder<Req, Resp> {
   public:
    Holder() : arena_(Options()) {
      this->set_request(google::protobuf::Arena::CreateMessage<Req>(&arena_));
      this->set_response(google::protobuf::Arena::CreateMessage<Resp>(&arena_));
    }
    void Release() override { delete this; }

   private:
    static google::protobuf::ArenaOptions Options() {
      google::protobuf::ArenaOptions o;
      o.start_block_size = kStartBlock;
      o.max_block_size = kMaxBlock;
      return o;
    }
    google::protobuf::Arena arena_;
  };
};

}  // namespace kosh::server
