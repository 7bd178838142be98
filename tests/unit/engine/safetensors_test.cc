// File: tests/unit/engine/safetensors_test.cc
//
// Real fixtures check that well-formed files load; synthetic files built in
// memory check that each kind of corruption is rejected with a status that
// names the problem (and never crashes).

#include "services/engine/safetensors.h"

#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvguard::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kDataDir = KVG_TEST_DATA_DIR;

// Serialises a safetensors file: 8-byte little-endian length, header, data.
std::string MakeFileWithLength(uint64_t header_len, const std::string& header,
                               const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string MakeFile(const std::string& header, const std::string& data) {
  return MakeFileWithLength(header.size(), header, data);
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseBytes(const std::string& bytes) {
  return SafetensorsFile::Parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                "test.safetensors");
}

// Parsing must fail with InvalidArgument, a message starting with the file
// name and containing `needle`.
void ExpectInvalid(const std::string& bytes, const std::string& needle) {
  auto file = ParseBytes(bytes);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()), StartsWith("test.safetensors: "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(needle));
}

void WriteFile(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "st_test_XXXXXX").string();
    char* made = ::mkdtemp(tmpl.data());
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// --- Real fixtures ---------------------------------------------------------

TEST(SafetensorsFileTest, OpensTinyLlamaFixture) {
  auto file = SafetensorsFile::Open(kDataDir + "/models/tiny-llama/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* embed = (*file)->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->name, "model.embed_tokens.weight");
  EXPECT_EQ(embed->dtype, DType::kF32);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{640, 64}));
  EXPECT_EQ(embed->numel(), 640 * 64);
  EXPECT_EQ(embed->nbytes, 640u * 64u * 4u);
  EXPECT_NE(embed->data, nullptr);
  EXPECT_EQ((*file)->Find("no.such.tensor"), nullptr);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

TEST(SafetensorsFileTest, OpensBf16Fixture) {
  auto file = SafetensorsFile::Open(kDataDir + "/models/tiny-qwen2-bf16/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* embed = (*file)->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kBF16);
  EXPECT_EQ(embed->nbytes, static_cast<size_t>(embed->numel()) * 2);
}

TEST(SafetensorsFileTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(kDataDir + "/no/such/file.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("file.safetensors"));
}

TEST(SafetensorsFileTest, CorruptFileOnDiskNamesThePath) {
  TempDir dir;
  const auto path = dir.path() / "bad.safetensors";
  WriteFile(path, MakeFile("[]", ""));
  auto file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), StartsWith(path.string() + ": "));
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("not a JSON object"));
}

TEST(SafetensorsFileTest, EmptyFileOnDiskIsRejected) {
  TempDir dir;
  const auto path = dir.path() / "empty.safetensors";
  WriteFile(path, "");
  auto file = SafetensorsFile::Open(path.string());
  ASSERT_FALSE(file.ok());
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("empty"));
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_EQ(DTypeSize(DType::kBool), 1u);
  EXPECT_STREQ(DTypeName(DType::kBF16), "BF16");
  EXPECT_STREQ(DTypeName(DType::kBool), "BOOL");
}

// --- Synthetic good files ----------------------------------------------------

TEST(SafetensorsFileTest, RoundTripsValues) {
  const std::vector<float> weights = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  const std::vector<int64_t> step = {42};
  const std::string data = Bytes(weights) + Bytes(step);
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},)"
      R"( "step": {"dtype": "I64", "shape": [], "data_offsets": [24, 32]},)"
      R"( "empty": {"dtype": "F16", "shape": [0, 4], "data_offsets": [32, 32]}})";
  const std::string bytes = MakeFile(header, data);
  auto file = ParseBytes(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 3u);

  const TensorView* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(w->nbytes, 24u);
  std::vector<float> read(6);
  std::memcpy(read.data(), w->data, w->nbytes);
  EXPECT_EQ(read, weights);

  const TensorView* s = (*file)->Find("step");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->dtype, DType::kI64);
  EXPECT_EQ(s->numel(), 1);  // A scalar has shape [] and one element.
  int64_t value = 0;
  std::memcpy(&value, s->data, sizeof(value));
  EXPECT_EQ(value, 42);

  const TensorView* e = (*file)->Find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->numel(), 0);
  EXPECT_EQ(e->nbytes, 0u);
}

