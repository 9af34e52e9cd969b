// CUDA FPGM scores (see cuda_kernels.h): out[i] = sum_j ||W[i] - W[j]||_2, the CPU driver's result
// (fpgm.h) on device pointers.
//
// One block of 16 x 16 threads per tile of 16 rows i x 16 rows j with tile_j >= tile_i (the grid covers
// all tile pairs; blocks below the diagonal exit at once), so each unordered pair is computed once. The two
// row blocks are staged through shared memory 32 columns at a time; each thread sums the squared
// differences of its pair in double (the difference of two floats is exact in double), so a distance is
// accurate to ~K * 2^-53 relative. Pairs with j > i add their distance into out[i] and out[j] with double
// atomics (sm_60+): the order of those additions varies, the bound (<= 1e-6 relative, in practice ~1e-15)
// does not. out is zeroed on the stream first; nothing is allocated and nothing synchronises.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "pyslim/cuda_kernels.h"

namespace pyslim {
namespace cuda {
namespace {

constexpr int kTile = 16;
constexpr int kChunk = 32;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("pyslim fpgm_scores: ") + what + ": " +
                                                 cudaGetErrorString(e));
}

__global__ void fpgm_tiles(const float* __restrict__ W, int64_t C, int64_t K, double* __restrict__ out) {
  const int64_t ti = blockIdx.y, tj = blockIdx.x;
  if (tj < ti) return;
  __shared__ float sa[kTile][kChunk + 1];
  __shared__ float sb[kTile][kChunk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t i = ti * kTile + ty, j = tj * kTile + tx;
  const int tid = ty * kTile + tx;
  double s = 0.0;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    // 256 threads stage 2 x 16 x 32 floats: 4 each.
    for (int e = tid; e < kTile * kChunk; e += kTile * kTile) {
      const int r = e / kChunk, c = e % kChunk;
      const int64_t k = k0 + c;
      const int64_t ra = ti * kTile + r, rb = tj * kTile + r;
      sa[r][c] = (ra < C && k < K) ? W[ra * K + k] : 0.0f;
      sb[r][c] = (rb < C && k < K) ? W[rb * K + k] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kChunk; ++c) {
      const double d = static_cast<double>(sa[ty][c]) - static_cast<double>(sb[tx][c]);
      s = __fma_rn(d, d, s);
    }
    __syncthreads();
  }
  if (i < C && j < C && j > i) {
    const double dist = sqrt(s);
    atomicAdd(out + i, dist);
    atomicAdd(out + j, dist);
  }
}

}  // namespace

void fpgm_scores(const float* W, int64_t C, int64_t K, double* out, intptr_t stream) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (C <= 0) return;
  check(cudaMemsetAsync(out, 0, static_cast<size_t>(C) * sizeof(double), st), "memset");
  if (C < 2 || K <= 0) return;
  const int64_t nt = (C + kTile - 1) / kTile;
  if (nt > 65535) throw std::runtime_error("pyslim fpgm_scores: too many rows for the CUDA grid (C > 1048560)");
  dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(nt));
  dim3 block(kTile, kTile);
  fpgm_tiles<<<grid, block, 0, st>>>(W, C, K, out);
  check(cudaGetLastError(), "launch");
}

}  // namespace cuda
}  // namespace pyslim
