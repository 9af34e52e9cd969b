// Checks run-time ISA detection against what the test environment promises. The cross-build CI
// (.ci/arm_tests.sh) runs the suite under qemu with different emulated CPUs and sets
// PYSLIM_EXPECT_ISAS to the comma-separated paths that CPU must expose, e.g. "reference,neon,neondot";
// without the variable (a native run on an unknown machine) there is nothing to compare with.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

#include "pyslim/isa.h"

namespace pyslim {
namespace {

std::string describe(uint32_t mask) {
  std::string out;
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i) {
    if (mask & (1u << i)) {
      if (!out.empty()) out += ",";
      out += isa_name(static_cast<Isa>(i));
    }
  }
  return out.empty() ? "(none)" : out;
}

TEST(IsaDetectionEnv, DetectedIsasMatchTheExpectedSet) {
  const char* expected_env = std::getenv("PYSLIM_EXPECT_ISAS");
  if (expected_env == nullptr || *expected_env == '\0') {
    GTEST_SKIP() << "PYSLIM_EXPECT_ISAS is not set; nothing to compare detection with";
  }
  uint32_t expected = 0;
  std::stringstream names(expected_env);
  std::string name;
  while (std::getline(names, name, ',')) {
    if (name.empty()) continue;
    Isa isa;
    ASSERT_TRUE(isa_from_name(name, &isa))
        << "PYSLIM_EXPECT_ISAS must list ISA paths (reference, avx2, avx512, avx512vnni, neon, neondot); got '"
        << name << "' in '" << expected_env << "'";
    expected |= isa_bit(isa);
  }
  EXPECT_EQ(detected_isas(), expected) << "detected: " << describe(detected_isas())
                                       << "; expected (PYSLIM_EXPECT_ISAS): " << describe(expected);
}

}  // namespace
}  // namespace pyslim
