#include "services/engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <exception>
#include <functional>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "services/engine/pretokenizer.h"

namespace kvguard::engine {
namespace {

using json = nlohmann::json;

// HF keeps a word cache of the same size; words beyond it are just merged
// again, which keeps memory bounded for adversarial inputs.
constexpr size_t kCacheCapacity = 10000;
constexpr size_t kMaxCachedWordBytes = 256;

absl::Status Unsupported(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: unsupported ", what));
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", what));
}

// `obj[key]`, or null when absent (HF treats both alike).
const json& Child(const json& obj, const char* key) {
  static const json* const kNull = new json();
  auto it = obj.find(key);
  return it == obj.end() ? *kNull : *it;
}

// Unicode White_Space, which is what Rust's char::is_whitespace (used by HF
// for lstrip/rstrip) tests.
bool IsWhitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Returns the start of the whitespace run that ends at `pos`, not going
// below `limit`.
size_t WhitespaceRunStart(std::string_view text, size_t pos, size_t limit) {
  while (pos > limit) {
    size_t start = pos - 1;
    while (start > limit && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    size_t cursor = start;
    if (!IsWhitespace(NextCodePoint(text, &cursor))) break;
    pos = start;
  }
  return pos;
}

size_t WhitespaceRunEnd(std::string_view text, size_t pos) {
  while (pos < text.size()) {
    size_t next = pos;
    if (!IsWhitespace(NextCodePoint(text, &next))) break;
    pos = next;
  }
  return pos;
}

// A stretch of input: plain text (id < 0) or an already matched added token.
struct Segment {
  std::string_view text;
  int32_t id = -1;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool lstrip = false;
  bool rstrip = false;
};

// Finds added tokens in text, leftmost-longest like HF's Aho-Corasick
// matcher. Candidates are bucketed by first byte; a token's first byte is
// never a UTF-8 continuation byte, so byte-wise scanning only matches at
// code point boundaries.
class AddedTokenMatcher {
 public:
  void Add(AddedToken token) {
    auto& bucket = by_first_byte_[static_cast<uint8_t>(token.content[0])];
    bucket.push_back(std::move(token));
    // Longest first, so the first hit at a position is the longest one.
    std::stable_sort(bucket.begin(), bucket.end(), [](const auto& a, const auto& b) {
      return a.content.size() > b.content.size();
    });
    empty_ = false;
  }

  // Replaces each plain-text segment by its pieces around matched tokens.
  void SplitSegments(std::vector<Segment>* segments) const {
    if (empty_) return;
    std::vector<Segment> out;
    for (const Segment& segment : *segments) {
      if (segment.id >= 0) {
        out.push_back(segment);
      } else {
        SplitText(segment.text, &out);
      }
    }
    *segments = std::move(out);
  }

 private:
  const AddedToken* LongestAt(std::string_view text, size_t pos) const {
    for (const AddedToken& token : by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (text.substr(pos, token.content.size()) == token.content) return &token;
    }
    return nullptr;
  }

  void SplitText(std::string_view text, std::vector<Segment>* out) const {
    size_t gap_start = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const AddedToken* token = LongestAt(text, pos);
      if (token == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t end = pos + token->content.size();
      // lstrip/rstrip tokens swallow the adjacent whitespace.
      if (token->lstrip) start = WhitespaceRunStart(text, start, gap_start);
      if (token->rstrip) end = WhitespaceRunEnd(text, end);
      if (start > gap_start) out->push_back({text.substr(gap_start, start - gap_start)});
      out->push_back({text.substr(start, end - start), token->id});
      gap_start = pos = end;
    }
    if (gap_start < text.size()) out->push_back({text.substr(gap_start)});
  }

  std::array<std::vector<AddedToken>, 256> by_first_byte_;
  bool empty_ = true;
};

struct Merge {
  int32_t rank;
  int32_t new_id;
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// One symbol of a word being merged; symbols form a doubly linked list so
// merges are O(1) and positions stay stable for the priority queue.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  bool alive;
};

struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t left_id;
  int32_t right_id;
  int32_t new_id;
  // Lowest rank first, then leftmost, as HF's BPE does.
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

using CandidateQueue =
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>>;

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(const json& root);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;
  std::string TokenBytes(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_bytes_.size()); }
  std::optional<int32_t> TokenToId(std::string_view token) const override;

