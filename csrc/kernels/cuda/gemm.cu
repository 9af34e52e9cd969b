// CUDA int8 GEMM, its float epilogue and the depthwise convolution (see cuda_kernels.h): the semantics of the
// CPU reference table (kernels/reference/gemm_reference.cc) on device pointers.
//
// gemm_s32: C[m][n] = sum_k A[m][k] * W[n][k] in int32 (A uint8 or int8, W int8, both K-contiguous).
//   * Tensor-core path (sm_80+, M > kSkinnyRows): block tiles of BM x BN x 64 bytes of K staged in shared
//     memory by a multi-stage pipeline (cp.async when A, W and the row strides allow 16-byte copies; plain
//     4-byte or 1-byte loads otherwise), read with ldmatrix and multiplied by
//     mma.sync.m16n8k32.row.col.s32.{s8,u8}.s8.s32. Rows past M, columns past N and k past K are zero in
//     shared memory, which adds nothing to a sum, so edges and the K tail are exact. Tile size: the largest of
//     128x128 / 128x64 that still gives every SM a tile, else 64x64 with split-K over blockIdx.z (C zeroed
//     with a memset, partial sums added with integer atomics: exact and order-independent).
//   * Skinny path (M <= kSkinnyRows, or a device below sm_80): one warp per output column n, dp4a over K,
//     a warp reduction per row.
//   Integer sums are exact and order-independent, so every path gives the reference's int32 results
//   bit-for-bit (an int32 overflow, impossible for K <= 65793, wraps modulo 2^32 in both).
//
// gemm_epilogue_f32: d = acc - zp_m * col_sums[n] in int64, converted to float once, then
//   y = ((float)d * (scale_m * weight_scale[n])) + bias[n] (the CPU epilogue's order), with IEEE round-to-nearest intrinsics (no FMA
//   contraction whatever the flags), then relu as (y < 0 ? 0 : y) (std::max(y, 0.0f): NaN passes through) and
//   relu6 as min(max(y, 0), 6) in the same std::min/std::max form. A null col_sums means zeros, a null
//   weight_scale means ones (y * 1.0f == y exactly), a null bias adds nothing.
//
// depthwise_conv_s32: one thread per output (pixel, channel) or (pixel, 4 channels), exact int32 sums in the
//   reference's formula; taps outside the input read pad_value.
//
// conv2d_s32: per group, an im2col kernel (one thread per byte) into the caller's workspace, then gemm_s32 with
//   the group's output columns (ldc = out_c), so the sums are exactly the GEMM's.
//
// Launches use the current device and the caller's stream; nothing is allocated and nothing synchronises.
// Empty outputs launch nothing.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "pyslim/cuda_kernels.h"

namespace pyslim {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kBK = 64;                // bytes of K per pipeline stage (two mma k-steps of 32)
constexpr int64_t kSkinnyRows = 8;     // rows per skinny-kernel pass; M up to this uses the skinny kernel
constexpr int kSkinnyThreads = 256;    // 8 warps, one output column each
constexpr int kEpilogueThreads = 256;
constexpr int kDepthwiseThreads = 256;
constexpr int kIm2colThreads = 256;
constexpr unsigned kMaxGridY = 65535;

// ---------------------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------------------

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("pyslim CUDA ") + what + ": " + cudaGetErrorString(err));
  }
}

// Launch errors (bad configuration, no device, no kernel image for this architecture) surface here;
// errors during execution surface at the caller's next synchronisation.
void check_launch(const char* what) { check(cudaGetLastError(), what); }

cudaStream_t as_stream(intptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct DeviceInfo {
  int major;
  int sms;
};

DeviceInfo device_info(const char* what) {
  int device = 0;
  DeviceInfo info{0, 0};
  check(cudaGetDevice(&device), what);
  check(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device), what);
  check(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), what);
  if (info.sms <= 0) info.sms = 1;
  return info;
}

// A grid dimension from a count of blocks (at least 1, at most `limit`); kernels stride over the rest.
unsigned grid_dim(int64_t blocks, int64_t limit) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, limit)));
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---------------------------------------------------------------------------------------------------------
// Device primitives (inline PTX)
// ---------------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes == 0 writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void st_shared_v4(uint32_t dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(a), "r"(b), "r"(c), "r"(d)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                            uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}

// d += a (16x32, row) * b (32x8, col); a is s8 (kASigned) or u8, b is s8; s32 accumulators (wrapping).
template <bool kASigned>
__device__ __forceinline__ void mma_16x8x32(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kASigned) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  (void)d;
  (void)a;
  (void)b;
  __trap();  // never launched: the host picks the skinny kernel below sm_80
