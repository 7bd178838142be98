// llama_peer: the two llama.cpp measurements the CPU peer's llbench does not
// make, through llama.cpp's C API (the prebuilt libraries that
// ../shared/tools/peer-llamacpp/setup.sh installs from npm):
//
//   llama_peer quantize IN.gguf OUT.gguf q8_0|q4_k_m
//       the quantized formats CPU users deploy, from the same bf16 GGUF.
//   llama_peer decode MODEL.gguf THREADS BATCH PROMPT DECODE WARMUP
//       batched greedy decode: BATCH sequences, each with its own seeded random
//       prompt of PROMPT ids (prefilled one sequence at a time), then DECODE
//       timed steps of one token per sequence in one llama_decode call, after
//       WARMUP untimed steps. The protocol of `kvguard bench --batch B`.
//       Prints one JSON line.
//
// Built by scripts/bench_engine.sh against the peer's headers and libraries.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void QuietLog(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

int Quantize(const char* in, const char* out, const std::string& type) {
  llama_model_quantize_params params = llama_model_quantize_default_params();
  if (type == "q8_0") {
    params.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
  } else if (type == "q4_k_m") {
    params.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
  } else {
    fprintf(stderr, "unknown type %s (q8_0, q4_k_m)\n", type.c_str());
    return 2;
  }
  params.nthread = 2;
  return llama_model_quantize(in, out, &params) == 0 ? 0 : 1;
}

int Decode(const char* path, int threads, int batch, int n_prompt, int n_decode, int n_warmup) {
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.load_mode = LLAMA_LOAD_MODE_NONE;
  llama_model* model = llama_model_load_from_file(path, mp);
  if (model == nullptr) return fprintf(stderr, "load failed\n"), 1;
  llama_context_params cp = llama_context_default_params();
  cp.n_seq_max = batch;
  cp.n_ctx = batch * (n_prompt + n_warmup + n_decode + 16);
  cp.n_batch = std::max(512, n_prompt);
  cp.n_ubatch = cp.n_batch;
  cp.n_threads = threads;
  cp.n_threads_batch = threads;
  cp.kv_unified = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) return fprintf(stderr, "context failed\n"), 1;
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(0, n_vocab - 1);
  llama_batch b = llama_batch_init(std::max(n_prompt, batch), 0, 1);
  std::vector<llama_token> next(batch);
  auto argmax = [&](int i) {
    const float* l = llama_get_logits_ith(ctx, i);
    return static_cast<llama_token>(std::max_element(l, l + n_vocab) - l);
  };
  const auto t_prefill = Clock::now();
  for (int s = 0; s < batch; ++s) {
    b.n_tokens = n_prompt;
    for (int i = 0; i < n_prompt; ++i) {
      b.token[i] = pick(rng);
      b.pos[i] = i;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = s;
      b.logits[i] = i == n_prompt - 1;
    }
    if (llama_decode(ctx, b) != 0) return fprintf(stderr, "prefill failed\n"), 1;
    next[s] = argmax(n_prompt - 1);
  }
  const double prefill_s = Since(t_prefill);
  int pos = n_prompt;
  auto step = [&] {
    b.n_tokens = batch;
    for (int s = 0; s < batch; ++s) {
      b.token[s] = next[s];
      b.pos[s] = pos;
      b.n_seq_id[s] = 1;
      b.seq_id[s][0] = s;
      b.logits[s] = true;
    }
    if (llama_decode(ctx, b) != 0) fprintf(stderr, "decode failed\n"), exit(1);
    for (int s = 0; s < batch; ++s) next[s] = argmax(s);
    ++pos;
  };
  for (int i = 0; i < n_warmup; ++i) step();
  const auto t0 = Clock::now();
  for (int i = 0; i < n_decode; ++i) step();
  const double decode_s = Since(t0);
  printf(
      "{\"system\":\"llama.cpp\",\"model\":\"%s\",\"threads\":%d,\"batch\":%d,\"prompt_tokens\":%d,"
      "\"decode_tokens\":%d,\"prefill_tokens_per_s\":%.2f,\"decode_tokens_per_s\":%.3f,"
      "\"decode_ms_per_step\":%.3f}\n",
      path, threads, batch, n_prompt, n_decode, batch * n_prompt / prefill_s,
      batch * n_decode / decode_s, 1000.0 * decode_s / n_decode);
  llama_batch_free(b);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  llama_log_set(QuietLog, nullptr);
  const char* libdir = getenv("LLAMA_LIBDIR");
  if (libdir != nullptr)
    ggml_backend_load_all_from_path(libdir);
  else
    ggml_backend_load_all();
  llama_backend_init();
  const std::string mode = argc > 1 ? argv[1] : "";
  int rc = 2;
  if (mode == "quantize" && argc == 5) {
    rc = Quantize(argv[2], argv[3], argv[4]);
  } else if (mode == "decode" && argc == 8) {
    rc = Decode(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
  } else {
    fprintf(stderr,
            "usage: llama_peer quantize IN.gguf OUT.gguf q8_0|q4_k_m\n"
            "       llama_peer decode MODEL.gguf THREADS BATCH PROMPT DECODE WARMUP\n");
  }
  llama_backend_free();
  return rc;
}
