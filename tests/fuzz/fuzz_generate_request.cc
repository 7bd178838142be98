// Fuzz target: a client's serialized GenerateRequest through the server's
// validation (ValidateGenerateRequest) with a tokenizer, server defaults
// and operator limits, as the Generate handler runs it. Every input is
// either a request the engine can run or a clear INVALID_ARGUMENT; nothing
// crashes, and an accepted request is within the limits.
#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "compressors/registry.h"
#include "services/engine/tokenizer.h"
#include "services/server/request_validation.h"

namespace {

struct Fixture {
  kvguard::engine::ModelConfig config;
  std::unique_ptr<kvguard::engine::Tokenizer> tokenizer;
  kvguard::server::ServerDefaults defaults{.compressor = "snapkv",
                                           .ratio = 0.5,
                                           .guard_available = true,
                                           .max_prompt_tokens = 200,
                                           .max_new_tokens = 512};
};

const Fixture& Setup() {
  static const Fixture* f = [] {
    // Invalid UTF-8 in a string field fails the parse; protobuf's log line for it is noise here.
    google::protobuf::SetLogHandler(nullptr);
    auto* fx = new Fixture();
    fx->config.vocab_size = 151936;
    fx->config.max_position_embeddings = 256;
    auto t = kvguard::engine::Tokenizer::Load(KVG_FUZZ_TOKENIZER);
    if (!t.ok()) std::abort();
    fx->tokenizer = std::move(*t);
    return fx;
  }();
  return *f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Fixture& f = Setup();
  kvguard::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto v =
      kvguard::server::ValidateGenerateRequest(request, f.config, f.tokenizer.get(), f.defaults);
  if (!v.ok()) {
    if (v.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  const auto& r = v->request;
  if (r.prompt_ids.empty() ||
      static_cast<int64_t>(r.prompt_ids.size()) > f.defaults.max_prompt_tokens)
    std::abort();
  if (r.max_new_tokens < 1 || r.max_new_tokens > f.defaults.max_new_tokens) std::abort();
  for (int32_t id : r.prompt_ids)
    if (id < 0 || id >= f.config.vocab_size) std::abort();
  return 0;
}
