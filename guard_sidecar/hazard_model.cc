#include "guard_sidecar/hazard_model.h"

#include <xgboost/c_api.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace kvguard::guard {
namespace {

constexpr char kNamesAttr[] = "kvguard_feature_names";
// In-place prediction config; every key is required by 1.7.4 (guard.md 6.2).
constexpr char kPredictConfig[] =
    R"({"type": 0, "training": false, "iteration_begin": 0, "iteration_end": 0,)"
    R"( "strict_shape": false, "cache_id": 0, "missing": NaN})";

absl::Status XgbError(absl::StatusCode code, const std::string& what) {
  return absl::Status(code, absl::StrCat("xgboost ", what, ": ", XGBGetLastError()));
}

#define KVG_XGB(call, what)                                                \
  do {                                                                     \
    if ((call) != 0) return XgbError(absl::StatusCode::kInternal, (what)); \
  } while (false)

// Owns one DMatrixHandle.
struct DMatrix {
  DMatrixHandle handle = nullptr;
  DMatrix() = default;
  DMatrix(const DMatrix&) = delete;
  DMatrix& operator=(const DMatrix&) = delete;
  ~DMatrix() {
    if (handle != nullptr) XGDMatrixFree(handle);
  }
};

absl::Status FillDMatrix(const Dataset& data, DMatrix& out) {
  KVG_XGB(XGDMatrixCreateFromMat(data.features.data(), data.rows(), data.feature_names.size(), NAN,
                                 &out.handle),
          "XGDMatrixCreateFromMat");
  KVG_XGB(XGDMatrixSetFloatInfo(out.handle, "label", data.labels.data(), data.rows()), "label");
  if (!data.weights.empty()) {
    KVG_XGB(XGDMatrixSetFloatInfo(out.handle, "weight", data.weights.data(), data.rows()),
            "weight");
  }
  return absl::OkStatus();
}

double AutoScalePosWeight(const Dataset& data) {
  double pos = 0, neg = 0;
  for (size_t i = 0; i < data.rows(); ++i) {
    const double w = data.weights.empty() ? 1.0 : data.weights[i];
    (data.labels[i] > 0.5 ? pos : neg) += w;
  }
  return pos > 0 ? std::max(neg / pos, 1e-6) : 1.0;
}

absl::Status SetParams(BoosterHandle h, const TrainParams& p, double scale_pos_weight) {
  const std::vector<std::pair<const char*, std::string>> params = {
      {"objective", "binary:logistic"},
      {"eval_metric", "logloss"},
      {"tree_method", "hist"},
      {"max_depth", absl::StrCat(p.max_depth)},
      {"eta", absl::StrCat(p.eta)},
      {"subsample", absl::StrCat(p.subsample)},
      {"colsample_bytree", absl::StrCat(p.colsample_bytree)},
      {"min_child_weight", absl::StrCat(p.min_child_weight)},
      {"scale_pos_weight", absl::StrCat(scale_pos_weight)},
      {"nthread", absl::StrCat(p.train_threads)},
      {"seed", absl::StrCat(p.seed)},
  };
  for (const auto& [key, value] : params) {
    if (XGBoosterSetParam(h, key, value.c_str()) != 0) {
      return XgbError(absl::StatusCode::kInvalidArgument, absl::StrCat("param ", key, "=", value));
    }
  }
  return absl::OkStatus();
}

// "[12]\tval-logloss:0.0123" -> 0.0123 (the last metric, as Python's EarlyStopping).
absl::StatusOr<double> ParseLastMetric(const char* eval) {
  const std::string_view s(eval);
  const size_t colon = s.rfind(':');
  if (colon == std::string_view::npos) {
    return absl::InternalError(absl::StrCat("unparsable eval line '", eval, "'"));
  }
  return std::strtod(std::string(s.substr(colon + 1)).c_str(), nullptr);
}

// xgboost >= 3.1 writes base_score as "[2E-1]"; 1.7.4 then silently predicts
// with 0.5 (guard.md 6.6). Refuse such files instead of serving a biased model.
absl::Status CheckJsonModelFormat(const std::string& path) {
  KVG_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not JSON"));
  const nlohmann::json* base = j.contains("learner") && j["learner"].contains("learner_model_param")
                                   ? &j["learner"]["learner_model_param"]
                                   : nullptr;
  if (base != nullptr && base->contains("base_score") && (*base)["base_score"].is_string() &&
      absl::StartsWith((*base)["base_score"].get<std::string>(), "[")) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": written by xgboost ", j.value("version", nlohmann::json::array()).dump(),
        " with a vector base_score, which libxgboost 1.7.4 would silently replace by 0.5;"
        " retrain with xgboost 1.7.x (Debian python3-xgboost) or through kvguard"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadFeatureNames(BoosterHandle h,
                                                          const std::string& path) {
  const char* attr = nullptr;
  int found = 0;
  KVG_XGB(XGBoosterGetAttr(h, kNamesAttr, &attr, &found), "GetAttr");
  if (found) {
    const nlohmann::json j = nlohmann::json::parse(attr, nullptr, false);
    if (!j.is_array()) return absl::InvalidArgumentError(absl::StrCat(path, ": bad ", kNamesAttr));
    return j.get<std::vector<std::string>>();
  }
  // A model trained in Python with named columns carries XGBoost's own list.
  bst_ulong n = 0;
  const char** names = nullptr;
  KVG_XGB(XGBoosterGetStrFeatureInfo(h, "feature_name", &n, &names), "GetStrFeatureInfo");
  if (n == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the model stores no feature names (neither the ", kNamesAttr,
                     " attribute nor feature_names); refusing to guess the column order"));
  }
  return std::vector<std::string>(names, names + n);
}

}  // namespace

