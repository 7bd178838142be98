#include "compressors/vector_calibration.h"

#include <ATen/ATen.h>

#include <cstring>
#include <exception>

#include "absl/strings/str_cat.h"
#include "services/engine/safetensors.h"
#include "services/engine/safetensors_writer.h"

namespace kvguard::compress {
namespace {

at::TensorOptions F64() { return at::TensorOptions().dtype(at::kDouble).device(at::kCPU); }

std::string ShapeString(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&out, i ? ", " : "", shape[i]);
  return out + "]";
}

}  // namespace

RegressionAccumulator::RegressionAccumulator(int64_t kv_heads, int64_t head_dim)
    : xtx_(at::zeros({kv_heads, head_dim + 1, head_dim + 1}, F64())),
      xty_(at::zeros({kv_heads, head_dim + 1, head_dim}, F64())),
      y_sum_(at::zeros({kv_heads, head_dim}, F64())),
      yty_(at::zeros({kv_heads}, F64())) {}

void RegressionAccumulator::Add(const at::Tensor& keys, const at::Tensor& values) {
  at::Tensor k = keys.to(at::kCPU, at::kDouble);
  at::Tensor y = values.to(at::kCPU, at::kDouble);
  at::Tensor x = at::cat({k, at::ones({k.size(0), k.size(1), 1}, F64())}, 2);  // [h, T, d + 1]
  xtx_.add_(at::bmm(x.transpose(1, 2), x));
  xty_.add_(at::bmm(x.transpose(1, 2), y));
  y_sum_.add_(y.sum(1));
  yty_.add_(y.square().sum({1, 2}));
  n_ += k.size(1);
}

void RegressionAccumulator::Merge(const RegressionAccumulator& other) {
  xtx_.add_(other.xtx_);
  xty_.add_(other.xty_);
  y_sum_.add_(other.y_sum_);
  yty_.add_(other.yty_);
  n_ += other.n_;
}

absl::StatusOr<at::Tensor> RegressionAccumulator::Solve(double ridge) const {
  if (n_ == 0) return absl::InvalidArgumentError("regression: no tokens to fit");
  const int64_t d = xty_.size(2);
  at::Tensor penalty = at::eye(d + 1, F64()) * ridge;
  penalty[d][d] = 0.0;  // the bias row stays unpenalised
  const absl::Status singular = absl::InvalidArgumentError(absl::StrCat(
      "regression: the normal equations are singular (", n_, " tokens for ", d + 1,
      " unknowns per head); use a ridge > 0"));
  // With ridge > 0 the system is positive definite (the bias entry sees n > 0
  // tokens); without, rounding can hide a singular one from the solver.
  if (ridge <= 0 && at::linalg_matrix_rank(xtx_).min().item<int64_t>() < d + 1) return singular;
  try {
    return at::linalg_solve(xtx_ + penalty, xty_);
  } catch (const std::exception&) {
    return singular;
  }
}

at::Tensor RegressionAccumulator::RSquared(const at::Tensor& w) const {
  at::Tensor w64 = w.to(at::kCPU, at::kDouble);
  // SSE = Y'Y - 2 tr(W' X'Y) + tr(W' X'X W), per head, from the statistics alone.
  at::Tensor sse = yty_ - 2 * (w64 * xty_).sum({1, 2}) + (w64 * at::bmm(xtx_, w64)).sum({1, 2});
  at::Tensor sst = yty_ - y_sum_.square().sum(1) / static_cast<double>(std::max<int64_t>(n_, 1));
  return 1 - sse / sst;
}

absl::StatusOr<at::Tensor> FitRegression(const std::vector<at::Tensor>& keys,
                                         const std::vector<at::Tensor>& values, double ridge) {
  if (keys.empty() || keys.size() != values.size()) {
    return absl::InvalidArgumentError("regression: need one value tensor per key tensor");
  }
  RegressionAccumulator acc(keys[0].size(0), keys[0].size(2));
  for (size_t i = 0; i < keys.size(); ++i) acc.Add(keys[i], values[i]);
  return acc.Solve(ridge);
}

absl::StatusOr<at::Tensor> ReadVectorCalibration(const std::string& path) {
  auto file = engine::SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  const engine::TensorView* view = (*file)->Find(kVectorRegressionTensor);
  if (view == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no tensor '", kVectorRegressionTensor,
                                                   "' (not a calibrate-vector file?)"));
  }
  if (view->dtype != engine::DType::kF32 || view->shape.size() != 4 || view->shape[3] + 1 != view->shape[2]) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": '", kVectorRegressionTensor, "' must be F32 [layers, kv_heads, head_dim + 1, head_dim]"));
  }
  at::Tensor out = at::empty(view->shape, at::kFloat);
  std::memcpy(out.data_ptr<float>(), view->data, view->nbytes);
  return out;
}

absl::Status CheckVectorCalibration(const at::Tensor& regression, const engine::ModelConfig& config,
                                    const std::string& path) {
  const std::vector<int64_t> want = {config.num_layers, config.num_kv_heads, config.head_dim + 1,
                                     config.head_dim};
  if (regression.sizes() == at::IntArrayRef(want)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "calibration file ", path, " was made for another model: regression ", ShapeString(regression.sizes()),
      ", the model needs [", config.num_layers, ", ", config.num_kv_heads, ", ", config.head_dim + 1, ", ",
      config.head_dim, "] (layers, kv heads, head_dim + 1, head_dim)"));
}

absl::Status WriteVectorCalibration(const std::string& path, const at::Tensor& regression,
                                    const std::map<std::string, std::string>& metadata) {
  at::Tensor w = regression.to(at::kCPU, at::kFloat).contiguous();
  engine::TensorData data{.dtype = engine::DType::kF32,
                          .shape = w.sizes().vec(),
                          .bytes = std::string(reinterpret_cast<const char*>(w.data_ptr<float>()),
                                               w.numel() * sizeof(float))};
  return engine::WriteSafetensors(path, {{kVectorRegressionTensor, data}}, metadata);
}

}  // namespace kvguard::compress
