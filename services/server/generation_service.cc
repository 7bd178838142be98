#include "services/server/generation_service.h"

#include <deque>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "compressors/registry.h"
#include "services/server/wire.h"

namespace kvguard::server {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

class GenerateReactor;

// Shared between the scheduler (producer) and the reactor (consumer). The
// reactor pointer is cleared in OnDone under the same mutex, so the
// scheduler never touches a deleted reactor.
class StreamSink final : public ResponseSink {
 public:
  explicit StreamSink(GenerateReactor* reactor) : reactor_(reactor) {}
  // Set before the request is submitted; echoed on every response.
  void set_request_id(std::string id) { request_id_ = std::move(id); }
  void Token(TokenEvent event) override { Send(ToWire(request_id_, event)); }
  void Complete(CompletionEvent event) override { Send(ToWire(request_id_, event)); }
  void Finish(const absl::Status& status) override;
  bool Cancelled() const override { return cancelled_.load(); }

  void MarkCancelled() { cancelled_ = true; }
  void OnWriteDone(bool ok);
  void Detach();

 private:
  void Send(v1::GenerateResponse response);
  void StartNextLocked();
  std::string request_id_;
  std::mutex mu_;
  GenerateReactor* reactor_;
  std::deque<v1::GenerateResponse> queue_;
  bool writing_ = false;
  bool finish_pending_ = false;
  bool finished_ = false;
  grpc::Status final_status_;
  std::atomic<bool> cancelled_{false};
};

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor() : sink_(std::make_shared<StreamSink>(this)) {}
  std::shared_ptr<StreamSink> sink() { return sink_; }
  // Held for the stream's life: the client's slot under --max_streams_per_client.
  void Hold(std::unique_ptr<StreamQuota::Slot> slot) { slot_ = std::move(slot); }
  void Write(const v1::GenerateResponse* r) { StartWrite(r); }
  // The client's stream slot is free before it can see the stream end, so its next call
  // right after never finds the slot still held.
  void End(const grpc::Status& s) {
    slot_.reset();
    Finish(s);
  }

  void OnWriteDone(bool ok) override { sink_->OnWriteDone(ok); }
  void OnCancel() override { sink_->MarkCancelled(); }
  void OnDone() override {
    sink_->MarkCancelled();
    sink_->Detach();
    delete this;
  }

 private:
  std::shared_ptr<StreamSink> sink_;
  std::unique_ptr<StreamQuota::Slot> slot_;
};

void StreamSink::Send(v1::GenerateResponse response) {
  std::lock_guard<std::mutex> lock(mu_);
  if (reactor_ == nullptr || finished_ || finish_pending_) return;
  queue_.push_back(std::move(response));
  if (!writing_) StartNextLocked();
}

void StreamSink::StartNextLocked() {
  writing_ = true;
  // The message stays at the queue's front (stable address) until OnWriteDone.
  reactor_->Write(&queue_.front());
}

void StreamSink::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  writing_ = false;
  if (!queue_.empty()) queue_.pop_front();
  if (!ok) {
    cancelled_ = true;
    queue_.clear();
  }
  if (reactor_ == nullptr) return;
  if (!queue_.empty()) {
    StartNextLocked();
  } else if (finish_pending_ && !finished_) {
    finished_ = true;
    reactor_->End(final_status_);
  }
}

void StreamSink::Finish(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (reactor_ == nullptr || finished_ || finish_pending_) return;
  final_status_ = ToGrpcStatus(status);
  if (!status.ok()) queue_.erase(queue_.begin() + (writing_ ? 1 : 0), queue_.end());
  if (writing_ || !queue_.empty()) {
    finish_pending_ = true;
    return;
  }
  finished_ = true;
  reactor_->End(final_status_);
}

void StreamSink::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  reactor_ = nullptr;
}

}  // namespace

GenerationServiceImpl::GenerationServiceImpl(Scheduler& scheduler,
                                             const engine::ModelConfig& config,
                                             const engine::Tokenizer* tokenizer,
                                             ServerDefaults defaults, ServiceInfo info,
                                             ServerMetrics* metrics, ServiceAccess access)
    : scheduler_(scheduler),
      config_(config),
      tokenizer_(tokenizer),
      defaults_(std::move(defaults)),
      info_(std::move(info)),
      metrics_(metrics),
      access_(access) {}

