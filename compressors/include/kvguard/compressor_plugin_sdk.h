// File: compressors/include/kvguard/compressor_plugin_sdk.h
//
// Header-only helpers for compressor plugins written in C++ (standard library
// only: no kvguard, Abseil or libtorch). C++ exceptions must never cross the
// C ABI, so wrap every vtable function body in KVG_API_BEGIN / KVG_API_END:
// an escaping exception becomes a non-zero return with its message stored
// for last_error().
//
//   int32_t Create(const char* config_json, kvg_compressor_t** out) {
//     KVG_API_BEGIN
//     kvg::sdk::Config config = kvg::sdk::Config::Parse(config_json);  // throws on bad JSON
//     if (config.Int("window", 8) < 1) return kvg::sdk::Fail("window must be >= 1");
//     *out = new kvg_compressor{...};
//     KVG_API_END
//   }
//   ... .last_error = kvg::sdk::LastError, ...
//
// Build plugins with -fvisibility=hidden so only the two entry points are
// exported. The SDK hides its own symbols regardless: GCC would otherwise
// export its inline variables as process-wide unique symbols, and two
// plugins would share one error string (RTLD_LOCAL does not separate those).
#pragma once

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>

#include "kvguard/compressor_abi.h"

#if defined(__GNUC__)
#define KVG_SDK_HIDDEN __attribute__((visibility("hidden")))
#else
#define KVG_SDK_HIDDEN
#endif

namespace kvg {
namespace sdk KVG_SDK_HIDDEN {

// The calling thread's last error (the ABI's last_error is thread-local).
inline thread_local std::string last_error_message;

inline const char* LastError() { return last_error_message.c_str(); }

// Records `message` and returns KVG_ERROR. noexcept: it runs inside catch
// handlers, where a second exception would terminate the host.
inline int32_t Fail(const char* message) noexcept {
  try {
    last_error_message = message != nullptr ? message : "(no message)";
  } catch (...) {
    last_error_message.clear();  // out of memory: better no message than a crash
  }
  return KVG_ERROR;
}
inline int32_t Fail(const std::string& message) noexcept { return Fail(message.c_str()); }

// The flat JSON object the host passes to create(): option name -> scalar.
// Parse() and the typed getters throw std::invalid_argument on malformed
// input or a type mismatch (turned into an error by KVG_API_END).
class Config {
 public:
  static Config Parse(const char* json) {
    Config config;
    Parser parser{json == nullptr ? "" : json};
    parser.Object(config.values_);
    if (parser.Peek() != '\0') Throw("config: trailing characters after the object");
    return config;
  }

  [[nodiscard]] bool Has(const std::string& key) const { return values_.count(key) > 0; }

  [[nodiscard]] int64_t Int(const std::string& key, int64_t fallback) const {
    const Value* v = Find(key, Kind::kNumber);
    if (v == nullptr) return fallback;
    errno = 0;
    char* end = nullptr;
    const long long n = std::strtoll(v->text.c_str(), &end, 10);
    if (errno != 0 || *end != '\0') Throw("option '" + key + "' is not an integer: " + v->text);
    return n;
  }
  [[nodiscard]] double Double(const std::string& key, double fallback) const {
    const Value* v = Find(key, Kind::kNumber);
    if (v == nullptr) return fallback;
    char* end = nullptr;
    const double d = std::strtod(v->text.c_str(), &end);
    if (*end != '\0') Throw("option '" + key + "' is not a number: " + v->text);
    return d;
  }
  [[nodiscard]] bool Bool(const std::string& key, bool fallback) const {
    const Value* v = Find(key, Kind::kBool);
    return v == nullptr ? fallback : v->text == "true";
  }
  [[nodiscard]] std::string String(const std::string& key, const std::string& fallback) const {
    const Value* v = Find(key, Kind::kString);
    return v == nullptr ? fallback : v->text;
  }

 private:
  enum class Kind { kNumber, kBool, kString, kNull };
  struct Value {
    Kind kind;
    std::string text;  // number/bool as written, string unescaped
  };