#endif
}

// acc + dot of four bytes of a (u8 or s8) with four s8 bytes of b.
template <bool kASigned>
__device__ __forceinline__ int32_t dot4(uint32_t a, uint32_t b, int32_t acc) {
  int32_t d;
  if constexpr (kASigned) {
    asm("dp4a.s32.s32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(acc));
  } else {
    asm("dp4a.u32.s32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(acc));
  }
  return d;
}

template <bool kSigned>
__device__ __forceinline__ int32_t byte_value(uint8_t v) {
  return kSigned ? static_cast<int32_t>(static_cast<int8_t>(v)) : static_cast<int32_t>(v);
}

// ---------------------------------------------------------------------------------------------------------
// Tensor-core GEMM
// ---------------------------------------------------------------------------------------------------------

struct GemmArgs {
  const uint8_t* A;  // bytes; signedness is a template parameter
  int64_t lda;
  const int8_t* W;
  int64_t M, N, K;
  int32_t* C;
  int64_t ldc;
  bool c_pairs;  // C is 8-byte aligned and ldc is even: column pairs are stored as one int2
  // Split-K: blockIdx.z covers k tiles [z * k_tiles_per_split, (z + 1) * k_tiles_per_split). With more than one
  // split, C is zeroed first and every split adds its partial sums atomically (integer addition is exact and
  // order-independent, so the result is still bit-identical).
  int64_t k_tiles_per_split;
  bool atomic;
};

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_, bool CAN_SPLIT_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr bool CAN_SPLIT = CAN_SPLIT_;  // compiled with the split-K (atomic) epilogue
  static constexpr int kThreads = WARPS_M * WARPS_N * kWarp;
  static constexpr int WM = BM / WARPS_M;  // warp tile
  static constexpr int WN = BN / WARPS_N;
  static constexpr int MI = WM / 16;  // mma tiles per warp
  static constexpr int NI = WN / 8;
  static constexpr int kChunksA = BM * kBK / 16;  // 16-byte chunks per stage
  static constexpr int kChunksB = BN * kBK / 16;
  static constexpr int kStageBytes = (BM + BN) * kBK;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must hold whole 16x16 ldmatrix groups");
  static_assert(kChunksA % kThreads == 0 && kChunksB % kThreads == 0, "tile loads must split evenly");
  static_assert(STAGES >= 2, "the pipeline needs two stages");
};

// 128 x 128 (8 warps of 64 x 32), 64 KiB of shared memory: large problems (at least one tile per SM).
using TileLarge = TileConfig<128, 128, 2, 4, 4, 2, false>;
// 128 x 64 (4 warps of 64 x 32), 48 KiB (at least one tile per SM).
using TileMedium = TileConfig<128, 64, 2, 2, 4, 3, false>;
// 64 x 64 (4 warps of 32 x 32), 32 KiB: few output tiles (then split-K), and the non-cp.async loads.
using TileSmall = TileConfig<64, 64, 2, 2, 4, 4, true>;

// Offset of 16-byte chunk `chunk` (0..3) of tile row `row` inside a stage: rows of 64 bytes, chunks XOR-swizzled
// by (row / 2) % 4 so that the 8 row addresses of every ldmatrix phase fall in 8 distinct 16-byte bank groups.
__device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
  return static_cast<uint32_t>(row * kBK + ((chunk ^ ((row >> 1) & 3)) << 4));
}

// Stages rows [row0, row0 + ROWS) x bytes [64 kt, 64 kt + 64) of a K-contiguous matrix into shared memory, zero
// outside [0, rows) x [0, K). Each thread owns the same chunks (row, 16-byte chunk) for every k tile, so their
// row pointers and shared offsets are computed once. kVec: 16 = cp.async (K, ld and the base 16-byte aligned),
// 4 = 4-byte loads (4-byte aligned), 1 = byte loads.
template <int ROWS, int THREADS, int kVec>
struct TileLoader {
  static constexpr int kIters = ROWS * kBK / 16 / THREADS;
  const uint8_t* src[kIters];  // chunk start at k = 0, or the (valid) base pointer for a row past the end
  uint32_t dst[kIters];        // swizzled offset inside a stage
  int k_off[kIters];           // chunk * 16
  bool row_ok[kIters];
  int64_t K;

