#include "services/engine/safetensors_writer.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvguard::engine {
namespace {

absl::Status CheckTensor(const std::string& name, const TensorData& t) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: invalid tensor name '", name, "'"));
  }
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: '", name, "' has a negative dimension"));
    }
    numel *= static_cast<uint64_t>(d);
  }
  if (numel * DTypeSize(t.dtype) != t.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: '", name, "' has ", t.bytes.size(),
                                                   " bytes, its shape needs ", numel * DTypeSize(t.dtype)));
  }
  return absl::OkStatus();
}

// The JSON header, padded with spaces to a multiple of 8 bytes (as the
// reference writer does) so the data section starts aligned. Tensors follow
// back to back: the reference reader rejects gaps between them.
std::string Header(const std::map<std::string, TensorData>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t end = offset + t.bytes.size();
    header[name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return text;
}

void PutLe64(std::ofstream& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  for (const auto& [name, t] : tensors) {
    if (auto s = CheckTensor(name, t); !s.ok()) return s;
  }
  const std::string header = Header(tensors, metadata);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
    PutLe64(out, header.size());
    out << header;
    for (const auto& [name, t] : tensors) out << t.bytes;
    if (!out.flush()) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot move the written file into place"));
  }
  return absl::OkStatus();
}

}  // namespace kvguard::engine