 private:
  BpeTokenizer() = default;
  absl::Status CheckPipeline(const json& root);
  absl::Status LoadModel(const json& model);
  absl::Status LoadMerges(const json& merges);
  absl::Status LoadAddedTokens(const json& added);
  void SetTokenBytes(int32_t id, std::string bytes);

  void EncodeWord(const std::string& word, std::vector<int32_t>* ids) const;
  std::vector<Symbol> InitialSymbols(std::string_view word) const;
  void MergeSymbols(std::vector<Symbol>* symbols) const;
  void PushCandidate(const std::vector<Symbol>& symbols, int32_t pos, CandidateQueue* queue) const;
  bool LookupCache(const std::string& word, std::vector<int32_t>* ids) const;
  void StoreCache(const std::string& word, const std::vector<int32_t>& ids) const;

  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<std::string, int32_t> added_ids_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};
  std::vector<std::string> id_bytes_;  // indexed by id; empty for unused ids
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  // Added tokens with normalized=false are matched before those with
  // normalized=true, mirroring HF's two passes.
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;

  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeTokenizer::Create(const json& root) {
  if (!root.is_object()) return Malformed("top level is not a JSON object");
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  KVG_RETURN_IF_ERROR(tok->CheckPipeline(root));
  if (!root.contains("model")) return Malformed("missing 'model'");
  KVG_RETURN_IF_ERROR(tok->LoadModel(root.at("model")));
  const json& added = Child(root, "added_tokens");
  if (!added.is_null()) KVG_RETURN_IF_ERROR(tok->LoadAddedTokens(added));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// A token id from the JSON: an integer in [0, 2^24) (a float such as 4e46 or
// a huge id would overflow or allocate the id table; found by fuzz_tokenizer).
absl::StatusOr<int32_t> TokenId(const json& j, const std::string& token) {
  constexpr int64_t kMaxId = int64_t{1} << 24;
  if (!j.is_number_integer())
    return Malformed(absl::StrCat("id of token '", token, "' is not an integer"));
  const int64_t id = j.is_number_unsigned()
                         ? static_cast<int64_t>(std::min<uint64_t>(j.get<uint64_t>(), kMaxId))
                         : j.get<int64_t>();
  if (id < 0 || id >= kMaxId) {
    return Malformed(absl::StrCat("id of token '", token, "' is outside [0, ", kMaxId, ")"));
  }
  return static_cast<int32_t>(id);
}

absl::Status BpeTokenizer::CheckPipeline(const json& root) {
  const json& normalizer = Child(root, "normalizer");
  if (!normalizer.is_null()) {
    return Unsupported(
        absl::StrCat("normalizer type '", normalizer.value("type", std::string("?")), "'"));
  }
  const json& decoder = Child(root, "decoder");
  std::string decoder_type = decoder.is_null() ? "null" : decoder.value("type", std::string("?"));
  if (decoder_type != "ByteLevel") {
    return Unsupported(absl::StrCat("decoder type '", decoder_type, "'"));
  }
  // post_processor is deliberately ignored: it only adds special tokens
  // (add_special_tokens=True) and adjusts offsets, neither of which we do.
  KVG_ASSIGN_OR_RETURN(pre_tokenizer_, PreTokenizer::FromJson(Child(root, "pre_tokenizer")));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadModel(const json& model) {
  std::string type = model.value("type", std::string(model.contains("merges") ? "BPE" : "?"));
  if (type != "BPE") return Unsupported(absl::StrCat("model type '", type, "'"));
  const json& dropout = Child(model, "dropout");
  if (!dropout.is_null() && dropout.get<double>() != 0.0) return Unsupported("BPE dropout");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& affix = Child(model, key);
    if (!affix.is_null() && !affix.get<std::string>().empty()) {
      return Unsupported(absl::StrCat("BPE ", key));
    }
  }
  if (model.value("byte_fallback", false)) return Unsupported("BPE byte_fallback");
  fuse_unk_ = model.value("fuse_unk", false);
  ignore_merges_ = model.value("ignore_merges", false);

  if (!model.contains("vocab") || !model.at("vocab").is_object()) {
    return Malformed("model.vocab is missing or not an object");
  }
  for (const auto& [token, id_json] : model.at("vocab").items()) {
    KVG_ASSIGN_OR_RETURN(const int32_t id, TokenId(id_json, token));
    vocab_.emplace(token, id);
    // HF's ByteLevel decoder emits a token's raw UTF-8 when any of its
    // characters is outside the byte alphabet.
    SetTokenBytes(id, ByteLevelDecode(token).value_or(token));
  }
  const auto& alphabet = ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(alphabet[b]);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (const json& unk = Child(model, "unk_token"); unk.is_string()) {
    auto it = vocab_.find(unk.get<std::string>());
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  if (!model.contains("merges")) return Malformed("model.merges is missing");
  return LoadMerges(model.at("merges"));
}

absl::Status BpeTokenizer::LoadMerges(const json& merges) {
  if (!merges.is_array()) return Malformed("model.merges is not an array");
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const json& entry : merges) {
    std::string left, right;
    if (entry.is_string()) {
      // Older files write "a b"; tokens never contain a plain space there.
      std::string line = entry.get<std::string>();
      size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return Malformed(absl::StrCat("bad merge '", line, "'"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      return Malformed(absl::StrCat("bad merge entry ", entry.dump()));
    }
    auto l = vocab_.find(left);
    auto r = vocab_.find(right);
    auto merged = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || merged == vocab_.end()) {
      return Malformed(absl::StrCat("merge '", left, " ", right, "' uses a token not in vocab"));
    }
    // Later duplicates win, as in HF's HashMap collect.
    merges_.insert_or_assign(PairKey(l->second, r->second), Merge{rank++, merged->second});
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::LoadAddedTokens(const json& added) {
  if (!added.is_array()) return Malformed("added_tokens is not an array");
  for (const json& entry : added) {
    AddedToken token;
    token.content = entry.at("content").get<std::string>();
    KVG_ASSIGN_OR_RETURN(token.id, TokenId(entry.at("id"), token.content));
    if (entry.value("single_word", false)) {
      return Unsupported(absl::StrCat("added token '", token.content, "' with single_word=true"));
    }
    token.lstrip = entry.value("lstrip", false);
    token.rstrip = entry.value("rstrip", false);
    SetTokenBytes(token.id, token.content);  // added tokens decode verbatim
    added_ids_.insert_or_assign(token.content, token.id);
    if (token.content.empty()) continue;  // HF never matches empty tokens
    bool normalized = entry.value("normalized", !entry.value("special", false));
    (normalized ? normalized_matcher_ : raw_matcher_).Add(std::move(token));
  }
  return absl::OkStatus();
}

void BpeTokenizer::SetTokenBytes(int32_t id, std::string bytes) {
  if (static_cast<size_t>(id) >= id_bytes_.size()) id_bytes_.resize(static_cast<size_t>(id) + 1);
  id_bytes_[id] = std::move(bytes);
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  std::vector<Segment> segments = {{text}};
  raw_matcher_.SplitSegments(&segments);
  normalized_matcher_.SplitSegments(&segments);
  std::vector<int32_t> ids;
  std::vector<std::string> words;
  for (const Segment& segment : segments) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    words.clear();
    KVG_RETURN_IF_ERROR(pre_tokenizer_->Split(segment.text, &words));
    for (const std::string& word : words) EncodeWord(word, &ids);
  }
  return ids;
}

void BpeTokenizer::EncodeWord(const std::string& word, std::vector<int32_t>* ids) const {
  if (LookupCache(word, ids)) return;
  std::vector<int32_t> word_ids;
  auto whole = ignore_merges_ ? vocab_.find(ByteLevelEncode(word)) : vocab_.end();
  if (whole != vocab_.end()) {
    word_ids.push_back(whole->second);
  } else {
    std::vector<Symbol> symbols = InitialSymbols(word);
    MergeSymbols(&symbols);
    for (const Symbol& s : symbols) {
      if (s.alive) word_ids.push_back(s.id);
    }
  }
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  StoreCache(word, word_ids);
}

std::vector<Symbol> BpeTokenizer::InitialSymbols(std::string_view word) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (char c : word) {
    int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id < 0) {
      // Bytes missing from the vocab become unk (fused if asked), or are
      // dropped when there is no unk token, as HF does.
      if (!unk_id_.has_value()) continue;
      if (fuse_unk_ && !symbols.empty() && symbols.back().id == *unk_id_) continue;
      id = *unk_id_;
    }
    int32_t pos = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, pos - 1, -1, true});
    if (pos > 0) symbols[pos - 1].next = pos;
  }
  return symbols;
}

