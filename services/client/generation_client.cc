#include "services/client/generation_client.h"

#include <grpcpp/generic/generic_stub.h>

#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvguard::client {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// grpc.health.v1 messages encoded by hand: HealthCheckRequest{service=""} is
// empty; the response's field 1 is the status enum. Avoids shipping a copy
// of health.proto just for one call.
std::string HealthStatusName(int code) {
  switch (code) {
    case 1:
      return "SERVING";
    case 2:
      return "NOT_SERVING";
    case 3:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

}  // namespace

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const std::string& target,
                                                           const ChannelOptions& options) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  if (!options.lb_policy.empty()) {
    if (options.lb_policy != "round_robin" && options.lb_policy != "pick_first")
      return absl::InvalidArgumentError(
          absl::StrCat("lb_policy must be round_robin or pick_first, not ", options.lb_policy));
    args.SetLoadBalancingPolicyName(options.lb_policy);
  }
  KVG_ASSIGN_OR_RETURN(auto credentials,
                       MakeChannelCredentials(options.tls_files, options.tls, args));
  return grpc::CreateCustomChannel(target, credentials, args);
}

GenerationClient::GenerationClient(const std::string& address)
    : GenerationClient(MakeChannel(address)) {
  target_ = address;
}

GenerationClient::GenerationClient(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(v1::GenerationService::NewStub(channel_)) {}

GenerationClient::GenerationClient(std::shared_ptr<grpc::Channel> channel, std::string target,
                                   std::string auth_token)
    : GenerationClient(std::move(channel)) {
  target_ = std::move(target);
  auth_token_ = std::move(auth_token);
}

void GenerationClient::Prepare(grpc::ClientContext& context) const {
  if (!auth_token_.empty()) context.AddMetadata("authorization", "Bearer " + auth_token_);
}

absl::Status GenerationClient::Connect(std::chrono::milliseconds timeout) {
  if (channel_->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_READY) return absl::OkStatus();
  if (channel_->WaitForConnected(std::chrono::system_clock::now() + timeout))
    return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("cannot connect to ",
                                             target_.empty() ? "the server" : target_, " within ",
                                             timeout.count(), " ms"));
}

absl::StatusOr<GenerateOutcome> GenerationClient::Generate(
    const v1::GenerateRequest& request, const std::function<void(const v1::TokenChunk&)>& on_chunk,
    const CallOptions& options) {
  const auto start = Clock::now();
  auto connect_timeout = options.connect_timeout;
  if (options.deadline) connect_timeout = std::min(connect_timeout, *options.deadline);
  if (connect_timeout.count() > 0) KVG_RETURN_IF_ERROR(Connect(connect_timeout));
  grpc::ClientContext context;
  Prepare(context);
  if (options.deadline) context.set_deadline(std::chrono::system_clock::now() + *options.deadline);
  GenerateOutcome out;
  auto last = start;
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse response;
  int chunks = 0;
  while (reader->Read(&response)) {
    const auto now = Clock::now();
    if (response.has_chunk()) {
      const v1::TokenChunk& c = response.chunk();
      if (chunks == 0)
        out.time_to_first_token_s = Seconds(now - start);
      else
        out.inter_token_s.push_back(Seconds(now - last));
      last = now;
      out.token_ids.insert(out.token_ids.end(), c.token_ids().begin(), c.token_ids().end());
      out.text += c.text_delta();
      if (on_chunk) on_chunk(c);
      ++chunks;
      if (options.cancel_after_chunks && chunks >= *options.cancel_after_chunks)
        context.TryCancel();
    } else if (response.has_complete()) {
      out.complete = response.complete();
    }
  }
  out.total_s = Seconds(Clock::now() - start);
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpc(status);
  return out;
}

absl::StatusOr<v1::ModelInfo> GenerationClient::GetModelInfo() {
  KVG_RETURN_IF_ERROR(Connect(std::chrono::seconds(5)));
  grpc::ClientContext context;
  Prepare(context);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ModelInfo info;
  grpc::Status s = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!s.ok()) return FromGrpc(s);
  return info;
}

absl::StatusOr<v1::ListCompressorsResponse> GenerationClient::ListCompressors() {
  KVG_RETURN_IF_ERROR(Connect(std::chrono::seconds(5)));
  grpc::ClientContext context;
  Prepare(context);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListCompressorsResponse out;
  grpc::Status s = stub_->ListCompressors(&context, v1::ListCompressorsRequest(), &out);
  if (!s.ok()) return FromGrpc(s);
  return out;
}

absl::StatusOr<std::string> GenerationClient::Health() {
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::ByteBuffer request_buffer, response_buffer;
  grpc::Slice empty("", 0);
  request_buffer = grpc::ByteBuffer(&empty, 1);
  grpc::Status status;
  // Synchronous unary call through the generic stub's callback interface.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                    &response_buffer, [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = s;
                      done = true;
                      cv.notify_all();
                    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  (void)response_buffer.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // Field 1, varint: tag 0x08 then the enum value.
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x08)
    return HealthStatusName(bytes[1]);
  return HealthStatusName(0);
}

}  // namespace kvguard::client
