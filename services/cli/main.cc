// kvguard: the command-line entry point. Dispatches to a subcommand and turns
// any error into one line on stderr and exit code 1 (2 for usage errors).
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <string>

#include "common/heap.h"
#include "services/cli/commands.h"

namespace {

constexpr char kUsage[] = R"(usage: kvguard <command> [options]

commands:
  tokenize  --tokenizer PATH (--text TEXT | --ids 1,2,3)
  logits    --model PATH --ids 1,2,3 [--device cpu|cuda] [--dtype auto|f32|bf16|f16]
            (auto, the default everywhere: the checkpoint's stored dtype; bf16 stays bf16)
  generate  --model PATH (--prompt TEXT | --ids 1,2,3) --max-new-tokens N
            [--temperature T] [--top-k K] [--top-p P] [--seed S] [--repetition-penalty R]
            [--no-repeat-ngram N] (N >= 2: no n-gram of the generated text twice)
            [--stop STR]... [--stop-id ID]... [--ignore-eos] [--logprobs K]
            [--device D] [--dtype T] [--weights native|int8] [--threads N] [--json]
            [--compressor NAME --ratio R [--compressor-opt key=value]... [--compress-every N]]
  kept      --model PATH --ids 1,2,3 --compressor NAME --ratio R [--compressor-opt key=value]...
            [--scores]
  compressors   (JSON: every compressor with its options and defaults)
  calibrate-vector --model PATH --out FILE [--prompts N] [--tokens T] [--ridge LAMBDA] [--seed S]
            (VECTOR's value regression; use with --compressor vector --compressor-opt calibration=FILE)
  sweep     --model DIR --out TRACES [--compressors a,b] [--ratios 0.5,0.75] [--prompts N] [--split S]
            [--problem-opt key=value]... [--max-new-tokens N] [--batch B] [--threads T]
            [--dataset arith|gsm8k] [--data-dir DIR (gsm8k: train.jsonl, test.jsonl)] [--shots 8]
            [--repetition-penalty R] [--no-repeat-ngram N]   (decode-time baselines, every trace)
  prefill-risk --model DIR --out FILE.jsonl [--compressors a,b] [--ratios 0.5,0.75] [--prompts N]
            [--split S] [--problem-opt key=value]... [--threads T]   (question attention each
            compressor's prefill evicts, per prompt and ratio: an admission-time risk signal)
  train-predictor --traces TRACES --out DIR [--horizon 32] [--seed S] [--rounds N] [--target-fpr 0.05]
  evaluate  --model DIR --traces TRACES --predictor DIR --out DIR [--live] [--config controller.json]
            [--target-fpr 0.05] [--fpr-scope per-config|pooled] [--concurrency N] [--max-new-tokens N]
            [--admission on|off]   (probe-and-restart rules tuned on validation, given to the live guard)
  frontier  --out DIR (--traces TRACES [--prompts test|val|all] | --records FILE...) [--records FILE]...
            [--measure integrated|end] [--resamples N] [--seed S]
            (static hull vs guard policies: CFR/accuracy vs KV savings, paired bootstrap gaps)
  problems  [--split train|val|test] [--count N] [--start K] [--problem-opt key=value]... [--json]
  bench-compressors --model PATH [--compressors a,b] [--ratios 0.5,0.9] [--prompt-tokens N]
            [--decode-tokens N] [--compress-every N] [--batch B] [--repeats N] [--threads N] [--out DIR]
  bench     --model PATH [--device D] [--dtype T] [--weights native|int8] [--batch B]
            [--prompt-tokens N] [--decode-tokens N] [--threads N] [--cpu-decode loops|libtorch]
            [--json]  (reports the dtype, BLAS, product and decode paths; int8: logit error
            against native; --cpu-decode libtorch runs CPU decode steps on libtorch ops)
  random-checkpoint --out DIR [--shape qwen2.5-0.5b|qwen2.5-1.5b|qwen2.5-7b|llama-tiny110m]
            [--dtype bf16|f32] [--seed S]   (random weights of a published shape, for speed tests)
  train-lm  --out DIR [--steps N] [--batch B] [--dim D] [--layers L] [--heads H] [--kv-heads K]
            [--ffn F] [--lr X] [--seed S] [--threads T] [--train-problems N]
            [--eval-problems N] [--problem-opt key=value]... [--time-budget SECONDS]
            [--init DIR]
  eval-lm   --model DIR [--problems N] [--threads T] [--problem-opt key=value]... [--json] [--show]
            [--weights native|int8]
)";

using Command = absl::Status (*)(int, char**);
const std::map<std::string, Command> kCommands = {
    {"tokenize", kvguard::cli::RunTokenize},
    {"logits", kvguard::cli::RunLogits},
    {"generate", kvguard::cli::RunGenerate},
    {"bench", kvguard::cli::RunBench},
    {"random-checkpoint", kvguard::cli::RunRandomCheckpoint},
    {"kept", kvguard::cli::RunKept},
    {"bench-compressors", kvguard::cli::RunBenchCompressors},
    {"sweep", kvguard::cli::RunSweepCommand},
    {"prefill-risk", kvguard::cli::RunPrefillRiskCommand},
    {"train-predictor", kvguard::cli::RunTrainPredictor},
    {"evaluate", kvguard::cli::RunEvaluate},
    {"frontier", kvguard::cli::RunFrontier},
    {"problems", kvguard::cli::RunProblems},
    {"compressors", kvguard::cli::RunCompressors},
    {"calibrate-vector", kvguard::cli::RunCalibrateVector},
    {"train-lm", kvguard::cli::RunTrainLm},
    {"eval-lm", kvguard::cli::RunEvalLm},
};

}  // namespace

int main(int argc, char** argv) {
  kvguard::KeepFreedBlocksInHeap();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  absl::Status status;
  try {
    const auto run = kCommands.find(command);
    if (run == kCommands.end()) {
      std::cerr << "kvguard: unknown command '" << command << "'\n" << kUsage;
      return 2;
    }
    status = run->second(argc - 2, argv + 2);
  } catch (const std::exception& e) {
    std::cerr << "kvguard " << command << ": internal error: " << e.what() << "\n";
    return 1;
  }
  if (!status.ok()) {
    std::cerr << "kvguard " << command << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}
