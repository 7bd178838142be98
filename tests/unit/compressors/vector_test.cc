// VECTOR: the regression fit, the three-way routing and its memory rule on
// hand-built caches, and calibrate-vector + generate through the real CLI.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "compressors/cache_compression.h"
#include "compressors/registry.h"
#include "compressors/vector_calibration.h"
#include "services/engine/safetensors_writer.h"
#include "tests/unit/engine/test_util.h"

namespace kvguard::compress {
namespace {

using engine::SequenceKvCache;

constexpr int64_t kHeads = 2, kDim = 4;

engine::ModelConfig Config(int64_t layers = 1) {
  engine::ModelConfig c;
  c.num_layers = layers;
  c.num_kv_heads = kHeads;
  c.num_heads = kHeads;
  c.head_dim = kDim;
  c.max_position_embeddings = 1024;
  return c;
}

// A one-layer float32 cache holding `keys`, `values` ([kHeads, T, kDim]) at positions 0..T-1.
std::unique_ptr<SequenceKvCache> CacheWith(const at::Tensor& keys, const at::Tensor& values) {
  auto cache = std::make_unique<SequenceKvCache>(engine::KvCacheOptions{
      .num_layers = 1, .num_kv_heads = kHeads, .head_dim = kDim, .num_heads = kHeads});
  cache->AppendTokenIds(std::vector<int32_t>(keys.size(1), 5));
  cache->Append(0, keys, values, 0);
  return cache;
}

at::Tensor WithBias(const at::Tensor& k) { return at::cat({k, at::ones({k.size(0), k.size(1), 1})}, 2); }

TEST(VectorCalibrationTest, RecoversAnExactLinearMap) {
  at::manual_seed(1);
  at::Tensor w = at::randn({kHeads, kDim + 1, kDim}, at::kDouble);
  std::vector<at::Tensor> keys, values;
  for (int64_t t : {40, 25, 60}) {  // three hand-built caches
    at::Tensor k = at::randn({kHeads, t, kDim});
    auto cache = CacheWith(k, at::bmm(WithBias(k).to(at::kDouble), w).to(at::kFloat));
    keys.push_back(cache->Keys(0));
    values.push_back(cache->Values(0));
  }
  auto fit = FitRegression(keys, values, /*ridge=*/0.0);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_LT((*fit - w).abs().max().item<double>(), 1e-4);
  RegressionAccumulator acc(kHeads, kDim);
  for (size_t i = 0; i < keys.size(); ++i) acc.Add(keys[i], values[i]);
  EXPECT_GT(acc.RSquared(*fit).min().item<double>(), 1 - 1e-6);
}

TEST(VectorCalibrationTest, RidgeShrinksWeightsButNotTheBias) {
  at::Tensor k = at::randn({kHeads, 50, kDim});
  at::Tensor v = at::randn({kHeads, 50, kDim}) + 3.0;
  auto fit = FitRegression({k}, {v}, /*ridge=*/1e9);
  ASSERT_TRUE(fit.ok());
  EXPECT_LT(fit->narrow(1, 0, kDim).abs().max().item<double>(), 1e-5);
  EXPECT_TRUE(at::allclose(fit->select(1, kDim), v.to(at::kDouble).mean(1), 1e-4, 1e-4));
  EXPECT_FALSE(FitRegression({k.narrow(1, 0, 2)}, {v.narrow(1, 0, 2)}, 0.0).ok());  // singular
}

TEST(SafetensorsWriterTest, RoundTrips) {
  testing::TempDir tmp;
  engine::TensorData t{.dtype = engine::DType::kI32, .shape = {3}, .bytes = std::string(12, '\x07')};
  ASSERT_TRUE(engine::WriteSafetensors(tmp.File("a.safetensors"), {{"x", t}}, {{"k", "v"}}).ok());
  auto file = engine::SafetensorsFile::Open(tmp.File("a.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("k"), "v");
  const engine::TensorView* x = (*file)->Find("x");
  ASSERT_NE(x, nullptr);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(x->data), x->nbytes), t.bytes);
  t.shape = {4};
  EXPECT_FALSE(engine::WriteSafetensors(tmp.File("b.safetensors"), {{"x", t}}, {}).ok());
}

// --- routing ---

class VectorRoutingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Key norms 1..12 in head 0, reversed in head 1: knorm keeps small norms.
    at::Tensor norms = at::arange(1, 13, at::kFloat);
    at::Tensor dir = at::randn({kHeads, 12, kDim});
    dir = dir / dir.norm(2, -1, true);
    keys_ = dir * at::stack({norms, norms.flip(0)}).unsqueeze(-1);
    values_ = at::randn({kHeads, 12, kDim});
    regression_ = at::randn({1, kHeads, kDim + 1, kDim});
    ASSERT_TRUE(WriteVectorCalibration(file_, regression_, {}).ok());
  }
  std::unique_ptr<CacheCompression> Make(const std::string& share, double ratio = 0.5) {
    auto cc = CacheCompression::Create(
        {.compressor = "vector", .options = {"calibration=" + file_, "approx_share=" + share}, .ratio = ratio});
    EXPECT_TRUE(cc.ok()) << cc.status();
    return std::move(cc).value();
  }
  testing::TempDir tmp_;
  std::string file_ = tmp_.File("calibration.safetensors");
  at::Tensor keys_, values_, regression_;
};

