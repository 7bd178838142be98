// File: services/engine/tokenizer.h
//
// Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json`.
// Supported: model.type "BPE" (merges as ["a","b"] pairs or "a b" strings),
// pre-tokenizers `Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]`
// and plain `ByteLevel(use_regex=true)` (GPT-2 regex), the ByteLevel decoder,
// and added tokens (special or not) matched inside text before
// pre-tokenization. Regexes run on PCRE2 with JIT (they need \p{L}, \p{N} and
// the lookahead \s+(?!\S), which RE2 cannot express).
// Anything else (normalizers, other models or pre-tokenizers) fails Load()
// with a message naming the unsupported component.
//
//   KVG_ASSIGN_OR_RETURN(auto tok, Tokenizer::Load("models/x"));  // dir or file
//   std::vector<int32_t> ids = tok->Encode("Hello world").value();
//   std::string text = tok->Decode(ids);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvguard::engine {

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory holding one.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // Parses the JSON text of a tokenizer.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);
  virtual ~Tokenizer() = default;

  // Encodes without adding special tokens (add_special_tokens=False).
  // Fails only on text that is not valid UTF-8.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // Decodes ids to UTF-8 text (special tokens included verbatim, as HF's
  // decode(skip_special_tokens=False)). Invalid byte sequences become U+FFFD.
  // Unknown ids are skipped.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // The raw bytes a single token stands for (byte-level decoded).
  virtual std::string TokenBytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;  // max id + 1, added tokens included
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
};

// Streaming-safe detokenizer: feed ids one at a time, receive text deltas
// that never split a UTF-8 code point. Bytes of an incomplete code point are
// held back until the bytes completing it arrive; Flush() emits whatever is
// left (invalid remainder as U+FFFD).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  // Returns the newly completed text (possibly empty).
  std::string Push(int32_t id);
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // bytes not yet emitted
};

}  // namespace kvguard::engine