absl::StatusOr<std::string> GenerationServiceImpl::Authorize(
    const grpc::CallbackServerContext& context) {
  if (access_.auth == nullptr) return PeerIdentity(context);
  std::string header;
  const auto& md = context.client_metadata();
  if (auto it = md.find("authorization"); it != md.end())
    header.assign(it->second.data(), it->second.size());
  auto who = access_.auth->Authenticate(header);
  if (!who.ok() && metrics_)
    metrics_->RequestRejected(who.status().code() == absl::StatusCode::kUnauthenticated
                                  ? "unauthenticated"
                                  : "permission_denied");
  return who;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationServiceImpl::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* reactor = new GenerateReactor();
  auto who = Authorize(*context);
  if (!who.ok()) {
    reactor->sink()->Finish(who.status());
    return reactor;
  }
  if (access_.quota != nullptr) {
    auto slot = access_.quota->Acquire(*who);
    if (!slot.ok()) {
      if (metrics_) metrics_->RequestRejected("client_streams");
      reactor->sink()->Finish(slot.status());
      return reactor;
    }
    reactor->Hold(std::move(*slot));
  }
  auto validated = ValidateGenerateRequest(*request, config_, tokenizer_, defaults_);
  if (!validated.ok()) {
    if (metrics_) metrics_->RequestRejected("invalid_argument");
    reactor->sink()->Finish(validated.status());
    return reactor;
  }
  Submission s;
  s.request_id =
      request->request_id().empty() ? absl::StrCat("req-", ++next_id_) : request->request_id();
  s.request = std::move(validated->request);
  s.guarded = validated->guarded;
  s.gold_answer = request->gold_answer();
  reactor->sink()->set_request_id(s.request_id);
  s.sink = reactor->sink();
  if (absl::Status st = scheduler_.Submit(std::move(s)); !st.ok()) reactor->sink()->Finish(st);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationServiceImpl::GetModelInfo(grpc::CallbackServerContext* context,
                                                              const v1::GetModelInfoRequest*,
                                                              v1::ModelInfo* out) {
  auto* reactor = context->DefaultReactor();
  if (auto who = Authorize(*context); !who.ok()) {
    reactor->Finish(ToGrpcStatus(who.status()));
    return reactor;
  }
  out->set_model_path(info_.model_path);
  out->set_family(config_.family);
  out->set_vocab_size(config_.vocab_size);
  out->set_max_context(config_.max_position_embeddings);
  out->set_num_layers(config_.num_layers);
  out->set_num_kv_heads(config_.num_kv_heads);
  out->set_head_dim(config_.head_dim);
  out->set_device(info_.device);
  out->set_dtype(info_.dtype);
  out->set_blas(info_.blas);
  out->set_has_tokenizer(tokenizer_ != nullptr);
  for (int32_t id : config_.eos_token_ids) out->add_eos_token_ids(id);
  out->set_default_compressor(defaults_.compressor);
  out->set_default_ratio(defaults_.ratio);
  out->set_guarded(defaults_.guard_available);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationServiceImpl::ListCompressors(
    grpc::CallbackServerContext* context, const v1::ListCompressorsRequest*,
    v1::ListCompressorsResponse* out) {
  auto* reactor = context->DefaultReactor();
  if (auto who = Authorize(*context); !who.ok()) {
    reactor->Finish(ToGrpcStatus(who.status()));
    return reactor;
  }
  for (const auto& info : compress::Registry::Global().List()) {
    v1::CompressorDescription* d = out->add_compressors();
    d->set_name(info.name);
    d->set_description(info.description);
    for (const auto& o : info.options) {
      v1::CompressorOption* opt = d->add_options();
      opt->set_name(o.name);
      opt->set_type(compress::OptionTypeName(o.type));
      opt->set_default_value(compress::OptionValueToString(o.default_value));
      opt->set_min(o.min);
      opt->set_max(o.max);
      opt->set_help(o.help);
    }
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace kvguard::server
