// File: common/svg_plot.h
//
// Minimal SVG line charts for reports (CFR curves, latency and overhead
// tables), so every result a person looks at also has a picture without a
// plotting dependency.
//
//   PlotSpec plot{.title = "CFR vs ratio", .x_label = "ratio", .y_label = "CFR"};
//   plot.series.push_back({"snapkv", {0.5, 0.75}, {0.1, 0.4}});
//   KVG_RETURN_IF_ERROR(WriteSvgPlot(plot, "reports/cfr.svg"));
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvguard {

struct PlotSeries {
  std::string name;
  std::vector<double> x, y;
  std::vector<double> y_lo, y_hi;  // optional error bars (same length as y)
};

struct PlotSpec {
  std::string title, x_label, y_label;
  std::vector<PlotSeries> series;
  bool log_x = false;
};

std::string RenderSvgPlot(const PlotSpec& spec);
absl::Status WriteSvgPlot(const PlotSpec& spec, const std::string& path);
absl::Status WriteTextFile(const std::string& path, const std::string& text);

}  // namespace kvguard
