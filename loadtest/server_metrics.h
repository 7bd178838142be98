// File: loadtest/server_metrics.h
//
// What the server itself says during a load run, read from its Prometheus
// /metrics on loopback: KV pool size and use, concurrent sequences,
// admissions (new / resumed), preemptions and queue time. Gauges are polled
// every 50 ms while the run lasts (a run shorter than that may see none);
// counters are reported as deltas over the run.
//
//   ServerMetricsSampler sampler(9091);   // the server's --metrics_listen port
//   ... RunLoad(...) ...
//   ServerSideStats s = sampler.Stop();
#pragma once

#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace kvguard::loadtest {

struct ServerSideStats {
  bool scraped = false;  // false: no /metrics answered
  double kv_pool_bytes = 0, kv_pool_used_max = 0, kv_pool_used_mean = 0;
  double active_mean = 0, active_max = 0;
  double admitted = 0, resumed = 0, preemptions = 0;  // over the run
  double queue_time_mean_s = 0;                       // of the run's admissions
};

// The value of sample `series` (a metric name, with its {labels} if any) in
// Prometheus text format, or nullopt.
std::optional<double> SampleValue(const std::string& text, const std::string& series);

class ServerMetricsSampler {
 public:
  explicit ServerMetricsSampler(int port);
  ~ServerMetricsSampler();
  ServerSideStats Stop();

 private:
  struct Counters {
    double admitted = 0, resumed = 0, preemptions = 0, queue_sum = 0, queue_count = 0;
  };
  static Counters Read(const std::string& text);
  void Poll();

  int port_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  ServerSideStats stats_;
  Counters first_;
  int samples_ = 0;
  std::string last_text_;
  std::thread thread_;
};

}  // namespace kvguard::loadtest
