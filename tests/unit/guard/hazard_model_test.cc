// File: tests/unit/guard/hazard_model_test.cc
#include "guard_sidecar/hazard_model.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "gtest/gtest.h"

namespace kvguard::guard {
namespace {

// AUROC by the Mann-Whitney statistic (ties count half).
double Auroc(const std::vector<float>& scores, const std::vector<float>& labels) {
  std::vector<size_t> order(scores.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double rank_sum = 0, pos = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    const double avg_rank = (i + j + 1) / 2.0;  // 1-based ranks i+1..j
    for (size_t k = i; k < j; ++k) {
      if (labels[order[k]] > 0.5f) {
        rank_sum += avg_rank;
        ++pos;
      }
    }
    i = j;
  }
  const double neg = static_cast<double>(scores.size()) - pos;
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

// y = 1 iff entropy + 2 * (1 - top1_prob) > 2.2; rep_count_4 is noise.
Dataset Toy(size_t rows, uint32_t seed, bool random_labels = false) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0, 1);
  Dataset d;
  d.feature_names = {"entropy", "top1_prob", "rep_count_4"};
  for (size_t i = 0; i < rows; ++i) {
    const float entropy = 3 * u(rng), top1 = u(rng), noise = std::floor(5 * u(rng));
    d.features.insert(d.features.end(), {entropy, top1, noise});
    const bool y = random_labels ? u(rng) < 0.3f : entropy + 2 * (1 - top1) > 2.2f;
    d.labels.push_back(y ? 1.0f : 0.0f);
  }
  return d;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/kvg_guard_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::unique_ptr<HazardModel> TrainToy(int rounds = 60) {
  const Dataset train = Toy(3000, 1), valid = Toy(1000, 2);
  auto model = HazardModel::Train(train, {.max_depth = 4, .eta = 0.3, .rounds = rounds}, &valid);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

TEST(HazardModelTest, LearnsASeparableToyProblem) {
  auto model = TrainToy();
  ASSERT_NE(model, nullptr);
  const Dataset test = Toy(2000, 3);
  auto p = model->PredictBatch(test.features);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), test.rows());
  EXPECT_GT(Auroc(*p, test.labels), 0.95);
  EXPECT_EQ(model->feature_names(), test.feature_names);
}

TEST(HazardModelTest, SaveLoadRoundTripPredictsIdentically) {
  auto model = TrainToy();
  ASSERT_NE(model, nullptr);
  const Dataset test = Toy(500, 4);
  const std::vector<float> before = *model->PredictBatch(test.features);
  TempDir dir;
  for (const char* name : {"hazard.json", "hazard.ubj"}) {
    ASSERT_TRUE(model->Save(dir.File(name)).ok());
    auto loaded = HazardModel::Load(dir.File(name), *FeatureSchema::FromNames(test.feature_names));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->feature_names(), test.feature_names);
    EXPECT_EQ((*loaded)->rounds(), model->rounds());
    EXPECT_EQ((*loaded)->best_iteration(), model->best_iteration());
    EXPECT_EQ(*(*loaded)->PredictBatch(test.features), before) << name;
  }
  EXPECT_FALSE(model->Save(dir.File("hazard.bin")).ok());  // deprecated format refused
}

