#include "compressors/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvguard::compress {

Registry& Registry::Global() {
  static Registry* registry = [] {
    auto* r = new Registry();
    RegisterBuiltins(*r);
    return r;
  }();
  return *registry;
}

absl::Status Registry::Register(CompressorInfo info) {
  std::lock_guard<std::mutex> lock(mu_);
  if (infos_.count(info.name)) {
    return absl::AlreadyExistsError(absl::StrCat("a compressor named '", info.name, "' is already registered"));
  }
  std::string name = info.name;
  infos_.emplace(std::move(name), std::move(info));
  return absl::OkStatus();
}

absl::StatusOr<const CompressorInfo*> Registry::Find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = infos_.find(name);
  if (it == infos_.end()) {
    std::vector<std::string> names;
    for (const auto& [n, _] : infos_) names.push_back(n);
    return absl::InvalidArgumentError(absl::StrCat("unknown compressor '", name, "' (known: ",
                                                   absl::StrJoin(names, ", "), ")"));
  }
  return &it->second;
}

absl::StatusOr<std::unique_ptr<Compressor>> Registry::Create(
    const std::string& name, const std::map<std::string, std::string>& options) const {
  auto info = Find(name);
  if (!info.ok()) return info.status();
  auto values = ParseOptions(name, (*info)->options, options);
  if (!values.ok()) return values.status();
  return (*info)->factory(*values);
}

absl::StatusOr<std::unique_ptr<Compressor>> Registry::Create(
    const std::string& name, const std::vector<std::string>& options) const {
  auto info = Find(name);
  if (!info.ok()) return info.status();
  auto values = ParseOptions(name, (*info)->options, options);
  if (!values.ok()) return values.status();
  return (*info)->factory(*values);
}

std::vector<CompressorInfo> Registry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CompressorInfo> out;
  for (const auto& [_, info] : infos_) out.push_back(info);
  return out;
}

bool Registry::Has(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return infos_.count(name) > 0;
}

}  // namespace kvguard::compress