absl::Status Dataset::Validate() const {
  if (feature_names.empty()) return absl::InvalidArgumentError("dataset: no feature names");
  if (labels.empty()) return absl::InvalidArgumentError("dataset: no rows");
  if (features.size() != labels.size() * feature_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: ", features.size(), " values for ",
                                                   labels.size(), " rows x ", feature_names.size(),
                                                   " features"));
  }
  if (!weights.empty() && weights.size() != labels.size()) {
    return absl::InvalidArgumentError("dataset: weights must be empty or one per row");
  }
  return absl::OkStatus();
}

HazardModel::HazardModel(void* booster, std::vector<std::string> names)
    : booster_(booster), names_(std::move(names)) {}

HazardModel::~HazardModel() {
  if (booster_ != nullptr) XGBoosterFree(booster_);
}

absl::StatusOr<std::unique_ptr<HazardModel>> HazardModel::Train(const Dataset& train,
                                                                const TrainParams& params,
                                                                const Dataset* validation) {
  KVG_RETURN_IF_ERROR(train.Validate());
  if (validation != nullptr) {
    KVG_RETURN_IF_ERROR(validation->Validate());
    if (validation->feature_names != train.feature_names) {
      return absl::InvalidArgumentError("validation set has other feature names than training");
    }
  }
  if (params.rounds < 1) return absl::InvalidArgumentError("rounds must be >= 1");
  DMatrix dtrain, dvalid;
  KVG_RETURN_IF_ERROR(FillDMatrix(train, dtrain));
  std::vector<DMatrixHandle> cache = {dtrain.handle};
  if (validation != nullptr) {
    KVG_RETURN_IF_ERROR(FillDMatrix(*validation, dvalid));
    cache.push_back(dvalid.handle);
  }
  BoosterHandle h = nullptr;
  KVG_XGB(XGBoosterCreate(cache.data(), cache.size(), &h), "XGBoosterCreate");
  std::unique_ptr<HazardModel> model(new HazardModel(h, train.feature_names));
  const double spw =
      params.scale_pos_weight > 0 ? params.scale_pos_weight : AutoScalePosWeight(train);
  KVG_RETURN_IF_ERROR(SetParams(h, params, spw));

  double best_score = INFINITY;
  int best = -1;
  for (int it = 0; it < params.rounds; ++it) {
    KVG_XGB(XGBoosterUpdateOneIter(h, it, dtrain.handle), "UpdateOneIter");
    model->rounds_ = it + 1;
    if (validation == nullptr) continue;
    const char* names[1] = {"val"};
    const char* eval = nullptr;
    KVG_XGB(XGBoosterEvalOneIter(h, it, &dvalid.handle, names, 1, &eval), "EvalOneIter");
    KVG_ASSIGN_OR_RETURN(const double score, ParseLastMetric(eval));
    if (score < best_score) {
      best_score = score;
      best = it;
    } else if (params.early_stopping_rounds > 0 && it - best >= params.early_stopping_rounds) {
      break;
    }
  }
  if (validation != nullptr && params.early_stopping_rounds > 0 && best + 1 < model->rounds_) {
    BoosterHandle sliced = nullptr;
    KVG_XGB(XGBoosterSlice(h, 0, best + 1, 1, &sliced), "XGBoosterSlice");
    XGBoosterFree(model->booster_);
    model->booster_ = sliced;
    model->rounds_ = best + 1;
  }
  model->best_iteration_ = validation != nullptr ? best : -1;

  // Names both as kvguard's attribute and as XGBoost's feature_names (so a
  // Python reader sees them too), plus Python's best_* attributes.
  BoosterHandle out = model->booster_;
  std::vector<const char*> cnames;
  for (const auto& n : model->names_) cnames.push_back(n.c_str());
  KVG_XGB(XGBoosterSetStrFeatureInfo(out, "feature_name", cnames.data(), cnames.size()),
          "SetStrFeatureInfo");
  const std::string names_json = nlohmann::json(model->names_).dump();
  KVG_XGB(XGBoosterSetAttr(out, kNamesAttr, names_json.c_str()), "SetAttr");
  if (model->best_iteration_ >= 0) {
    KVG_XGB(XGBoosterSetAttr(out, "best_iteration", absl::StrCat(best).c_str()), "SetAttr");
    KVG_XGB(XGBoosterSetAttr(out, "best_score", absl::StrCat(best_score).c_str()), "SetAttr");
  }
  KVG_RETURN_IF_ERROR(model->PrepareForServing(params.predict_threads));
  return model;
}

