#include "pyslim/scratch.h"

#include <cstdlib>
#include <new>

namespace pyslim {
namespace {

struct ThreadScratch {
  void* ptr[static_cast<int>(ScratchSlot::kCount)] = {};
  size_t size[static_cast<int>(ScratchSlot::kCount)] = {};
  ~ThreadScratch() {
    for (void* p : ptr) std::free(p);
  }
};

thread_local ThreadScratch scratch;

}  // namespace

void* thread_scratch(ScratchSlot slot, size_t bytes) {
  const int i = static_cast<int>(slot);
  if (bytes == 0) bytes = 1;
  if (scratch.size[i] < bytes) {
    std::free(scratch.ptr[i]);
    scratch.ptr[i] = nullptr;
    scratch.size[i] = 0;
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    scratch.ptr[i] = p;
    scratch.size[i] = rounded;
  }
  return scratch.ptr[i];
}

}  // namespace pyslim
