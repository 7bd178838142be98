#include "common/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvguard {
namespace {

constexpr double kW = 720, kH = 440, kLeft = 70, kRight = 170, kTop = 40, kBottom = 55;
constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void Add(double v) {
    if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
  }
  void Finish() {
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-12) hi = lo + 1;
  }
};

}  // namespace

std::string RenderSvgPlot(const PlotSpec& spec) {
  Range xr, yr;
  auto tx = [&](double x) { return spec.log_x ? std::log10(std::max(x, 1e-12)) : x; };
  for (const auto& s : spec.series) {
    for (double x : s.x) xr.Add(tx(x));
    for (double y : s.y) yr.Add(y);
    for (double y : s.y_lo) yr.Add(y);
    for (double y : s.y_hi) yr.Add(y);
  }
  xr.Finish();
  yr.Add(0);
  yr.Finish();
  const double pw = kW - kLeft - kRight, ph = kH - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (tx(x) - xr.lo) / (xr.hi - xr.lo) * pw; };
  auto py = [&](double y) { return kTop + ph - (y - yr.lo) / (yr.hi - yr.lo) * ph; };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"22\" font-size=\"15\">%s</text>\n",
      kW, kH, kLeft, Escape(spec.title));
  for (int i = 0; i <= 5; ++i) {  // grid and tick labels
    const double yv = yr.lo + (yr.hi - yr.lo) * i / 5, xv = xr.lo + (xr.hi - xr.lo) * i / 5;
    const double xlab = spec.log_x ? std::pow(10, xv) : xv;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                          kLeft, kLeft + pw, py(yv), py(yv), kLeft - 6, py(yv) + 4, yv);
    const double gx = kLeft + pw * i / 5;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3g</text>\n",
                          gx, gx, kTop, kTop + ph, gx, kTop + ph + 16, xlab);
  }
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n"
                        "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n"
                        "<text transform=\"translate(16,%.0f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
                        kLeft, kTop, pw, ph, kLeft + pw / 2, kH - 12, Escape(spec.x_label),
                        kTop + ph / 2, Escape(spec.y_label));
  for (size_t i = 0; i < spec.series.size(); ++i) {
    const PlotSeries& s = spec.series[i];
    const char* color = kColors[i % 10];
    std::string points;
    for (size_t j = 0; j < s.x.size() && j < s.y.size(); ++j) {
      absl::StrAppendFormat(&points, "%.1f,%.1f ", px(s.x[j]), py(s.y[j]));
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(s.x[j]),
                            py(s.y[j]), color);
      if (j < s.y_lo.size() && j < s.y_hi.size()) {
        absl::StrAppendFormat(&svg, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n",
                              px(s.x[j]), px(s.x[j]), py(s.y_lo[j]), py(s.y_hi[j]), color);
      }
    }
    absl::StrAppendFormat(&svg, "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                          points, color);
    absl::StrAppendFormat(&svg,
                          "<rect x=\"%.0f\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                          "<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                          kW - kRight + 15, kTop + 18.0 * i, color, kW - kRight + 32, kTop + 18.0 * i + 10,
                          Escape(s.name));
  }
  return svg + "</svg>\n";
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  out << text;
  return out ? absl::OkStatus() : absl::InternalError(absl::StrCat("write failed: ", path));
}

absl::Status WriteSvgPlot(const PlotSpec& spec, const std::string& path) {
  return WriteTextFile(path, RenderSvgPlot(spec));
}

}  // namespace kvguard
