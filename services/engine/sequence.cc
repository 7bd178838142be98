#include "services/engine/sequence.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <iterator>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvguard::engine {
namespace {

// A sequence's work between forwards (compressor scoring and eviction, the
// guard's attention bookkeeping) is a string of small libtorch ops per layer.
// Each op above libtorch's grain opens an OpenMP region, and waking the team
// costs more than the op: in the 2-core VM, 20% of decode time at ratio 0.75
// in the capacity benchmark went to wake-ups. Sequences of up to this many
// positions x kv heads x head_dim (4096 tokens of 2 x 32-wide kv heads; an
// upper bound on a layer's retained keys) are handled on the calling thread;
// longer ones still use the team.
constexpr int64_t kSerialKeyElements = int64_t{1} << 18;

// Keeps the calling thread's OpenMP regions (libtorch's, OpenBLAS's) on one
// thread while in scope; omp_set_num_threads changes this thread's setting only.
class SerialRegions {
 public:
  explicit SerialRegions(bool on) : saved_(on ? omp_get_max_threads() : 0) {
    if (saved_ > 1) omp_set_num_threads(1);
  }
  ~SerialRegions() {
    if (saved_ > 1) omp_set_num_threads(saved_);
  }
  SerialRegions(const SerialRegions&) = delete;
  SerialRegions& operator=(const SerialRegions&) = delete;

 private:
  int saved_;
};

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Mean received attention of every position over the layers and heads that
// retain it, indexed by position (only when the cache gathers attention sums).
// Read through the stats' strides: this runs on every eviction of a guarded
// sequence, and tensor ops per layer cost more than the arithmetic.
std::vector<std::pair<double, int>> PositionAttention(const SequenceKvCache& cache) {
  std::vector<std::pair<double, int>> out(static_cast<size_t>(cache.num_positions()));
  for (int64_t l = 0; l < cache.options().num_layers; ++l) {
    at::Tensor sum = cache.AttentionSum(l);  // [kv_heads, group, retained]
    if (!sum.defined()) return {};
    at::Tensor count = cache.AttentionCount(l);  // [kv_heads, retained]
    if (!sum.device().is_cpu()) {
      sum = sum.to(at::kCPU).contiguous();
      count = count.to(at::kCPU).contiguous();
    }
    const float* s = sum.data_ptr<float>();
    const float* c = count.data_ptr<float>();
    const int64_t group = sum.size(1);
    const auto& positions = cache.Positions(l);
    for (size_t h = 0; h < positions.size(); ++h) {
      for (size_t i = 0; i < positions[h].size(); ++i) {
        double total = 0;  // the mean over the group's query heads, as sum.mean(1)
        for (int64_t r = 0; r < group; ++r) total += s[h * sum.stride(0) + r * sum.stride(1) + i];
        const float seen = std::max(c[h * count.stride(0) + i], 1.0f);
        auto& [acc, n] = out[static_cast<size_t>(positions[h][i])];
        acc += static_cast<float>(static_cast<float>(total / group) / seen);
        ++n;
      }
    }
  }
  return out;
}

}  // namespace

Sequence::Sequence(LlamaModel& model, const Tokenizer* tokenizer, const GenerateRequest& request)
    : model_(model), tokenizer_(tokenizer), request_(request) {}

Sequence::~Sequence() = default;

absl::StatusOr<std::unique_ptr<Sequence>> Sequence::Create(LlamaModel& model,
                                                           const Tokenizer* tokenizer,
                                                           const GenerateRequest& request,
                                                           const SequenceOptions& options) {
  std::unique_ptr<Sequence> s(new Sequence(model, tokenizer, request));
  s->options_ = options;
  const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
  s->budget_ =
      std::min<int64_t>(request.max_new_tokens, model.config().max_position_embeddings - prompt);
  KvCacheOptions cache_options = model.CacheOptions(prompt + s->budget_);
  if (!request.compression.compressor.empty()) {
    KVG_ASSIGN_OR_RETURN(s->compression_, compress::CacheCompression::Create(request.compression));
    s->compression_->ConfigureCache(cache_options);
  }
  if (options.gather_attention) cache_options.needs.attention_sums = true;
  cache_options.arena = options.kv_arena;
  s->cache_ = std::make_unique<SequenceKvCache>(cache_options);
  SamplingParams sampling = request.sampling;
  sampling.logprobs = std::max(sampling.logprobs, options.report_top_logprobs);
  s->sampler_ = std::make_unique<Sampler>(sampling);
  if (tokenizer != nullptr) s->decoder_ = std::make_unique<IncrementalDecoder>(tokenizer);
  for (const std::string& stop : request.stop_strings)
    s->max_stop_len_ = std::max(s->max_stop_len_, stop.size());
  s->history_ = request.prompt_ids;
  s->item_ = ForwardItem{.cache = s->cache_.get(), .tokens = request.prompt_ids};
  s->result_.prompt_ids = request.prompt_ids;
  s->start_ = std::chrono::steady_clock::now();
  if (s->budget_ <= 0) s->finished_ = true;
  return s;
}

