// Per-thread, grow-only scratch buffers for the drivers.
//
// Large temporaries (int32 accumulator blocks, im2col blocks, quantized activations) would otherwise be
// fresh allocations on every call: above glibc's mmap threshold each one maps new pages, and every page then
// costs a fault on first touch (measured at ~1.6 us per 4 KiB page on the development machine, which made a
// 4096x4096 int8 GEMM call spend more time faulting than multiplying). Pool threads live as long as the
// process, so after the first call these buffers are already mapped and warm.
#pragma once

#include <cstddef>

namespace pyslim {

enum class ScratchSlot : int { kAccumulator = 0, kIm2col = 1, kQuantized = 2, kPadded = 3, kRow = 4, kCount = 5 };

// A 64-byte aligned buffer of at least `bytes` bytes, owned by the calling thread and valid until that
// thread asks for the same slot again. Contents are unspecified.
void* thread_scratch(ScratchSlot slot, size_t bytes);

template <typename T>
T* thread_scratch_as(ScratchSlot slot, size_t count) {
  return static_cast<T*>(thread_scratch(slot, count * sizeof(T)));
}

}  // namespace pyslim
