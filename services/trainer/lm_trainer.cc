#include "services/trainer/lm_trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
// clip_grad.h uses torch::Tensor without declaring it; torch/optim.h declares it first.
// clang-format off
#include <torch/optim.h>
#include <torch/nn/utils/clip_grad.h>
// clang-format on

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/blas.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "guard_sidecar/catastrophe.h"
#include "services/engine/engine.h"
#include "services/engine/model_config.h"
#include "services/engine/pretokenizer.h"
#include "services/engine/safetensors.h"
#include "services/engine/safetensors_writer.h"

namespace kvguard::trainer {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

json AddedToken(int32_t id, const std::string& content) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", true}};
}

}  // namespace

// ---- tokenizer --------------------------------------------------------------

std::string CharTokenizerJson() {
  json vocab = json::object();
  const auto& alphabet = engine::ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) vocab[alphabet[b]] = b;
  vocab["<|endoftext|>"] = kEosId;
  vocab["<|im_start|>"] = kImStartId;
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", false}};
  json root = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {AddedToken(kEosId, "<|endoftext|>"), AddedToken(kImStartId, "<|im_start|>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", json::array()}}},
  };
  return root.dump(2);
}

std::vector<int32_t> EncodeBytes(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

absl::Status ValidateShape(const LmShape& s) {
  if (s.dim < 8 || s.layers < 1 || s.heads < 1 || s.kv_heads < 1 || s.ffn < 1) {
    return absl::InvalidArgumentError("model sizes must be positive (dim >= 8)");
  }
  if (s.dim % s.heads != 0 || s.heads % s.kv_heads != 0 || (s.dim / s.heads) % 2 != 0) {
    return absl::InvalidArgumentError(
        "dim must divide into heads of even size, and heads into kv heads");
  }
  if (s.max_positions < 16) return absl::InvalidArgumentError("max_positions must be >= 16");
  return absl::OkStatus();
}

// ---- the training-mode model ------------------------------------------------

struct LayerParams {
  at::Tensor input_norm, post_norm, wq, wk, wv, wo, gate, up, down;
};

struct LmModel::Impl {
  LmShape shape;
  int64_t head_dim = 0;
  at::Tensor embed, final_norm;  // embed is also the lm head (tied)
  std::vector<LayerParams> layers;
  at::Tensor rope_cos, rope_sin;  // [max_pos, hd]

  void Init(uint64_t seed);
  void BuildRope();
  std::vector<std::pair<std::string, at::Tensor>> Named() const;
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  at::Tensor Attention(const LayerParams& p, const at::Tensor& h) const;
  at::Tensor Forward(const at::Tensor& ids) const;  // [B, T] -> logits [B, T, V]
};

void LmModel::Impl::Init(uint64_t seed) {
  // A private generator so the init depends on the seed alone.
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t d = shape.dim, hd = head_dim, f = shape.ffn;
  auto normal = [&](std::vector<int64_t> size, double std) {
    return at::normal(0.0, std, size, gen, at::TensorOptions().dtype(at::kFloat));
  };
  // GPT-2 style: residual-output projections shrink with depth so the
  // residual stream starts near unit scale.
  const double std = 0.02, out_std = 0.02 / std::sqrt(2.0 * shape.layers);
  embed = normal({kVocabSize, d}, std);
  final_norm = at::ones({d});
  layers.resize(shape.layers);
  for (LayerParams& p : layers) {
    p.input_norm = at::ones({d});
    p.post_norm = at::ones({d});
    p.wq = normal({shape.heads * hd, d}, std);
    p.wk = normal({shape.kv_heads * hd, d}, std);
    p.wv = normal({shape.kv_heads * hd, d}, std);
    p.wo = normal({d, shape.heads * hd}, out_std);
    p.gate = normal({f, d}, std);
    p.up = normal({f, d}, std);
    p.down = normal({d, f}, out_std);
  }
  for (auto& [name, t] : Named()) t.set_requires_grad(true);
}

void LmModel::Impl::BuildRope() {
  // Same construction as the engine: double precision, then float.
  at::Tensor exponent = at::arange(0, head_dim, 2, at::kDouble) / static_cast<double>(head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(shape.rope_theta, exponent);
  at::Tensor freqs = at::outer(at::arange(shape.max_positions, at::kDouble), inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  rope_cos = emb.cos().to(at::kFloat).contiguous();
  rope_sin = emb.sin().to(at::kFloat).contiguous();
}

std::vector<std::pair<std::string, at::Tensor>> LmModel::Impl::Named() const {
  std::vector<std::pair<std::string, at::Tensor>> out = {{"model.embed_tokens.weight", embed},
                                                         {"model.norm.weight", final_norm}};
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerParams& p = layers[l];
    const std::string pre = absl::StrCat("model.layers.", l, ".");
    out.insert(out.end(), {{pre + "input_layernorm.weight", p.input_norm},
                           {pre + "post_attention_layernorm.weight", p.post_norm},
                           {pre + "self_attn.q_proj.weight", p.wq},
                           {pre + "self_attn.k_proj.weight", p.wk},
                           {pre + "self_attn.v_proj.weight", p.wv},
                           {pre + "self_attn.o_proj.weight", p.wo},
                           {pre + "mlp.gate_proj.weight", p.gate},
                           {pre + "mlp.up_proj.weight", p.up},
                           {pre + "mlp.down_proj.weight", p.down}});
  }
  return out;
}

at::Tensor LmModel::Impl::RmsNorm(const at::Tensor& x, const at::Tensor& w) const {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + shape.rms_norm_eps));
}

