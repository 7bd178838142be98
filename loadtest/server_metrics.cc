#include "loadtest/server_metrics.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "common/child_process.h"

namespace kvguard::loadtest {

std::optional<double> SampleValue(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n')
      return std::strtod(text.c_str() + at + series.size() + 1, nullptr);
    at += series.size();
  }
  return std::nullopt;
}

ServerMetricsSampler::Counters ServerMetricsSampler::Read(const std::string& text) {
  auto v = [&](const char* series) { return SampleValue(text, series).value_or(0); };
  return {.admitted = v(R"(kvguard_admissions_total{kind="new"})"),
          .resumed = v(R"(kvguard_admissions_total{kind="resumed"})"),
          .preemptions = v("kvguard_preemptions_total"),
          .queue_sum = v("kvguard_queue_time_seconds_sum"),
          .queue_count = v("kvguard_queue_time_seconds_count")};
}

ServerMetricsSampler::ServerMetricsSampler(int port) : port_(port) {
  const std::string text = HttpGet(port_, "/metrics");
  first_ = Read(text);
  stats_.scraped = !text.empty();
  thread_ = std::thread([this] { Poll(); });
}

ServerMetricsSampler::~ServerMetricsSampler() { (void)Stop(); }

void ServerMetricsSampler::Poll() {
  while (!stop_) {
    const std::string text = HttpGet(port_, "/metrics");
    if (!text.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      const double active = SampleValue(text, "kvguard_active_sequences").value_or(0);
      const double used = SampleValue(text, "kvguard_kv_pool_used_bytes").value_or(0);
      stats_.kv_pool_bytes = SampleValue(text, "kvguard_kv_pool_bytes").value_or(0);
      stats_.active_max = std::max(stats_.active_max, active);
      stats_.kv_pool_used_max = std::max(stats_.kv_pool_used_max, used);
      stats_.active_mean += active;
      stats_.kv_pool_used_mean += used;
      ++samples_;
      last_text_ = text;
    }
    for (int i = 0; i < 20 && !stop_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

ServerSideStats ServerMetricsSampler::Stop() {
  if (!stop_.exchange(true) && thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  ServerSideStats out = stats_;
  if (samples_ > 0) {
    out.active_mean /= samples_;
    out.kv_pool_used_mean /= samples_;
  }
  const std::string text = HttpGet(port_, "/metrics");
  const std::string& final_text = text.empty() ? last_text_ : text;
  const Counters last = Read(final_text);
  out.kv_pool_bytes = SampleValue(final_text, "kvguard_kv_pool_bytes").value_or(out.kv_pool_bytes);
  out.admitted = last.admitted - first_.admitted;
  out.resumed = last.resumed - first_.resumed;
  out.preemptions = last.preemptions - first_.preemptions;
  const double n = last.queue_count - first_.queue_count;
  out.queue_time_mean_s = n > 0 ? (last.queue_sum - first_.queue_sum) / n : 0;
  return out;
}

}  // namespace kvguard::loadtest