  __device__ __forceinline__ TileLoader(const uint8_t* base, int64_t ld, int64_t rows, int64_t k, int64_t row0,
                                        int tid)
      : K(k) {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int id = tid + it * THREADS;
      const int row = id >> 2;
      const int chunk = id & 3;
      const int64_t grow = row0 + row;
      row_ok[it] = grow < rows;
      src[it] = row_ok[it] ? base + grow * ld + chunk * 16 : base;
      dst[it] = swizzle(row, chunk);
      k_off[it] = chunk * 16;
    }
  }

  __device__ __forceinline__ void load(uint32_t stage, int64_t kt) const {
    const int64_t k0 = kt * kBK;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int64_t gk = k0 + k_off[it];
      const uint32_t d = stage + dst[it];
      if constexpr (kVec == 16) {
        const bool inside = row_ok[it] && gk < K;  // K % 16 == 0: a chunk is all in or all out
        cp_async16(d, inside ? src[it] + k0 : src[it], inside ? 16 : 0);
      } else {
        uint32_t w[4] = {0u, 0u, 0u, 0u};
        if (row_ok[it]) {
          const uint8_t* p = src[it] + k0;
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int64_t k = gk + 4 * q;
            if constexpr (kVec == 4) {
              if (k < K) w[q] = __ldg(reinterpret_cast<const unsigned int*>(p + 4 * q));  // K % 4 == 0
            } else {
#pragma unroll
              for (int b = 0; b < 4; ++b) {
                if (k + b < K) w[q] |= static_cast<uint32_t>(__ldg(p + 4 * q + b)) << (8 * b);
              }
            }
          }
        }
        st_shared_v4(d, w[0], w[1], w[2], w[3]);
      }
    }
  }
};

