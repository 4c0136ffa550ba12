#include "server/interaction_family.h"

#include <deque>
#include <functional>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/status.h"
#include "interactions/interaction_store.h"
#include "interactions/options.h"
#include "kosh/v1/interactions.grpc.pb.h"
#include "server/family_util.h"

namespace kosh::server {
namespace {

// Method ids, in registration order.
struct Ids {
  int register_type, list_types, write, ingest, last_k, window, count, delete_user, trim;
};

// A fixed set of threads for the durable writes. gRPC runs callback handlers on a few threads
// (one per core here); a write that waits there for its WAL fsync stalls every other call, reads
// included, and caps concurrent writes at that number, so no two batches ever share an fsync.
// Writes run here instead and finish their calls from here. The destructor runs what is queued and
// joins; the family outlives the gRPC server, so no call is pending by then.
class WritePool {
 public:
  explicit WritePool(size_t threads) {
    for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~WritePool() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (auto& t : threads_) t.join();
  }
  void Submit(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
  }

 private:
  void Run() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WritePool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stop_ || !p->queue_.empty(); }, this));
        if (queue_.empty()) return;  // stopping and drained
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Runs a unary method on the write pool and finishes the call from there.
grpc::ServerUnaryReactor* RunOnPool(WritePool* pool, Service* svc, int id, grpc::CallbackServerContext* ctx,
                                    const google::protobuf::Message* req, google::protobuf::Message* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  pool->Submit([svc, id, auth = std::string(GrpcAuthorization(ctx)), req, resp, reactor] {
    absl::Status st = svc->Call(Protocol::kGrpc, id, auth, *req, resp);
    if (!st.ok()) resp->Clear();
    reactor->Finish(ToGrpcStatus(st));
  });
  return reactor;
}

// Ingest: a client stream of WriteRequest batches, each validated and written (durably) as it
// arrives, exactly as Write would; one IngestResponse when the client closes its side. The first
// failing batch ends the stream with its status, naming the batch and how much was written before
// it. Batches of one stream are written one at a time, in order (on the write pool); producers get
// parallelism from several streams, whose batches then share fsyncs.
class IngestReactor final : public grpc::ServerReadReactor<v1::WriteRequest> {
 public:
  IngestReactor(Service* svc, WritePool* pool, int method, grpc::CallbackServerContext* ctx, v1::IngestResponse* resp)
      : svc_(svc), pool_(pool), method_(method), auth_(GrpcAuthorization(ctx)), resp_(resp) {
    const MethodDef& def = svc_->method(method_);
    absl::Status st = svc_->Authorize(def.scope, def.name, auth_);
    if (!st.ok()) {
      svc_->Record(Protocol::kGrpc, method_, st.code(), 0);
      Finish(ToGrpcStatus(st));
      return;
    }
    StartRead(&batch_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (or the call is being cancelled)
      Finish(grpc::Status::OK);
      return;
    }
    pool_->Submit([this] { WriteBatch(); });
  }

  void OnDone() override { delete this; }

 private:
  void WriteBatch() {
    absl::Status st;
    v1::WriteResponse written;
    if (!svc_->ready()) {
      st = absl::UnavailableError("server is draining");
    } else {
      st = svc_->Call(Protocol::kGrpc, method_, auth_, batch_, &written);
    }
    if (!st.ok()) {
      Finish(ToGrpcStatus(absl::Status(
          st.code(), absl::StrCat("batch ", resp_->batches(), ": ", st.message(), "; the ", resp_->batches(),
                                  " batches before it (", resp_->events_written(),
                                  " events) were written and are durable; this batch and any after it were not"))));
      return;
    }
    resp_->set_batches(resp_->batches() + 1);
    resp_->set_events_written(resp_->events_written() + written.events_written());
    batch_.Clear();
    StartRead(&batch_);
  }

  Service* svc_;
  WritePool* pool_;
  int method_;
  std::string auth_;
  v1::IngestResponse* resp_;
  v1::WriteRequest batch_;
};