// What a rebuild takes from the pool beyond what it gives back: the fresh
// cache fills with the whole history as the current cache's blocks return.
int64_t Sequence::RebuildBlocks(const SequenceKvCache& fresh) const {
  return fresh.BlocksToAppend(static_cast<int64_t>(history_.size())) - cache_->BlocksHeld();
}

int64_t Sequence::BlocksForNextStep() const {
  if (finished_) return 0;
  if (rebuilt_) return std::max<int64_t>(0, RebuildBlocks(*rebuilt_));
  return cache_->BlocksToAppend(static_cast<int64_t>(item_.tokens.size()));
}

ForwardItem* Sequence::NextForward() {
  if (finished_) return nullptr;
  if (rebuilt_) {
    cache_ = std::move(rebuilt_);  // the old cache's blocks go back to the pool
    item_ = ForwardItem{.cache = cache_.get(), .tokens = history_};
  }
  return &item_;
}

double Sequence::ratio() const { return compression_ ? compression_->ratio() : 0.0; }

absl::Status Sequence::SetRatio(double ratio) {
  if (compression_ == nullptr) return absl::OkStatus();
  return compression_->set_ratio(ratio);
}

absl::Status Sequence::Compress(std::vector<int32_t>& evicted,
                                std::vector<float>& evicted_attention) {
  if (compression_ == nullptr || eviction_paused_) return absl::OkStatus();
  for (const auto& [at_step, ratio] : request_.compression.ratio_schedule) {
    if (at_step == step_) KVG_RETURN_IF_ERROR(compression_->set_ratio(ratio));
  }
  const int64_t evicted_before = cache_->Stats().evicted_slots;
  // Which positions leave, and the attention they had, only on steps that may evict.
  const bool track = options_.gather_attention && compression_->Due(step_ == 0);
  std::vector<std::pair<double, int>> attention;
  std::vector<int32_t> before;
  if (track) {
    attention = PositionAttention(*cache_);
    before = cache_->WholePositions();
  }
  compress::RopeFn rope = [this](int64_t f, int64_t n) { return model_.RopeCosSin(f, n); };
  KVG_RETURN_IF_ERROR(
      compression_->AfterForward(*cache_, model_.config(), rope, step_ == 0, protected_));
  if (!track || cache_->Stats().evicted_slots == evicted_before) return absl::OkStatus();
  const std::vector<int32_t> after = cache_->WholePositions();
  const size_t first_evicted = evicted.size();
  std::set_difference(before.begin(), before.end(), after.begin(), after.end(),
                      std::back_inserter(evicted));
  for (size_t i = first_evicted; i < evicted.size(); ++i) {
    const int32_t p = evicted[i];
    const auto [total, n] =
        static_cast<size_t>(p) < attention.size() ? attention[p] : std::pair(0.0, 0);
    evicted_attention.push_back(n ? static_cast<float>(total / n) : 0.0f);
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> Sequence::AfterForward(const float* logits_row) {
  if (finished_) return absl::FailedPreconditionError("sequence already finished");
  StepResult r;
  r.step = step_;
  {
    const KvCacheOptions& o = cache_->options();
    SerialRegions serial(cache_->num_positions() * o.num_kv_heads * o.head_dim <=
                         kSerialKeyElements);
    KVG_RETURN_IF_ERROR(Compress(r.evicted_positions, r.evicted_attention));
  }
  const int64_t vocab = model_.config().vocab_size;
  SampledToken token = sampler_->Sample(std::span<const float>(logits_row, vocab), history_,
                                        request_.prompt_ids.size());
  r.report_top = token.top_logprobs;
  if (static_cast<int32_t>(token.top_logprobs.size()) > request_.sampling.logprobs) {
    token.top_logprobs.resize(request_.sampling.logprobs);
  }
  if (step_ == 0) ttft_s_ = SecondsSince(start_);
  history_.push_back(token.id);
  result_.output_ids.push_back(token.id);
  result_.tokens.push_back(token);
  CheckStop(token, r);
  r.token = token;
  r.kv = cache_->Stats();
  r.ratio = ratio();
  result_.retained_per_step.push_back(
      r.kv.retained_slots /
      std::max<int64_t>(1, model_.config().num_layers * model_.config().num_kv_heads));
  ++step_;
  if (!r.finished && step_ >= budget_) {
    r.finished = true;
    r.finish_reason = FinishReason::kLength;
  }
  if (r.finished) {
    finished_ = true;
    result_.finish_reason = r.finish_reason;
  }
  r.text_delta = TakeText(r.finished);
  item_.tokens = {token.id};
  return r;
}

void Sequence::CheckStop(const SampledToken& token, StepResult& r) {
  const auto& eos = model_.config().eos_token_ids;
  if (!request_.ignore_eos && std::find(eos.begin(), eos.end(), token.id) != eos.end()) {
    r.finished = true;
    r.finish_reason = FinishReason::kEos;
  } else if (std::find(request_.stop_token_ids.begin(), request_.stop_token_ids.end(), token.id) !=
             request_.stop_token_ids.end()) {
    r.finished = true;
    r.finish_reason = FinishReason::kStop;
  }
  if (decoder_ == nullptr) return;
  text_ += decoder_->Push(token.id);
  if (r.finished && r.finish_reason != FinishReason::kStop) text_ += decoder_->Flush();
  // Search only where a stop string could newly end.
  const size_t from = emitted_ > max_stop_len_ ? emitted_ - max_stop_len_ : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : request_.stop_strings) cut = std::min(cut, text_.find(s, from));
  if (cut != std::string::npos) {
    text_.resize(cut);
    r.finished = true;
    r.finish_reason = FinishReason::kStop;
  }
}

// Streams text up to the point where a stop string could still be starting.
std::string Sequence::TakeText(bool final) {
  size_t ready = text_.size();
  if (!final && max_stop_len_ > 0)
    ready = ready > max_stop_len_ - 1 ? ready - (max_stop_len_ - 1) : 0;
  // Never split a UTF-8 code point when holding back.
  while (ready > emitted_ && ready < text_.size() &&
         (static_cast<uint8_t>(text_[ready]) & 0xC0) == 0x80) {
    --ready;
  }
  if (ready <= emitted_) return "";
  std::string delta = text_.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return delta;
}

void Sequence::Cancel() {
  if (finished_) return;
  finished_ = true;
  result_.finish_reason = FinishReason::kCancelled;
  cache_ = std::make_unique<SequenceKvCache>(KvCacheOptions{});  // frees the KV now
  rebuilt_.reset();
  item_.cache = cache_.get();
}

absl::StatusOr<int64_t> Sequence::Rebuild() {
  if (finished_ || rebuilt_) return 0;
  const int64_t lacking =
      cache_->num_positions() - static_cast<int64_t>(cache_->WholePositions().size());
  if (lacking == 0) return 0;
  auto fresh = std::make_unique<SequenceKvCache>(cache_->options());
  const auto& arena = cache_->options().arena;
  if (arena != nullptr && RebuildBlocks(*fresh) > arena->pool->free_blocks()) {
    return absl::ResourceExhaustedError("KV pool has no room to rebuild the cache");
  }
  rebuilt_ = std::move(fresh);
  result_.recomputed_positions += lacking;
  return lacking;
}

GenerateResult Sequence::Result() const {
  GenerateResult r = result_;
  if (tokenizer_ != nullptr) r.text = text_;
  const KvCacheStats stats = cache_->Stats();
  const ModelConfig& c = model_.config();
  r.kv_bytes = stats.bytes;
  r.retained_tokens = stats.retained_slots / std::max<int64_t>(1, c.num_layers * c.num_kv_heads);
  r.evicted_slots = stats.evicted_slots;
  r.prefill_seconds = ttft_s_;
  r.decode_seconds = std::max(0.0, SecondsSince(start_) - ttft_s_);
  return r;
}

std::vector<absl::StatusOr<StepResult>> AfterForwardAll(std::span<Sequence* const> sequences,
                                                        const float* logits, int64_t row_stride) {
  const auto n = static_cast<int64_t>(sequences.size());
  std::vector<absl::StatusOr<StepResult>> results(sequences.size(),
                                                  absl::UnknownError("not stepped"));
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
  // Inside the region libtorch's own parallel_for runs inline on the calling thread.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) results[i] = sequences[i]->AfterForward(logits + i * row_stride);
  return results;
}

}  // namespace kvguard::engine
