// File: services/cli/progress.h
//
// One-line progress for long commands on stderr: done/total, rate, ETA.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace kvguard::cli {

class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), start_(Clock::now()) {}
  void Update(int64_t done, int64_t total) {
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    const double rate = s > 0 ? done / s : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    std::fprintf(stderr, "\r%s: %lld/%lld (%.1f%%) %.2f/s ETA %.0fs   ", what_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total),
                 total ? 100.0 * done / total : 100.0, rate, eta);
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::string what_;
  Clock::time_point start_;
};

}  // namespace kvguard::cli
