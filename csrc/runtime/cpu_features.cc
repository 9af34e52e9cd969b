// Run-time CPU feature detection. x86: cpuid for the instructions *and* XCR0 (xgetbv) for the register
// state the OS saves; a CPU that has AVX-512 under an OS that does not save ZMM state must not use it.
// aarch64: getauxval(AT_HWCAP), which reflects what the kernel exposes to user space.
#include <cstdint>

#include "pyslim/isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PYSLIM_X86 1
#elif defined(__aarch64__)
#include <sys/auxv.h>
#define PYSLIM_AARCH64 1
#endif

namespace pyslim {
namespace {

#if defined(PYSLIM_X86)
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  // xgetbv with ecx = 0; encoded as bytes so no -mxsave flag is needed for this file.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

uint32_t detect() {
  uint32_t mask = isa_bit(Isa::kReference);
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return mask;
  const bool osxsave = (ecx >> 27) & 1;
  const bool avx = (ecx >> 28) & 1;
  const bool fma = (ecx >> 12) & 1;
  if (!osxsave || !avx) return mask;
  const uint64_t xcr0 = read_xcr0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_state) return mask;
  if (__get_cpuid_max(0, nullptr) < 7) return mask;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx2 = (ebx >> 5) & 1;
  const bool avx512f = (ebx >> 16) & 1, avx512dq = (ebx >> 17) & 1;
  const bool avx512bw = (ebx >> 30) & 1, avx512vl = (ebx >> 31) & 1;
  const bool avx512vnni = (ecx >> 11) & 1;
  if (avx2 && fma) mask |= isa_bit(Isa::kAvx2);
  if ((mask & isa_bit(Isa::kAvx2)) && zmm_state && avx512f && avx512dq && avx512bw && avx512vl) {
    mask |= isa_bit(Isa::kAvx512);
    if (avx512vnni) mask |= isa_bit(Isa::kAvx512Vnni);
  }
  return mask;
}
#elif defined(PYSLIM_AARCH64)
uint32_t detect() {
  uint32_t mask = isa_bit(Isa::kReference);
  const unsigned long hwcap = getauxval(AT_HWCAP);
  constexpr unsigned long kAsimd = 1ul << 1;     // HWCAP_ASIMD
  constexpr unsigned long kAsimdDp = 1ul << 20;  // HWCAP_ASIMDDP
  if (hwcap & kAsimd) {
    mask |= isa_bit(Isa::kNeon);
    if (hwcap & kAsimdDp) mask |= isa_bit(Isa::kNeonDot);
  }
  return mask;
}
#else
uint32_t detect() { return isa_bit(Isa::kReference); }
#endif

}  // namespace

uint32_t detected_isas() {
  static const uint32_t mask = detect();
  return mask;
}

}  // namespace pyslim