TEST_F(VectorRoutingTest, RoutesTopMiddleBottomWithExactBytes) {
  auto cache = CacheWith(keys_, values_);
  const int64_t bytes_before = cache->Stats().bytes;
  auto cc = Make("0.5");
  // 12 entries, ratio 0.5: remove 6 entries = 12 half-entries, half of them by
  // approximation: 6 approximated (3 entries' worth) + 3 evicted, 3 retained.
  // Position 11 is protected although head 0 ranks it last.
  ASSERT_TRUE(cc->AfterForward(*cache, Config(), {}, /*prefill=*/true, {11}).ok());
  using P = std::vector<int32_t>;
  EXPECT_EQ(cache->Positions(0)[0], (P{0, 1, 11}));
  EXPECT_EQ(cache->ApproximatedPositions(0)[0], (P{2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(cache->Positions(0)[1], (P{9, 10, 11}));
  EXPECT_EQ(cache->ApproximatedPositions(0)[1], (P{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(cc->stats().approximated_slots, 6 * kHeads);
  EXPECT_EQ(cc->stats().evicted_slots, 3 * kHeads);
  const int64_t row = kHeads * kDim * sizeof(float);  // one slot's key (or value), all heads
  EXPECT_EQ(bytes_before - cache->Stats().bytes, 6 * row + 3 * 2 * row);

  // Attention reads [k, 1] @ W for the approximated slots, then the exact values.
  at::Tensor v = cache->AttentionValues(0);
  ASSERT_EQ(v.size(1), 9);
  for (int64_t h = 0; h < kHeads; ++h) {
    for (int64_t i = 0; i < 6; ++i) {
      const int64_t pos = cache->ApproximatedPositions(0)[h][i];
      at::Tensor k = at::cat({keys_[h][pos], at::ones({1})});
      EXPECT_TRUE(at::allclose(v[h][i], at::matmul(k, regression_[0][h]), 1e-5, 1e-5)) << h << " " << i;
    }
    for (int64_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(at::equal(v[h][6 + i], values_[h][cache->Positions(0)[h][i]]));
    }
  }
}

TEST_F(VectorRoutingTest, ShareZeroIsPlainKnorm) {
  auto vec = CacheWith(keys_, values_), knorm = CacheWith(keys_, values_);
  ASSERT_TRUE(Make("0", 0.75)->AfterForward(*vec, Config(), {}, true, {11}).ok());
  auto cc = CacheCompression::Create({.compressor = "knorm", .ratio = 0.75});
  ASSERT_TRUE((*cc)->AfterForward(*knorm, Config(), {}, true, {11}).ok());
  EXPECT_EQ(vec->Positions(0), knorm->Positions(0));
  EXPECT_EQ(vec->ApproximatedSlots(0), 0);
}

TEST_F(VectorRoutingTest, DecodingKeepsTheBudgetAndTheShare) {
  auto cache = CacheWith(keys_, values_);
  auto cc = Make("0.5");
  ASSERT_TRUE(cc->AfterForward(*cache, Config(), {}, true).ok());
  for (int step = 0; step < 40; ++step) {
    cache->AppendTokenIds({5});
    cache->Append(0, at::randn({kHeads, 1, kDim}), at::randn({kHeads, 1, kDim}), cache->num_positions() - 1);
    ASSERT_TRUE(cc->AfterForward(*cache, Config(), {}, false).ok());
    const int64_t budget = cache->num_positions() / 2;  // entries
    EXPECT_EQ(2 * cache->RetainedSlots(0) + cache->ApproximatedSlots(0), 2 * budget) << step;
  }
  // approx_share 0.5: the approximated pool holds half the kept budget
  // (52 positions -> a budget of 26 entries -> about 26 half-entry slots).
  EXPECT_NEAR(double(cache->ApproximatedSlots(0)) / 52.0, 0.5, 0.05);
}

TEST_F(VectorRoutingTest, CalibrationErrorsNameTheFile) {
  auto missing = Registry::Global().Create("vector", {"calibration=" + tmp_.File("none.safetensors")});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("none.safetensors"), std::string::npos);
  EXPECT_FALSE(Registry::Global().Create("vector", std::vector<std::string>{}).ok());
  EXPECT_FALSE(Registry::Global().Create("vector", {"calibration=" + file_, "score=tova"}).ok());
  // Made for a 1-layer model; a 2-layer model refuses it at the first plan.
  auto cache = CacheWith(keys_, values_);
  auto cc = Make("0.5");
  const absl::Status s = cc->AfterForward(*cache, Config(/*layers=*/2), {}, true);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(file_), std::string::npos) << s;
}

// --- the CLI end to end ---

struct RunResult {
  int exit_code;
  std::string out, err;
};

RunResult Kvguard(const std::vector<std::string>& args) {
  testing::TempDir tmp;
  std::string cmd = std::string(KVG_BIN_DIR) + "/kvguard";
  for (const auto& a : args) cmd += " '" + a + "'";  // test paths hold no quotes
  cmd += " 2>" + tmp.File("err");
  FILE* p = popen(cmd.c_str(), "r");
  RunResult r{.exit_code = -1};
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = testing::ReadFile(tmp.File("err"));
  return r;
}

TEST(VectorCliTest, CalibrateThenGenerate) {
  testing::TempDir tmp;
  const std::string model = testing::DataPath("models/tiny-llama"), file = tmp.File("vector.safetensors");
  RunResult cal = Kvguard({"calibrate-vector", "--model", model, "--out", file, "--prompts", "3"});
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  auto calibration = engine::SafetensorsFile::Open(file);
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  EXPECT_EQ((*calibration)->Find(kVectorRegressionTensor)->shape, (std::vector<int64_t>{3, 2, 17, 16}));
  EXPECT_EQ((*calibration)->metadata().at("prompts"), "3");

  const std::vector<std::string> gen = {"generate", "--model", model,
                                        "--ids", "5,9,13,17,21,25,29,33,37,41,45,49,53,57,61,65",
                                        "--max-new-tokens", "6", "--ignore-eos", "--json"};
  RunResult plain = Kvguard(gen);
  std::vector<std::string> args = gen;
  args.insert(args.end(), {"--compressor", "vector", "--ratio", "0.5", "--compressor-opt", "calibration=" + file});
  RunResult vec = Kvguard(args);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  ASSERT_EQ(vec.exit_code, 0) << vec.err;
  EXPECT_LT(nlohmann::json::parse(vec.out)["kv_bytes"].get<int64_t>(),
            nlohmann::json::parse(plain.out)["kv_bytes"].get<int64_t>());

  args.back() = "calibration=" + tmp.File("missing.safetensors");
  RunResult missing = Kvguard(args);
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;
  EXPECT_NE(missing.err.find("missing.safetensors"), std::string::npos);
}

}  // namespace
}  // namespace kvguard::compress
