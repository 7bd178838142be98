// File: services/cli/commands.h
//
// The kvguard subcommands. Each takes the arguments after its name, prints
// its result on stdout, and returns an error status (printed by main as one
// line on stderr, exit code 1) on bad input.
#pragma once

#include "absl/status/status.h"

namespace kvguard::cli {

absl::Status RunTokenize(int argc, char** argv);
absl::Status RunLogits(int argc, char** argv);
absl::Status RunGenerate(int argc, char** argv);
absl::Status RunBench(int argc, char** argv);
absl::Status RunRandomCheckpoint(int argc, char** argv);
absl::Status RunKept(int argc, char** argv);
absl::Status RunCompressors(int argc, char** argv);
absl::Status RunBenchCompressors(int argc, char** argv);
absl::Status RunProblems(int argc, char** argv);
absl::Status RunSweepCommand(int argc, char** argv);
absl::Status RunPrefillRiskCommand(int argc, char** argv);
absl::Status RunTrainPredictor(int argc, char** argv);
absl::Status RunEvaluate(int argc, char** argv);
absl::Status RunFrontier(int argc, char** argv);
absl::Status RunTrainLm(int argc, char** argv);
absl::Status RunEvalLm(int argc, char** argv);
absl::Status RunCalibrateVector(int argc, char** argv);

}  // namespace kvguard::cli