template <class Cfg, bool kASigned, int kVec>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::MIN_BLOCKS) gemm_mma_kernel(GemmArgs p) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int BM = Cfg::BM, BN = Cfg::BN, MI = Cfg::MI, NI = Cfg::NI, STAGES = Cfg::STAGES;
  const int tid = threadIdx.x;
  const int lane = tid & (kWarp - 1);
  const int warp = tid / kWarp;
  const int warp_m0 = (warp / Cfg::WARPS_N) * Cfg::WM;
  const int warp_n0 = (warp % Cfg::WARPS_N) * Cfg::WN;
  const uint32_t smem_base = smem_addr(smem);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t kt_begin = static_cast<int64_t>(blockIdx.z) * p.k_tiles_per_split;
  const int64_t kt_left = ceil_div(p.K, kBK) - kt_begin;
  const int64_t k_tiles = kt_left <= 0 ? 0 : (kt_left < p.k_tiles_per_split ? kt_left : p.k_tiles_per_split);
  const int64_t n_tiles = ceil_div(p.N, BN);

  // ldmatrix row / chunk of this lane (see the fragment layouts of mma.m16n8k32 with 8-bit inputs):
  // A: matrices (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31) = a0..a3.
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8;
  const int a_chunk = lane >> 4;
  // W: (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31) = b0, b1 of two n8 tiles.
  const int b_row = (lane & 7) + (lane >> 4) * 8;
  const int b_chunk = (lane >> 3) & 1;

  for (int64_t n_tile = blockIdx.y; n_tile < n_tiles; n_tile += gridDim.y) {  // block-uniform
    const int64_t n0 = n_tile * BN;
    int32_t acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

    const TileLoader<BM, Cfg::kThreads, kVec> a_loader(p.A, p.lda, p.M, p.K, m0, tid);
    const TileLoader<BN, Cfg::kThreads, kVec> b_loader(reinterpret_cast<const uint8_t*>(p.W), p.K, p.N, p.K, n0,
                                                       tid);
    auto load_stage = [&](int64_t kt) {  // local tile index
      const uint32_t sa = smem_base + static_cast<uint32_t>((kt % STAGES) * Cfg::kStageBytes);
      a_loader.load(sa, kt_begin + kt);
      b_loader.load(sa + BM * kBK, kt_begin + kt);
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < k_tiles) load_stage(s);
      cp_async_commit();
    }

    for (int64_t kt = 0; kt < k_tiles; ++kt) {
      cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt have landed
      __syncthreads();              // ... everyone's, and stage (kt - 1) % STAGES is no longer read
      if (kt + STAGES - 1 < k_tiles) load_stage(kt + STAGES - 1);
      cp_async_commit();

      const uint32_t sa = smem_base + static_cast<uint32_t>((kt % STAGES) * Cfg::kStageBytes);
      const uint32_t sb = sa + BM * kBK;
#pragma unroll
      for (int ks = 0; ks < kBK / 32; ++ks) {
        uint32_t af[MI][4];
        uint32_t bf[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          ldmatrix_x4(sa + swizzle(warp_m0 + i * 16 + a_row, 2 * ks + a_chunk), af[i][0], af[i][1], af[i][2],
                      af[i][3]);
        }
#pragma unroll
        for (int j = 0; j < NI; j += 2) {
          ldmatrix_x4(sb + swizzle(warp_n0 + j * 8 + b_row, 2 * ks + b_chunk), bf[j][0], bf[j][1], bf[j + 1][0],
                      bf[j + 1][1]);
        }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) mma_16x8x32<kASigned>(acc[i][j], af[i], bf[j]);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next n tile's prologue overwrites the stages

    // Accumulator layout: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g + 8, same cols).
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + warp_m0 + i * 16 + g + 8 * h;
        if (row >= p.M) continue;
        int32_t* c_row = p.C + row * p.ldc;
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          const int64_t col = n0 + warp_n0 + j * 8 + 2 * t;  // even
          const int32_t v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
          if (Cfg::CAN_SPLIT && p.atomic) {
            if (col < p.N) atomicAdd(c_row + col, v0);
            if (col + 1 < p.N) atomicAdd(c_row + col + 1, v1);
          } else if (p.c_pairs && col + 1 < p.N) {
            *reinterpret_cast<int2*>(c_row + col) = make_int2(v0, v1);
          } else {
            if (col < p.N) c_row[col] = v0;
            if (col + 1 < p.N) c_row[col + 1] = v1;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Skinny GEMM: one warp per output column, up to kSkinnyRows rows per pass (any alignment, any device)
// ---------------------------------------------------------------------------------------------------------

template <bool kASigned, bool kVec16>
__global__ void __launch_bounds__(kSkinnyThreads) gemm_skinny_kernel(GemmArgs p) {
  constexpr int R = static_cast<int>(kSkinnyRows);
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kSkinnyThreads / kWarp);
  const int64_t first_n = static_cast<int64_t>(blockIdx.x) * (kSkinnyThreads / kWarp) + threadIdx.x / kWarp;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * R; m0 < p.M; m0 += static_cast<int64_t>(gridDim.y) * R) {
    const int rows = static_cast<int>(p.M - m0 < R ? p.M - m0 : R);
    const uint8_t* a = p.A + m0 * p.lda;
    for (int64_t n = first_n; n < p.N; n += warps) {  // warp-uniform
      const int8_t* w = p.W + n * p.K;
      int32_t acc[R];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = 0;
      if constexpr (kVec16) {
        for (int64_t k = static_cast<int64_t>(lane) * 16; k < p.K; k += kWarp * 16) {
          const uint4 wv = __ldg(reinterpret_cast<const uint4*>(w + k));
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if (r < rows) {
              const uint4 av = __ldg(reinterpret_cast<const uint4*>(a + r * p.lda + k));
              int32_t s = acc[r];
              s = dot4<kASigned>(av.x, wv.x, s);
              s = dot4<kASigned>(av.y, wv.y, s);
              s = dot4<kASigned>(av.z, wv.z, s);
              s = dot4<kASigned>(av.w, wv.w, s);
              acc[r] = s;
            }
          }
        }
      } else {
        for (int64_t k = lane; k < p.K; k += kWarp) {
          const int32_t wv = static_cast<int32_t>(__ldg(w + k));
#pragma unroll
          for (int r = 0; r < R; ++r) {
            if (r < rows) acc[r] += byte_value<kASigned>(__ldg(a + r * p.lda + k)) * wv;
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int offset = kWarp / 2; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
      }
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r < rows) p.C[(m0 + r) * p.ldc + n] = acc[r];
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host launch helpers for the GEMM
// ---------------------------------------------------------------------------------------------------------

// Split-K when the output tiles leave SMs idle: about kSplitTargetBlocksPerSm blocks per SM, each split keeping
// at least kMinSplitKTiles k tiles (the pipeline depth), at most kMaxSplits.
constexpr int64_t kSplitTargetBlocksPerSm = 2;
constexpr int64_t kMinSplitKTiles = 4;
constexpr int64_t kMaxSplits = 16;

template <class Cfg, bool kASigned, int kVec>
void launch_mma(GemmArgs p, const DeviceInfo& dev, intptr_t stream) {
  auto kernel = gemm_mma_kernel<Cfg, kASigned, kVec>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes),
        "gemm_s32 (shared memory size)");
  // Prefer shared memory over L1 (the tiles bypass L1), so that MIN_BLOCKS blocks fit on an SM.
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "gemm_s32 (shared memory carveout)");
  const int64_t m_tiles = ceil_div(p.M, Cfg::BM), n_tiles = ceil_div(p.N, Cfg::BN);
  const int64_t k_tiles = ceil_div(p.K, kBK);
  int64_t splits = 1;
  const int64_t tiles = m_tiles * n_tiles;
  if (Cfg::CAN_SPLIT && tiles < dev.sms) {
    splits = std::min({ceil_div(kSplitTargetBlocksPerSm * dev.sms, tiles), k_tiles / kMinSplitKTiles, kMaxSplits});
    splits = std::max<int64_t>(splits, 1);
  }
  p.k_tiles_per_split = std::max<int64_t>(ceil_div(k_tiles, splits), 1);
  splits = std::max<int64_t>(ceil_div(k_tiles, p.k_tiles_per_split), 1);  // no empty split
  p.atomic = splits > 1;
  if (p.atomic) {
    const size_t row_bytes = static_cast<size_t>(p.N) * sizeof(int32_t);
    const size_t pitch = p.M == 1 ? row_bytes : static_cast<size_t>(p.ldc) * sizeof(int32_t);
    check(cudaMemset2DAsync(p.C, pitch, 0, row_bytes, static_cast<size_t>(p.M), as_stream(stream)),
          "gemm_s32 (clearing C for split-K)");
  }
  const dim3 grid(grid_dim(m_tiles, INT32_MAX), grid_dim(n_tiles, kMaxGridY), static_cast<unsigned>(splits));
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, as_stream(stream)>>>(p);
}