TEST(SafetensorsFileTest, ParsesMetadata) {
  const std::string header = R"({"__metadata__": {"format": "pt", "note": "hi"},)"
                             R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})";
  auto file = ParseBytes(MakeFile(header, "ab"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().size(), 2u);
  EXPECT_EQ((*file)->metadata().at("note"), "hi");
  EXPECT_EQ((*file)->Find("__metadata__"), nullptr);
  EXPECT_EQ((*file)->tensors().size(), 1u);
}

TEST(SafetensorsFileTest, AcceptsPaddedHeaderAndEmptyObject) {
  // Writers pad the header with spaces to align the data section.
  auto padded = ParseBytes(
      MakeFile(R"({"a": {"dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}   )", "x"));
  ASSERT_TRUE(padded.ok()) << padded.status();
  auto empty = ParseBytes(MakeFile("{}", ""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)->tensors().empty());
}

TEST(SafetensorsFileTest, EmptyTensorInsideAnotherIsNotAnOverlap) {
  const std::string header = R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},)"
                             R"( "z": {"dtype": "U8", "shape": [0], "data_offsets": [2, 2]}})";
  auto file = ParseBytes(MakeFile(header, "abcd"));
  EXPECT_TRUE(file.ok()) << file.status();
}

// --- Synthetic bad files -------------------------------------------------------

TEST(SafetensorsFileTest, RejectsEmptyBuffer) { ExpectInvalid("", "empty"); }

TEST(SafetensorsFileTest, RejectsTruncatedLengthField) {
  ExpectInvalid(std::string("\x05\0\0", 3), "too short");
}

TEST(SafetensorsFileTest, RejectsHeaderLengthPastEof) {
  ExpectInvalid(MakeFileWithLength(1000, "{}", ""), "past the end of the file");
}

TEST(SafetensorsFileTest, RejectsHugeHeaderLength) {
  ExpectInvalid(MakeFileWithLength(~uint64_t{0}, "{}", ""), "exceeds");
  ExpectInvalid(MakeFileWithLength(200ull << 20, "{}", ""), "exceeds");
}

TEST(SafetensorsFileTest, RejectsZeroHeaderLength) {
  ExpectInvalid(MakeFileWithLength(0, "", "data"), "header length is 0");
}

TEST(SafetensorsFileTest, RejectsTruncatedData) {
  // The header promises 16 bytes of data; only 8 follow.
  const std::string header = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  ExpectInvalid(MakeFile(header, std::string(8, '\0')), "past the data section");
}

TEST(SafetensorsFileTest, RejectsDeeplyNestedJson) {
  ExpectInvalid(MakeFile(std::string(10000, '[') + std::string(10000, ']'), ""), "nests deeper");
}

TEST(SafetensorsFileTest, RejectsInvalidUtf8) {
  ExpectInvalid(MakeFile("{\"\xff\": {}}", ""), "not valid JSON");
}

struct BadHeaderCase {
  std::string test_name;
  std::string header;
  std::string data;
  std::string needle;  // Must appear in the error message.
};

class BadHeaderTest : public ::testing::TestWithParam<BadHeaderCase> {};

TEST_P(BadHeaderTest, IsRejected) {
  ExpectInvalid(MakeFile(GetParam().header, GetParam().data), GetParam().needle);
}

// Shorthand for a one-tensor header "x" with the given fields.
std::string One(const std::string& fields) { return R"({"x": {)" + fields + "}}"; }

