// Weights on huge pages: the copy is exact, 2 MiB aligned, advised
// MADV_HUGEPAGE (the "hg" flag in /proc/self/smaps), and unmapped when the
// tensor goes.
#include "services/engine/huge_pages.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

namespace kvguard::engine {
namespace {

// The VmFlags of the mapping that holds `address`; empty when none does.
std::string VmFlagsOf(uintptr_t address) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t from = 0, to = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> from >> dash >> to && dash == '-') {
      inside = from <= address && address < to;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

TEST(HugePagesTest, LargeCopyIsExactAlignedAndAdvised) {
  at::Tensor src = at::randn({768, 1024}).to(at::kBFloat16);  // 1.5 MiB: stays plain
  at::Tensor small = OnHugePages(src);
  EXPECT_TRUE(at::equal(small, src));
  at::Tensor big_src = at::randn({1024, 1024});  // 4 MiB of f32
  at::Tensor big = OnHugePages(big_src);
  EXPECT_TRUE(at::equal(big, big_src));
  EXPECT_TRUE(big.is_contiguous());
  const auto address = reinterpret_cast<uintptr_t>(big.data_ptr());
  EXPECT_EQ(address % (uintptr_t{2} << 20), 0u);
  // The advice shows as "hg" where the kernel has transparent huge pages at all.
  if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
    EXPECT_NE(VmFlagsOf(address).find(" hg"), std::string::npos) << VmFlagsOf(address);
  }
  big = at::Tensor();
  EXPECT_EQ(VmFlagsOf(address), "");  // unmapped with the tensor
}

TEST(HugePagesTest, EmptyOnHugePagesHoldsItsWholeShape) {
  at::Tensor q8 = EmptyOnHugePages({4096, 897}, at::kChar);  // not a multiple of 4 KiB
  ASSERT_EQ(q8.numel(), 4096 * 897);
  q8.fill_(7);  // every byte writable
  EXPECT_EQ(q8.sum().item<int64_t>(), int64_t{7} * 4096 * 897);
}

}  // namespace
}  // namespace kvguard::engine
