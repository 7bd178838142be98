// File: research/pipeline/metrics.h
//
// Ranking metrics for hazard scores: AUROC (Mann-Whitney, ties averaged),
// the threshold at a target false-positive rate, recall there, and the ROC
// curve for plots.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace kvguard::research {

// NaN when either class is empty.
double Auroc(const std::vector<float>& scores, const std::vector<uint8_t>& labels);
// Smallest threshold whose false-positive rate on the negatives is <= fpr.
float ThresholdAtFpr(const std::vector<float>& scores, const std::vector<uint8_t>& labels,
                     double fpr);
double RecallAt(const std::vector<float>& scores, const std::vector<uint8_t>& labels,
                float threshold);
// (fpr, tpr) points, at most `points` of them.
std::vector<std::pair<double, double>> RocCurve(const std::vector<float>& scores,
                                                const std::vector<uint8_t>& labels,
                                                int points = 50);

}  // namespace kvguard::research
