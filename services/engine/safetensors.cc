// File: services/engine/safetensors.cc
//
// Layout of a .safetensors file:
//   [8 bytes: little-endian uint64 N][N bytes: UTF-8 JSON header][data]
// The header maps tensor names to {"dtype", "shape", "data_offsets"}, with
// offsets relative to the start of the data section (byte 8 + N), plus an
// optional "__metadata__" object of strings.
//
// Everything read from the file is untrusted. All size arithmetic is done in
// uint64_t with explicit overflow checks, and a TensorView is only created
// once its byte range is known to lie inside the mapping.

#include "services/engine/safetensors.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvguard::engine {
namespace {

using Json = nlohmann::json;

// Real headers are a few hundred KB even for large models; the cap keeps a
// corrupt length field from making us parse (and allocate for) gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;
// Valid headers nest three deep (object -> entry -> shape array). The limit
// only bounds work and memory on hostile input.
constexpr int kMaxJsonDepth = 16;
constexpr char kMetadataKey[] = "__metadata__";
constexpr char kIndexFileName[] = "model.safetensors.index.json";
constexpr char kSingleFileName[] = "model.safetensors";

// Thrown from the JSON parser callback to abort parsing of over-deep input.
struct TooDeep {};

// Names and dtypes come from the file, so they are escaped (no control bytes
// in logs) and truncated (no megabyte-long error messages).
std::string Quote(absl::string_view s) {
  constexpr size_t kMaxShown = 96;
  std::string shown = absl::CHexEscape(s.substr(0, kMaxShown));
  if (s.size() > kMaxShown) absl::StrAppend(&shown, "...");
  return absl::StrCat("'", shown, "'");
}

template <typename... Args>
absl::Status Invalid(absl::string_view file, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", args...));
}

std::optional<DType> ParseDType(absl::string_view s) {
  static constexpr std::pair<absl::string_view, DType> kTable[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16},  {"BF16", DType::kBF16}, {"F64", DType::kF64},
      {"I64", DType::kI64}, {"I32", DType::kI32},  {"I16", DType::kI16},   {"I8", DType::kI8},
      {"U8", DType::kU8},   {"BOOL", DType::kBool}};
  for (const auto& [name, dtype] : kTable) {
    if (name == s) return dtype;
  }
  return std::nullopt;
}

// Byte-wise so it is independent of host endianness and alignment.
uint64_t ReadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses exactly [begin, end). nlohmann's parser is iterative, but the depth
// cap still stops e.g. 100 MB of '[' from building a huge DOM.
absl::StatusOr<Json> ParseJson(const char* begin, const char* end, absl::string_view file,
                               absl::string_view what) {
  auto limit_depth = [](int depth, Json::parse_event_t /*event*/, Json& /*parsed*/) {
    if (depth > kMaxJsonDepth) throw TooDeep{};
    return true;
  };
  try {
    return Json::parse(begin, end, limit_depth);
  } catch (const TooDeep&) {
    return Invalid(file, what, " nests deeper than ", kMaxJsonDepth, " levels");
  } catch (const Json::exception& e) {
    return Invalid(file, what, " is not valid JSON: ", e.what());
  }
}

// Reads a non-negative JSON integer. nlohmann stores non-negative integer
// literals as number_unsigned and negative ones as number_integer.
std::optional<uint64_t> AsUnsigned(const Json& j) {
  if (!j.is_number_unsigned()) return std::nullopt;
  return j.get<uint64_t>();
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const Json& j, const std::string& prefix) {
  if (!j.is_array())
    return absl::InvalidArgumentError(absl::StrCat(prefix, "shape is not an array"));
  std::vector<int64_t> shape;
  shape.reserve(j.size());
  for (const Json& dim : j) {
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "shape has negative dimension ", dim.get<int64_t>()));
    }
    std::optional<uint64_t> d = AsUnsigned(dim);
    if (!d)
      return absl::InvalidArgumentError(absl::StrCat(prefix, "shape has a non-integer dimension"));
    if (*d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(prefix, "shape dimension ", *d, " is too large"));
    }
    shape.push_back(static_cast<int64_t>(*d));
  }
  return shape;
}

// numel * element size, failing on overflow. Every partial product must fit
// in int64 (even when a later dimension is 0) so numel() can never overflow.
absl::StatusOr<uint64_t> ByteSize(const std::vector<int64_t>& shape, DType dtype,
                                  const std::string& prefix) {
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel) || numel > kMax) {
      return absl::InvalidArgumentError(absl::StrCat(prefix, "shape element count overflows"));
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(dtype)), &bytes) ||
      bytes > kMax) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "tensor byte size overflows"));
  }
  return bytes;
}

struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<ByteRange> ParseOffsets(const Json& j, uint64_t data_size,
                                       const std::string& prefix) {
  if (!j.is_array() || j.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "data_offsets is not a [begin, end] pair"));
  }
  std::optional<uint64_t> begin = AsUnsigned(j[0]);
  std::optional<uint64_t> end = AsUnsigned(j[1]);
  if (!begin || !end) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "data_offsets must be non-negative integers"));
  }
  if (*begin > *end) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "data_offsets begin ", *begin, " > end ", *end));
  }
  if (*end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, "data_offsets end ", *end, " is past the data section (", data_size, " bytes)"));
  }
  return ByteRange{*begin, *end};
}

// Looks up a required member, so missing fields get a uniform message.
absl::StatusOr<const Json*> Field(const Json& entry, const char* key, const std::string& prefix) {
  auto it = entry.find(key);
  if (it == entry.end())
    return absl::InvalidArgumentError(absl::StrCat(prefix, "missing \"", key, "\""));
  return &*it;
}

// Validates one header entry against the data section [data, data + data_size).
absl::StatusOr<TensorView> ParseTensor(const std::string& name, const Json& entry,
                                       const uint8_t* data, uint64_t data_size,
                                       absl::string_view file) {
  const std::string prefix = absl::StrCat(file, ": tensor ", Quote(name), ": ");
  if (!entry.is_object())
    return absl::InvalidArgumentError(absl::StrCat(prefix, "entry is not an object"));

  KVG_ASSIGN_OR_RETURN(const Json* dtype_json, Field(entry, "dtype", prefix));
  if (!dtype_json->is_string())
    return absl::InvalidArgumentError(absl::StrCat(prefix, "dtype is not a string"));
  const auto& dtype_name = dtype_json->get_ref<const std::string&>();
  std::optional<DType> dtype = ParseDType(dtype_name);
  if (!dtype)
    return absl::InvalidArgumentError(absl::StrCat(prefix, "unknown dtype ", Quote(dtype_name)));

  KVG_ASSIGN_OR_RETURN(const Json* shape_json, Field(entry, "shape", prefix));
  KVG_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ParseShape(*shape_json, prefix));
  KVG_ASSIGN_OR_RETURN(uint64_t nbytes, ByteSize(shape, *dtype, prefix));

  KVG_ASSIGN_OR_RETURN(const Json* offsets_json, Field(entry, "data_offsets", prefix));
  KVG_ASSIGN_OR_RETURN(ByteRange range, ParseOffsets(*offsets_json, data_size, prefix));
  if (range.end - range.begin != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "size mismatch: data_offsets span ",
                                                   range.end - range.begin, " bytes but ",
                                                   DTypeName(*dtype), " shape needs ", nbytes));
  }

  TensorView view;
  view.name = name;
  view.dtype = *dtype;
  view.shape = std::move(shape);
  view.data = data + range.begin;
  view.nbytes = static_cast<size_t>(nbytes);
  return view;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const Json& j,
                                                                 absl::string_view file) {
  if (!j.is_object()) return Invalid(file, kMetadataKey, " is not an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string())
      return Invalid(file, kMetadataKey, " value for ", Quote(key), " is not a string");
    metadata.emplace(key, value.get<std::string>());
  }
  return metadata;
}

