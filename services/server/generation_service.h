// File: services/server/generation_service.h
//
// The GenerationService on gRPC's callback API. Each Generate call gets a
// write reactor; the scheduler pushes responses into a StreamSink that
// starts writes without blocking, one at a time, and finishes the stream
// after the last one. The model never runs inside a reaction.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string>

#include "kvguard/v1/generation.grpc.pb.h"
#include "services/engine/model_config.h"
#include "services/server/access_control.h"
#include "services/server/request_validation.h"
#include "services/server/scheduler.h"

namespace kvguard::server {

struct ServiceInfo {
  std::string model_path;
  std::string device, dtype, blas;
};

// Who may call (null = everyone) and how many streams a caller may hold.
struct ServiceAccess {
  TokenAuthenticator* auth = nullptr;
  StreamQuota* quota = nullptr;
};

class GenerationServiceImpl final : public v1::GenerationService::CallbackService {
 public:
  GenerationServiceImpl(Scheduler& scheduler, const engine::ModelConfig& config,
                        const engine::Tokenizer* tokenizer, ServerDefaults defaults,
                        ServiceInfo info, ServerMetrics* metrics, ServiceAccess access = {});

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* ListCompressors(grpc::CallbackServerContext* context,
                                            const v1::ListCompressorsRequest* request,
                                            v1::ListCompressorsResponse* response) override;

 private:
  // The caller's identity, or UNAUTHENTICATED / PERMISSION_DENIED.
  absl::StatusOr<std::string> Authorize(const grpc::CallbackServerContext& context);

  Scheduler& scheduler_;
  const engine::ModelConfig& config_;
  const engine::Tokenizer* tokenizer_;
  ServerDefaults defaults_;
  ServiceInfo info_;
  ServerMetrics* metrics_;
  ServiceAccess access_;
  std::atomic<uint64_t> next_id_{0};
};

// Maps absl status codes to gRPC's (they share google.rpc.Code numbering).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace kvguard::server
