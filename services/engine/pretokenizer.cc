#include "services/engine/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvguard::engine {
namespace {

using json = nlohmann::json;

// GPT-2's split pattern, used by ByteLevel when `use_regex` is true.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Byte-level alphabet code points go up to 0x143 (256 + 67 remapped bytes).
constexpr int kAlphabetCodePoints = 0x144;

// Describes the UTF-8 sequence starting with lead byte `b`: its total length
// and the allowed range of the second byte (Unicode Table 3-7), so that
// overlongs and surrogates are rejected at the earliest byte, as Python does.
struct LeadInfo {
  int length = 0;  // 0 = never valid as a lead byte
  uint8_t lo = 0x80;
  uint8_t hi = 0xBF;
};

LeadInfo DescribeLead(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  return {};
}

// Number of bytes after `pos` that continue the sequence led by `lead`
// (stops at the first byte that does not fit).
int CountContinuation(std::string_view s, size_t pos, const LeadInfo& lead) {
  int k = 0;
  for (size_t j = pos + 1; j < s.size() && k < lead.length - 1; ++j, ++k) {
    uint8_t c = static_cast<uint8_t>(s[j]);
    uint8_t lo = k == 0 ? lead.lo : 0x80;
    uint8_t hi = k == 0 ? lead.hi : 0xBF;
    if (c < lo || c > hi) break;
  }
  return k;
}

void AppendCodePoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct ByteLevelTables {
  std::array<std::string, 256> alphabet;
  std::array<int, kAlphabetCodePoints> code_point_to_byte;
};

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
// the rest are shifted to 256+n so every byte is a visible character.
ByteLevelTables BuildByteLevelTables() {
  ByteLevelTables t;
  t.code_point_to_byte.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    int cp = printable ? b : next++;
    AppendCodePoint(static_cast<uint32_t>(cp), &t.alphabet[b]);
    t.code_point_to_byte[cp] = b;
  }
  return t;
}

const ByteLevelTables& Tables() {
  static const ByteLevelTables* tables = new ByteLevelTables(BuildByteLevelTables());
  return *tables;
}

// Unicode White_Space, spelled out for use inside a character class.
constexpr char kWhiteSpaceItems[] =
    R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// PCRE2's \s also matches U+180E, which left White_Space in Unicode 6.3; HF's
// Oniguruma does not, so \s and \S are replaced by explicit White_Space
// classes. \S inside a class has no such spelling and is left alone.
std::string RewriteWhitespaceEscapes(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceItems) : absl::StrCat("[", kWhiteSpaceItems, "]");
      } else if (e == 'S' && !in_class) {
        out += absl::StrCat("[^", kWhiteSpaceItems, "]");
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
    } else if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      size_t close = pattern.find(":]", i + 2);  // POSIX class such as [:alpha:]
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i + 1, close + 1 - i));
        i = close + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

absl::Status Unsupported(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: unsupported ", what));
}

}  // namespace

bool IsValidUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    uint8_t b = static_cast<uint8_t>(bytes[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    LeadInfo lead = DescribeLead(b);
    if (lead.length == 0 || CountContinuation(bytes, i, lead) != lead.length - 1) return false;
    i += lead.length;
  }
  return true;
}

size_t AppendUtf8Lossy(std::string_view bytes, bool hold_incomplete, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    uint8_t b = static_cast<uint8_t>(bytes[i]);
    if (b < 0x80) {
      out->push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    LeadInfo lead = DescribeLead(b);
    int k = lead.length == 0 ? 0 : CountContinuation(bytes, i, lead);
    if (lead.length != 0 && k == lead.length - 1) {
      out->append(bytes.substr(i, lead.length));
      i += lead.length;
      continue;
    }
    // A valid prefix cut off by the end of input may still be completed.
    if (hold_incomplete && lead.length != 0 && i + 1 + k == bytes.size()) return i;
    out->append("\xEF\xBF\xBD");  // U+FFFD for the maximal invalid subpart
    i += 1 + k;
  }
  return i;
}

uint32_t NextCodePoint(std::string_view s, size_t* pos) {
  uint8_t b = static_cast<uint8_t>(s[*pos]);
  int len = b < 0x80 ? 1 : DescribeLead(b).length;
  uint32_t cp = len == 1 ? b : (b & (0x7F >> len));
  for (int i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<uint8_t>(s[*pos + i]) & 0x3F);
  *pos += len;
  return cp;
}

const std::array<std::string, 256>& ByteLevelAlphabet() { return Tables().alphabet; }

std::string ByteLevelEncode(std::string_view bytes) {
  const auto& alphabet = Tables().alphabet;
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += alphabet[static_cast<uint8_t>(c)];
  return out;
}

std::optional<std::string> ByteLevelDecode(std::string_view token) {
  if (!IsValidUtf8(token)) return std::nullopt;
  const auto& to_byte = Tables().code_point_to_byte;
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    uint32_t cp = NextCodePoint(token, &pos);
    if (cp >= to_byte.size() || to_byte[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(to_byte[cp]));
  }
  return out;
}