absl::StatusOr<std::unique_ptr<HazardModel>> HazardModel::Load(const std::string& path,
                                                               int predict_threads) {
  if (!FileExists(path)) return absl::NotFoundError(absl::StrCat("no model file ", path));
  if (absl::EndsWith(path, ".json")) KVG_RETURN_IF_ERROR(CheckJsonModelFormat(path));
  BoosterHandle h = nullptr;
  KVG_XGB(XGBoosterCreate(nullptr, 0, &h), "XGBoosterCreate");
  std::unique_ptr<HazardModel> model(new HazardModel(h, {}));
  if (XGBoosterLoadModel(h, path.c_str()) != 0) {
    return XgbError(absl::StatusCode::kInvalidArgument, absl::StrCat("cannot load ", path));
  }
  KVG_ASSIGN_OR_RETURN(model->names_, ReadFeatureNames(h, path));
  bst_ulong num_features = 0;
  KVG_XGB(XGBoosterGetNumFeature(h, &num_features), "GetNumFeature");
  if (num_features != model->names_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the booster has ", num_features,
                                                   " columns but names ", model->names_.size()));
  }
  KVG_XGB(XGBoosterBoostedRounds(h, &model->rounds_), "BoostedRounds");
  const char* best = nullptr;
  int found = 0;
  KVG_XGB(XGBoosterGetAttr(h, "best_iteration", &best, &found), "GetAttr");
  if (found) model->best_iteration_ = std::atoi(best);
  KVG_RETURN_IF_ERROR(model->PrepareForServing(predict_threads));
  return model;
}

absl::StatusOr<std::unique_ptr<HazardModel>> HazardModel::Load(const std::string& path,
                                                               const FeatureSchema& expected,
                                                               int predict_threads) {
  KVG_ASSIGN_OR_RETURN(auto model, Load(path, predict_threads));
  const auto& got = model->names_;
  const auto& want = expected.names();
  if (got == want) return model;
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return absl::FailedPreconditionError(absl::StrCat(
      path, ": feature mismatch: the model has ", got.size(), " features, the guard's schema ",
      want.size(), "; first difference at column ", i, " (model '",
      i < got.size() ? got[i] : "<none>", "', schema '", i < want.size() ? want[i] : "<none>",
      "'). Model features: ", absl::StrJoin(got, ",")));
}

absl::Status HazardModel::Save(const std::string& path) const {
  if (!absl::EndsWith(path, ".json") && !absl::EndsWith(path, ".ubj")) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": use a .json or .ubj file name"));
  }
  if (XGBoosterSaveModel(booster_, path.c_str()) != 0) {
    return XgbError(absl::StatusCode::kUnavailable, absl::StrCat("cannot save ", path));
  }
  return absl::OkStatus();
}

absl::Status HazardModel::PrepareForServing(int predict_threads) {
  // All parameters are set, and the learner configured by one prediction,
  // before the handle is shared: SetParam during prediction is unsafe (6.3).
  KVG_XGB(
      XGBoosterSetParam(booster_, "nthread", absl::StrCat(std::max(1, predict_threads)).c_str()),
      "nthread");
  std::vector<float> zeros(names_.size(), 0.0f);
  return PredictBatch(zeros).status();
}

