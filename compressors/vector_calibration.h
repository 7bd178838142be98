// File: compressors/vector_calibration.h
//
// VECTOR's offline calibration: per layer and kv head, a ridge regression
// that predicts a token's value vector from its post-RoPE key,
// V ~= [K, 1] W with W: [head_dim + 1, head_dim] (last row = bias), and the
// file that carries it (safetensors, tensor `vector.regression`, float32
// [layers, kv_heads, head_dim + 1, head_dim]).
//
// The fit keeps only sufficient statistics (X^T X, X^T Y, sums of Y), in
// float64, so calibration memory does not grow with the number of tokens.
//
//   RegressionAccumulator acc(kv_heads, head_dim);
//   for (each sequence) acc.Add(cache.Keys(layer), cache.Values(layer));
//   KVG_ASSIGN_OR_RETURN(at::Tensor w, acc.Solve(/*ridge=*/1.0));  // [kv_heads, d + 1, d]
//   at::Tensor r2 = acc.RSquared(w);                                 // [kv_heads]
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "services/engine/model_config.h"

namespace kvguard::compress {

inline constexpr char kVectorRegressionTensor[] = "vector.regression";

class RegressionAccumulator {
 public:
  RegressionAccumulator(int64_t kv_heads, int64_t head_dim);

  // keys, values: [kv_heads, T, head_dim], any floating dtype and device.
  void Add(const at::Tensor& keys, const at::Tensor& values);
  void Merge(const RegressionAccumulator& other);
  [[nodiscard]] int64_t count() const { return n_; }

  // Ridge solution, float64 [kv_heads, head_dim + 1, head_dim]: solves
  // (X^T X + ridge * I') W = X^T Y with X = [K, 1], where I' is the identity
  // without its bias entry (the intercept is not shrunk). InvalidArgument
  // when the system is singular (too few tokens for ridge 0) or empty.
  [[nodiscard]] absl::StatusOr<at::Tensor> Solve(double ridge) const;
  // Coefficient of determination of `w` on the accumulated tokens, per head
  // (float64 [kv_heads]): 1 - SSE / SST, both summed over value dimensions.
  [[nodiscard]] at::Tensor RSquared(const at::Tensor& w) const;

 private:
  at::Tensor xtx_;    // [h, d + 1, d + 1]
  at::Tensor xty_;    // [h, d + 1, d]
  at::Tensor y_sum_;  // [h, d]
  at::Tensor yty_;    // [h]
  int64_t n_ = 0;
};

// One layer's fit over a list of sequences (keys[i], values[i]: [kv_heads, T_i, head_dim]).
absl::StatusOr<at::Tensor> FitRegression(const std::vector<at::Tensor>& keys,
                                         const std::vector<at::Tensor>& values, double ridge);

// Reads `vector.regression` (float32, rank 4) from a calibration file. Errors
// name the file.
absl::StatusOr<at::Tensor> ReadVectorCalibration(const std::string& path);
// InvalidArgument naming the file when `regression` does not fit the model
// (layers, kv heads, head_dim).
absl::Status CheckVectorCalibration(const at::Tensor& regression, const engine::ModelConfig& config,
                                    const std::string& path);
// Writes `regression` ([layers, kv_heads, d + 1, d], stored as float32) and string metadata.
absl::Status WriteVectorCalibration(const std::string& path, const at::Tensor& regression,
                                    const std::map<std::string, std::string>& metadata);

}  // namespace kvguard::compress