template <bool kASigned>
void launch_gemm(const GemmArgs& p, const DeviceInfo& dev, intptr_t stream) {
  const bool rows16 = aligned(p.A, 16) && (p.M == 1 || p.lda % 16 == 0);
  const bool rows4 = aligned(p.A, 4) && (p.M == 1 || p.lda % 4 == 0);
  if (dev.major < 8 || p.M <= kSkinnyRows) {
    const bool vec16 = rows16 && aligned(p.W, 16) && p.K % 16 == 0;
    const int64_t warps_per_block = kSkinnyThreads / kWarp;
    const dim3 grid(grid_dim(ceil_div(p.N, warps_per_block), INT32_MAX), grid_dim(ceil_div(p.M, kSkinnyRows), kMaxGridY));
    if (vec16) {
      gemm_skinny_kernel<kASigned, true><<<grid, kSkinnyThreads, 0, as_stream(stream)>>>(p);
    } else {
      gemm_skinny_kernel<kASigned, false><<<grid, kSkinnyThreads, 0, as_stream(stream)>>>(p);
    }
    return;
  }
  if (rows16 && aligned(p.W, 16) && p.K % 16 == 0) {
    // The largest tile that still gives every SM a block.
    auto tiles = [&](int64_t bm, int64_t bn) { return ceil_div(p.M, bm) * ceil_div(p.N, bn); };
    if (tiles(TileLarge::BM, TileLarge::BN) >= dev.sms) {
      launch_mma<TileLarge, kASigned, 16>(p, dev, stream);
    } else if (tiles(TileMedium::BM, TileMedium::BN) >= dev.sms) {
      launch_mma<TileMedium, kASigned, 16>(p, dev, stream);
    } else {
      launch_mma<TileSmall, kASigned, 16>(p, dev, stream);
    }
  } else if (rows4 && aligned(p.W, 4) && p.K % 4 == 0) {
    launch_mma<TileSmall, kASigned, 4>(p, dev, stream);
  } else {
    launch_mma<TileSmall, kASigned, 1>(p, dev, stream);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Epilogue
// ---------------------------------------------------------------------------------------------------------

struct EpilogueArgs {
  const int32_t* acc;
  int64_t ldacc;
  int64_t M, N;
  float act_scale;
  int32_t act_zero_point;
  const float* row_scales;
  const int32_t* row_zero_points;
  const float* weight_scale;
  const int32_t* col_sums;
  const float* bias;
  int activation;
  float* out;
  int64_t ldo;
};

// Block of blockDim.y rows x blockDim.x columns (blockDim.x = N rounded up to a warp, at most the whole block),
// so that narrow outputs (conv with few channels) still fill the threads.
__global__ void __launch_bounds__(kEpilogueThreads) gemm_epilogue_kernel(EpilogueArgs p) {
  const int64_t n_step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t m_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t m = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; m < p.M; m += m_step) {
    const float scale_m = p.row_scales != nullptr ? p.row_scales[m] : p.act_scale;
    const int64_t zp_m = p.row_zero_points != nullptr ? p.row_zero_points[m] : p.act_zero_point;
    const int32_t* acc = p.acc + m * p.ldacc;
    float* out = p.out + m * p.ldo;
    for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < p.N; n += n_step) {
      const int64_t col_sum = p.col_sums != nullptr ? p.col_sums[n] : 0;
      const int64_t d = static_cast<int64_t>(acc[n]) - zp_m * col_sum;  // exact; one rounding to float below
      const float multiplier = p.weight_scale != nullptr ? __fmul_rn(scale_m, p.weight_scale[n]) : scale_m;
      float y = __fmul_rn(static_cast<float>(d), multiplier);  // the CPU epilogue's order: d * (s_m * w_n)
      if (p.bias != nullptr) y = __fadd_rn(y, p.bias[n]);
      if (p.activation == 1 || p.activation == 2) y = y < 0.0f ? 0.0f : y;  // std::max(y, 0.0f)
      if (p.activation == 2) y = 6.0f < y ? 6.0f : y;                        // std::min(y, 6.0f)
      out[n] = y;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Depthwise convolution
// ---------------------------------------------------------------------------------------------------------

// Loads V channels of x (as int32) from p, or pad_value outside the input.
template <bool kSigned, int V>
__device__ __forceinline__ void load_x(const uint8_t* p, int32_t (&v)[V]) {
  if constexpr (V == 4) {
    const uint32_t u = __ldg(reinterpret_cast<const unsigned int*>(p));
#pragma unroll
    for (int q = 0; q < V; ++q) v[q] = byte_value<kSigned>(static_cast<uint8_t>(u >> (8 * q)));
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q) v[q] = byte_value<kSigned>(__ldg(p + q));
  }
}

// One thread per (output pixel, group of V channels); V == 4 needs C % 4 == 0, x and w 4-byte aligned and
// out 16-byte aligned. kNarrow: the thread count fits in 32 bits and index math uses 32-bit division.
template <bool kSigned, int V, bool kNarrow>
__global__ void __launch_bounds__(kDepthwiseThreads)
    depthwise_kernel(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out, DepthwiseShape s,
                     int64_t total) {
  const int64_t groups = s.channels / V;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t cg, ow, oh, b;
    if constexpr (kNarrow) {
      const uint32_t i = static_cast<uint32_t>(idx);
      const uint32_t pix = i / static_cast<uint32_t>(groups);
      cg = i - pix * static_cast<uint32_t>(groups);
      const uint32_t row = pix / static_cast<uint32_t>(s.out_w);
      ow = pix - row * static_cast<uint32_t>(s.out_w);
      b = row / static_cast<uint32_t>(s.out_h);
      oh = row - static_cast<uint32_t>(b) * static_cast<uint32_t>(s.out_h);
    } else {
      const int64_t pix = idx / groups;
      cg = idx - pix * groups;
      const int64_t row = pix / s.out_w;
      ow = pix - row * s.out_w;
      b = row / s.out_h;
      oh = row - b * s.out_h;
    }
    const int64_t c = cg * V;
    int32_t acc[V];
#pragma unroll
    for (int q = 0; q < V; ++q) acc[q] = 0;
    for (int64_t i = 0; i < s.kernel_h; ++i) {
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
      const bool row_inside = ih >= 0 && ih < s.height;
      for (int64_t j = 0; j < s.kernel_w; ++j) {
        const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
        const int8_t* wk = w + (i * s.kernel_w + j) * s.channels + c;
        int32_t xv[V];
        if (row_inside && iw >= 0 && iw < s.width) {
          load_x<kSigned, V>(x + ((b * s.height + ih) * s.width + iw) * s.channels + c, xv);
        } else {
#pragma unroll
          for (int q = 0; q < V; ++q) xv[q] = pad_value;
        }
        int32_t wv[V];
        load_x<true, V>(reinterpret_cast<const uint8_t*>(wk), wv);
#pragma unroll
        for (int q = 0; q < V; ++q) acc[q] += xv[q] * wv[q];
      }
    }
    int32_t* o = out + ((b * s.out_h + oh) * s.out_w + ow) * s.channels + c;
    if constexpr (V == 4) {
      *reinterpret_cast<int4*>(o) = make_int4(acc[0], acc[1], acc[2], acc[3]);
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) o[q] = acc[q];
    }
  }
}

