// The dispatch table: filled once per path, and one active path chosen once (the best path that was
// both built and detected), which tests and users may force lower.
#include <atomic>
#include <stdexcept>
#include <string>

#include "pyslim/isa.h"
#include "pyslim/kernels.h"

namespace pyslim {
namespace {

const char* const kNames[] = {"reference", "avx2", "avx512", "avx512vnni", "neon", "neondot"};

// A table is filled only on a CPU that can run it: the fill function lives in its ISA's translation unit,
// compiled with that ISA's flags, and the compiler may use those instructions even for its pointer stores.
struct Tables {
  KernelTable table[static_cast<int>(Isa::kCount)];
  bool built[static_cast<int>(Isa::kCount)] = {};
  bool filled[static_cast<int>(Isa::kCount)] = {};
  Tables() {
    const uint32_t detected = detected_isas();
    auto add = [&](Isa isa, void (*fill)(KernelTable*)) {
      const int i = static_cast<int>(isa);
      built[i] = true;
      if (detected & isa_bit(isa)) {
        fill(&table[i]);
        filled[i] = true;
      }
    };
    // Every table starts with the reference GEMM; a path's own GEMM file, when built, overwrites it.
    add(Isa::kReference, [](KernelTable* t) {
      fill_reference_kernels(t);
      fill_reference_gemm(t);
      fill_reference_fpgm(t);
    });
#if defined(PYSLIM_BUILT_AVX2)
    add(Isa::kAvx2, [](KernelTable* t) {
      fill_avx2_kernels(t);
      fill_reference_gemm(t);
#if defined(PYSLIM_HAVE_GEMM_AVX2)
      fill_avx2_gemm(t);
#endif
      fill_reference_fpgm(t);
#if defined(PYSLIM_HAVE_FPGM_AVX2)
      fill_avx2_fpgm(t);
#endif
    });
#endif
#if defined(PYSLIM_BUILT_AVX512)
    // AVX-512 without VNNI runs the AVX2 GEMM (valid on every AVX-512 CPU); fake quantization is AVX-512.
    add(Isa::kAvx512, [](KernelTable* t) {
      fill_avx512_kernels(t);
      fill_reference_gemm(t);
#if defined(PYSLIM_HAVE_GEMM_AVX2)
      fill_avx2_gemm(t);
#endif
      fill_reference_fpgm(t);
#if defined(PYSLIM_HAVE_FPGM_AVX512)
      fill_avx512_fpgm(t);
#endif
    });
    add(Isa::kAvx512Vnni, [](KernelTable* t) {
      fill_avx512_kernels(t);
      fill_reference_gemm(t);
#if defined(PYSLIM_HAVE_GEMM_AVX512VNNI)
      fill_avx512vnni_gemm(t);
#elif defined(PYSLIM_HAVE_GEMM_AVX2)
      fill_avx2_gemm(t);
#endif
      fill_reference_fpgm(t);
#if defined(PYSLIM_HAVE_FPGM_AVX512)
      fill_avx512_fpgm(t);
#endif
    });
#endif
#if defined(PYSLIM_BUILT_NEON)
    add(Isa::kNeon, [](KernelTable* t) {
      fill_neon_kernels(t);
      fill_reference_gemm(t);
#if defined(PYSLIM_HAVE_GEMM_NEON)
      fill_neon_gemm(t);
#endif
      fill_reference_fpgm(t);
#if defined(PYSLIM_HAVE_FPGM_NEON)
      fill_neon_fpgm(t);
#endif
    });
    add(Isa::kNeonDot, [](KernelTable* t) {
      fill_neon_kernels(t);
      fill_reference_gemm(t);
#if defined(PYSLIM_HAVE_GEMM_NEON)
      fill_neon_gemm(t);  // depthwise (and the GEMM, unless the dotprod file overrides it)
#endif
#if defined(PYSLIM_HAVE_GEMM_NEONDOT)
      fill_neondot_gemm(t);  // the sdot GEMM entries only
#endif
      fill_reference_fpgm(t);
#if defined(PYSLIM_HAVE_FPGM_NEON)
      fill_neon_fpgm(t);
#endif
    });
#endif
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

Isa best_usable() {
  Isa best = Isa::kReference;
  for (Isa isa : usable_isas()) best = isa;
  return best;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(best_usable())};
  return slot;
}

std::string mask_names(uint32_t mask) {
  std::string out;
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i) {
    if (mask & (1u << i)) {
      if (!out.empty()) out += ", ";
      out += kNames[i];
    }
  }
  return out;
}

}  // namespace

const char* isa_name(Isa isa) {
  const int i = static_cast<int>(isa);
  return (i >= 0 && i < static_cast<int>(Isa::kCount)) ? kNames[i] : "unknown";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i) {
    if (name == kNames[i]) {
      *out = static_cast<Isa>(i);
      return true;
    }
  }
  return false;
}

uint32_t built_isas() {
  uint32_t mask = 0;
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i)
    if (tables().built[i]) mask |= 1u << i;
  return mask;
}

std::vector<Isa> usable_isas() {
  std::vector<Isa> out;
  const uint32_t mask = built_isas() & detected_isas();
  for (int i = 0; i < static_cast<int>(Isa::kCount); ++i)
    if (mask & (1u << i)) out.push_back(static_cast<Isa>(i));
  return out;
}

const KernelTable* kernel_table(Isa isa) {
  const int i = static_cast<int>(isa);
  if (i < 0 || i >= static_cast<int>(Isa::kCount) || !tables().filled[i]) return nullptr;
  return &tables().table[i];
}

Isa active_isa() { return static_cast<Isa>(active_slot().load()); }

const KernelTable& active_kernels() { return tables().table[active_slot().load()]; }

void force_isa(Isa isa) {
  if (!(built_isas() & isa_bit(isa)))
    throw std::invalid_argument(std::string("ISA path '") + isa_name(isa) +
                                "' is not built into this pyslim binary (built: " + mask_names(built_isas()) + ")");
  if (!(detected_isas() & isa_bit(isa)))
    throw std::invalid_argument(std::string("ISA path '") + isa_name(isa) +
                                "' is not supported by this CPU (detected: " + mask_names(detected_isas()) + ")");
  active_slot().store(static_cast<int>(isa));
}

void force_isa(const std::string& name) {
  Isa isa;
  if (!isa_from_name(name, &isa))
    throw std::invalid_argument("unknown ISA path '" + name +
                                "'; expected one of reference, avx2, avx512, avx512vnni, neon, neondot");
  force_isa(isa);
}

}  // namespace pyslim
