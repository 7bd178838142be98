// File: common/check.h
//
// KVG_CHECK aborts on programming errors (broken invariants), never on bad
// input: bad input is reported as an absl::Status.
//
//   KVG_CHECK(layer < num_layers) << "layer " << layer;
#pragma once

#include <cstdlib>
#include <iostream>
#include <sstream>

namespace kvguard {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    stream_ << file << ":" << line << ": check failed: " << cond << " ";
  }
  [[noreturn]] ~CheckFailure() {
    std::cerr << stream_.str() << std::endl;
    std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace kvguard

#define KVG_CHECK(cond) \
  if (cond) {           \
  } else                \
    ::kvguard::CheckFailure(__FILE__, __LINE__, #cond).stream()