at::Tensor LmModel::Impl::Rope(const at::Tensor& x, const at::Tensor& cos,
                               const at::Tensor& sin) const {
  const int64_t half = head_dim / 2;
  at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

at::Tensor LmModel::Impl::Attention(const LayerParams& p, const at::Tensor& h) const {
  const int64_t b = h.size(0), t = h.size(1), hq = shape.heads, hkv = shape.kv_heads;
  at::Tensor cos = rope_cos.narrow(0, 0, t).view({1, t, 1, head_dim});
  at::Tensor sin = rope_sin.narrow(0, 0, t).view({1, t, 1, head_dim});
  at::Tensor q = Rope(at::matmul(h, p.wq.t()).view({b, t, hq, head_dim}), cos, sin);
  at::Tensor k = Rope(at::matmul(h, p.wk.t()).view({b, t, hkv, head_dim}), cos, sin);
  at::Tensor v = at::matmul(h, p.wv.t()).view({b, t, hkv, head_dim});
  // Query head j reads kv head j / group, as the engine's grouped view.
  const int64_t group = hq / hkv;
  q = q.transpose(1, 2);                              // [b, hq, t, hd]
  k = k.transpose(1, 2).repeat_interleave(group, 1);  // [b, hq, t, hd]
  v = v.transpose(1, 2).repeat_interleave(group, 1);
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(head_dim));
  at::Tensor future = at::ones({t, t}, at::kBool).triu(1);
  scores = scores.masked_fill(future, -INFINITY);
  at::Tensor out = at::matmul(at::softmax(scores, -1), v);  // [b, hq, t, hd]
  return at::matmul(out.transpose(1, 2).reshape({b, t, hq * head_dim}), p.wo.t());
}

at::Tensor LmModel::Impl::Forward(const at::Tensor& ids) const {
  at::Tensor x = at::embedding(embed, ids);  // [B, T, d]
  for (const LayerParams& p : layers) {
    x = x + Attention(p, RmsNorm(x, p.input_norm));
    at::Tensor h = RmsNorm(x, p.post_norm);
    x = x + at::matmul(at::silu(at::matmul(h, p.gate.t())) * at::matmul(h, p.up.t()), p.down.t());
  }
  return at::matmul(RmsNorm(x, final_norm), embed.t());
}

LmModel::LmModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LmModel::~LmModel() = default;

absl::StatusOr<std::unique_ptr<LmModel>> LmModel::Create(const LmShape& shape, uint64_t seed) {
  KVG_RETURN_IF_ERROR(ValidateShape(shape));
  auto impl = std::make_unique<Impl>();
  impl->shape = shape;
  impl->head_dim = shape.dim / shape.heads;
  impl->Init(seed);
  impl->BuildRope();
  return std::unique_ptr<LmModel>(new LmModel(std::move(impl)));
}

const LmShape& LmModel::shape() const { return impl_->shape; }

int64_t LmModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : impl_->Named()) n += t.numel();
  return n;
}

std::vector<std::vector<float>> LmModel::Logits(const std::vector<int32_t>& ids) const {
  at::NoGradGuard no_grad;
  at::Tensor in = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).view({1, -1});
  at::Tensor logits = impl_->Forward(in)[0].contiguous();
  std::vector<std::vector<float>> out(logits.size(0));
  for (int64_t i = 0; i < logits.size(0); ++i) {
    const float* row = logits[i].data_ptr<float>();
    out[i].assign(row, row + logits.size(1));
  }
  return out;
}

// ---- checkpoint writing -----------------------------------------------------

