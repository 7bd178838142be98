// File: guard_sidecar/hazard_model.h
//
// The hazard predictor: P(catastrophe onset within the next H tokens) per
// token, from the feature rows of guard_sidecar/features.h.
//
//   HazardModel: an XGBoost booster through the C API (libxgboost 1.7.4).
//     auto model = HazardModel::Train(train, {.rounds = 200}, &validation);
//     KVG_RETURN_IF_ERROR((*model)->Save("hazard.json"));
//     auto loaded = HazardModel::Load("hazard.json", FeatureSchema::All());
//     auto p = (*loaded)->PredictBatch(rows);   // rows: n x num_features
//   The column names are stored in the model file (attribute
//   "kvguard_feature_names" and XGBoost's own feature_names) and checked on
//   load: a model trained on other columns is refused with both lists named.
//   Prediction is in-place (XGBoosterPredictFromDense), nthread 1 by default,
//   and safe from many threads at once (guard.md 6.3): the booster is
//   configured and warmed up before Load/Train return and never changed after.
//
//   HazardPredictor: what the guard service calls, on FULL feature rows.
//     ModelHazard projects them to the model's schema and predicts;
//     FallbackHazard is the rule used when no model is given.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "guard_sidecar/features.h"

namespace kvguard::guard {

// Dense training data: rows x feature_names.size(), row-major.
struct Dataset {
  std::vector<std::string> feature_names;
  std::vector<float> features;
  std::vector<float> labels;   // 0 or 1, one per row
  std::vector<float> weights;  // one per row, or empty (all 1)

  [[nodiscard]] size_t rows() const { return labels.size(); }
  [[nodiscard]] absl::Status Validate() const;
};

struct TrainParams {
  int max_depth = 6;
  double eta = 0.1;
  int rounds = 200;               // boosting rounds (upper bound with early stopping)
  double scale_pos_weight = 1.0;  // <= 0: sum of negative / sum of positive weights
  double subsample = 0.8;
  double colsample_bytree = 1.0;
  double min_child_weight = 1.0;
  uint64_t seed = 0;
  int early_stopping_rounds = 20;  // on the validation set's logloss; 0 = off
  int train_threads = 1;           // OpenMP threads while training
  int predict_threads = 1;         // nthread of the returned model
};

class HazardModel {
 public:
  ~HazardModel();
  HazardModel(const HazardModel&) = delete;
  HazardModel& operator=(const HazardModel&) = delete;

  // Binary logistic boosting on `train`; with `validation`, early stopping
  // keeps the best round by validation logloss (the model is sliced to it).
  static absl::StatusOr<std::unique_ptr<HazardModel>> Train(const Dataset& train,
                                                            const TrainParams& params,
                                                            const Dataset* validation = nullptr);
  // Loads a .json / .ubj model and its stored feature names.
  static absl::StatusOr<std::unique_ptr<HazardModel>> Load(const std::string& path,
                                                           int predict_threads = 1);
  // Same, and fails unless the stored names equal `expected` (same order).
  static absl::StatusOr<std::unique_ptr<HazardModel>> Load(const std::string& path,
                                                           const FeatureSchema& expected,
                                                           int predict_threads = 1);
  // Format by extension: .json (JSON) or .ubj (UBJSON).
  absl::Status Save(const std::string& path) const;

  // P(positive) for each row of `rows` (n x num_features(), row-major); one
  // XGBoost call for the whole batch. Thread-safe.
  [[nodiscard]] absl::StatusOr<std::vector<float>> PredictBatch(std::span<const float> rows) const;

  [[nodiscard]] const std::vector<std::string>& feature_names() const { return names_; }
  [[nodiscard]] size_t num_features() const { return names_.size(); }
  [[nodiscard]] int rounds() const { return rounds_; }
  // Best validation round (0-based) when trained with early stopping, else -1.
  [[nodiscard]] int best_iteration() const { return best_iteration_; }

 private:
  HazardModel(void* booster, std::vector<std::string> names);
  absl::Status PrepareForServing(int predict_threads);

  void* booster_ = nullptr;  // BoosterHandle
  std::vector<std::string> names_;
  int rounds_ = 0;
  int best_iteration_ = -1;
};

// Hazard for full feature rows (n x kNumFeatures); one call per step batch.
class HazardPredictor {
 public:
  virtual ~HazardPredictor() = default;
  [[nodiscard]] virtual absl::StatusOr<std::vector<float>> Predict(
      std::span<const float> full_rows) const = 0;
  [[nodiscard]] virtual std::string Describe() const = 0;
};

class ModelHazard final : public HazardPredictor {
 public:
  // The schema is taken from the model's stored names, so each must be a
  // feature this guard computes.
  static absl::StatusOr<std::unique_ptr<ModelHazard>> Create(std::unique_ptr<HazardModel> model);
  [[nodiscard]] absl::StatusOr<std::vector<float>> Predict(
      std::span<const float> full_rows) const override;
  [[nodiscard]] std::string Describe() const override;
  [[nodiscard]] const FeatureSchema& schema() const { return schema_; }

 private:
  ModelHazard(std::unique_ptr<HazardModel> model, FeatureSchema schema)
      : model_(std::move(model)), schema_(std::move(schema)) {}
  std::unique_ptr<HazardModel> model_;
  FeatureSchema schema_;
};

// The rule without a model:
//   hazard = max(sigmoid((entropy_mean_w8 - entropy_threshold) / entropy_scale),
//                sigmoid((rep4_share_w32 - repeat_threshold) / repeat_scale))
// The entropy term is seed 004's finding (sustained entropy rise precedes a
// loop); the repetition term catches confident loops, whose entropy is low.
struct FallbackHazardConfig {
  double entropy_threshold = 3.0;  // nats
  double entropy_scale = 0.5;
  bool use_repetition = true;
  double repeat_threshold = 0.5;  // share of the last 32 tokens
  double repeat_scale = 0.1;

  // From the "fallback_hazard" object of the guard config (all keys optional).
  static absl::StatusOr<FallbackHazardConfig> FromJson(const nlohmann::json& j);
};

class FallbackHazard final : public HazardPredictor {
 public:
  explicit FallbackHazard(FallbackHazardConfig config = {}) : config_(config) {}
  [[nodiscard]] float Score(const float* full_row) const;
  [[nodiscard]] absl::StatusOr<std::vector<float>> Predict(
      std::span<const float> full_rows) const override;
  [[nodiscard]] std::string Describe() const override;

 private:
  FallbackHazardConfig config_;
};

}  // namespace kvguard::guard
