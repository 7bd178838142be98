// `kvguard bench-compressors`: KV bytes and decode-step overhead of every
// compressor at several ratios, against no compression in the same run.
// Writes JSON, CSV, a markdown table and SVG plots.
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/svg_plot.h"
#include "compressors/registry.h"
#include "services/cli/cli_args.h"
#include "services/cli/commands.h"
#include "services/cli/progress.h"
#include "services/engine/benchmark.h"

namespace kvguard::cli {
namespace {

using engine::CompressorBenchmarkRow;

std::string Markdown(const std::vector<CompressorBenchmarkRow>& rows, const std::string& header) {
  std::string md =
      header +
      "\n\n| compressor | ratio | KV bytes | KV vs none | ms/step | step time vs none |\n"
      "| --- | --- | --- | --- | --- | --- |\n";
  for (const auto& r : rows) {
    absl::StrAppendFormat(&md, "| %s | %.3g | %d | %.3f | %.3f | %.2fx |\n", r.compressor, r.ratio,
                          r.kv_bytes, r.kv_fraction, r.ms_per_step, r.relative_step_time);
  }
  return md;
}

absl::Status WriteReports(const std::vector<CompressorBenchmarkRow>& rows, const std::string& dir,
                          const std::string& header) {
  std::filesystem::create_directories(dir);
  nlohmann::json j = nlohmann::json::array();
  std::string csv = "compressor,ratio,kv_bytes,kv_fraction,ms_per_step,relative_step_time\n";
  for (const auto& r : rows) {
    j.push_back({{"compressor", r.compressor},
                 {"ratio", r.ratio},
                 {"kv_bytes", r.kv_bytes},
                 {"kv_fraction", r.kv_fraction},
                 {"ms_per_step", r.ms_per_step},
                 {"relative_step_time", r.relative_step_time}});
    absl::StrAppendFormat(&csv, "%s,%g,%d,%g,%g,%g\n", r.compressor, r.ratio, r.kv_bytes,
                          r.kv_fraction, r.ms_per_step, r.relative_step_time);
  }
  KVG_RETURN_IF_ERROR(WriteTextFile(dir + "/compressors.json", j.dump(2)));
  KVG_RETURN_IF_ERROR(WriteTextFile(dir + "/compressors.csv", csv));
  KVG_RETURN_IF_ERROR(WriteTextFile(dir + "/compressors.md", Markdown(rows, header)));
  PlotSpec time{.title = "Decode step time vs no compression",
                .x_label = "ratio (fraction of KV removed)",
                .y_label = "step time / uncompressed"};
  PlotSpec bytes{.title = "KV bytes vs no compression",
                 .x_label = "ratio",
                 .y_label = "KV bytes / uncompressed"};
  for (const auto& r : rows) {
    if (r.compressor == "none") continue;
    if (time.series.empty() || time.series.back().name != r.compressor) {
      time.series.push_back({.name = r.compressor});
      bytes.series.push_back({.name = r.compressor});
    }
    time.series.back().x.push_back(r.ratio);
    time.series.back().y.push_back(r.relative_step_time);
    bytes.series.back().x.push_back(r.ratio);
    bytes.series.back().y.push_back(r.kv_fraction);
  }
  KVG_RETURN_IF_ERROR(WriteSvgPlot(time, dir + "/compressors_step_time.svg"));
  return WriteSvgPlot(bytes, dir + "/compressors_kv_bytes.svg");
}

}  // namespace

absl::Status RunBenchCompressors(int argc, char** argv) {
  CliArgs args;
  KVG_RETURN_IF_ERROR(
      args.Parse(argc, argv,
                 {"model", "device", "dtype", "threads", "compressors", "ratios", "prompt-tokens",
                  "decode-tokens", "compress-every", "batch", "repeats", "out"},
                 {}));
  KVG_ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  engine::EngineOptions eo{.device = args.Get("device", "cpu"), .dtype = args.Get("dtype", "auto")};
  KVG_ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  eo.num_threads = static_cast<int>(threads);
  engine::CompressorBenchmarkOptions o;
  if (args.Has("compressors")) {
    o.compressors = absl::StrSplit(args.Get("compressors"), ',', absl::SkipEmpty());
  } else {
    // Only those that run on defaults (VECTOR needs a calibration file).
    for (const auto& info : compress::Registry::Global().List()) {
      if (compress::Registry::Global().Create(info.name, std::vector<std::string>{}).ok()) {
        o.compressors.push_back(info.name);
      }
    }
  }
  if (args.Has("ratios")) {
    o.ratios.clear();
    for (absl::string_view r : absl::StrSplit(args.Get("ratios"), ',', absl::SkipEmpty())) {
      double v;
      if (!absl::SimpleAtod(r, &v))
        return absl::InvalidArgumentError(absl::StrCat("bad ratio '", r, "'"));
      o.ratios.push_back(v);
    }
  }
  KVG_ASSIGN_OR_RETURN(o.prompt_tokens, args.GetInt("prompt-tokens", 256));
  KVG_ASSIGN_OR_RETURN(o.decode_tokens, args.GetInt("decode-tokens", 128));
  KVG_ASSIGN_OR_RETURN(o.compress_every, args.GetInt("compress-every", 0));
  KVG_ASSIGN_OR_RETURN(o.batch, args.GetInt("batch", 1));
  if (o.batch < 1) return absl::InvalidArgumentError("--batch must be >= 1");
  KVG_ASSIGN_OR_RETURN(int64_t repeats, args.GetInt("repeats", 3));
  o.repeats = static_cast<int>(repeats);
  KVG_ASSIGN_OR_RETURN(auto eng, engine::Engine::Load(model, eo));
  Progress progress("bench-compressors");
  KVG_ASSIGN_OR_RETURN(auto rows, engine::RunCompressorBenchmark(
                                      *eng, o, [&](int d, int t) { progress.Update(d, t); }));
  const std::string header = absl::StrFormat(
      "Compressor overhead on %s (%s, %s, %d threads): batch %d, prompt %d tokens, %d decode "
      "steps, compress-every %d, best of %d",
      model, eo.device, eng->dtype(), eo.num_threads, o.batch, o.prompt_tokens, o.decode_tokens,
      o.compress_every, o.repeats);
  const std::string dir = args.Get("out", "reports/bench");
  KVG_RETURN_IF_ERROR(WriteReports(rows, dir, header));
  std::cout << Markdown(rows, header) << "\nwritten to " << dir
            << "/compressors.{json,csv,md,*.svg}\n";
  return absl::OkStatus();
}

}  // namespace kvguard::cli
