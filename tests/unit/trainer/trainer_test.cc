#include "services/trainer/lm_trainer.h"

#include <cmath>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "research/problems.h"
#include "services/engine/engine.h"
#include "services/engine/tokenizer.h"

namespace kvguard::trainer {
namespace {

std::string TempDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             (name + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::remove_all(dir);
  return dir.string();
}

research::ProblemOptions SmallProblems() {
  research::ProblemOptions o;
  o.max_steps = 2;
  o.num_padding = 0;
  return o;
}

TEST(CharTokenizerTest, RoundTripsTextAndEncodesBytes) {
  auto tok = engine::Tokenizer::FromJson(CharTokenizerJson());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), kVocabSize);
  EXPECT_EQ((*tok)->TokenToId("<|endoftext|>"), kEosId);
  EXPECT_EQ((*tok)->TokenToId("<|im_start|>"), kImStartId);
  const std::string text =
      "Tom has 3 apples.\nTom gets 15 more apples. 3 + 15 = 18.\nAnswer: 18  é→";
  auto ids = (*tok)->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // No merges: one token per byte, id == byte value, so digits stay single tokens.
  EXPECT_EQ(*ids, EncodeBytes(text));
  EXPECT_EQ((*tok)->Decode(*ids), text);
  auto with_eos = (*tok)->Encode("Answer: 7<|endoftext|>");
  ASSERT_TRUE(with_eos.ok());
  EXPECT_EQ(with_eos->back(), kEosId);
}

// One short run shared by the training tests (kept tiny: the suite must be fast).
class TinyRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LmShape shape{.dim = 32, .layers = 1, .heads = 2, .kv_heads = 1, .ffn = 64, .max_positions = 512};
    auto model = LmModel::Create(shape, /*seed=*/7);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    TrainOptions o{.steps = 30, .batch = 4, .lr = 1e-2, .warmup_steps = 5, .seed = 3};
    o.problems = SmallProblems();
    auto report = TrainLm(*model_, o, nullptr);
    ASSERT_TRUE(report.ok()) << report.status();
    report_ = new TrainReport(*report);
    dir_ = new std::string(TempDir("kvg_trainer_test"));
    ASSERT_TRUE(model_->Save(*dir_).ok());
  }
  static void TearDownTestSuite() {
    if (dir_ != nullptr) std::filesystem::remove_all(*dir_);
    delete model_;
    delete report_;
    delete dir_;
  }
  static LmModel* model_;
  static TrainReport* report_;
  static std::string* dir_;
};
LmModel* TinyRunTest::model_ = nullptr;
TrainReport* TinyRunTest::report_ = nullptr;
std::string* TinyRunTest::dir_ = nullptr;

TEST_F(TinyRunTest, LossGoesDown) {
  ASSERT_NE(report_, nullptr);
  ASSERT_EQ(report_->losses.size(), 30u);
  auto mean = [](auto begin, auto end) { return std::accumulate(begin, end, 0.0) / (end - begin); };
  const double first = mean(report_->losses.begin(), report_->losses.begin() + 5);
  const double last = mean(report_->losses.end() - 5, report_->losses.end());
  EXPECT_LT(last, first - 0.5) << "first " << first << " last " << last;
  EXPECT_NEAR(first, std::log(static_cast<double>(kVocabSize)), 0.5);  // starts near uniform
}

TEST_F(TinyRunTest, EngineLogitsMatchTrainerForward) {
  ASSERT_NE(model_, nullptr);
  auto eng = engine::Engine::Load(*dir_, {.num_threads = 1});
  ASSERT_TRUE(eng.ok()) << eng.status();
  ASSERT_NE((*eng)->tokenizer(), nullptr);
  EXPECT_EQ((*eng)->config().eos_token_ids, std::vector<int32_t>{kEosId});
  auto problem = research::GenerateProblem(SmallProblems(), research::Split::kTest, 0);
  ASSERT_TRUE(problem.ok());
  const std::vector<int32_t> ids = EncodeBytes(problem->prompt + problem->solution);
  auto engine_logits = (*eng)->Logits(ids);
  ASSERT_TRUE(engine_logits.ok()) << engine_logits.status();
  const auto trainer_logits = model_->Logits(ids);
  ASSERT_EQ(engine_logits->size(), trainer_logits.size());
  float worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    ASSERT_EQ((*engine_logits)[t].size(), trainer_logits[t].size());
    for (size_t v = 0; v < trainer_logits[t].size(); ++v) {
      worst = std::max(worst, std::abs((*engine_logits)[t][v] - trainer_logits[t][v]));
    }
  }
  EXPECT_LT(worst, 1e-4);
}

TEST_F(TinyRunTest, LoadWeightsRestoresTheSavedModel) {
  ASSERT_NE(model_, nullptr);
  auto shape = ReadShape(*dir_);
  ASSERT_TRUE(shape.ok()) << shape.status();
  auto fresh = LmModel::Create(*shape, /*seed=*/99);
  ASSERT_TRUE(fresh.ok());
  ASSERT_TRUE((*fresh)->LoadWeights(*dir_).ok());
  const std::vector<int32_t> ids = EncodeBytes("Tom has 3 apples.");
  EXPECT_EQ((*fresh)->Logits(ids), model_->Logits(ids));
}

TEST_F(TinyRunTest, EvaluateRunsThroughTheEngine) {
  auto ev = EvaluateGreedy(*dir_, SmallProblems(), 2, 1);
  ASSERT_TRUE(ev.ok()) << ev.status();
  EXPECT_EQ(ev->total, 2);
  EXPECT_EQ(ev->samples.size(), 2u);
}

TEST(ProblemOptsTest, ParsesKeyValues) {
  auto o = ApplyProblemOpts({}, {"max_steps=3", "num_padding=2", "ops=+-"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->max_steps, 3);
  EXPECT_EQ(o->num_padding, 2);
  EXPECT_FALSE(ApplyProblemOpts({}, {"bogus=1"}).ok());
  EXPECT_FALSE(ApplyProblemOpts({}, {"max_steps"}).ok());
}

}  // namespace
}  // namespace kvguard::trainer