  [[noreturn]] static void Throw(const std::string& what) { throw std::invalid_argument(what); }

  // nullptr when absent or null; throws when present with another type.
  const Value* Find(const std::string& key, Kind kind) const {
    auto it = values_.find(key);
    if (it == values_.end() || it->second.kind == Kind::kNull) return nullptr;
    if (it->second.kind != kind) Throw("option '" + key + "' has the wrong JSON type");
    return &it->second;
  }

  // Just enough JSON for one object of scalars; nested values are rejected.
  struct Parser {
    static constexpr char kHexDigits[] = "0123456789abcdef";
    const char* p;

    void Object(std::map<std::string, Value>& out) {
      Expect('{');
      if (Peek() == '}') {
        ++p;
        return;
      }
      for (;;) {
        Skip();
        if (*p != '"') Throw("config: expected a quoted key");
        std::string key = String();
        Expect(':');
        out[key] = Scalar();
        if (Peek() == '}') {
          ++p;
          return;
        }
        Expect(',');
      }
    }
    Value Scalar() {
      const char c = Peek();
      if (c == '"') return {Kind::kString, String()};
      for (const char* word : {"true", "false", "null"}) {
        const size_t n = std::strlen(word);
        if (std::strncmp(p, word, n) == 0) {
          p += n;
          return {*word == 'n' ? Kind::kNull : Kind::kBool, word};
        }
      }
      const char* start = p;
      while (*p != '\0' && std::strchr("+-.0123456789eE", *p) != nullptr) ++p;
      if (p == start) Throw("config: expected a scalar value");
      return {Kind::kNumber, std::string(start, p)};
    }
    std::string String() {
      std::string s;
      for (++p; *p != '"'; ++p) {
        if (*p == '\0') Throw("config: unterminated string");
        if (*p != '\\') {
          s += *p;
          continue;
        }
        switch (*++p) {
          case 'n':
            s += '\n';
            break;
          case 't':
            s += '\t';
            break;
          case 'r':
            s += '\r';
            break;
          case 'b':
            s += '\b';
            break;
          case 'f':
            s += '\f';
            break;
          case 'u':
            AppendUtf8(s, Hex4());
            break;
          case '\0':
            Throw("config: unterminated string");
          default:
            s += *p;  // \" \\ \/
        }
      }
      ++p;
      return s;
    }
    uint32_t Hex4() {
      uint32_t cp = 0;
      for (int i = 0; i < 4; ++i) {
        const char c = *++p;
        const char* digit =
            c == '\0' ? nullptr
                      : std::strchr(kHexDigits, std::tolower(static_cast<unsigned char>(c)));
        if (digit == nullptr) Throw("config: bad \\u escape");
        cp = cp * 16 + static_cast<uint32_t>(digit - kHexDigits);
      }
      return cp;
    }
    // The host writes non-ASCII text as raw UTF-8 and escapes only control
    // characters, so surrogate pairs are not combined here.
    static void AppendUtf8(std::string& s, uint32_t cp) {
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
    }
    void Skip() {
      while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') ++p;
    }
    char Peek() {
      Skip();
      return *p;
    }
    void Expect(char c) {
      if (Peek() != c) Throw(std::string("config: expected '") + c + "'");
      ++p;
    }
  };

  std::map<std::string, Value> values_;
};

}  // namespace sdk
}  // namespace kvg

// Exception barrier for a vtable function returning int32_t: the body runs
// inside try; falling off the end returns KVG_OK, an exception returns
// KVG_ERROR with its message recorded for last_error().
#define KVG_API_BEGIN try {
#define KVG_API_END                                                 \
  }                                                                 \
  catch (const std::exception& kvg_api_error_) {                    \
    return ::kvg::sdk::Fail(kvg_api_error_.what());                 \
  }                                                                 \
  catch (...) {                                                     \
    return ::kvg::sdk::Fail("unknown C++ exception in the plugin"); \
  }                                                                 \
  return KVG_OK;