namespace {

json ConfigJson(const LmShape& s) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", kVocabSize},
          {"hidden_size", s.dim},
          {"intermediate_size", s.ffn},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.kv_heads},
          {"head_dim", s.dim / s.heads},
          {"max_position_embeddings", s.max_positions},
          {"rms_norm_eps", s.rms_norm_eps},
          {"rope_theta", s.rope_theta},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"tie_word_embeddings", true},
          {"bos_token_id", nullptr},
          {"eos_token_id", kEosId},
          {"pad_token_id", kEosId},
          {"torch_dtype", "float32"}};
}

absl::Status WriteText(const std::filesystem::path& path, const std::string& text) {
  return WriteTextFile(path.string(), text);
}

}  // namespace

absl::Status LmModel::Save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const std::filesystem::path root(dir);
  KVG_RETURN_IF_ERROR(WriteText(root / "config.json", ConfigJson(impl_->shape).dump(2) + "\n"));
  json gen = {{"bos_token_id", nullptr},
              {"eos_token_id", kEosId},
              {"pad_token_id", kEosId},
              {"do_sample", false}};
  KVG_RETURN_IF_ERROR(WriteText(root / "generation_config.json", gen.dump(2) + "\n"));
  KVG_RETURN_IF_ERROR(WriteText(root / "tokenizer.json", CharTokenizerJson() + "\n"));
  std::map<std::string, engine::TensorData> tensors;
  for (const auto& [name, t] : impl_->Named()) {
    at::Tensor c = t.detach().to(at::kFloat).contiguous();
    engine::TensorData data;
    data.dtype = engine::DType::kF32;
    data.shape = c.sizes().vec();
    data.bytes.assign(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float));
    tensors.emplace(name, std::move(data));
  }
  return engine::WriteSafetensors((root / "model.safetensors").string(), tensors,
                                  {{"format", "pt"}, {"producer", "kvguard train-lm"}});
}

absl::Status LmModel::LoadWeights(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "model.safetensors").string();
  KVG_ASSIGN_OR_RETURN(auto file, engine::SafetensorsFile::Open(path));
  at::NoGradGuard no_grad;
  for (auto& [name, t] : impl_->Named()) {
    const engine::TensorView* view = file->Find(name);
    if (view == nullptr || view->dtype != engine::DType::kF32 || view->shape != t.sizes().vec()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": '", name, "' is missing or not f32 of the model's shape"));
    }
    at::Tensor src = at::from_blob(const_cast<uint8_t*>(view->data), view->shape, at::kFloat);
    at::Tensor(t).copy_(src);
  }
  return absl::OkStatus();
}

absl::StatusOr<LmShape> ReadShape(const std::string& dir) {
  KVG_ASSIGN_OR_RETURN(std::string text,
                       ReadFileToString((std::filesystem::path(dir) / "config.json").string()));
  KVG_ASSIGN_OR_RETURN(engine::ModelConfig c, engine::ParseHfConfig(text));
  LmShape s{.dim = c.hidden_size,
            .layers = c.num_layers,
            .heads = c.num_heads,
            .kv_heads = c.num_kv_heads,
            .ffn = c.intermediate_size,
            .max_positions = c.max_position_embeddings,
            .rope_theta = c.rope.theta,
            .rms_norm_eps = c.rms_norm_eps};
  if (c.vocab_size != kVocabSize || c.head_dim * c.num_heads != c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " is not a train-lm checkpoint"));
  }
  KVG_RETURN_IF_ERROR(ValidateShape(s));
  return s;
}

// ---- training ---------------------------------------------------------------