template <bool kSigned, int V>
void launch_depthwise(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out, const DepthwiseShape& s,
                      int64_t total, int64_t max_blocks, intptr_t stream) {
  const unsigned blocks = grid_dim(std::min(ceil_div(total, kDepthwiseThreads), max_blocks), INT32_MAX);
  if (total <= INT32_MAX) {
    depthwise_kernel<kSigned, V, true><<<blocks, kDepthwiseThreads, 0, as_stream(stream)>>>(x, pad_value, w, out, s,
                                                                                            total);
  } else {
    depthwise_kernel<kSigned, V, false><<<blocks, kDepthwiseThreads, 0, as_stream(stream)>>>(x, pad_value, w, out,
                                                                                             s, total);
  }
}

// ---------------------------------------------------------------------------------------------------------
// General convolution: im2col of one group, then gemm_s32
// ---------------------------------------------------------------------------------------------------------

// A[p][k] for pixel p = (b, oh, ow) and k = (i * KW + j) * cin_g + c: the input byte at (ih, iw, g * cin_g + c),
// or pad_byte outside the input. One thread per byte (grid-stride).
__global__ void __launch_bounds__(kIm2colThreads)
    im2col_kernel(const uint8_t* x, uint8_t pad_byte, ConvShape s, int64_t group, uint8_t* A, int64_t total) {
  const int64_t cin_g = s.in_c / s.groups, kg = s.kernel_h * s.kernel_w * cin_g;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t p = idx / kg, k = idx - p * kg;
    const int64_t c = k % cin_g, tap = k / cin_g, j = tap % s.kernel_w, i = tap / s.kernel_w;
    const int64_t ow = p % s.out_w, row = p / s.out_w, oh = row % s.out_h, b = row / s.out_h;
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
    const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
    uint8_t v = pad_byte;
    if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w)
      v = __ldg(x + ((b * s.in_h + ih) * s.in_w + iw) * s.in_c + group * cin_g + c);
    A[idx] = v;
  }
}

}  // namespace

