// ServerMetrics::Generation: each catastrophic generation counts once in
// kvguard_catastrophic_generations_total (what CFR divides by
// kvguard_generations_total), while kvguard_catastrophes_total keeps one count
// per flag as a breakdown.
#include "services/server/metrics.h"

#include <gtest/gtest.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <sstream>
#include <string>

namespace kvguard::server {
namespace {

// Sample lines of the exposition text: "name{labels}" -> value.
std::map<std::string, double> Samples(const ServerMetrics& m) {
  const std::string text = prometheus::TextSerializer().Serialize(m.registry()->Collect());
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

// Sum of every sample of `name` whose labels contain all of `labels` ("k=\"v\"" each).
double Sum(const std::map<std::string, double>& samples, const std::string& name,
           std::initializer_list<std::string> labels = {}) {
  double total = 0;
  for (const auto& [key, value] : samples) {
    if (key.rfind(name + "{", 0) != 0 && key != name) continue;
    bool all = true;
    for (const auto& l : labels) all = all && key.find(l) != std::string::npos;
    if (all) total += value;
  }
  return total;
}

TEST(ServerMetricsTest, LoopThatHitsTheTokenLimitCountsAsOneCatastrophicGeneration) {
  ServerMetrics m;
  m.Generation("streaming_llm", true, /*loop=*/true, /*non_terminated=*/true, false);
  const auto s = Samples(m);
  EXPECT_EQ(Sum(s, "kvguard_generations_total"), 1);
  EXPECT_EQ(Sum(s, "kvguard_catastrophic_generations_total"), 1);
  EXPECT_EQ(s.at("kvguard_catastrophic_generations_total{cause=\"loop\",compressor=\"streaming_"
                 "llm\",guarded=\"true\"}"),
            1);
  // The breakdown keeps both flags.
  EXPECT_EQ(Sum(s, "kvguard_catastrophes_total", {"kind=\"loop\""}), 1);
  EXPECT_EQ(Sum(s, "kvguard_catastrophes_total", {"kind=\"non_termination\""}), 1);
}

TEST(ServerMetricsTest, CfrFromTheCountersIsTheTrueRate) {
  // 100 generations of one compressor: 12 catastrophic (8 loops that ran to the limit, 4 that
  // never terminated without looping), 5 wrong answers that are not catastrophes, 83 clean.
  ServerMetrics m;
  for (int i = 0; i < 8; ++i) m.Generation("snapkv", false, true, true, false);
  for (int i = 0; i < 4; ++i) m.Generation("snapkv", false, false, true, false);
  for (int i = 0; i < 5; ++i) m.Generation("snapkv", false, false, false, true);
  for (int i = 0; i < 83; ++i) m.Generation("snapkv", false, false, false, false);
  const auto s = Samples(m);
  const double generations = Sum(s, "kvguard_generations_total", {"compressor=\"snapkv\""});
  ASSERT_EQ(generations, 100);
  EXPECT_DOUBLE_EQ(
      Sum(s, "kvguard_catastrophic_generations_total", {"compressor=\"snapkv\""}) / generations,
      0.12);
  EXPECT_EQ(Sum(s, "kvguard_catastrophic_generations_total", {"cause=\"loop\""}), 8);
  EXPECT_EQ(Sum(s, "kvguard_catastrophic_generations_total", {"cause=\"non_termination\""}), 4);
  // The per-kind sum counts the 8 loops twice: it reads 20%, not 12%.
  EXPECT_EQ(Sum(s, "kvguard_catastrophes_total", {"kind=\"loop\""}) +
                Sum(s, "kvguard_catastrophes_total", {"kind=\"non_termination\""}),
            20);
  EXPECT_EQ(Sum(s, "kvguard_catastrophes_total", {"kind=\"wrong_answer\""}), 5);
}

TEST(ServerMetricsTest, CleanAndWrongAnswerGenerationsAreNotCatastrophic) {
  ServerMetrics m;
  m.Generation("", false, false, false, false);
  m.Generation("", true, false, false, true);
  const auto s = Samples(m);
  EXPECT_EQ(Sum(s, "kvguard_generations_total", {"compressor=\"none\""}), 2);
  EXPECT_EQ(Sum(s, "kvguard_catastrophic_generations_total"), 0);
}

}  // namespace
}  // namespace kvguard::server
