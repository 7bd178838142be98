#include "services/server/grpc_guard_link.h"

#include <algorithm>

namespace kvguard::server {

GrpcGuardLink::GrpcGuardLink(const std::string& address) : address_(address) {
  grpc::ChannelArguments args;
  // Reconnect quickly after a guard restart; the stream is re-opened by ConnectLoop.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::GuardService::NewStub(channel_);
  connector_ = std::thread([this] { ConnectLoop(); });
}

GrpcGuardLink::~GrpcGuardLink() {
  stopping_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_) context_->TryCancel();
  }
  cv_.notify_all();
  if (connector_.joinable()) connector_.join();
}

void GrpcGuardLink::ConnectLoop() {
  auto backoff = std::chrono::milliseconds(100);
  while (!stopping_) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_wait_for_ready(false);
    // Fail fast if the guard is down, then back off.
    if (!channel_->WaitForConnected(std::chrono::system_clock::now() + backoff)) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, backoff, [this] { return stopping_.load(); });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
      continue;
    }
    std::shared_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream(
        stub_->Guard(context.get()));
    {
      std::lock_guard<std::mutex> lock(mu_);
      context_ = std::move(context);
      stream_ = stream;
      ++stats_.reconnects;
    }
    connected_ = true;
    backoff = std::chrono::milliseconds(100);
    ReadLoop(stream);  // returns when the stream breaks
    connected_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stream_.reset();
      (void)stream->Finish();
      context_.reset();
    }
    cv_.notify_all();
  }
}

void GrpcGuardLink::ReadLoop(
    std::shared_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream) {
  v1::DirectiveBatch batch;
  while (stream->Read(&batch)) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.received;
    answers_[batch.batch_id()] = batch;
    // Answers nobody awaits any more (late, after a fail-safe) must not pile up.
    while (answers_.size() > 64) answers_.erase(answers_.begin());
    cv_.notify_all();
  }
}

void GrpcGuardLink::Send(const v1::StepBatch& batch) {
  std::shared_ptr<grpc::ClientReaderWriter<v1::StepBatch, v1::DirectiveBatch>> stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream = stream_;
    if (!stream) {
      ++stats_.dropped_disconnected;
      return;
    }
    ++stats_.sent;
  }
  // One writer (the scheduler thread): Write may block on flow control only.
  if (!stream->Write(batch)) {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_) context_->TryCancel();
  }
}

std::optional<v1::DirectiveBatch> GrpcGuardLink::Await(uint64_t batch_id,
                                                       std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool arrived = cv_.wait_until(lock, deadline, [&] {
    return answers_.count(batch_id) > 0 || !stream_ || stopping_.load();
  });
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