namespace {

struct Batch {
  at::Tensor inputs, targets, mask;  // [B, T-1] each; mask is float, 1 on scored targets
  int64_t positions = 0;             // B * (T - 1)
};

// Prompt + solution + EOS per problem, right-padded with EOS. Targets are the
// inputs shifted by one; only solution tokens and the EOS are scored.
absl::StatusOr<Batch> MakeBatch(const research::ProblemOptions& opts, int64_t begin, int64_t count,
                                int64_t max_positions) {
  KVG_ASSIGN_OR_RETURN(std::vector<research::Problem> problems,
                       research::GenerateProblems(opts, research::Split::kTrain, begin, count));
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> prompt_lens;
  int64_t longest = 0;
  for (const research::Problem& p : problems) {
    std::vector<int32_t> ids = EncodeBytes(p.prompt);
    prompt_lens.push_back(static_cast<int64_t>(ids.size()));
    std::vector<int32_t> sol = EncodeBytes(p.solution);
    ids.insert(ids.end(), sol.begin(), sol.end());
    ids.push_back(kEosId);
    if (static_cast<int64_t>(ids.size()) > max_positions) {
      return absl::InvalidArgumentError(
          absl::StrCat("a training problem has ", ids.size(), " tokens, more than max_positions ",
                       max_positions, ": use shorter problems or a larger context"));
    }
    longest = std::max<int64_t>(longest, ids.size());
    seqs.push_back(std::move(ids));
  }
  const int64_t t = longest - 1;
  at::Tensor in = at::full({count, t}, kEosId, at::kLong);
  at::Tensor tg = at::full({count, t}, kEosId, at::kLong);
  at::Tensor mask = at::zeros({count, t}, at::kFloat);
  auto in_a = in.accessor<int64_t, 2>();
  auto tg_a = tg.accessor<int64_t, 2>();
  auto m_a = mask.accessor<float, 2>();
  for (int64_t b = 0; b < count; ++b) {
    const auto& s = seqs[b];
    for (int64_t i = 0; i + 1 < static_cast<int64_t>(s.size()); ++i) {
      in_a[b][i] = s[i];
      tg_a[b][i] = s[i + 1];
      m_a[b][i] = (i + 1 >= prompt_lens[b]) ? 1.0f : 0.0f;
    }
  }
  return Batch{in, tg, mask, count * t};
}

// `step` is 0-based; `time_progress` is the spent fraction of the time budget.
double LearningRate(const TrainOptions& o, int64_t step, double time_progress) {
  if (step < o.warmup_steps) return o.lr * (step + 1) / o.warmup_steps;
  const double progress =
      std::max(time_progress, static_cast<double>(step - o.warmup_steps) /
                                  std::max<int64_t>(1, o.steps - o.warmup_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return o.lr * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

// Norm gains are not decayed (decaying them toward 0 fights the normalisation).
std::vector<torch::optim::OptimizerParamGroup> ParamGroups(const LmModel::Impl& m,
                                                           const TrainOptions& o) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& [name, t] : m.Named()) (t.dim() >= 2 ? decay : no_decay).push_back(t);
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(o.lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(o.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return groups;
}

}  // namespace

absl::StatusOr<TrainReport> TrainLm(LmModel& model, const TrainOptions& o,
                                    const std::function<void(const StepStats&)>& on_step) {
  if (o.steps < 1 || o.batch < 1) return absl::InvalidArgumentError("steps and batch must be >= 1");
  KVG_RETURN_IF_ERROR(research::ValidateOptions(o.problems));
  if (o.threads > 0) {
    at::set_num_threads(o.threads);
    SetBlasThreads(o.threads);
  }
  LmModel::Impl& m = model.impl();
  torch::optim::AdamW optimizer(ParamGroups(m, o), torch::optim::AdamWOptions(o.lr));
  std::vector<at::Tensor> params;
  for (const auto& [name, t] : m.Named()) params.push_back(t);

  TrainReport report;
  const auto start = Clock::now();
  // Offsetting the problem stream by the seed gives different data per seed
  // while staying a pure function of (seed, step).
  const int64_t stream_base = static_cast<int64_t>(o.seed % 1000) * 10'000'000;
  // Fail fast rather than hours in: the first 4096 problems of the stream must
  // fit the context (each batch is checked again as it is built).
  for (int64_t begin = 0; begin < 4096; begin += 256) {
    KVG_RETURN_IF_ERROR(
        MakeBatch(o.problems, stream_base + begin, 256, m.shape.max_positions).status());
  }
  for (int64_t step = 0; step < o.steps; ++step) {
    KVG_ASSIGN_OR_RETURN(Batch batch, MakeBatch(o.problems, stream_base + step * o.batch, o.batch,
                                                m.shape.max_positions));
    const double spent = o.time_budget_s > 0 ? Seconds(start) / o.time_budget_s : 0.0;
    if (spent >= 1.0) break;
    const double lr = LearningRate(o, step, spent);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    at::Tensor logits = m.Forward(batch.inputs);
    at::Tensor nll = at::cross_entropy_loss(logits.reshape({-1, kVocabSize}),
                                            batch.targets.reshape({-1}), {}, at::Reduction::None);
    at::Tensor mask = batch.mask.reshape({-1});
    at::Tensor loss = (nll * mask).sum() / mask.sum();
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, o.grad_clip);
    optimizer.step();

    report.tokens += batch.positions;
    report.steps.push_back(step + 1);
    report.losses.push_back(loss.item<double>());
    if (on_step) {
      const double elapsed = Seconds(start);
      int64_t total = o.steps;  // under a time budget: the steps the budget allows at this pace
      if (o.time_budget_s > 0) {
        const double per_step = elapsed / (step + 1);
        total = std::min<int64_t>(
            total,
            step + 1 + static_cast<int64_t>(std::max(0.0, o.time_budget_s - elapsed) / per_step));
      }
      on_step({step + 1, total, report.losses.back(), lr, report.tokens / elapsed, elapsed});
    }
  }
  report.wall_s = Seconds(start);
  const size_t tail = std::min<size_t>(50, report.losses.size());
  double sum = 0;
  for (size_t i = report.losses.size() - tail; i < report.losses.size(); ++i)
    sum += report.losses[i];
  report.final_loss = sum / tail;
  return report;
}

// ---- evaluation -------------------------------------------------------------

absl::StatusOr<EvalResult> EvaluateGreedy(const std::string& model_dir,
                                          const research::ProblemOptions& problems, int64_t count,
                                          int threads,
                                          const std::function<void(int64_t, int64_t)>& on_progress,
                                          const std::string& weights) {
  engine::EngineOptions eopts;
  eopts.num_threads = threads;
  eopts.weights = weights;
  KVG_ASSIGN_OR_RETURN(auto eng, engine::Engine::Load(model_dir, eopts));
  if (eng->tokenizer() == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(model_dir, " has no tokenizer.json"));
  }
  KVG_ASSIGN_OR_RETURN(std::vector<research::Problem> set,
                       research::GenerateProblems(problems, research::Split::kTest, 0, count));
  EvalResult result;
  const auto start = Clock::now();
  for (const research::Problem& p : set) {
    engine::GenerateRequest req;
    KVG_ASSIGN_OR_RETURN(req.prompt_ids, eng->tokenizer()->Encode(p.prompt));
    // Room for a solution up to twice the gold one, within the context.
    const int64_t room = eng->config().max_position_embeddings - req.prompt_ids.size();
    req.max_new_tokens = static_cast<int32_t>(
        std::min<int64_t>(room, 2 * static_cast<int64_t>(p.solution.size()) + 16));
    if (req.max_new_tokens < 1)
      return absl::InvalidArgumentError("a test prompt fills the context");
    KVG_ASSIGN_OR_RETURN(engine::GenerateResult out, eng->Generate(req));
    std::optional<int64_t> answer = guard::ExtractAnswer(out.text);
    const bool correct = out.finish_reason == engine::FinishReason::kEos && answer == p.answer;
    result.correct += correct;
    result.samples.push_back({p.id, out.text, p.answer, correct});
    ++result.total;
    if (on_progress) on_progress(result.total, count);
  }
  result.seconds = Seconds(start);
  result.accuracy = result.total ? static_cast<double>(result.correct) / result.total : 0.0;
  return result;
}

absl::StatusOr<research::ProblemOptions> ApplyProblemOpts(
    research::ProblemOptions base, const std::vector<std::string>& key_values) {
  json j = research::ToJson(base);
  for (const std::string& kv : key_values) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--problem-opt '", kv, "' is not key=value"));
    }
    const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
    if (!j.contains(key))
      return absl::InvalidArgumentError(absl::StrCat("unknown problem option '", key, "'"));
    int64_t number = 0;
    if (j[key].is_number() && absl::SimpleAtoi(value, &number)) {
      j[key] = number;
    } else {
      j[key] = value;
    }
  }
  return research::OptionsFromJson(j);
}

absl::Status WriteTrainingRecord(const std::string& dir, const TrainReport& report,
                                 const json& record) {
  const std::filesystem::path root(dir);
  json full = record;
  full["wall_seconds"] = report.wall_s;
  full["final_loss"] = report.final_loss;
  full["tokens_processed"] = report.tokens;
  KVG_RETURN_IF_ERROR(WriteText(root / "training.json", full.dump(2) + "\n"));
  std::string csv = "step,loss\n";
  PlotSeries series{.name = "train loss (solution tokens)"};
  for (size_t i = 0; i < report.steps.size(); ++i) {
    absl::StrAppend(&csv, report.steps[i], ",", report.losses[i], "\n");
    series.x.push_back(report.steps[i]);
    series.y.push_back(report.losses[i]);
  }
  KVG_RETURN_IF_ERROR(WriteText(root / "loss.csv", csv));
  PlotSpec plot{.title = "kvguard train-lm", .x_label = "step", .y_label = "cross-entropy (nats)"};
  plot.series.push_back(std::move(series));
  return WriteSvgPlot(plot, (root / "loss.svg").string());
}

}  // namespace kvguard::trainer
