// File: services/engine/pretokenizer.h
//
// Internal pieces of the byte-level BPE tokenizer (see tokenizer.h): UTF-8
// helpers shared by encoder and decoders, the GPT-2 byte<->unicode mapping,
// a PCRE2 regex splitter, and the pre-tokenizer pipeline parsed from the
// `pre_tokenizer` section of tokenizer.json. Not a public API.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace kvguard::engine {

// ---- UTF-8 ----

bool IsValidUtf8(std::string_view bytes);

// Appends `bytes` to `out` as UTF-8, replacing each maximal invalid subpart
// with U+FFFD exactly like Python's bytes.decode("utf-8", errors="replace").
// If `hold_incomplete` is set, a trailing sequence that is a valid but
// unfinished code point is not consumed. Returns the number of bytes consumed.
size_t AppendUtf8Lossy(std::string_view bytes, bool hold_incomplete, std::string* out);

// Decodes the code point at `*pos` of valid UTF-8 `text` and advances `*pos`.
uint32_t NextCodePoint(std::string_view text, size_t* pos);

// ---- GPT-2 byte-level mapping ----

// The printable code point (as UTF-8) that byte `b` is mapped to.
const std::array<std::string, 256>& ByteLevelAlphabet();

// Maps every byte of `bytes` through ByteLevelAlphabet().
std::string ByteLevelEncode(std::string_view bytes);

// Inverse of ByteLevelEncode; nullopt when `token` holds a code point that is
// not in the alphabet (such tokens decode to their raw UTF-8, as HF does).
std::optional<std::string> ByteLevelDecode(std::string_view token);

// ---- Regex splitting ----

// A compiled PCRE2 pattern (UTF + UCP, JIT when available). Immutable after
// construction, so one instance may be shared by many threads.
class RegexSplitter {
 public:
  // `literal` treats `pattern` as plain text (Split with {"String": ...}).
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Compile(const std::string& pattern,
                                                                bool literal);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // "Isolated" split: each match and each non-empty gap between matches
  // becomes a piece, in order. `text` must be valid UTF-8.
  absl::Status SplitIsolated(std::string_view text, std::vector<std::string>* out) const;

 private:
  explicit RegexSplitter(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, kept opaque so this header needs no pcre2.h
};

// ---- Pre-tokenizer pipeline ----

// Zero or more regex Splits followed by one ByteLevel step. Produces the
// words (raw bytes, not yet byte-level mapped) that BPE encodes one by one.
class PreTokenizer {
 public:
  // Parses the `pre_tokenizer` value; unsupported configurations yield
  // InvalidArgumentError naming the offending component.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& config);

  absl::Status Split(std::string_view text, std::vector<std::string>* words) const;

 private:
  PreTokenizer() = default;
  absl::Status AddStage(const nlohmann::json& stage);

  std::vector<std::unique_ptr<RegexSplitter>> splits_;
  bool has_byte_level_ = false;
  bool add_prefix_space_ = false;
  std::unique_ptr<RegexSplitter> byte_level_regex_;  // set when use_regex
};

}  // namespace kvguard::engine