INSTANTIATE_TEST_SUITE_P(
    Safetensors, BadHeaderTest,
    ::testing::Values(
        BadHeaderCase{"BadJson", R"({"x": {"dtype": )", "", "not valid JSON"},
        BadHeaderCase{"TrailingGarbage", R"({} {})", "", "not valid JSON"},
        BadHeaderCase{"HeaderIsArray", R"([1, 2])", "", "header is not a JSON object"},
        BadHeaderCase{"EntryNotObject", R"({"x": [1]})", "", "tensor 'x': entry is not an object"},
        BadHeaderCase{"MissingDtype", One(R"("shape": [1], "data_offsets": [0, 4])"), "abcd",
                      "tensor 'x': missing \"dtype\""},
        BadHeaderCase{"MissingShape", One(R"("dtype": "F32", "data_offsets": [0, 4])"), "abcd",
                      "missing \"shape\""},
        BadHeaderCase{"MissingOffsets", One(R"("dtype": "F32", "shape": [1])"), "abcd",
                      "missing \"data_offsets\""},
        BadHeaderCase{"DtypeNotString", One(R"("dtype": 4, "shape": [1], "data_offsets": [0, 4])"),
                      "abcd", "dtype is not a string"},
        BadHeaderCase{"UnknownDtype", One(R"("dtype": "F8", "shape": [1], "data_offsets": [0, 1])"),
                      "a", "tensor 'x': unknown dtype 'F8'"},
        BadHeaderCase{"ShapeNotArray", One(R"("dtype": "F32", "shape": 4, "data_offsets": [0, 4])"),
                      "abcd", "shape is not an array"},
        BadHeaderCase{"FractionalDim",
                      One(R"("dtype": "U8", "shape": [1.5], "data_offsets": [0, 1])"), "a",
                      "non-integer dimension"},
        BadHeaderCase{"NegativeDim",
                      One(R"("dtype": "U8", "shape": [-1, 4], "data_offsets": [0, 4])"), "abcd",
                      "negative dimension -1"},
        BadHeaderCase{"DimPastInt64",
                      One(R"("dtype": "U8", "shape": [18446744073709551615],)"
                          R"( "data_offsets": [0, 1])"),
                      "a", "too large"},
        BadHeaderCase{"ElementCountOverflows",
                      One(R"("dtype": "U8", "shape": [4294967296, 4294967296, 0],)"
                          R"( "data_offsets": [0, 0])"),
                      "", "overflows"},
        BadHeaderCase{"ByteSizeOverflows",
                      One(R"("dtype": "F64", "shape": [4611686018427387904],)"
                          R"( "data_offsets": [0, 0])"),
                      "", "overflows"},
        BadHeaderCase{"SizeMismatch",
                      One(R"("dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8])"),
                      std::string(16, '\0'), "size mismatch"},
        BadHeaderCase{"OffsetsPastEnd",
                      One(R"("dtype": "U8", "shape": [4], "data_offsets": [4, 8])"), "abcd",
                      "past the data section"},
        BadHeaderCase{"BeginAfterEnd",
                      One(R"("dtype": "U8", "shape": [0], "data_offsets": [3, 2])"), "abcd",
                      "begin 3 > end 2"},
        BadHeaderCase{"NegativeOffset",
                      One(R"("dtype": "U8", "shape": [1], "data_offsets": [-1, 0])"), "abcd",
                      "non-negative integers"},
        BadHeaderCase{"OffsetsWrongLength",
                      One(R"("dtype": "U8", "shape": [1], "data_offsets": [0])"), "abcd",
                      "[begin, end] pair"},
        BadHeaderCase{"OverlappingTensors",
                      R"({"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},)"
                      R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})",
                      "abcd", "tensors 'a' and 'b' overlap"},
        BadHeaderCase{"IdenticalRanges",
                      R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},)"
                      R"( "b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
                      "abcd", "overlap"},
        BadHeaderCase{"MetadataNotObject", R"({"__metadata__": [1]})", "",
                      "__metadata__ is not an object"},
        BadHeaderCase{"MetadataValueNotString", R"({"__metadata__": {"k": 1}})", "",
                      "not a string"}),
    [](const ::testing::TestParamInfo<BadHeaderCase>& info) { return info.param.test_name; });

// --- Checkpoint directories ---------------------------------------------------

TEST(SafetensorsCheckpointTest, OpensSingleFileDir) {
  auto ckpt = SafetensorsCheckpoint::OpenDir(kDataDir + "/models/tiny-llama");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::vector<std::string> names = (*ckpt)->Names();
  EXPECT_FALSE(names.empty());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  const TensorView* embed = (*ckpt)->Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kF32);
  EXPECT_EQ((*ckpt)->Find("missing"), nullptr);
}

