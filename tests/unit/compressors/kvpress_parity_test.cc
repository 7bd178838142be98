// Agreement with NVIDIA kvpress (v0.5.4), the reference implementation: for
// every fixture model and press, our scores match kvpress's within float
// tolerance and the kept positions per layer and kv head are the same (a
// differing position is accepted only when its score ties the boundary).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "services/engine/engine.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::compress {
namespace {

using engine::Engine;
using testing::DataPath;

// Options matching each press's repr in kvpress_reference.json.
const std::map<std::string, std::vector<std::string>> kOptions = {
    {"streaming_llm", {"n_sink=4"}},
    {"snapkv", {"window_size=8", "kernel_size=5"}},
    {"pyramidkv", {"window_size=8", "kernel_size=5", "beta=20"}},
    {"expected_attention", {"n_future_positions=64", "n_sink=2"}},
};

std::vector<float> Row(const engine::TensorView& v, int64_t head) {
  std::vector<float> all = testing::ReadAs<float>(v);
  const int64_t t = v.shape[1];
  return std::vector<float>(all.begin() + head * t, all.begin() + (head + 1) * t);
}

class KvpressParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(KvpressParityTest, ScoresAndKeptPositionsMatch) {
  const std::string dir = DataPath("models/" + GetParam());
  auto ref = nlohmann::json::parse(testing::ReadFile(dir + "/kvpress_reference.json"));
  auto ref_scores = engine::SafetensorsFile::Open(dir + "/kvpress_reference.safetensors");
  ASSERT_TRUE(ref_scores.ok()) << ref_scores.status();
  auto eng = Engine::Load(dir, {});
  ASSERT_TRUE(eng.ok()) << eng.status();
  const std::vector<int32_t> ids = ref["input_ids"];
  const double ratio = ref["compression_ratio"];
  int checked = 0;
  for (const auto& [press, info] : ref["presses"].items()) {
    SCOPED_TRACE(press);
    CompressionSpec spec{.compressor = press, .ratio = ratio};
    if (kOptions.count(press)) spec.options = kOptions.at(press);
    auto kept = (*eng)->Kept(ids, spec);
    auto scores = (*eng)->Scores(ids, spec);
    ASSERT_TRUE(kept.ok()) << kept.status();
    ASSERT_TRUE(scores.ok()) << scores.status();
    for (size_t l = 0; l < kept->size(); ++l) {
      const auto* view = (*ref_scores)->Find(press + ".layer" + std::to_string(l));
      ASSERT_NE(view, nullptr);
      const std::vector<std::vector<int>> want = info["kept"]["layer" + std::to_string(l)];
      for (size_t h = 0; h < want.size(); ++h) {
        std::vector<float> expected = Row(*view, h);
        float scale = 1e-6f;
        for (float e : expected) scale = std::max(scale, std::abs(e));
        for (size_t j = 0; j < expected.size(); ++j) {
          EXPECT_NEAR((*scores)[l][h][j], expected[j], 1e-4 * std::abs(scale)) << "layer " << l << " head " << h << " slot " << j;
        }
        const auto& ours = (*kept)[l][h];
        ASSERT_EQ(ours.size(), want[h].size()) << "layer " << l << " head " << h;
        // Boundary ties: a position only we keep must score like one only kvpress keeps.
        std::vector<int> only_ours, only_theirs;
        std::set_difference(ours.begin(), ours.end(), want[h].begin(), want[h].end(), std::back_inserter(only_ours));
        std::set_difference(want[h].begin(), want[h].end(), ours.begin(), ours.end(), std::back_inserter(only_theirs));
        for (size_t i = 0; i < only_ours.size(); ++i) {
          EXPECT_NEAR(expected[only_ours[i]], expected[only_theirs[i]], 1e-5 * std::abs(scale))
              << "layer " << l << " head " << h << ": kept " << only_ours[i] << " instead of " << only_theirs[i];
        }
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(ref["presses"].size()));
  EXPECT_GE(checked, 8);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, KvpressParityTest,
                         ::testing::Values("tiny-llama", "tiny-llama31-ropescaled", "tiny-qwen2", "tiny-qwen3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace kvguard::compress