void gemm_s32(const void* A, bool a_signed, int64_t lda, const int8_t* W, int64_t M, int64_t N, int64_t K,
              int32_t* C, int64_t ldc, intptr_t stream) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("pyslim CUDA gemm_s32: negative dimension");
  if (M == 0 || N == 0) return;
  if (M > 1 && (lda < K || ldc < N)) throw std::invalid_argument("pyslim CUDA gemm_s32: row stride below the row length");
  const DeviceInfo dev = device_info("gemm_s32");
  GemmArgs p;
  p.A = static_cast<const uint8_t*>(A);
  p.lda = lda;
  p.W = W;
  p.M = M;
  p.N = N;
  p.K = K;
  p.C = C;
  p.ldc = ldc;
  p.c_pairs = aligned(C, 8) && (M == 1 || ldc % 2 == 0);
  p.k_tiles_per_split = INT64_MAX;
  p.atomic = false;
  if (a_signed) {
    launch_gemm<true>(p, dev, stream);
  } else {
    launch_gemm<false>(p, dev, stream);
  }
  check_launch("gemm_s32");
}

void gemm_epilogue_f32(const int32_t* acc, int64_t ldacc, int64_t M, int64_t N, float act_scale,
                       int32_t act_zero_point, const float* row_scales, const int32_t* row_zero_points,
                       const float* weight_scale, const int32_t* col_sums, const float* bias, int activation,
                       float* out, int64_t ldo, intptr_t stream) {
  if (M <= 0 || N <= 0) return;
  if (activation < 0 || activation > 2) {
    throw std::invalid_argument("pyslim CUDA gemm_epilogue_f32: activation must be 0 (none), 1 (relu) or 2 (relu6)");
  }
  const EpilogueArgs p{acc,    ldacc,        M,        N,    act_scale,  act_zero_point, row_scales, row_zero_points,
                       weight_scale, col_sums, bias, activation, out, ldo};
  const int64_t bx = std::min<int64_t>(ceil_div(N, kWarp) * kWarp, kEpilogueThreads);
  const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(kEpilogueThreads / bx));
  const dim3 grid(grid_dim(ceil_div(N, bx), 64), grid_dim(ceil_div(M, block.y), kMaxGridY));
  gemm_epilogue_kernel<<<grid, block, 0, as_stream(stream)>>>(p);
  check_launch("gemm_epilogue_f32");
}

