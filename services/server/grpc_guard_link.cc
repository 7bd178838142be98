#include "services/server/grpc_guard_link.h"

#include <algorithm>

namespace kvguard::server {

// One stream and the context it lives in. `write_mu` is held by the writer
// for the length of a Write, so the connector can wait for it before Finish.
struct GrpcGuardLink::Call {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream;
  std::mutex write_mu;
  bool finished = false;  // under write_mu: no Write after Finish
};

GrpcGuardLink::GrpcGuardLink(const std::string& address,
                             std::shared_ptr<grpc::ChannelCredentials> credentials,
                             grpc::ChannelArguments args)
    : address_(address) {
  if (!credentials) credentials = grpc::InsecureChannelCredentials();
  // Reconnect quickly after a guard restart; the stream is re-opened by ConnectLoop.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  channel_ = grpc::CreateCustomChannel(address, credentials, args);
  stub_ = v1::GuardService::NewStub(channel_);
  connector_ = std::thread([this] { ConnectLoop(); });
  writer_ = std::thread([this] { WriteLoop(); });
}

GrpcGuardLink::~GrpcGuardLink() {
  stopping_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (call_) call_->context.TryCancel();
  }
  cv_.notify_all();
  outbox_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (connector_.joinable()) connector_.join();
}

void GrpcGuardLink::ConnectLoop() {
  auto backoff = std::chrono::milliseconds(100);
  while (!stopping_) {
    // Fail fast if the guard is down, then back off.
    if (!channel_->WaitForConnected(std::chrono::system_clock::now() + backoff)) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, backoff, [this] { return stopping_.load(); });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
      continue;
    }
    auto call = std::make_shared<Call>();
    call->context.set_wait_for_ready(false);
    call->stream = stub_->Guard(&call->context);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) call->context.TryCancel();
      call_ = call;
      ++stats_.reconnects;
    }
    connected_ = true;
    backoff = std::chrono::milliseconds(100);
    ReadLoop(*call);  // returns when the stream breaks
    connected_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (call_ == call) call_.reset();
    }
    cv_.notify_all();
    call->context.TryCancel();  // unblocks a writer held by flow control
    std::lock_guard<std::mutex> writing(call->write_mu);
    call->finished = true;
    (void)call->stream->Finish();
  }
}

void GrpcGuardLink::WriteLoop() {
  while (true) {
    v1::StepBatch batch;
    std::shared_ptr<Call> call;
    {
      std::unique_lock<std::mutex> lock(mu_);
      outbox_cv_.wait(lock, [this] { return !outbox_.empty() || stopping_.load(); });
      if (stopping_) return;
      batch = std::move(outbox_.front());
      outbox_.pop_front();
      call = call_;
      if (!call) {
        ++stats_.dropped_disconnected;
        continue;
      }
      ++stats_.sent;
    }
    std::lock_guard<std::mutex> writing(call->write_mu);
    if (call->finished) continue;  // the stream broke after the batch was taken
    if (!call->stream->Write(batch)) call->context.TryCancel();  // this call only
  }
}

void GrpcGuardLink::ReadLoop(Call& call) {
  v1::DirectiveBatch batch;
  while (call.stream->Read(&batch)) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.received;
    answers_[batch.batch_id()] = batch;
    // Answers nobody awaits any more (late, after a fail-safe) must not pile up.
    while (answers_.size() > 64) answers_.erase(answers_.begin());
    cv_.notify_all();
  }
}

void GrpcGuardLink::Send(v1::StepBatch batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!call_) {
      ++stats_.dropped_disconnected;
      return;
    }
    if (outbox_.size() >= kMaxQueued) {
      outbox_.pop_front();
      ++stats_.dropped_backpressure;
    }
    outbox_.push_back(std::move(batch));
  }
  outbox_cv_.notify_one();
}

std::optional<v1::DirectiveBatch> GrpcGuardLink::Await(
    uint64_t batch_id, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool arrived = cv_.wait_until(
      lock, deadline, [&] { return answers_.count(batch_id) > 0 || !call_ || stopping_.load(); });
  auto it = answers_.find(batch_id);
  if (!arrived || it == answers_.end()) return std::nullopt;
  v1::DirectiveBatch out = std::move(it->second);
  answers_.erase(answers_.begin(), std::next(it));
  return out;
}

GuardLinkStats GrpcGuardLink::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace kvguard::server