// ---- RegexSplitter ----

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Compile(const std::string& pattern,
                                                                      bool literal) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  std::string source = literal ? pattern : RewriteWhitespaceEscapes(pattern);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(),
                                   options, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: cannot compile regex '",
                                                   pattern, "' at offset ", error_offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  // JIT is an optimization only: without it pcre2_match interprets.
  (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<RegexSplitter>(new RegexSplitter(code));
}

RegexSplitter::~RegexSplitter() { pcre2_code_free(Code(code_)); }

absl::Status RegexSplitter::SplitIsolated(std::string_view text,
                                          std::vector<std::string>* out) const {
  // Match data is per call so that concurrent Encode() calls share nothing.
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(Code(code_), nullptr), &pcre2_match_data_free);
  if (match == nullptr) return absl::ResourceExhaustedError("pcre2: out of memory");
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t offset = 0;
  size_t gap_start = 0;
  while (offset < text.size()) {
    int rc = pcre2_match(Code(code_), subject, text.size(), offset, PCRE2_NO_UTF_CHECK, match.get(),
                         nullptr);
    // The JIT's small fixed stack can overflow on huge inputs; the
    // interpreter keeps its frames on the heap.
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(Code(code_), subject, text.size(), offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       match.get(), nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return absl::InternalError(absl::StrCat("pcre2_match failed with code ", rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
    size_t start = ovector[0];
    size_t end = ovector[1];
    if (end <= start) {  // an empty match yields no piece; step over one code point
      offset = start + 1;
      while (offset < text.size() && (static_cast<uint8_t>(text[offset]) & 0xC0) == 0x80) ++offset;
      continue;
    }
    if (start > gap_start) out->emplace_back(text.substr(gap_start, start - gap_start));
    out->emplace_back(text.substr(start, end - start));
    gap_start = offset = end;
  }
  if (gap_start < text.size()) out->emplace_back(text.substr(gap_start));
  return absl::OkStatus();
}

// ---- PreTokenizer ----

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const json& config) {
  std::unique_ptr<PreTokenizer> pre(new PreTokenizer());
  try {
    if (config.is_null()) return Unsupported("null pre_tokenizer (byte-level BPE needs ByteLevel)");
    KVG_RETURN_IF_ERROR(pre->AddStage(config));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: bad pre_tokenizer: ", e.what()));
  }
  if (!pre->has_byte_level_) return Unsupported("pre_tokenizer without a ByteLevel step");
  return pre;
}

absl::Status PreTokenizer::AddStage(const json& stage) {
  std::string type = stage.at("type").get<std::string>();
  if (has_byte_level_)
    return Unsupported(absl::StrCat("pre_tokenizer '", type, "' after ByteLevel"));
  if (type == "Sequence") {
    for (const json& child : stage.at("pretokenizers")) KVG_RETURN_IF_ERROR(AddStage(child));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    has_byte_level_ = true;
    // HF's defaults when the keys are absent.
    add_prefix_space_ = stage.value("add_prefix_space", true);
    if (stage.value("use_regex", true)) {
      KVG_ASSIGN_OR_RETURN(byte_level_regex_, RegexSplitter::Compile(kGpt2Pattern, false));
    }
    return absl::OkStatus();
  }
  if (type != "Split") return Unsupported(absl::StrCat("pre_tokenizer type '", type, "'"));
  std::string behavior = stage.at("behavior").get<std::string>();
  if (behavior != "Isolated") return Unsupported(absl::StrCat("Split behavior '", behavior, "'"));
  if (stage.value("invert", false)) return Unsupported("Split with invert=true");
  const json& pattern = stage.at("pattern");
  bool literal = pattern.contains("String");
  if (!literal && !pattern.contains("Regex")) return Unsupported("Split pattern kind");
  std::string source = pattern.at(literal ? "String" : "Regex").get<std::string>();
  KVG_ASSIGN_OR_RETURN(auto splitter, RegexSplitter::Compile(source, literal));
  splits_.push_back(std::move(splitter));
  return absl::OkStatus();
}

absl::Status PreTokenizer::Split(std::string_view text, std::vector<std::string>* words) const {
  std::vector<std::string> pieces;
  if (!text.empty()) pieces.emplace_back(text);
  for (const auto& splitter : splits_) {
    std::vector<std::string> next;
    for (const std::string& piece : pieces)
      KVG_RETURN_IF_ERROR(splitter->SplitIsolated(piece, &next));
    pieces = std::move(next);
  }
  for (std::string& piece : pieces) {
    // HF's ByteLevel prepends the space to every piece it sees, not just
    // the first one of the text.
    if (add_prefix_space_ && piece.front() != ' ') piece.insert(0, 1, ' ');
    if (byte_level_regex_ != nullptr) {
      KVG_RETURN_IF_ERROR(byte_level_regex_->SplitIsolated(piece, words));
    } else {
      words->push_back(std::move(piece));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvguard::engine