class InteractionsGrpc final : public v1::Interactions::CallbackService {
 public:
  InteractionsGrpc(server::Service* svc, const Ids* ids, WritePool* pool) : svc_(svc), ids_(ids), pool_(pool) {
    SetMessageAllocatorFor_LastK(&last_k_allocator_);
    SetMessageAllocatorFor_Window(&window_allocator_);
    SetMessageAllocatorFor_Write(&write_allocator_);
  }
  grpc::ServerUnaryReactor* RegisterEventType(grpc::CallbackServerContext* ctx,
                                              const v1::RegisterEventTypeRequest* req,
                                              v1::RegisterEventTypeResponse* resp) override {
    return RunUnary(svc_, ids_->register_type, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* ListEventTypes(grpc::CallbackServerContext* ctx, const v1::ListEventTypesRequest* req,
                                           v1::ListEventTypesResponse* resp) override {
    return RunUnary(svc_, ids_->list_types, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Write(grpc::CallbackServerContext* ctx, const v1::WriteRequest* req,
                                  v1::WriteResponse* resp) override {
    return RunOnPool(pool_, svc_, ids_->write, ctx, req, resp);
  }
  grpc::ServerReadReactor<v1::WriteRequest>* Ingest(grpc::CallbackServerContext* ctx,
                                                    v1::IngestResponse* resp) override {
    return new IngestReactor(svc_, pool_, ids_->ingest, ctx, resp);
  }
  grpc::ServerUnaryReactor* LastK(grpc::CallbackServerContext* ctx, const v1::LastKRequest* req,
                                  v1::HistoriesResponse* resp) override {
    return RunUnary(svc_, ids_->last_k, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Window(grpc::CallbackServerContext* ctx, const v1::WindowRequest* req,
                                   v1::HistoriesResponse* resp) override {
    return RunUnary(svc_, ids_->window, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Count(grpc::CallbackServerContext* ctx, const v1::CountRequest* req,
                                  v1::CountResponse* resp) override {
    return RunUnary(svc_, ids_->count, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* DeleteUser(grpc::CallbackServerContext* ctx, const v1::DeleteUserRequest* req,
                                       v1::DeleteUserResponse* resp) override {
    return RunOnPool(pool_, svc_, ids_->delete_user, ctx, req, resp);
  }
  grpc::ServerUnaryReactor* Trim(grpc::CallbackServerContext* ctx, const v1::TrimRequest* req,
                                 v1::TrimResponse* resp) override {
    return RunUnary(svc_, ids_->trim, ctx, req, resp);
  }

 private:
  server::Service* svc_;
  const Ids* ids_;
  WritePool* pool_;
  // A LastK of 16 users x 50 events is 800 item-id strings; a Write of 5000 events, 5000 messages.
  ArenaMessageAllocator<v1::LastKRequest, v1::HistoriesResponse, 8192> last_k_allocator_;
  ArenaMessageAllocator<v1::WindowRequest, v1::HistoriesResponse, 8192> window_allocator_;
  ArenaMessageAllocator<v1::WriteRequest, v1::WriteResponse, 65536, 1 << 20> write_allocator_;
};

class InteractionFamily final : public Family {
 public:
  std::vector<storage::KeyspaceOptions> Keyspaces() const override {
    // The merge function exists before the registry is loaded (RocksDB may merge while it opens);
    // until then it trims nothing, rather than guess a cap.
    return {{"interaction_types", nullptr, nullptr},
            {"interactions", interactions::HistoryExpired,
             interactions::HistoryMergeFn(slot_, interactions::SystemNowMs, std::numeric_limits<uint32_t>::max())}};
  }

  absl::Status Start(const FamilyContext& ctx) override {
    ASSIGN_OR_RETURN(interactions::InteractionOptions opts,
                     interactions::ParseInteractionOptions(ctx.options->interactions));
    pool_ = std::make_unique<WritePool>(opts.write_threads);
    ASSIGN_OR_RETURN(store_, interactions::InteractionStore::Open(ctx.engine, ctx.keyspaces[0], ctx.keyspaces[1],
                                                                  std::move(opts), slot_, ctx.metrics));
    ctx.shared->interactions = store_.get();
    Service* s = ctx.service;
    interactions::InteractionStore* st = store_.get();
    ids_.register_type = s->Register(TypedMethod<v1::RegisterEventTypeRequest, v1::RegisterEventTypeResponse>(
        "RegisterEventType", "/v1/interactions/register_event_type", Scope::kAdmin,
        [st](const auto& req, auto* resp) { return st->RegisterEventType(req, resp); }));
    ids_.list_types = s->Register(TypedMethod<v1::ListEventTypesRequest, v1::ListEventTypesResponse>(
        "ListEventTypes", "/v1/interactions/list_event_types", Scope::kRead,
        [st](const auto& req, auto* resp) { return st->ListEventTypes(req, resp); }));
    ids_.write = s->Register(TypedMethod<v1::WriteRequest, v1::WriteResponse>(
        "Write", "/v1/interactions/write", Scope::kWrite,
        [st](const auto& req, auto* resp) { return st->Write(req, resp); }));
    // One call per batch of an Ingest stream (gRPC only: HTTP has Write).
    ids_.ingest = s->Register(TypedMethod<v1::WriteRequest, v1::WriteResponse>(
        "Ingest", "", Scope::kWrite, [st](const auto& req, auto* resp) { return st->Write(req, resp); }));
    ids_.last_k = s->Register(TypedMethod<v1::LastKRequest, v1::HistoriesResponse>(
        "LastK", "/v1/interactions/last_k", Scope::kRead,
        [st](const auto& req, auto* resp) { return st->LastK(req, resp); }));
    ids_.window = s->Register(TypedMethod<v1::WindowRequest, v1::HistoriesResponse>(
        "Window", "/v1/interactions/window", Scope::kRead,
        [st](const auto& req, auto* resp) { return st->Window(req, resp); }));
    ids_.count = s->Register(TypedMethod<v1::CountRequest, v1::CountResponse>(
        "Count", "/v1/interactions/count", Scope::kRead,
        [st](const auto& req, auto* resp) { return st->Count(req, resp); }));
    ids_.delete_user = s->Register(TypedMethod<v1::DeleteUserRequest, v1::DeleteUserResponse>(
        "DeleteUser", "/v1/interactions/delete_user", Scope::kWrite,
        [st](const auto& req, auto* resp) { return st->DeleteUser(req, resp); }));
    ids_.trim = s->Register(TypedMethod<v1::TrimRequest, v1::TrimResponse>(
        "Trim", "/v1/interactions/trim", Scope::kAdmin,
        [st](const auto& req, auto* resp) { return st->Trim(req, resp); }));
    grpc_ = std::make_unique<InteractionsGrpc>(s, &ids_, pool_.get());
    return absl::OkStatus();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {grpc_.get()}; }

 private:
  std::shared_ptr<interactions::TypeTableSlot> slot_ = std::make_shared<interactions::TypeTableSlot>();
  Ids ids_{};
  std::unique_ptr<InteractionsGrpc> grpc_;
  std::unique_ptr<interactions::InteractionStore> store_;  // outlives the pool's last task
  std::unique_ptr<WritePool> pool_;                        // destroyed first: runs what is queued
};

}  // namespace

std::unique_ptr<Family> NewInteractionFamily() { return std::make_unique<InteractionFamily>(); }

}  // namespace kosh::server