TEST(HazardModelTest, FeatureNameMismatchOnLoadIsAnError) {
  auto model = TrainToy(10);
  ASSERT_NE(model, nullptr);
  TempDir dir;
  ASSERT_TRUE(model->Save(dir.File("m.json")).ok());
  auto other = HazardModel::Load(
      dir.File("m.json"), *FeatureSchema::FromNames({"entropy", "top5_prob", "rep_count_4"}));
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("column 1"), std::string_view::npos) << other.status();
  EXPECT_NE(other.status().message().find("top5_prob"), std::string_view::npos);
  EXPECT_FALSE(HazardModel::Load(dir.File("m.json"), FeatureSchema::All()).ok());
  EXPECT_EQ(HazardModel::Load(dir.File("missing.json")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(HazardModelTest, ModelFromAnIncompatibleXgboostIsRefused) {
  auto model = TrainToy(5);
  ASSERT_NE(model, nullptr);
  TempDir dir;
  ASSERT_TRUE(model->Save(dir.File("m.json")).ok());
  std::ifstream in(dir.File("m.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  // What xgboost >= 3.1 writes (guard.md 6.6).
  j["learner"]["learner_model_param"]["base_score"] = "[2E-1]";
  std::ofstream(dir.File("new.json")) << j.dump();
  auto loaded = HazardModel::Load(dir.File("new.json"));
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("base_score"), std::string_view::npos);
  std::ofstream(dir.File("junk.json")) << "{not json";
  EXPECT_FALSE(HazardModel::Load(dir.File("junk.json")).ok());
}

TEST(HazardModelTest, EarlyStoppingOnNoise) {
  const Dataset train = Toy(2000, 5, true), valid = Toy(1000, 6, true);
  auto model = HazardModel::Train(
      train, {.max_depth = 6, .eta = 0.3, .rounds = 300, .early_stopping_rounds = 10}, &valid);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_GE((*model)->best_iteration(), 0);
  EXPECT_LT((*model)->rounds(), 300);
  EXPECT_EQ((*model)->rounds(), (*model)->best_iteration() + 1);  // sliced to the best round
}

TEST(HazardModelTest, BadInputsAreErrors) {
  auto model = TrainToy(5);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->PredictBatch(std::vector<float>(4)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(model->PredictBatch({})->empty());
  Dataset bad = Toy(10, 1);
  bad.labels.pop_back();
  EXPECT_FALSE(HazardModel::Train(bad, {}).ok());
  Dataset valid = Toy(10, 2);
  valid.feature_names[0] = "x";
  EXPECT_FALSE(HazardModel::Train(Toy(10, 1), {}, &valid).ok());
}

TEST(HazardModelTest, ConcurrentPredictionsMatchSequentialOnes) {
  auto model = TrainToy();
  ASSERT_NE(model, nullptr);
  const Dataset test = Toy(64, 8);
  std::vector<std::vector<float>> expected;
  for (size_t r = 0; r < test.rows(); ++r) {
    expected.push_back(*model->PredictBatch(std::span(test.features).subspan(3 * r, 3)));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int it = 0; it < 500; ++it) {
        const size_t r = (it * 7 + t) % test.rows();
        if (*model->PredictBatch(std::span(test.features).subspan(3 * r, 3)) != expected[r])
          ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(HazardModelTest, ModelHazardProjectsFullRows) {
  auto model = TrainToy(10);
  ASSERT_NE(model, nullptr);
  const Dataset test = Toy(8, 9);
  std::vector<float> full(test.rows() * kNumFeatures, 0.5f);
  for (size_t r = 0; r < test.rows(); ++r) {
    full[r * kNumFeatures + kEntropy] = test.features[3 * r];
    full[r * kNumFeatures + kTop1Prob] = test.features[3 * r + 1];
    full[r * kNumFeatures + kRepCount4] = test.features[3 * r + 2];
  }
  const std::vector<float> direct = *model->PredictBatch(test.features);
  auto hazard = ModelHazard::Create(std::move(model));
  ASSERT_TRUE(hazard.ok()) << hazard.status();
  EXPECT_EQ(*(*hazard)->Predict(full), direct);
}

TEST(HazardModelTest, PredictTiming) {
  // A serving-sized model: every feature, 120 trees of depth 6 (guard.md 6.2).
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0, 1);
  Dataset d;
  for (auto n : kFeatureNames) d.feature_names.emplace_back(n);
  for (int i = 0; i < 4000; ++i) {
    float s = 0;
    for (int k = 0; k < kNumFeatures; ++k) {
      const float x = u(rng);
      d.features.push_back(x);
      if (k < 5) s += x;
    }
    d.labels.push_back(s + 0.5f * u(rng) > 2.75f ? 1.0f : 0.0f);
  }
  auto model = HazardModel::Train(d, {.max_depth = 6, .rounds = 120});
  ASSERT_TRUE(model.ok()) << model.status();
  for (int rows : {1, 16}) {
    const std::span<const float> batch(d.features.data(), static_cast<size_t>(rows) * kNumFeatures);
    constexpr int kCalls = 2000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) ASSERT_TRUE((*model)->PredictBatch(batch).ok());
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
        kCalls;
    std::printf(
        "[ timing ] PredictBatch %2d rows x %d features, %d trees: %.1f us/call (%.2f us/row)\n",
        rows, kNumFeatures, (*model)->rounds(), us, us / rows);
    EXPECT_LT(us, 5000.0);  // sanity only; a shared 2-core VM is noisy
  }
}

// ---- fallback -----------------------------------------------------------------------------

TEST(FallbackHazardTest, RisesWithEntropyAndRepetition) {
  FallbackHazard rule;
  FeatureRow row{};
  row[kEntropyMeanW8] = 0.5f;
  const float calm = rule.Score(row.data());
  EXPECT_LT(calm, 0.05f);
  row[kEntropyMeanW8] = 3.0f;
  EXPECT_NEAR(rule.Score(row.data()), 0.5f, 1e-6);
  row[kEntropyMeanW8] = 5.0f;
  EXPECT_GT(rule.Score(row.data()), 0.95f);
  row[kEntropyMeanW8] = 0.5f;
  row[kRep4ShareW32] = 0.9f;  // a confident loop
  EXPECT_GT(rule.Score(row.data()), 0.95f);
  FallbackHazard no_rep({.use_repetition = false});
  EXPECT_LT(no_rep.Score(row.data()), 0.05f);
}

TEST(FallbackHazardTest, ConfigFromJson) {
  auto c = FallbackHazardConfig::FromJson(
      nlohmann::json::parse(R"({"entropy_threshold": 2.0, "use_repetition": false})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->entropy_threshold, 2.0);
  EXPECT_FALSE(c->use_repetition);
  auto bad = FallbackHazardConfig::FromJson(nlohmann::json::parse(R"({"entropy_scale": 0})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("entropy_scale"), std::string_view::npos);
  EXPECT_FALSE(
      FallbackHazardConfig::FromJson(nlohmann::json::parse(R"({"entropy_treshold": 2})")).ok());
  EXPECT_FALSE(
      FallbackHazardConfig::FromJson(nlohmann::json::parse(R"({"repeat_scale": "x"})")).ok());
}

}  // namespace
}  // namespace kvguard::guard