void BpeTokenizer::PushCandidate(const std::vector<Symbol>& symbols, int32_t pos,
                                 CandidateQueue* queue) const {
  int32_t next = symbols[pos].next;
  if (next < 0) return;
  auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
  if (it == merges_.end()) return;
  queue->push({it->second.rank, pos, symbols[pos].id, symbols[next].id, it->second.new_id});
}

void BpeTokenizer::MergeSymbols(std::vector<Symbol>* symbols) const {
  std::vector<Symbol>& s = *symbols;
  CandidateQueue queue;
  for (int32_t pos = 0; pos < static_cast<int32_t>(s.size()); ++pos) PushCandidate(s, pos, &queue);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    // Entries go stale when a neighbour was merged first; skip those.
    const Symbol& left = s[c.pos];
    if (!left.alive || left.next < 0 || left.id != c.left_id || s[left.next].id != c.right_id) {
      continue;
    }
    int32_t removed = left.next;
    s[c.pos].id = c.new_id;
    s[c.pos].next = s[removed].next;
    if (s[removed].next >= 0) s[s[removed].next].prev = c.pos;
    s[removed].alive = false;
    if (s[c.pos].prev >= 0) PushCandidate(s, s[c.pos].prev, &queue);
    PushCandidate(s, c.pos, &queue);
  }
}

