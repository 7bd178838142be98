// RECOVERY: a rebuilt cache holds the whole history; the sequence step
// protocol streams text safely and frees KV on cancel.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "services/engine/checkpoint.h"
#include "services/engine/llama_model.h"
#include "services/engine/sequence.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::engine {
namespace {

std::unique_ptr<LlamaModel> LoadModel(const std::string& name) {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/" + name));
  EXPECT_TRUE(ckpt.ok());
  auto model = LlamaModel::Load(std::move(*ckpt), {});
  EXPECT_TRUE(model.ok());
  return std::move(*model);
}

TEST(SequenceTest, StopStringsNeverStreamAndTextIsUtf8Safe) {
  auto ckpt = OpenCheckpoint(testing::DataPath("models/tiny-qwen2"));
  auto tok = Tokenizer::Load(ckpt->tokenizer_path);
  auto model = LlamaModel::Load(std::move(*ckpt), {});
  GenerateRequest req;
  req.prompt_ids = *(*tok)->Encode("Tom has 3 apples.");
  req.max_new_tokens = 40;
  req.ignore_eos = true;
  // Learn what the model says, then stop on a piece of it.
  auto seq = Sequence::Create(**model, tok->get(), req, {});
  std::string streamed;
  while (ForwardItem* item = (*seq)->NextForward()) {
    auto logits = (*model)->Forward({item, 1});
    at::Tensor row = (*logits)[0].contiguous();
    auto r = (*seq)->AfterForward(row.data_ptr<float>());
    ASSERT_TRUE(r.ok());
    streamed += r->text_delta;
  }
  const std::string full = (*seq)->Result().text;
  EXPECT_EQ(streamed, full);
  ASSERT_GT(full.size(), 12u);
  const std::string stop = full.substr(full.size() / 2, 3);
  req.stop_strings = {stop};
  auto seq2 = Sequence::Create(**model, tok->get(), req, {});
  std::string streamed2;
  while (ForwardItem* item = (*seq2)->NextForward()) {
    auto logits = (*model)->Forward({item, 1});
    at::Tensor row = (*logits)[0].contiguous();
    auto r = (*seq2)->AfterForward(row.data_ptr<float>());
    streamed2 += r->text_delta;
  }
  EXPECT_EQ(streamed2, full.substr(0, full.find(stop)));
  EXPECT_EQ((*seq2)->Result().finish_reason, FinishReason::kStop);
}

// RECOVERY by rebuilding: after Rebuild() the next forward prefills the whole
// history into a fresh cache. Every position is held again, and that forward's
// logits are those of a fresh uncompressed sequence whose prompt is the
// history; the sequence then decodes on from there.
TEST(SequenceTest, RebuildPrefillsTheWholeHistoryIntoAFreshCache) {
  auto model = LoadModel("tiny-llama");
  GenerateRequest req;
  for (int i = 0; i < 48; ++i) req.prompt_ids.push_back(3 + (i * 37) % 500);
  req.max_new_tokens = 12;
  req.ignore_eos = true;
  req.compression = {.compressor = "snapkv", .options = {"window_size=8"}, .ratio = 0.75};
  auto seq = Sequence::Create(*model, nullptr, req, {});
  ASSERT_TRUE(seq.ok());
  auto step = [&](Sequence& s) {
    ForwardItem* item = s.NextForward();
    auto logits = model->Forward({item, 1});
    EXPECT_TRUE(logits.ok());
    at::Tensor row = (*logits)[0].contiguous();
    auto r = s.AfterForward(row.data_ptr<float>());
    EXPECT_TRUE(r.ok());
    return row;
  };
  for (int i = 0; i < 5; ++i) step(**seq);
  const SequenceKvCache& before = (*seq)->cache();
  const int64_t positions = before.num_positions();  // 48 + 4: the 5th token is not in yet
  ASSERT_LT(before.RetainedSlots(0), positions);
  auto lacking = (*seq)->Rebuild();
  ASSERT_TRUE(lacking.ok());
  EXPECT_EQ(*lacking, positions - static_cast<int64_t>(before.WholePositions().size()));
  EXPECT_EQ((*seq)->cache().num_positions(), positions);  // nothing changes before the forward
  (*seq)->SetEvictionPaused(true);
  std::vector<int32_t> history = req.prompt_ids;
  for (int32_t id : (*seq)->Result().output_ids) history.push_back(id);
  GenerateRequest plain = req;
  plain.prompt_ids = history;
  plain.compression = {};
  auto reference = Sequence::Create(*model, nullptr, plain, {});
  ASSERT_TRUE(reference.ok());
  const at::Tensor rebuilt = step(**seq), fresh = step(**reference);
  EXPECT_TRUE(at::allclose(rebuilt, fresh, 1e-5, 1e-5));
  for (int64_t l = 0; l < model->config().num_layers; ++l)
    EXPECT_EQ((*seq)->cache().RetainedSlots(l), positions + 1) << l;
  EXPECT_EQ((*seq)->Result().recomputed_positions, *lacking);
  while (!(*seq)->finished()) step(**seq);
  EXPECT_EQ((*seq)->Result().output_ids.size(), 12u);
}

TEST(SequenceTest, CancelFreesKv) {
  auto model = LoadModel("tiny-llama");
  GenerateRequest req;
  req.prompt_ids = std::vector<int32_t>(64, 5);
  req.max_new_tokens = 10;
  auto seq = Sequence::Create(*model, nullptr, req, {});
  ForwardItem* item = (*seq)->NextForward();
  ASSERT_TRUE(model->Forward({item, 1}).ok());
  EXPECT_GT((*seq)->cache().Stats().bytes, 0);
  (*seq)->Cancel();
  EXPECT_TRUE((*seq)->finished());
  EXPECT_EQ((*seq)->cache().Stats().bytes, 0);
  EXPECT_EQ((*seq)->NextForward(), nullptr);
  EXPECT_EQ((*seq)->Result().finish_reason, FinishReason::kCancelled);
}

}  // namespace
}  // namespace kvguard::engine