TEST(SafetensorsCheckpointTest, EmptyDirIsNotFound) {
  TempDir dir;
  auto ckpt = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr(dir.path().string()));
}

// Writes two shards: shard 1 holds "a" and "b", shard 2 holds "c".
void WriteTwoShards(const std::filesystem::path& dir) {
  WriteFile(dir / "model-00001-of-00002.safetensors",
            MakeFile(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                     R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})",
                     Bytes(std::vector<float>{2.5f}) + "xy"));
  WriteFile(dir / "model-00002-of-00002.safetensors",
            MakeFile(R"({"c": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})",
                     Bytes(std::vector<int32_t>{-7})));
}

void WriteIndex(const std::filesystem::path& dir, const std::string& weight_map) {
  WriteFile(dir / "model.safetensors.index.json",
            R"({"metadata": {"total_size": 10}, "weight_map": )" + weight_map + "}");
}

TEST(SafetensorsCheckpointTest, OpensShardedDir) {
  TempDir dir;
  WriteTwoShards(dir.path());
  WriteIndex(dir.path(), R"({"a": "model-00001-of-00002.safetensors",)"
                         R"( "b": "model-00001-of-00002.safetensors",)"
                         R"( "c": "model-00002-of-00002.safetensors"})");
  auto ckpt = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), (std::vector<std::string>{"a", "b", "c"}));

  const TensorView* a = (*ckpt)->Find("a");
  ASSERT_NE(a, nullptr);
  float a_value = 0;
  std::memcpy(&a_value, a->data, sizeof(a_value));
  EXPECT_EQ(a_value, 2.5f);

  const TensorView* c = (*ckpt)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dtype, DType::kI32);
  int32_t c_value = 0;
  std::memcpy(&c_value, c->data, sizeof(c_value));
  EXPECT_EQ(c_value, -7);
}

TEST(SafetensorsCheckpointTest, IndexNamingMissingTensorFails) {
  TempDir dir;
  WriteTwoShards(dir.path());
  WriteIndex(dir.path(), R"({"a": "model-00001-of-00002.safetensors",)"
                         R"( "ghost": "model-00002-of-00002.safetensors"})");
  auto ckpt = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("'ghost'"));
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("missing from it"));
}

TEST(SafetensorsCheckpointTest, RejectsShardNameEscapingDir) {
  TempDir dir;
  WriteTwoShards(dir.path());
  for (const char* shard : {"../model-00001-of-00002.safetensors", "sub/x.safetensors", ".."}) {
    WriteIndex(dir.path(), std::string(R"({"a": ")") + shard + "\"}");
    auto ckpt = SafetensorsCheckpoint::OpenDir(dir.path().string());
    ASSERT_FALSE(ckpt.ok()) << shard;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << shard;
    EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("invalid shard name")) << shard;
  }
}

TEST(SafetensorsCheckpointTest, RejectsMissingShardFile) {
  TempDir dir;
  WriteIndex(dir.path(), R"({"a": "absent.safetensors"})");
  auto ckpt = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("absent.safetensors"));
}

TEST(SafetensorsCheckpointTest, RejectsMalformedIndex) {
  TempDir dir;
  WriteFile(dir.path() / "model.safetensors.index.json", "{not json");
  auto bad_json = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(bad_json.ok());
  EXPECT_THAT(std::string(bad_json.status().message()), HasSubstr("not valid JSON"));

  WriteFile(dir.path() / "model.safetensors.index.json", R"({"metadata": {}})");
  auto no_map = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(no_map.ok());
  EXPECT_THAT(std::string(no_map.status().message()), HasSubstr("weight_map"));

  WriteIndex(dir.path(), R"({"a": 3})");
  auto not_string = SafetensorsCheckpoint::OpenDir(dir.path().string());
  ASSERT_FALSE(not_string.ok());
  EXPECT_THAT(std::string(not_string.status().message()), HasSubstr("not a string"));
}

}  // namespace
}  // namespace kvguard::engine
