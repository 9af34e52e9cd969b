// Instruction-set paths and run-time CPU detection.
//
// A path is usable only when it was both *built* into this binary and *detected* on the running CPU.
// The active path is chosen once (the best usable one) and can be forced lower for tests through the
// PYSLIM_ISA environment variable or force_isa(); forcing a path the CPU lacks is refused with an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pyslim {

enum class Isa : int {
  kReference = 0,
  kAvx2 = 1,
  kAvx512 = 2,      // AVX-512 F + BW + VL + DQ
  kAvx512Vnni = 3,  // the above + AVX512_VNNI
  kNeon = 4,        // aarch64 Advanced SIMD
  kNeonDot = 5,     // the above + the dotprod extension (sdot/udot)
  kCount = 6,
};

const char* isa_name(Isa isa);
// Parses "reference", "avx2", ...; returns false for an unknown name.
bool isa_from_name(const std::string& name, Isa* out);
static inline uint32_t isa_bit(Isa isa) { return 1u << static_cast<int>(isa); }

uint32_t detected_isas();  // bitmask of paths the running CPU (and OS) supports; reference is always set
uint32_t built_isas();     // bitmask of paths compiled into this binary; reference is always set
std::vector<Isa> usable_isas();  // built & detected, in ascending order

Isa active_isa();
// Forces the active path. Throws std::invalid_argument naming the path when it is unknown, not built, or
// not supported by this CPU.
void force_isa(Isa isa);
void force_isa(const std::string& name);

}  // namespace pyslim
