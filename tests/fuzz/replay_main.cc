// The fuzz targets without libFuzzer (any compiler): every file of the seed
// corpus, then --mutations inputs derived from them by byte flips, inserts,
// deletions and splices with a fixed seed, each through
// LLVMFuzzerTestOneInput. The test suite runs this as a smoke check; the
// long runs use libFuzzer (scripts/fuzz.sh).
//
//   fuzz_replay_<target> CORPUS_DIR [--mutations N] [--seconds S]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> Mutate(const std::vector<std::vector<uint8_t>>& corpus, std::mt19937_64& rng) {
  std::vector<uint8_t> v = corpus[rng() % corpus.size()];
  const int edits = 1 + static_cast<int>(rng() % 8);
  for (int e = 0; e < edits; ++e) {
    const size_t at = v.empty() ? 0 : rng() % v.size();
    switch (rng() % 5) {
      case 0:  // flip a bit
        if (!v.empty()) v[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // an interesting byte
        if (!v.empty())
          v[at] = std::vector<uint8_t>{0, 1, 0x7f, 0x80, 0xff, '"', '{', '}', ':', ','}[rng() % 10];
        break;
      case 2:  // insert random bytes
        v.insert(v.begin() + static_cast<std::ptrdiff_t>(at), 1 + rng() % 4,
                 static_cast<uint8_t>(rng()));
        break;
      case 3:  // delete a run
        if (!v.empty())
          v.erase(v.begin() + static_cast<std::ptrdiff_t>(at),
                  v.begin() + static_cast<std::ptrdiff_t>(std::min(v.size(), at + 1 + rng() % 16)));
        break;
      default: {  // splice another input's tail
        const auto& other = corpus[rng() % corpus.size()];
        if (!other.empty()) {
          const size_t from = rng() % other.size();
          v.resize(at);
          v.insert(v.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
        }
      }
    }
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR [--mutations N] [--seconds S]\n";
    return 2;
  }
  long mutations = 2000;
  double seconds = 10;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--mutations") == 0) mutations = std::atol(argv[i + 1]);
    if (std::strcmp(argv[i], "--seconds") == 0) seconds = std::atof(argv[i + 1]);
  }
  std::vector<std::vector<uint8_t>> corpus;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream in(entry.path(), std::ios::binary);
    corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (corpus.empty()) {
    std::cerr << "empty corpus " << argv[1] << "\n";
    return 2;
  }
  for (const auto& input : corpus) LLVMFuzzerTestOneInput(input.data(), input.size());
  std::mt19937_64 rng(12345);
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  long done = 0;
  for (; done < mutations && std::chrono::steady_clock::now() < until; ++done) {
    const std::vector<uint8_t> input = Mutate(corpus, rng);
    LLVMFuzzerTestOneInput(input.data(), input.size());
  }
  std::cout << argv[0] << ": " << corpus.size() << " seeds + " << done << " mutations, no crash\n";
  return 0;
}
