// File: research/pipeline/frontier.h
//
// Judging a guard on the memory/failure frontier rather than at one nominal
// ratio. A policy (static compression at one ratio, or a guarded configuration)
// is a point: (KV savings it achieves, its CFR), and (savings, accuracy).
// Mixtures of two static ratios (a coin flip per request) are policies too, so
// static compression is summed up by the lower convex hull of its CFR points
// (upper hull of its accuracy points). A guard policy is worth running when it
// lies below that hull: gap = hull CFR at the guard's savings - guard CFR.
//
// Every number is computed from per-prompt records (one per prompt x arm) so
// the same records give the point estimates and a paired bootstrap over
// prompts: static arms and guard arms share prompts, and a resample draws the
// same prompts for all of them, hull included.
//
//   auto records = StaticRecords(traces, test_prompts);   // from a sweep
//   records += guard records (kvguard evaluate --live writes them, records.jsonl)
//   FrontierResult r = EvaluateFrontier(records, "snapkv", "guarded@0.875", {});
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "research/pipeline/traces.h"

namespace kvguard::research {

// One prompt under one policy.
struct PolicyRecord {
  std::string prompt_id;
  std::string compressor;  // "none" for uncompressed
  std::string arm;         // "static@0.875", "guarded@0.875", "guarded_norec@0.875", "none"
  double requested_ratio = 0;
  bool catastrophic = false, looped = false, non_terminated = false, correct = false;
  double savings_end = 0;         // 1 - KV bytes / uncompressed bytes at completion
  double savings_integrated = 0;  // the same over every decode step (byte-steps)
  int64_t tokens = 0;
  int64_t fail_safe_events = 0;
  std::map<std::string, int64_t> mode_steps;  // guard arms: steps per mode
};

nlohmann::json RecordToJson(const PolicyRecord& r);
absl::StatusOr<PolicyRecord> RecordFromJson(const nlohmann::json& j);
absl::StatusOr<std::vector<PolicyRecord>> ReadRecords(const std::string& jsonl_path);
absl::Status WriteRecords(const std::string& jsonl_path, const std::vector<PolicyRecord>& records);

// Static records from sweep traces of the given prompts (all when empty): one
// per trace, arm "static@<ratio>" ("none" uncompressed). The integrated savings
// come from the per-step kv_bytes / kv_retained_frac feature columns.
PolicyRecord StaticRecord(const Trace& trace, const std::vector<std::string>& feature_names);
absl::StatusOr<std::vector<PolicyRecord>> StaticRecords(
    const std::vector<Trace>& traces, const std::vector<std::string>& feature_names,
    const std::set<std::string>& prompts);

struct Point {
  double savings = 0, value = 0;  // value: CFR or accuracy
};

// The lower convex hull of points (by savings), left to right; with `upper`,
// the upper hull. Points that share a savings value keep the best one.
std::vector<Point> ConvexFrontier(std::vector<Point> points, bool upper);
// The frontier's value at `savings` (linear between hull vertices); nullopt
// outside [first, last] vertex savings.
std::optional<double> FrontierAt(const std::vector<Point>& hull, double savings);

enum class SavingsMeasure { kAtCompletion, kIntegrated };

struct FrontierOptions {
  SavingsMeasure measure = SavingsMeasure::kIntegrated;
  int resamples = 2000;
  double confidence = 0.95;
  uint64_t seed = 0;
};

struct Interval {
  double estimate = 0, lo = 0, hi = 0;
};

// One guard arm against one compressor's static frontier.
struct FrontierResult {
  std::string compressor, arm;
  int64_t prompts = 0;
  Point guard_cfr, guard_accuracy;                // the guard's points
  std::optional<double> hull_cfr, hull_accuracy;  // the static frontier at the guard's savings
  Interval cfr_gap;                    // hull CFR - guard CFR (> 0: the guard is below the hull)
  Interval accuracy_gap;               // guard accuracy - hull accuracy (>= 0: not below)
  double cfr_ratio = 0;                // guard CFR / hull CFR (the goal: <= 0.5)
  int64_t resamples_outside_hull = 0;  // resamples where the guard's savings left the static range
};

// Static points of `compressor` (and "none"), one per arm, over `prompts`.
std::map<std::string, std::pair<Point, Point>> StaticPoints(
    const std::vector<PolicyRecord>& records, const std::string& compressor,
    SavingsMeasure measure);

// Errors when the arm or the compressor's static arms are missing, or when the
// two do not share prompts.
absl::StatusOr<FrontierResult> EvaluateFrontier(const std::vector<PolicyRecord>& records,
                                                const std::string& compressor,
                                                const std::string& arm,
                                                const FrontierOptions& options);

struct FrontierReportOptions {
  std::string out_dir;
  FrontierOptions frontier;
};

// Every (compressor, guard arm) of `records` against its static frontier:
// frontier.{md,json,csv}, frontier_cfr_<compressor>.svg and
// frontier_accuracy_<compressor>.svg; returns the markdown gap table.
absl::StatusOr<std::string> WriteFrontierReport(const std::vector<PolicyRecord>& records,
                                                const FrontierReportOptions& options);

}  // namespace kvguard::research
