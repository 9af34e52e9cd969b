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
    add(Isa::kReference, fill_reference_kernels);
#if defined(PYSLIM_BUILT_AVX2)
    add(Isa::kAvx2, fill_avx2_kernels);
#endif
#if defined(PYSLIM_BUILT_AVX512)
    add(Isa::kAvx512, fill_avx512_kernels);
    // Fake quantization has no use for VNNI: the VNNI table starts as the AVX-512 one; kernels that
    // do use it (int8 GEMM) overwrite their entries.
    add(Isa::kAvx512Vnni, fill_avx512_kernels);
#endif
#if defined(PYSLIM_BUILT_NEON)
    add(Isa::kNeon, fill_neon_kernels);
    add(Isa::kNeonDot, fill_neon_kernels);
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