// Sorted by begin, a non-empty range overlaps an earlier one exactly when it
// starts before the furthest end seen so far. Empty tensors own no bytes.
absl::Status CheckNoOverlap(const std::map<std::string, TensorView>& tensors, const uint8_t* data,
                            absl::string_view file) {
  std::vector<const TensorView*> sorted;
  for (const auto& [name, view] : tensors) {
    if (view.nbytes > 0) sorted.push_back(&view);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  const TensorView* furthest = nullptr;
  for (const TensorView* view : sorted) {
    if (furthest != nullptr && view->data < furthest->data + furthest->nbytes) {
      return Invalid(file, "tensors ", Quote(furthest->name), " and ", Quote(view->name),
                     " overlap (at data offset ", view->data - data, ")");
    }
    if (furthest == nullptr || view->data + view->nbytes > furthest->data + furthest->nbytes) {
      furthest = view;
    }
  }
  return absl::OkStatus();
}

// Shard names come from an untrusted index; keep them inside the directory.
bool IsSafeShardName(const std::string& shard) {
  return !shard.empty() && shard.find('/') == std::string::npos &&
         shard.find("..") == std::string::npos && shard.find('\0') == std::string::npos;
}

absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  KVG_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  KVG_ASSIGN_OR_RETURN(Json index,
                       ParseJson(text.data(), text.data() + text.size(), index_path, "index"));
  if (!index.is_object()) return Invalid(index_path, "index is not a JSON object");
  auto it = index.find("weight_map");
  if (it == index.end() || !it->is_object())
    return Invalid(index_path, "missing \"weight_map\" object");
  if (it->empty()) return Invalid(index_path, "\"weight_map\" is empty");
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : it->items()) {
    if (!shard.is_string())
      return Invalid(index_path, "shard for tensor ", Quote(name), " is not a string");
    const auto& shard_name = shard.get_ref<const std::string&>();
    if (!IsSafeShardName(shard_name)) {
      return Invalid(index_path, "tensor ", Quote(name), ": invalid shard name ", Quote(shard_name),
                     " (must be a plain file name in the checkpoint directory)");
    }
    weight_map.emplace(name, shard_name);
  }
  return weight_map;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
      return 1;
  }
  return 0;  // Unreachable for valid enumerators.
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF64:
      return "F64";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kI16:
      return "I16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;  // Cannot overflow: checked when parsed.
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  KVG_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  KVG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                       Parse(mapping->data(), mapping->size(), path));
  file->mapping_ = std::move(mapping);
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(const uint8_t* buffer,
                                                                        size_t size,
                                                                        const std::string& name) {
  if (size == 0) return Invalid(name, "file is empty");
  if (buffer == nullptr) return Invalid(name, "null buffer");
  if (size < 8)
    return Invalid(name, "file is ", size, " bytes, too short for the 8-byte header length");

  const uint64_t header_len = ReadLe64(buffer);
  if (header_len == 0) return Invalid(name, "header length is 0");
  if (header_len > kMaxHeaderBytes) {
    return Invalid(name, "header length ", header_len, " exceeds the ", kMaxHeaderBytes,
                   "-byte limit");
  }
  if (header_len > size - 8) {
    return Invalid(name, "header length ", header_len, " is past the end of the file (", size - 8,
                   " bytes after the length field)");
  }

  const char* header = reinterpret_cast<const char*>(buffer + 8);
  KVG_ASSIGN_OR_RETURN(Json json, ParseJson(header, header + header_len, name, "header"));
  if (!json.is_object()) return Invalid(name, "header is not a JSON object");

  const uint8_t* data = buffer + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  auto file = std::make_unique<SafetensorsFile>();
  try {
    for (const auto& [key, value] : json.items()) {
      if (key == kMetadataKey) {
        KVG_ASSIGN_OR_RETURN(file->metadata_, ParseMetadata(value, name));
        continue;
      }
      KVG_ASSIGN_OR_RETURN(TensorView view, ParseTensor(key, value, data, data_size, name));
      file->tensors_.emplace(key, std::move(view));
    }
  } catch (const Json::exception& e) {
    // Every access above is type-checked first; this is a backstop.
    return Invalid(name, "malformed header: ", e.what());
  }
  KVG_RETURN_IF_ERROR(CheckNoOverlap(file->tensors_, data, name));
  return file;
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::OpenDir(
    const std::string& dir) {
  auto checkpoint = std::make_unique<SafetensorsCheckpoint>();
  const std::string index_path = absl::StrCat(dir, "/", kIndexFileName);
  const std::string single_path = absl::StrCat(dir, "/", kSingleFileName);

  if (!FileExists(index_path)) {
    if (!FileExists(single_path)) {
      return absl::NotFoundError(
          absl::StrCat(dir, ": no ", kSingleFileName, " or ", kIndexFileName));
    }
    KVG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
    for (const auto& [name, view] : file->tensors()) checkpoint->index_.emplace(name, &view);
    checkpoint->files_.push_back(std::move(file));
    return checkpoint;
  }

  KVG_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index_path));
  std::map<std::string, const SafetensorsFile*> shards;  // Each shard is mapped once.
  for (const auto& [name, shard] : weight_map) {
    auto it = shards.find(shard);
    if (it == shards.end()) {
      KVG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                           SafetensorsFile::Open(absl::StrCat(dir, "/", shard)));
      it = shards.emplace(shard, file.get()).first;
      checkpoint->files_.push_back(std::move(file));
    }
    const TensorView* view = it->second->Find(name);
    if (view == nullptr) {
      return Invalid(index_path, "tensor ", Quote(name), " is listed in shard ", Quote(shard),
                     " but missing from it");
    }
    checkpoint->index_.emplace(name, view);
  }
  return checkpoint;
}

const TensorView* SafetensorsCheckpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;  // Already sorted: index_ is an ordered map.
}

}  // namespace kvguard::engine
