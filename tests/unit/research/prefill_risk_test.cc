// The prefill risk signal (research/pipeline/question_attention.h): the question's
// attention over the uncompressed prompt, and the share of it on positions a
// compressed prefill dropped, checked against a direct sum.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "research/pipeline/question_attention.h"
#include "services/engine/checkpoint.h"
#include "services/engine/sequence.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::research {
namespace {

using engine::GenerateRequest;
using engine::Sequence;

std::unique_ptr<engine::LlamaModel> TinyLlama() {
  auto ckpt = engine::OpenCheckpoint(testing::DataPath("models/tiny-llama"));
  EXPECT_TRUE(ckpt.ok());
  auto model = engine::LlamaModel::Load(std::move(*ckpt), {});
  EXPECT_TRUE(model.ok());
  return std::move(*model);
}

std::vector<int32_t> Prompt() {
  std::vector<int32_t> ids;
  for (int i = 0; i < 64; ++i) ids.push_back(3 + (i * 37) % 500);
  return ids;
}

// Prefills `ids` with `compressor` at `ratio` (no compression when empty).
std::unique_ptr<Sequence> Prefilled(engine::LlamaModel& model, const std::vector<int32_t>& ids,
                                    const std::string& compressor, double ratio,
                                    std::vector<std::string> options = {}) {
  GenerateRequest req;
  req.prompt_ids = ids;
  req.max_new_tokens = 1;
  if (!compressor.empty())
    req.compression = {.compressor = compressor, .options = options, .ratio = ratio};
  auto seq = Sequence::Create(model, nullptr, req, {});
  EXPECT_TRUE(seq.ok());
  engine::ForwardItem item = *(*seq)->NextForward();
  auto logits = model.Forward({&item, 1});
  EXPECT_TRUE(logits.ok());
  const at::Tensor row = (*logits)[0].contiguous();
  EXPECT_TRUE((*seq)->AfterForward(row.data_ptr<float>()).ok());
  return std::move(*seq);
}

TEST(PrefillRiskTest, QuestionAttentionIsCausalAndNormalised) {
  auto model = TinyLlama();
  const auto ids = Prompt();
  auto qa = QuestionAttentionOf(*model, ids, 50);
  ASSERT_TRUE(qa.ok()) << qa.status();
  ASSERT_EQ(qa->probs.size(), static_cast<size_t>(model->config().num_layers));
  for (const at::Tensor& p : qa->probs) {
    ASSERT_EQ(p.size(1), 14);
    ASSERT_EQ(p.size(2), 64);
    EXPECT_TRUE(at::allclose(p.sum(-1), at::ones({p.size(0), 14}), 1e-5, 1e-5));
    // Query i (position 50 + i) puts nothing on later keys.
    for (int64_t i = 0; i + 1 < 14; ++i)
      EXPECT_EQ(p.select(1, i).narrow(1, 51 + i, 13 - i).abs().max().item<float>(), 0.0f);
  }
  EXPECT_FALSE(QuestionAttentionOf(*model, ids, 64).ok());
  EXPECT_FALSE(QuestionAttentionOf(*model, ids, -1).ok());
}

TEST(PrefillRiskTest, EvictedMassIsTheAttentionOnDroppedPositions) {
  auto model = TinyLlama();
  const auto ids = Prompt();
  auto qa = QuestionAttentionOf(*model, ids, 50);
  ASSERT_TRUE(qa.ok());
  for (double m : EvictedQuestionMass(*qa, Prefilled(*model, ids, "", 0)->cache()))
    EXPECT_NEAR(m, 0.0, 1e-6);

  auto seq = Prefilled(*model, ids, "snapkv", 0.75, {"window_size=8"});
  const std::vector<double> mass = EvictedQuestionMass(*qa, seq->cache());
  for (size_t l = 0; l < mass.size(); ++l) {
    const at::Tensor& p = qa->probs[l];
    double direct = 0;
    for (int64_t h = 0; h < p.size(0); ++h) {
      const auto& kept = seq->cache().Positions(static_cast<int64_t>(l))[h / qa->group];
      const std::set<int32_t> held(kept.begin(), kept.end());
      for (int64_t q = 0; q < p.size(1); ++q)
        for (int64_t k = 0; k < p.size(2); ++k)
          if (!held.contains(static_cast<int32_t>(k))) direct += p[h][q][k].item<double>();
    }
    direct /= static_cast<double>(p.size(0) * p.size(1));
    EXPECT_NEAR(mass[l], direct, 1e-5) << "layer " << l;
    EXPECT_GT(mass[l], 0.0);
    EXPECT_LT(mass[l], 1.0);
  }
}

// streaming_llm's kept sets are nested (sinks + a shrinking recent window),
// so the evicted mass can only grow with the ratio.
TEST(PrefillRiskTest, NestedEvictionsEvictMoreMass) {
  auto model = TinyLlama();
  const auto ids = Prompt();
  auto qa = QuestionAttentionOf(*model, ids, 50);
  ASSERT_TRUE(qa.ok());
  const auto low = EvictedQuestionMass(*qa, Prefilled(*model, ids, "streaming_llm", 0.5)->cache());
  const auto high = EvictedQuestionMass(*qa, Prefilled(*model, ids, "streaming_llm", 0.8)->cache());
  for (size_t l = 0; l < low.size(); ++l) EXPECT_LE(low[l], high[l] + 1e-6);
  EXPECT_GT(high[0], low[0]);
}

}  // namespace
}  // namespace kvguard::research
