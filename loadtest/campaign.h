// File: loadtest/campaign.h
//
// A campaign file sweeps load shapes and request settings:
//
//   {
//     "name": "concurrency sweep",
//     "target": "127.0.0.1:50051",
//     "base":  {"mode": "closed", "requests": 32, "max_seconds": 120, "max_new_tokens": 96},
//               (optional "drain_seconds": in-flight requests may finish that long after
//               max_seconds)
//     "sweep": {"concurrency": [1, 4, 16], "compressor": ["snapkv"], "ratio": [0.75],
//               "guard": ["false", "true"]},
//     "slo":   {"ttft_ms": 500, "tpot_ms": 50, "e2e_ms": 10000},
//     "prompts": {"source": "problems", "count": 32, "split": "test", "options": {...}}
//                 | {"source": "file", "path": "prompts.jsonl"}   (lines {"id", "prompt",
//                 "answer"?})
//   }
//
// Runs are the Cartesian product of the sweep lists, in file order.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadtest/load_generator.h"
#include "loadtest/report.h"

namespace kvguard::loadtest {

struct Campaign {
  std::string name;
  std::vector<LoadSpec> runs;
  Slo slo;
  std::vector<PromptItem> prompts;
};

absl::StatusOr<Campaign> ParseCampaign(const std::string& json_text,
                                       const std::string& target_override);
absl::StatusOr<Campaign> LoadCampaign(const std::string& path, const std::string& target_override);

}  // namespace kvguard::loadtest