void depthwise_conv_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                        const DepthwiseShape& shape, intptr_t stream) {
  const DepthwiseShape& s = shape;
  if (s.batch < 0 || s.height < 0 || s.width < 0 || s.channels < 0 || s.kernel_h < 0 || s.kernel_w < 0 ||
      s.out_h < 0 || s.out_w < 0) {
    throw std::invalid_argument("pyslim CUDA depthwise_conv_s32: negative dimension");
  }
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  if (pixels == 0 || s.channels == 0) return;
  const DeviceInfo dev = device_info("depthwise_conv_s32");
  const int64_t max_blocks = static_cast<int64_t>(dev.sms) * (2048 / kDepthwiseThreads) * 8;
  const auto* xb = static_cast<const uint8_t*>(x);
  const bool vec4 = s.channels % 4 == 0 && aligned(x, 4) && aligned(w, 4) && aligned(out, 16);
  if (vec4) {
    const int64_t total = pixels * (s.channels / 4);
    if (x_signed) {
      launch_depthwise<true, 4>(xb, pad_value, w, out, s, total, max_blocks, stream);
    } else {
      launch_depthwise<false, 4>(xb, pad_value, w, out, s, total, max_blocks, stream);
    }
  } else {
    const int64_t total = pixels * s.channels;
    if (x_signed) {
      launch_depthwise<true, 1>(xb, pad_value, w, out, s, total, max_blocks, stream);
    } else {
      launch_depthwise<false, 1>(xb, pad_value, w, out, s, total, max_blocks, stream);
    }
  }
  check_launch("depthwise_conv_s32");
}

namespace {

void check_conv_shape(const ConvShape& s, const char* what) {
  if (s.batch < 0 || s.in_h < 0 || s.in_w < 0 || s.in_c < 0 || s.out_c < 0 || s.out_h < 0 || s.out_w < 0 ||
      s.kernel_h < 1 || s.kernel_w < 1 || s.stride_h < 1 || s.stride_w < 1 || s.pad_h < 0 || s.pad_w < 0 ||
      s.dilation_h < 1 || s.dilation_w < 1 || s.groups < 1 || s.in_c % s.groups != 0 || s.out_c % s.groups != 0) {
    throw std::invalid_argument(std::string("pyslim CUDA ") + what + ": invalid convolution shape");
  }
}

}  // namespace

int64_t conv2d_workspace_bytes(const ConvShape& s) {
  check_conv_shape(s, "conv2d_workspace_bytes");
  return s.batch * s.out_h * s.out_w * s.kernel_h * s.kernel_w * (s.in_c / s.groups);
}

void conv2d_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out, const ConvShape& s,
                void* workspace, intptr_t stream) {
  check_conv_shape(s, "conv2d_s32");
  if (x_signed ? (pad_value < -128 || pad_value > 127) : (pad_value < 0 || pad_value > 255)) {
    throw std::invalid_argument("pyslim CUDA conv2d_s32: pad_value must be a byte of x's type (a zero point)");
  }
  const int64_t pixels = s.batch * s.out_h * s.out_w, cin_g = s.in_c / s.groups, cout_g = s.out_c / s.groups;
  const int64_t kg = s.kernel_h * s.kernel_w * cin_g;
  if (pixels == 0 || s.out_c == 0) return;
  if (kg == 0) {  // no input channels: every sum is empty
    check(cudaMemsetAsync(out, 0, static_cast<size_t>(pixels * s.out_c) * 4, as_stream(stream)), "conv2d_s32");
    return;
  }
  const DeviceInfo dev = device_info("conv2d_s32");
  const int64_t total = pixels * kg;
  const int64_t max_blocks = static_cast<int64_t>(dev.sms) * (2048 / kIm2colThreads) * 8;
  const unsigned blocks = grid_dim(std::min(ceil_div(total, kIm2colThreads), max_blocks), INT32_MAX);
  auto* A = static_cast<uint8_t*>(workspace);
  const auto pad_byte = static_cast<uint8_t>(pad_value & 0xff);
  for (int64_t g = 0; g < s.groups; ++g) {
    im2col_kernel<<<blocks, kIm2colThreads, 0, as_stream(stream)>>>(static_cast<const uint8_t*>(x), pad_byte, s, g,
                                                                     A, total);
    check_launch("conv2d_s32 (im2col)");
    gemm_s32(A, x_signed, kg, w + g * cout_g * kg, pixels, cout_g, kg, out + g * cout_g, s.out_c, stream);
  }
}

}  // namespace cuda
}  // namespace pyslim