bool BpeTokenizer::LookupCache(const std::string& word, std::vector<int32_t>* ids) const {
  std::shared_lock lock(cache_mutex_);
  auto it = cache_.find(word);
  if (it == cache_.end()) return false;
  ids->insert(ids->end(), it->second.begin(), it->second.end());
  return true;
}

void BpeTokenizer::StoreCache(const std::string& word, const std::vector<int32_t>& ids) const {
  if (word.size() > kMaxCachedWordBytes) return;
  std::unique_lock lock(cache_mutex_);
  if (cache_.size() < kCacheCapacity) cache_.emplace(word, ids);
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) bytes += TokenBytes(id);
  std::string text;
  AppendUtf8Lossy(bytes, /*hold_incomplete=*/false, &text);
  return text;
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_bytes_.size()) return "";
  return id_bytes_[id];
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  std::string key(token);
  if (auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::string file = IsDirectory(path) ? path + "/tokenizer.json" : path;
  KVG_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = FromJson(text);
  if (!tokenizer.ok()) {
    // Name the actual file instead of the generic "tokenizer.json".
    absl::string_view message = tokenizer.status().message();
    absl::ConsumePrefix(&message, "tokenizer.json: ");
    return absl::Status(tokenizer.status().code(), absl::StrCat(file, ": ", message));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json_text) {
  // nlohmann reports both syntax and type errors by throwing; nothing may
  // escape to callers, so every access below runs inside this try.
  try {
    json root = json::parse(json_text);
    return BpeTokenizer::Create(root);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: malformed: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("tokenizer.json: ", e.what()));
  }
}

}  // namespace kvguard::engine