absl::StatusOr<std::vector<float>> HazardModel::PredictBatch(std::span<const float> rows) const {
  const size_t cols = names_.size();
  if (rows.size() % cols != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(rows.size(), " values are not whole rows of ", cols, " features"));
  }
  const size_t n = rows.size() / cols;
  if (n == 0) return std::vector<float>{};
  char array_interface[192];
  std::snprintf(array_interface, sizeof(array_interface),
                R"({"data": [%zu, true], "shape": [%zu, %zu], "typestr": "<f4", "version": 3})",
                reinterpret_cast<size_t>(rows.data()), n, cols);
  const bst_ulong* shape = nullptr;
  bst_ulong dim = 0;
  const float* out = nullptr;
  KVG_XGB(XGBoosterPredictFromDense(booster_, array_interface, kPredictConfig, nullptr, &shape,
                                    &dim, &out),
          "PredictFromDense");
  // The buffer is thread-local to (booster, thread) and reused: copy it now.
  return std::vector<float>(out, out + n);
}

// ---- predictors ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ModelHazard>> ModelHazard::Create(
    std::unique_ptr<HazardModel> model) {
  auto schema = FeatureSchema::FromNames(model->feature_names());
  if (!schema.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "hazard model does not match this guard's features: ", schema.status().message()));
  }
  return std::unique_ptr<ModelHazard>(new ModelHazard(std::move(model), std::move(*schema)));
}

absl::StatusOr<std::vector<float>> ModelHazard::Predict(std::span<const float> full_rows) const {
  return model_->PredictBatch(schema_.ProjectRows(full_rows));
}

std::string ModelHazard::Describe() const {
  return absl::StrCat("xgboost model (", schema_.size(), " features, ", model_->rounds(),
                      " rounds)");
}

absl::StatusOr<FallbackHazardConfig> FallbackHazardConfig::FromJson(const nlohmann::json& j) {
  FallbackHazardConfig c;
  if (j.is_null()) return c;
  if (!j.is_object()) return absl::InvalidArgumentError("fallback_hazard must be an object");
  for (const auto& [key, value] : j.items()) {
    double* number = key == "entropy_threshold"  ? &c.entropy_threshold
                     : key == "entropy_scale"    ? &c.entropy_scale
                     : key == "repeat_threshold" ? &c.repeat_threshold
                     : key == "repeat_scale"     ? &c.repeat_scale
                                                 : nullptr;
    if (number != nullptr) {
      if (!value.is_number()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fallback_hazard.", key, " must be a number"));
      }
      *number = value.get<double>();
    } else if (key == "use_repetition") {
      if (!value.is_boolean()) {
        return absl::InvalidArgumentError("fallback_hazard.use_repetition must be true or false");
      }
      c.use_repetition = value.get<bool>();
    } else if (!key.starts_with("_")) {
      return absl::InvalidArgumentError(absl::StrCat("fallback_hazard: unknown key '", key, "'"));
    }
  }
  if (!(c.entropy_scale > 0))
    return absl::InvalidArgumentError("fallback_hazard.entropy_scale must be > 0");
  if (!(c.repeat_scale > 0))
    return absl::InvalidArgumentError("fallback_hazard.repeat_scale must be > 0");
  return c;
}

float FallbackHazard::Score(const float* row) const {
  auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  double h = sigmoid((row[kEntropyMeanW8] - config_.entropy_threshold) / config_.entropy_scale);
  if (config_.use_repetition) {
    h = std::max(h,
                 sigmoid((row[kRep4ShareW32] - config_.repeat_threshold) / config_.repeat_scale));
  }
  return static_cast<float>(h);
}

absl::StatusOr<std::vector<float>> FallbackHazard::Predict(std::span<const float> full_rows) const {
  std::vector<float> out(full_rows.size() / kNumFeatures);
  for (size_t i = 0; i < out.size(); ++i) out[i] = Score(full_rows.data() + i * kNumFeatures);
  return out;
}

std::string FallbackHazard::Describe() const {
  return absl::StrCat(
      "fallback rule (entropy_mean_w8 > ", config_.entropy_threshold,
      config_.use_repetition ? absl::StrCat(", rep4_share_w32 > ", config_.repeat_threshold) : "",
      ")");
}

}  // namespace kvguard::guard
