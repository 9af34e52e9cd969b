// AVX-512 VNNI int8 GEMM and depthwise convolution (compiled with -mavx512f/bw/vl/dq -mavx512vnni).
//
// GEMM: C[m][n] = sum_k A[m][k] * W[n][k], exact in int32 (see kernels.h and the reference).
//   * vpdpbusd multiplies unsigned bytes (first source) by signed bytes (second source), adds each group of
//     four products into an int32 lane, and never saturates (the sum of four products, |.| <= 4*255*128,
//     always fits; the int32 accumulation wraps only where the reference would overflow too).
//   * A uint8 is used as is. A int8 is flipped to uint8 with a ^ 0x80 (= a + 128), and the excess
//     128 * sum_k W[n][k] is removed by starting the accumulators at bias[n] = -128 * sum_k W[n][k],
//     precomputed per column and stored in the packed buffer. Both are exact integer identities.
//   * Micro-kernel: kMR = 6 rows x kNR = 64 columns (24 zmm accumulators, 4 zmm of W, 1 broadcast of A).
//     gemm_n_step = kNR. Edge tiles: fewer rows by template instantiation, fewer columns by store masks
//     (the packed W is zero past N, so the extra lanes compute harmless zeros).
//   * Blocking: K in blocks of 512 (a 64 x 512 W sub-panel is 32 KiB and stays in a 48 KiB L1 while every
//     row tile of the A block passes over it; 256 measured ~10% slower at 128x4096x4096 on Zen 4, from the
//     extra C tile reloads); M in blocks of up to kMC = 192 rows, whose A slice (~108 KiB) is copied
//     into a stack scratch per K block (flipped for int8, zero-padded past K, rows a cache line more than
//     their length apart so that a tile's six rows use different L1 sets; see pack_a). While the row tiles
//     pass over a W sub-panel, tiles 1-16 prefetch the next one. The first K block starts from the bias, the later
//     ones add onto the C tile (C is the accumulator between K blocks; only the requested block is touched).
//     K blocks are balanced (576 is one block of 144 groups, not 512 + 64; up to kKCgMax groups stay whole), and
//     an M of up to kSmallM rows takes K in one run. With K % 4 == 0 and short rows (lda <= 1024) the micro-kernel
//     broadcasts A words in place (xor 0x80808080 on the fly for int8) and the copy is skipped.
//
// Packed W layout (this file's private format; 64-byte aligned buffer):
//   int32 bias[Np]                         Np = N rounded up to 64; bias[n] = -128 * sum_k W[n][k], 0 past N
//   Np / 64 panels of K4 * 256 bytes       K4 = ceil(K / 4); panel p, group g, column c, byte i:
//                                          W[64p + c][4g + i] at ((p * K4 + g) * 64 + c) * 4 + i, 0 past N / K
//
// Depthwise: vectorised over channels. Fast path (a pad value that is a byte of x's type, i.e. any zero
// point): vpdpbusd over quads of horizontally adjacent taps (see depthwise_rows_quads). Otherwise bytes
// widened to int32 and multiplied with vpmulld (16 int32 lanes per zmm, 64 channels per step, then masked
// steps of 16), so every product and sum is exact.
//
// Everything except fill_avx512vnni_gemm has internal linkage (no std templates are instantiated here), so
// no EVEX-encoded code can leak into the baseline build through a shared weak symbol.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "pyslim/kernels.h"
#include "../gemm_epilogue_impl.h"

namespace pyslim {
namespace vnni {
namespace {

constexpr int64_t kMR = 6;     // rows per micro-tile
constexpr int64_t kNR = 64;    // columns per micro-tile (4 zmm of 16 int32)
constexpr int64_t kKCg = 128;  // groups of 4 k per K block (512 k)
constexpr int64_t kDirectMaxLda = 1024;  // read A in place when K % 4 == 0 and lda <= this (see gemm)
constexpr int64_t kKCgMax = 160;  // a K of up to this many groups is one block (see gemm below)
constexpr int64_t kMC = 192;   // rows per A block (multiple of kMR)
constexpr int64_t kPrefetchTiles = 16;  // row tiles that share the fetch of the next W sub-panel
constexpr int64_t kSmallM = 64;  // up to this many rows, K is not blocked (see gemm)
static_assert(kMC % kMR == 0, "the A block holds whole row tiles");

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

int64_t gemm_packed_size(int64_t N, int64_t K) {
  const int64_t np = round_up(N, kNR), k4 = (K + 3) / 4;
  return np * 4 + np * k4 * 4;
}

void gemm_pack(const int8_t* W, int64_t N, int64_t K, void* packed) {
  const int64_t np = round_up(N, kNR), k4 = (K + 3) / 4;
  auto* bias = static_cast<int32_t*>(packed);
  auto* panels = static_cast<int8_t*>(packed) + np * 4;
  std::memset(panels, 0, static_cast<size_t>(np * k4 * 4));
  for (int64_t n = 0; n < np; ++n) {
    int32_t sum = 0;
    if (n < N) {
      const int8_t* w = W + n * K;
      int8_t* panel = panels + (n / kNR) * k4 * kNR * 4 + (n % kNR) * 4;
      for (int64_t k = 0; k < K; ++k) {
        sum += w[k];
        panel[(k / 4) * kNR * 4 + (k % 4)] = w[k];
      }
    }
    bias[n] = -128 * sum;
  }
}

// Row stride of the packed A block at kg groups: the rows' bytes rounded up to a cache line, plus one line, so
// that the six rows of a tile fall in different L1 sets (rows a multiple of 4 KiB apart share their sets, and
// the micro-kernel reads all six in step).
inline int64_t packed_a_ld(int64_t kg) { return round_up(kg * 4, 64) + 64; }

// Copies rows [0, rows) x groups [g0, g0 + kg) of A into ap, row r at ap + r * ld (ld = packed_a_ld(kg)):
// int8 bytes flipped to uint8 (^ 0x80), bytes past K zero (a last group with fewer than four k). 64 bytes a
// step; the micro-kernel then reads each row in place.
template <bool kSigned>
void pack_a(const uint8_t* A, int64_t lda, int64_t rows, int64_t K, int64_t g0, int64_t kg, uint8_t* ap,
            int64_t ld) {
  const __m512i flip = _mm512_set1_epi8(kSigned ? static_cast<char>(0x80) : 0);
  const int64_t bytes = kg * 4, valid = min64(bytes, K - g0 * 4);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* a = A + r * lda + g0 * 4;
    uint8_t* d = ap + r * ld;
    int64_t i = 0;
    for (; i + 64 <= valid; i += 64) _mm512_storeu_si512(d + i, _mm512_xor_si512(_mm512_loadu_si512(a + i), flip));
    if (i < bytes) {  // the tail: valid bytes flipped, then zeros up to the whole group
      const int64_t left = valid - i, span = bytes - i;
      const __mmask64 in = left >= 64 ? ~0ull : (1ull << left) - 1;
      const __mmask64 out = span >= 64 ? ~0ull : (1ull << span) - 1;
      _mm512_mask_storeu_epi8(d + i, out, _mm512_maskz_mov_epi8(in, _mm512_xor_si512(_mm512_maskz_loadu_epi8(in, a + i), flip)));
    }
  }
}

// One R x 64 tile over kg groups. first: start from bias (or 0), else from the C tile. cols <= 64 valid.
// The 24 accumulators are named variables, not an array: GCC 12 keeps a __m512i[R][4] array in memory and
// stores it every iteration (measured: a third of the speed). Rows >= R vanish at compile time.
// vpdpbusd through a one-line asm: with the _mm512_dpbusd_epi32 intrinsic GCC 12 copies every accumulator
// through another register and a stack slot on each use (measured: a third of the speed); "+v" keeps each
// accumulator in one register. Same instruction, same result.
inline __m512i dpbusd(__m512i acc, __m512i a_u8, __m512i w_s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a_u8), "v"(w_s8));
  return acc;
}
#define PYSLIM_VNNI_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
// A is read as 32-bit words at a + r * row_stride + g * group_stride (bytes): the packed block (4, 4 * kMR)
// or the caller's matrix itself (lda, 4). kFlip: xor each broadcast word with 0x80808080 (int8 A read in
// place; the packed block is flipped already). The kg groups are taken from nseg segments of kg / nseg groups
// each, segment s starting at a_base + s * seg_stride (the implicit convolution's kernel rows; 1 for a GEMM);
// W runs on continuously.
template <int R, bool kFlip, int NV = 4>
__attribute__((noinline)) void micro_kernel(const uint8_t* a_base, int64_t row_stride, int64_t group_stride,
                                            const int8_t* wp, int64_t kg, int32_t* C, int64_t ldc,
                                            const int32_t* bias, bool first, int64_t cols, int64_t nseg = 1,
                                            int64_t seg_stride = 0, const int8_t* prefetch = nullptr,
                                            int64_t prefetch_groups = 0) {
  static_assert(R >= 1 && R <= kMR && NV >= 1 && NV <= 4, "tile shape");
  __mmask16 m0, m1, m2, m3;
  {
    auto mk = [cols](int j) -> __mmask16 {
      const int64_t c = cols - 16 * j;
      return c >= 16 ? static_cast<__mmask16>(0xffff) : c <= 0 ? 0 : static_cast<__mmask16>((1u << c) - 1);
    };
    m0 = mk(0);
    m1 = mk(1);
    m2 = mk(2);
    m3 = mk(3);
  }
#define PYSLIM_DECL(r) __m512i c##r##0, c##r##1, c##r##2, c##r##3;
  PYSLIM_VNNI_ROWS(PYSLIM_DECL)
#undef PYSLIM_DECL
  if (first) {
    const __m512i b0 = bias ? _mm512_loadu_si512(bias) : _mm512_setzero_si512();
    const __m512i b1 = bias ? _mm512_loadu_si512(bias + 16) : _mm512_setzero_si512();
    const __m512i b2 = bias ? _mm512_loadu_si512(bias + 32) : _mm512_setzero_si512();
    const __m512i b3 = bias ? _mm512_loadu_si512(bias + 48) : _mm512_setzero_si512();
#define PYSLIM_INIT(r)  \
  if constexpr (R > r) { \
    c##r##0 = b0;        \
    c##r##1 = b1;        \
    c##r##2 = b2;        \
    c##r##3 = b3;        \
  }  // (the columns >= NV are dead code)
    PYSLIM_VNNI_ROWS(PYSLIM_INIT)
#undef PYSLIM_INIT
  } else {
#define PYSLIM_LOAD(r)                                             \
  if constexpr (R > r) {                                           \
    c##r##0 = _mm512_maskz_loadu_epi32(m0, C + r * ldc);      \
    c##r##1 = _mm512_maskz_loadu_epi32(m1, C + r * ldc + 16); \
    c##r##2 = _mm512_maskz_loadu_epi32(m2, C + r * ldc + 32); \
    c##r##3 = _mm512_maskz_loadu_epi32(m3, C + r * ldc + 48); \
  }
    PYSLIM_VNNI_ROWS(PYSLIM_LOAD)
#undef PYSLIM_LOAD
  }
  const __m512i flip = _mm512_set1_epi32(static_cast<int>(0x80808080u));
  (void)flip;
  const int64_t seg_groups = kg / nseg;
  for (int64_t s = 0; s < nseg; ++s)
  for (int64_t g = 0; g < seg_groups; ++g) {
    const int8_t* w = wp + (s * seg_groups + g) * kNR * 4;
    const __m512i w0 = _mm512_load_si512(w);
    const __m512i w1 = NV > 1 ? _mm512_load_si512(w + 64) : w0;
    const __m512i w2 = NV > 2 ? _mm512_load_si512(w + 128) : w0;
    const __m512i w3 = NV > 3 ? _mm512_load_si512(w + 192) : w0;
    const uint8_t* a = a_base + s * seg_stride + g * group_stride;
    if (g < prefetch_groups) {  // the four lines of one group of another W sub-panel
      const char* pf = reinterpret_cast<const char*>(prefetch + g * kNR * 4);
      _mm_prefetch(pf, _MM_HINT_T0);
      _mm_prefetch(pf + 64, _MM_HINT_T0);
      _mm_prefetch(pf + 128, _MM_HINT_T0);
      _mm_prefetch(pf + 192, _MM_HINT_T0);
    }
#define PYSLIM_STEP(r)                                                   \
  if constexpr (R > r) {                                                 \
    int32_t word;                                                        \
    std::memcpy(&word, a + r * row_stride, 4);                           \
    __m512i av = _mm512_set1_epi32(word);                                \
    if constexpr (kFlip) av = _mm512_xor_si512(av, flip);                \
    c##r##0 = dpbusd(c##r##0, av, w0);                                   \
    if constexpr (NV > 1) c##r##1 = dpbusd(c##r##1, av, w1);             \
    if constexpr (NV > 2) c##r##2 = dpbusd(c##r##2, av, w2);             \
    if constexpr (NV > 3) c##r##3 = dpbusd(c##r##3, av, w3);             \
  }
    PYSLIM_VNNI_ROWS(PYSLIM_STEP)
#undef PYSLIM_STEP
  }
#define PYSLIM_STORE(r)                                                             \
  if constexpr (R > r) {                                                            \
    _mm512_mask_storeu_epi32(C + r * ldc, m0, c##r##0);                             \
    if constexpr (NV > 1) _mm512_mask_storeu_epi32(C + r * ldc + 16, m1, c##r##1);  \
    if constexpr (NV > 2) _mm512_mask_storeu_epi32(C + r * ldc + 32, m2, c##r##2);  \
    if constexpr (NV > 3) _mm512_mask_storeu_epi32(C + r * ldc + 48, m3, c##r##3);  \
  }
  PYSLIM_VNNI_ROWS(PYSLIM_STORE)
#undef PYSLIM_STORE
}
#undef PYSLIM_VNNI_ROWS

// One row tile of `rows` (1..kMR) rows of A at `a`, `row_stride` bytes apart, over kg groups (micro_kernel),
// with as many column vectors as `cols` needs: a panel of up to 16, 32 or 48 valid columns (N = 16, 24, 40, the
// last 16 of N = 80 or 144, the 3-channel stem's 32) skips the dot products of its empty vectors.
template <bool kFlip, int NV>
void tile_nv(int64_t rows, const uint8_t* a, int64_t row_stride, const int8_t* wp, int64_t kg, int32_t* c,
             int64_t ldc, const int32_t* b, bool first, int64_t cols, int64_t nseg, int64_t seg_stride,
             const int8_t* pf, int64_t pfn) {
  switch (rows) {
#define PYSLIM_CASE(n)                                                                                 \
  case n:                                                                                              \
    micro_kernel<n, kFlip, NV>(a, row_stride, 4, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn); \
    break;
    PYSLIM_CASE(1) PYSLIM_CASE(2) PYSLIM_CASE(3) PYSLIM_CASE(4) PYSLIM_CASE(5)
    default: micro_kernel<6, kFlip, NV>(a, row_stride, 4, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn);
#undef PYSLIM_CASE
  }
}

template <bool kFlip>
void tile(int64_t rows, const uint8_t* a, int64_t row_stride, const int8_t* wp, int64_t kg, int32_t* c, int64_t ldc,
          const int32_t* b, bool first, int64_t cols, const int8_t* pf, int64_t pfn, int64_t nseg = 1,
          int64_t seg_stride = 0) {
  switch ((cols + 15) / 16) {
    case 1: tile_nv<kFlip, 1>(rows, a, row_stride, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn); break;
    case 2: tile_nv<kFlip, 2>(rows, a, row_stride, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn); break;
    case 3: tile_nv<kFlip, 3>(rows, a, row_stride, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn); break;
    default: tile_nv<kFlip, 4>(rows, a, row_stride, wp, kg, c, ldc, b, first, cols, nseg, seg_stride, pf, pfn); break;
  }
}

template <bool kSigned>
void gemm(const uint8_t* A, int64_t lda, const void* packed, int64_t M, int64_t N, int64_t K, int64_t n_begin,
          int64_t n_end, int32_t* C, int64_t ldc) {
  const int64_t np = round_up(N, kNR), k4 = (K + 3) / 4;
  const int32_t* bias = kSigned ? static_cast<const int32_t*>(packed) : nullptr;
  const int8_t* panels = static_cast<const int8_t*>(packed) + np * 4;
  constexpr int64_t kApBytes = kMC * (kKCg * 4 + 64);  // kMC rows at kKCg groups
  alignas(64) uint8_t ap[kApBytes];
  // K blocking. A block of a few row tiles (M <= kSmallM) gains nothing from K blocks: W is read from memory
  // once either way, and the 64-column panel (64 * K bytes: 256 KiB at K = 4096) stays in L2 for the later
  // row tiles. Take as much of K as the A scratch holds, so that W streams as one long run per panel instead
  // of 32 KiB runs 256 KiB apart (16 x 4096 x 4096, one thread, W in DRAM: 0.84 -> 0.66 ms; W in L3:
  // 0.64 -> 0.56 ms; 32 and 64 rows 7-10 % faster; a software prefetch of the next panel gained 2-5 % with
  // W in DRAM and was not kept). Otherwise blocks of at most kKCg groups, balanced (576 = 512 + 64 would
  // spend a whole C-tile reload on 64 k), and a K just above one block (up to kKCgMax groups, a 40 KiB W
  // sub-panel: still inside L1) is taken whole.
  int64_t kc;
  if (M <= kSmallM) {
    kc = min64(k4, (kApBytes / round_up(M, kMR) - 128) / 4);  // packed_a_ld(kc) * rows <= kApBytes
  } else if (k4 <= kKCgMax) {
    kc = k4;
  } else {
    const int64_t blocks = (k4 + kKCg - 1) / kKCg;
    kc = (k4 + blocks - 1) / blocks;
  }
  // With K a multiple of 4 every 32-bit word of A lies inside its row: the micro-kernel can broadcast it from A
  // in place (flipping int8 on the fly), and the copy into the packed block is skipped (it cost ~15% at
  // 3136 x 64 x 576). Only for short rows: six rows 4 KiB apart share L1 sets with each other and with the W
  // panel (measured 2.5x slower at lda = 4096), while the packed block is contiguous.
  const bool direct = K % 4 == 0 && lda <= kDirectMaxLda;
  // Rows per A block: as many whole row tiles as the scratch holds at this block depth (kMC at kKCg).
  const int64_t ld_ap = packed_a_ld(kc);
  const int64_t mc_max = min64(kMC, kApBytes / ld_ap / kMR * kMR);
  for (int64_t m0 = 0; m0 < M; m0 += mc_max) {
    const int64_t mc = min64(mc_max, M - m0);
    for (int64_t g0 = 0; g0 < k4; g0 += kc) {
      const int64_t kg = min64(kc, k4 - g0);
      if (!direct) pack_a<kSigned>(A + m0 * lda, lda, mc, K, g0, kg, ap, ld_ap);
      const bool first = g0 == 0;
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kNR) {
        const int64_t cols = min64(kNR, n_end - n0);
        const int8_t* wp = panels + ((n0 / kNR) * k4 + g0) * kNR * 4;
        const int32_t* b = bias ? bias + n0 : nullptr;
        // Only the first row tile reads this W sub-panel from memory (the others find it in L1). Row tiles 1 to
        // kPrefetchTiles each fetch a share of the next sub-panel meanwhile: the next panel's, or the first
        // panel's of the next K block. 128 x 4096 x 4096 (W from L3): 855 -> 936 GOPS; the whole next
        // sub-panel from one tile gained half that.
        const int8_t* next = nullptr;
        int64_t next_kg = 0;
        if (n0 + kNR < n_end) {
          next = wp + k4 * kNR * 4;
          next_kg = kg;
        } else if (g0 + kc < k4) {
          next = panels + ((n_begin / kNR) * k4 + g0 + kc) * kNR * 4;
          next_kg = min64(kc, k4 - g0 - kc);
        }
        const int64_t pf_share = (next_kg + kPrefetchTiles - 1) / kPrefetchTiles;
        for (int64_t r0 = 0; r0 < mc; r0 += kMR) {
          int32_t* c = C + (m0 + r0) * ldc + n0;
          const int64_t rows = min64(kMR, mc - r0);
          const int64_t share = r0 / kMR - 1;  // this tile's share of the next sub-panel, if any
          const int64_t pf_first = share * pf_share;
          const bool pf_on = next != nullptr && share >= 0 && pf_first < next_kg;
          const int8_t* pf = pf_on ? next + pf_first * kNR * 4 : nullptr;
          const int64_t pfn = pf_on ? min64(pf_share, next_kg - pf_first) : 0;
          // The caller's int8 rows in place are flipped on the fly; the packed block is flipped already.
          if (direct) {
            tile<kSigned>(rows, A + (m0 + r0) * lda + g0 * 4, lda, wp, kg, c, ldc, b, first, cols, pf, pfn);
          } else {
            tile<false>(rows, ap + r0 * ld_ap, ld_ap, wp, kg, c, ldc, b, first, cols, pf, pfn);
          }
        }
      }
    }
  }
}

// Rows of the next row tile of at most `tile` rows when `left` rows remain in a run: whole tiles, but a
// remainder of 1 to tile - 1 rows after the last whole tile is shared with it as two near-equal tiles (7 -> 4 + 3
// for 6-row tiles), so that no tile is left with one or two rows, whose W loads per group feed only a few
// vpdpbusd.
inline int64_t tile_rows(int64_t left, int64_t tile) {
  if (left > tile && left < 2 * tile) return (left + 1) / 2;
  return min64(tile, left);
}

// Implicit-GEMM convolution (kernels.h conv_implicit_s32): the direct-read GEMM above with A row m gathered
// from `segments` runs of seg_len bytes. Rows are pixel_stride bytes apart inside a run of `run` rows (one
// output row of the convolution) and consecutive rows overlap, so six rows of a tile share cache lines (no L1
// set aliasing, unlike long GEMM rows) and no copy is needed. Row tiles stay inside a run, so the padding
// columns between output rows cost nothing (computing them as rows of one long run cost 2 / (OW + 2) of the
// work: 3 % at 56 columns, 22 % at 7). K blocks follow the GEMM's rule (at most kKCgMax groups of W per N panel,
// so the sub-panel stays in L1): whole segments when one fits, else equal chunks of one segment. Row blocks
// are whole runs of up to kMC rows where a run fits.
template <bool kSigned>
void conv_implicit(const uint8_t* X, int64_t pixel_stride, int64_t segment_stride, int64_t segments,
                   int64_t seg_len, int64_t run, int64_t run_stride, const void* packed, int64_t M, int64_t N,
                   int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  const int64_t np = round_up(N, kNR), k4 = segments * seg_len / 4, seg_g = seg_len / 4;
  const int32_t* bias = kSigned ? static_cast<const int32_t*>(packed) : nullptr;
  const int8_t* panels = static_cast<const int8_t*>(packed) + np * 4;
  // A block: (first segment, segment count, first group inside the segment, groups per segment).
  const int64_t per_block = seg_g <= kKCgMax ? (kKCgMax / seg_g > 0 ? kKCgMax / seg_g : 1) : 1;
  const int64_t chunks = seg_g <= kKCgMax ? 1 : (seg_g + kKCg - 1) / kKCg;
  const int64_t chunk_g = (seg_g + chunks - 1) / chunks;
  const int64_t mc_max = run < kMC ? kMC / run * run : kMC;
  for (int64_t m0 = 0; m0 < M; m0 += mc_max) {
    const int64_t m1 = min64(M, m0 + mc_max);
    bool first = true;
    for (int64_t s0 = 0; s0 < segments; s0 += per_block) {
      const int64_t ns = min64(per_block, segments - s0);
      for (int64_t c0 = 0; c0 < seg_g; c0 += chunk_g) {
        const int64_t cg = chunks == 1 ? seg_g : min64(chunk_g, seg_g - c0);
        const int64_t kg = ns * cg;
        for (int64_t n0 = n_begin; n0 < n_end; n0 += kNR) {
          const int64_t cols = min64(kNR, n_end - n0);
          const int8_t* wp = panels + ((n0 / kNR) * k4 + s0 * seg_g + c0) * kNR * 4;
          const int32_t* b = bias ? bias + n0 : nullptr;
          for (int64_t m = m0; m < m1;) {
            const int64_t j = m / run, i = m % run;
            const int64_t rows = tile_rows(min64(run - i, m1 - m), kMR);
            int32_t* c = C + m * ldc + n0;
            const uint8_t* at = X + j * run_stride + i * pixel_stride + s0 * segment_stride + c0 * 4;
            tile<kSigned>(rows, at, pixel_stride, wp, kg, c, ldc, b, first, cols, nullptr, 0, ns, segment_stride);
            m += rows;
          }
        }
        first = false;
      }
    }
  }
}

void conv_implicit_s32(const void* X, bool x_signed, int64_t pixel_stride, int64_t segment_stride, int64_t segments,
                       int64_t seg_len, int64_t run, int64_t run_stride, const void* packed, int64_t M, int64_t N,
                       int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  if (M <= 0 || segments <= 0 || seg_len <= 0 || n_end <= n_begin) return;
  if (run <= 0 || run > M) run = M;
  const auto* x = static_cast<const uint8_t*>(X);
  if (x_signed) {
    conv_implicit<true>(x, pixel_stride, segment_stride, segments, seg_len, run, run_stride, packed, M, N, n_begin,
                        n_end, C, ldc);
  } else {
    conv_implicit<false>(x, pixel_stride, segment_stride, segments, seg_len, run, run_stride, packed, M, N, n_begin,
                         n_end, C, ldc);
  }
}

// ---- Grouped convolution with small groups (kernels.h conv_grouped_s32) ----
// A group of 2 to 32 output channels fills only a thirty-second to a half of a 64-column tile (ResNeXt's 32
// groups of 4 or 8 channels: im2col + one GEMM per group ran at 4 % of the VNNI peak). Here one vector holds S
// = 16 / cout_g groups (a bundle): lane l = o * S + h is output channel o of group u * S + h of bundle u (a
// group of 16 or 32 outputs is a bundle of its own, in one or two vectors). One k step is a quad of input
// channels (q) of one tap; the band is first reordered in place so that the S groups' quads q of a pixel are S
// adjacent dwords (bundle bytes (q * S + h) * 4), so one broadcast of S dwords (a plain load: vpbroadcastd / q,
// vbroadcasti32x4 / 64x4) feeds a whole vector. W for a bundle is one 64-byte vector per step: the group's
// packed panel read in place for S = 1, else gathered once per call from the S groups' panels. Up to kGrpRows
// pixels of one output row per tile (one accumulator each, two for 32 outputs); for S > 1 a permute puts each
// row's 16 sums back in channel order for the epilogue.
constexpr int64_t kGrpRows = 12;
constexpr int64_t kGrpMaxSteps = 512;  // taps * cin_g / 4 per group (a 32 KiB W block on the stack)

bool conv_grouped_fits(int64_t groups, int64_t cin_g, int64_t cout_g, int64_t taps) {
  if (groups < 2 || cin_g < 4 || cin_g % 4 != 0 || taps < 1) return false;
  if (cout_g != 2 && cout_g != 4 && cout_g != 8 && cout_g != 16 && cout_g != 32) return false;
  const int64_t S = cout_g >= 16 ? 1 : 16 / cout_g, Q = cin_g / 4, d = S * Q;
  // Whole bundles; where the band is reordered (S > 1 and Q > 1), bundles that tile a 64-byte block (the
  // reorder permutes 64 bytes at a time).
  if (groups % S != 0 || taps * Q > kGrpMaxSteps) return false;
  return S == 1 || Q == 1 || (d <= 16 && (d & (d - 1)) == 0);
}

// Reorders a band of whole bundles in place, (h, q) -> (q, h) dwords within each bundle of S * Q dwords, and
// flips int8 to uint8 (^ 0x80; the bias then removes 128 * sum(W)).
void grouped_prepare(uint8_t* x, int64_t bytes, int64_t S, int64_t Q, bool flip) {
  const bool reorder = S > 1 && Q > 1;
  if (!reorder && !flip) return;
  const int64_t d = S * Q;
  alignas(64) int32_t idx[16];
  for (int64_t l = 0; l < 16; ++l) {
    const int64_t e = l % d, q = e / S, h = e % S;
    idx[l] = static_cast<int32_t>(l - e + h * Q + q);
  }
  const __m512i vi = _mm512_load_si512(idx);
  const __m512i f = _mm512_set1_epi8(flip ? static_cast<char>(0x80) : 0);
  int64_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    __m512i v = _mm512_loadu_si512(x + i);
    if (reorder) v = _mm512_maskz_permutexvar_epi32(0xffff, vi, v);
    _mm512_storeu_si512(x + i, _mm512_xor_si512(v, f));
  }
  if (i < bytes) {  // whole bundles: a multiple of 4 * d bytes, so the permutation stays inside the tail
    const auto m = static_cast<__mmask16>((1u << ((bytes - i) / 4)) - 1u);
    __m512i v = _mm512_maskz_loadu_epi32(m, x + i);
    if (reorder) v = _mm512_maskz_permutexvar_epi32(0xffff, vi, v);
    _mm512_mask_storeu_epi32(x + i, m, _mm512_xor_si512(v, f));
  }
}

template <int S>
inline __m512i broadcast_bundle(const uint8_t* p) {
  if constexpr (S == 1) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  } else if constexpr (S == 2) {
    long long v;
    std::memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
  } else if constexpr (S == 4) {
    return _mm512_maskz_broadcast_i32x4(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    return _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

#define PYSLIM_GRP_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
// R pixels (rows a + r * pstride) x one bundle of 16 V columns over `steps` k steps (step t reads a + aoff[t] +
// r * pstride, and W at wv + t * wstride: V vectors of 16). V = 2 (a group of 32 outputs) only with S = 1.
template <int R, int S, int V>
__attribute__((noinline)) void grouped_tile(const uint8_t* a, int64_t pstride, const int64_t* aoff,
                                            const int32_t* wv, int64_t wstride, int64_t steps, const int32_t* init,
                                            const int32_t* perm, int32_t* c, int64_t ldc) {
  static_assert(R >= 1 && R <= kGrpRows && (V == 1 || (V == 2 && S == 1)), "tile shape");
  const __m512i b0 = _mm512_load_si512(init);
  const __m512i b1 = V == 2 ? _mm512_load_si512(init + 16) : b0;
#define PYSLIM_DECL(r) __m512i c##r = b0, d##r = b1;
  PYSLIM_GRP_ROWS(PYSLIM_DECL)
#undef PYSLIM_DECL
  for (int64_t t = 0; t < steps; ++t) {
    const __m512i w0 = _mm512_load_si512(wv + t * wstride);
    const __m512i w1 = V == 2 ? _mm512_load_si512(wv + t * wstride + 16) : w0;
    const uint8_t* at = a + aoff[t];
#define PYSLIM_STEP(r)                                        \
  if constexpr (R > r) {                                      \
    const __m512i av = broadcast_bundle<S>(at + r * pstride); \
    c##r = dpbusd(c##r, av, w0);                              \
    if constexpr (V == 2) d##r = dpbusd(d##r, av, w1);        \
  }
    PYSLIM_GRP_ROWS(PYSLIM_STEP)
#undef PYSLIM_STEP
  }
  const __m512i p = _mm512_load_si512(perm);
  (void)p;
#define PYSLIM_STORE(r)                                                                         \
  if constexpr (R > r) {                                                                        \
    if constexpr (S == 1) {                                                                     \
      _mm512_storeu_si512(c + r * ldc, c##r);                                                   \
      if constexpr (V == 2) _mm512_storeu_si512(c + r * ldc + 16, d##r);                        \
    } else {                                                                                    \
      _mm512_storeu_si512(c + r * ldc, _mm512_maskz_permutexvar_epi32(0xffff, p, c##r));        \
    }                                                                                           \
  }
  PYSLIM_GRP_ROWS(PYSLIM_STORE)
#undef PYSLIM_STORE
  (void)c0;
  (void)d0;
}
#undef PYSLIM_GRP_ROWS

template <int S, int V>
void grouped_rows(const GroupedConvBand& b, const uint8_t* xb, const int64_t* aoff, const int32_t* wv,
                  int64_t wstride, int64_t steps, const int32_t* init, const int32_t* perm, int64_t u) {
  const int64_t prow = b.padded_w * b.channels, pstride = b.stride_w * b.channels;
  for (int64_t j = b.row_begin; j < b.row_end; ++j) {
    for (int64_t i = 0; i < b.out_w;) {
      const int64_t R = tile_rows(b.out_w - i, kGrpRows);
      const uint8_t* a = xb + j * b.stride_h * prow + i * pstride;
      int32_t* c = b.acc + ((j - b.row_begin) * b.out_w + i) * b.ldacc + u * 16 * V;
      switch (R) {
#define PYSLIM_CASE(n) \
  case n: grouped_tile<n, S, V>(a, pstride, aoff, wv, wstride, steps, init, perm, c, b.ldacc); break;
        PYSLIM_CASE(1) PYSLIM_CASE(2) PYSLIM_CASE(3) PYSLIM_CASE(4) PYSLIM_CASE(5) PYSLIM_CASE(6)
        PYSLIM_CASE(7) PYSLIM_CASE(8) PYSLIM_CASE(9) PYSLIM_CASE(10) PYSLIM_CASE(11)
        default: grouped_tile<12, S, V>(a, pstride, aoff, wv, wstride, steps, init, perm, c, b.ldacc); break;
#undef PYSLIM_CASE
      }
      i += R;
    }
  }
}

void conv_grouped_s32(const GroupedConvBand& b) {
  if (b.row_end <= b.row_begin || b.out_w <= 0) return;
  const int64_t S = b.cout_g >= 16 ? 1 : 16 / b.cout_g, V = b.cout_g >= 16 ? b.cout_g / 16 : 1;
  const int64_t Q = b.cin_g / 4, steps = b.kernel_h * b.kernel_w * Q;
  const int64_t bundles = b.groups / S, prow = b.padded_w * b.channels;
  if (b.prepare) grouped_prepare(b.x, b.padded_rows * prow, S, Q, b.x_signed);
  alignas(64) int32_t wv[kGrpMaxSteps * 16];
  alignas(64) int32_t init[32], perm[16], gidx[16];
  int64_t aoff[kGrpMaxSteps];  // step t = (kh, kw, q) of bundle 0; bundle u adds u * S * Q * 4 bytes
  for (int64_t kh = 0, t = 0; kh < b.kernel_h; ++kh)
    for (int64_t kw = 0; kw < b.kernel_w; ++kw)
      for (int64_t q = 0; q < Q; ++q) aoff[t++] = kh * b.dilation_h * prow + kw * b.dilation_w * b.channels + q * S * 4;
  for (int64_t p = 0; p < 16; ++p) perm[p] = static_cast<int32_t>((p % b.cout_g) * S + p / b.cout_g);
  // A group's packed block (gemm_pack, N = cout_g <= 64): int32 bias[64], then step t's 64 columns of 4 bytes
  // (so with one group a vector, the 16 columns of a step are read in place, 256 bytes apart).
  for (int64_t l = 0; l < 16; ++l) gidx[l] = static_cast<int32_t>(((l % S) * b.group_stride) / 4 + kNR + l / S);
  const __m512i gi = _mm512_load_si512(gidx);
  for (int64_t u = 0; u < bundles; ++u) {
    const auto* g0 = static_cast<const uint8_t*>(b.packed) + u * S * b.group_stride;
    const int32_t* w = wv;
    int64_t wstride = 16;
    if (S == 1) {
      w = reinterpret_cast<const int32_t*>(g0) + kNR;
      wstride = kNR;
      _mm512_store_si512(init, b.x_signed ? _mm512_loadu_si512(g0) : _mm512_setzero_si512());
      _mm512_store_si512(init + 16, b.x_signed ? _mm512_loadu_si512(g0 + 64) : _mm512_setzero_si512());
    } else {
      for (int64_t t = 0; t < steps; ++t) {
        const __m512i idx = _mm512_add_epi32(gi, _mm512_set1_epi32(static_cast<int>(t * kNR)));
        _mm512_store_si512(wv + t * 16, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), 0xffff, idx, g0, 4));
      }
      const __m512i bias = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), 0xffff,
                                                       _mm512_sub_epi32(gi, _mm512_set1_epi32(static_cast<int>(kNR))),
                                                       g0, 4);
      _mm512_store_si512(init, b.x_signed ? bias : _mm512_setzero_si512());
    }
    const uint8_t* xb = b.x + u * S * Q * 4;
    switch (S * V) {
      case 1: grouped_rows<1, 1>(b, xb, aoff, w, wstride, steps, init, perm, u); break;
      case 2: (V == 2 ? grouped_rows<1, 2> : grouped_rows<2, 1>)(b, xb, aoff, w, wstride, steps, init, perm, u); break;
      case 4: grouped_rows<4, 1>(b, xb, aoff, w, wstride, steps, init, perm, u); break;
      default: grouped_rows<8, 1>(b, xb, aoff, w, wstride, steps, init, perm, u); break;
    }
  }
}

void gemm_s32(const void* A, bool a_signed, int64_t lda, const void* packed, int64_t M, int64_t N, int64_t K,
              int64_t n_begin, int64_t n_end, int32_t* C, int64_t ldc) {
  if (M <= 0 || K <= 0 || n_end <= n_begin) return;
  if (a_signed) {
    gemm<true>(static_cast<const uint8_t*>(A), lda, packed, M, N, K, n_begin, n_end, C, ldc);
  } else {
    gemm<false>(static_cast<const uint8_t*>(A), lda, packed, M, N, K, n_begin, n_end, C, ldc);
  }
}

// ---- depthwise ----

template <bool kSigned>
inline __m512i load16(const void* p, __mmask16 m) {
  // The maskz forms of the widening moves: GCC 12's plain forms start from _mm512_undefined_epi32 and
  // trigger a spurious -Wuninitialized; the zero-masked lanes are unused anyway.
  const __m128i b = _mm_maskz_loadu_epi8(m, p);
  return kSigned ? _mm512_maskz_cvtepi8_epi32(m, b) : _mm512_maskz_cvtepu8_epi32(m, b);
}
inline __m512i load16w(const int8_t* p, __mmask16 m) {
  return _mm512_maskz_cvtepi8_epi32(m, _mm_maskz_loadu_epi8(m, p));
}

// V vectors of 16 channels starting at channel c of one output pixel; the last vector uses `tail`.
template <bool kSigned, int V>
inline void dw_pixel(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* o, const DepthwiseShape& s,
                     int64_t b, int64_t oh, int64_t ow, int64_t c, __mmask16 tail) {
  const int64_t C = s.channels;
  __m512i acc[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_si512();
  const __m512i pad = _mm512_set1_epi32(pad_value);
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
    const bool row_in = ih >= 0 && ih < s.height;
    for (int64_t j = 0; j < s.kernel_w; ++j) {
      const int64_t iw = ow * s.stride_w - s.pad_w + j * s.dilation_w;
      const int8_t* wk = w + (i * s.kernel_w + j) * C + c;
      if (row_in && iw >= 0 && iw < s.width) {
        const uint8_t* xp = x + ((b * s.height + ih) * s.width + iw) * C + c;
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          const __mmask16 m = v == V - 1 ? tail : static_cast<__mmask16>(0xffff);
          acc[v] = _mm512_add_epi32(acc[v], _mm512_mullo_epi32(load16<kSigned>(xp + 16 * v, m),
                                                               load16w(wk + 16 * v, m)));
        }
      } else {
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          const __mmask16 m = v == V - 1 ? tail : static_cast<__mmask16>(0xffff);
          acc[v] = _mm512_add_epi32(acc[v], _mm512_mullo_epi32(pad, load16w(wk + 16 * v, m)));
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v)
    _mm512_mask_storeu_epi32(o + c + 16 * v, v == V - 1 ? tail : static_cast<__mmask16>(0xffff), acc[v]);
}

template <bool kSigned>
void depthwise_rows(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out, const DepthwiseShape& s,
                    int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels;
  const __mmask16 full = static_cast<__mmask16>(0xffff);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      int32_t* o = out + ((b * s.out_h + oh) * s.out_w + ow) * C;
      int64_t c = 0;
      for (; c + 64 <= C; c += 64) dw_pixel<kSigned, 4>(x, pad_value, w, o, s, b, oh, ow, c, full);
      for (; c < C; c += 16) {
        const int64_t left = C - c;
        const __mmask16 m = left >= 16 ? full : static_cast<__mmask16>((1u << left) - 1);
        dw_pixel<kSigned, 1>(x, pad_value, w, o, s, b, oh, ow, c, m);
      }
    }
  }
}

// Fast path (pad_value a byte of x's type): vpdpbusd on QUADS of horizontally adjacent taps (4jq .. 4jq + 3)
// of one kernel row. Each needed input row is expanded once into a "quad row" Q of 32-bit words holding the
// four bytes (x[iw][c], x[iw + dw][c], x[iw + 2dw][c], x[iw + 3dw][c]) for every position iw of the padded
// row (pad_value outside the input), so the inner loop is one vpdpbusd per 16 channels per four taps,
// straight from memory, with no bounds checks and no conversions: half the dot instructions of int16 pairs
// (vpdpwssd), for the same bytes of quad row. Taps past KW get a zero weight.
// * vpdpbusd multiplies unsigned bytes by signed ones: int8 x is flipped to uint8 (x ^ 0x80 = x + 128, pad
//   too) and the excess 128 * sum_taps w[c] is removed by starting the accumulators at -128 * sum_taps w[c].
//   |sum of four u8 * s8 products| <= 4 * 255 * 128: every product and quad sum is exact, and the int32 sum
//   wraps like the reference's.
// * Quad rows are cached (KH slots tagged by input row) across the output rows of one call, and stored
//   channel block by channel block ([cb][position][32 words]), so that the positions one block of output
//   pixels reads are contiguous and the KH rows of one 32-channel block stay in L1 while the output row is
//   swept.
// * Channels go in blocks of 32 (tail masked). vpunpck{l,h}bw then vpunpck{l,h}wd of the four 256-bit rows
//   scramble them within 128-bit lanes: the 32 words come out as channels 0-3, 16-19, 4-7, 20-23 | 8-11,
//   24-27, 12-15, 28-31. The weights are scrambled the same way and the accumulators are put back in order
//   with one vpermt2q per 16 channels at the store.
constexpr int kDwPix = 6;  // output pixels per register block (12 accumulators)

inline __mmask32 dw_mask32(int64_t left) {
  return left >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << left) - 1u);
}

// The 32 quad words from the byte pairs of taps 0-1 (lo01 / hi01: vpunpck{l,h}bw of the two rows) and of taps
// 2-3 (lo23 / hi23), scrambled as described above, stored at d.
inline void store_pair_quads(__m256i lo01, __m256i hi01, __m256i lo23, __m256i hi23, uint32_t* d) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_unpacklo_epi16(lo01, lo23));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 8), _mm256_unpackhi_epi16(lo01, lo23));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16), _mm256_unpacklo_epi16(hi01, hi23));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 24), _mm256_unpackhi_epi16(hi01, hi23));
}

// The 32 quad words of four 32-byte rows (taps t = 0..3), stored at d.
inline void store_quads(__m256i a0, __m256i a1, __m256i a2, __m256i a3, uint32_t* d) {
  store_pair_quads(_mm256_unpacklo_epi8(a0, a1), _mm256_unpackhi_epi8(a0, a1), _mm256_unpacklo_epi8(a2, a3),
                   _mm256_unpackhi_epi8(a2, a3), d);
}

template <int NB>
inline void dw_quads_block(const uint32_t* const* qrow, const uint32_t* wt, const int32_t* bias, int32_t* o,
                           const DepthwiseShape& s, int64_t ow, int64_t cb, int64_t nCB, int64_t nquads, int64_t Wq,
                           int64_t st, __mmask16 m0, __mmask16 m1) {
  __m512i acc[NB][2];
  const __m512i b0 = _mm512_loadu_si512(bias + cb * 32), b1 = _mm512_loadu_si512(bias + cb * 32 + 16);
#pragma GCC unroll 8
  for (int n = 0; n < NB; ++n) {
    acc[n][0] = b0;
    acc[n][1] = b1;
  }
  const int64_t pix = s.stride_w / st * 32, tap4 = 4 * s.dilation_w / st * 32;
  for (int64_t i = 0; i < s.kernel_h; ++i) {
    const uint32_t* q = qrow[i] + (cb * Wq + ow * s.stride_w / st) * 32;
    const uint32_t* wk = wt + ((i * nquads) * nCB + cb) * 32;
    for (int64_t jq = 0; jq < nquads; ++jq, q += tap4, wk += nCB * 32) {
      const __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 16);
#pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) {
        acc[n][0] = dpbusd(acc[n][0], _mm512_loadu_si512(q + n * pix), w0);
        acc[n][1] = dpbusd(acc[n][1], _mm512_loadu_si512(q + n * pix + 16), w1);
      }
    }
  }
  // Scrambled words (in 64-bit pairs): acc0 = [0-3 16-19 4-7 20-23], acc1 = [8-11 24-27 12-15 28-31].
  const __m512i i0 = _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13), i1 = _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15);
  const int64_t C = s.channels;
#pragma GCC unroll 8
  for (int n = 0; n < NB; ++n) {
    int32_t* on = o + (ow + n) * C + cb * 32;
    _mm512_mask_storeu_epi32(on, m0, _mm512_permutex2var_epi64(acc[n][0], i0, acc[n][1]));
    _mm512_mask_storeu_epi32(on + 16, m1, _mm512_permutex2var_epi64(acc[n][0], i1, acc[n][1]));
  }
}

constexpr int64_t kDwMaxKh = 16;  // taller kernels take the generic path

// Per-thread scratch, grown on demand, 64-byte aligned so that no zmm load of a quad row splits a cache line
// (plain C allocation: no std templates in this file, see the top).
struct DwScratch {
  uint32_t* buf = nullptr;
  size_t size = 0;
  uint32_t* get(size_t n) {
    if (n > size) {
      std::free(buf);
      const size_t bytes = (n * sizeof(uint32_t) + 63) / 64 * 64;
      buf = static_cast<uint32_t*>(std::aligned_alloc(64, bytes));
      size = buf != nullptr ? n : 0;
    }
    return buf;
  }
  ~DwScratch() { std::free(buf); }
};

// Returns false (having written nothing) when its scratch cannot be allocated.
template <bool kSigned>
bool depthwise_rows_quads(const uint8_t* x, int32_t pad_value, const int8_t* w, int32_t* out,
                          const DepthwiseShape& s, int64_t row_begin, int64_t row_end) {
  const int64_t C = s.channels, KH = s.kernel_h, KW = s.kernel_w;
  const int64_t nCB = (C + 31) / 32, nquads = (KW + 3) / 4;
  // Quad-row positions: iw = p - pad_w for p in [0, Wp), the first tap of every quad of every output pixel.
  // When all the p the kernel reads are multiples of the stride (p = ow * sw + 4 * jq * dw: stride 2 with any
  // dilation), only those are built and stored, position p at index p / st: half the row build at stride 2.
  const int64_t Wp = (s.out_w - 1) * s.stride_w + 4 * (nquads - 1) * s.dilation_w + 1;
  const int64_t st = s.stride_w > 1 && (4 * s.dilation_w) % s.stride_w == 0 ? s.stride_w : 1;
  const int64_t Wq = (Wp - 1) / st + 1;
  const int64_t row_words = Wq * nCB * 32, wt_words = KH * nquads * nCB * 32, bias_words = nCB * 32;
  static thread_local DwScratch scratch;
  uint32_t* wt = scratch.get(static_cast<size_t>(wt_words + bias_words + KH * row_words));
  if (wt == nullptr) return false;
  auto* bias = reinterpret_cast<int32_t*>(wt + wt_words);  // scrambled like the quads
  uint32_t* rows = wt + wt_words + bias_words;
  // Weights as quads (w[i][4jq + t][c], t = 0..3; 0 past KW), and the bias -128 * sum_taps w[c] (0 for uint8).
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t cb = 0; cb < nCB; ++cb) {
    const __mmask32 m = dw_mask32(C - cb * 32);
    __m512i sum0 = _mm512_setzero_si512(), sum1 = _mm512_setzero_si512();
    for (int64_t i = 0; i < KH; ++i) {
      for (int64_t jq = 0; jq < nquads; ++jq) {
        __m256i t[4];
        for (int64_t u = 0; u < 4; ++u) {
          const int64_t j = 4 * jq + u;
          t[u] = j < KW ? _mm256_maskz_loadu_epi8(m, w + (i * KW + j) * C + cb * 32) : zero;
        }
        uint32_t* d = wt + ((i * nquads + jq) * nCB + cb) * 32;
        store_quads(t[0], t[1], t[2], t[3], d);
        // Sum of each word's four signed bytes: vpdpbusd of 0x01 bytes by the quad.
        const __m512i ones = _mm512_set1_epi8(1);
        sum0 = dpbusd(sum0, ones, _mm512_loadu_si512(d));
        sum1 = dpbusd(sum1, ones, _mm512_loadu_si512(d + 16));
      }
    }
    const __m512i k128 = _mm512_set1_epi32(kSigned ? -128 : 0);
    _mm512_storeu_si512(bias + cb * 32, _mm512_mullo_epi32(sum0, k128));
    _mm512_storeu_si512(bias + cb * 32 + 16, _mm512_mullo_epi32(sum1, k128));
  }
  const uint8_t flip = kSigned ? 0x80 : 0x00;
  const __m256i flipv = _mm256_set1_epi8(static_cast<char>(flip));
  const __m256i padv = _mm256_set1_epi8(static_cast<char>(static_cast<uint8_t>(pad_value) ^ flip));
  const int64_t kNoRow = -1, kPadRow = -2;
  int64_t tag[kDwMaxKh], want[kDwMaxKh];
  const uint32_t* qrow[kDwMaxKh];
  for (int64_t k = 0; k < KH; ++k) tag[k] = kNoRow;
  auto build = [&](uint32_t* dst, int64_t b, int64_t ih) {
    const bool row_in = ih >= 0 && ih < s.height;
    const uint8_t* xr = row_in ? x + (b * s.height + ih) * s.width * C : nullptr;
    for (int64_t cb = 0; cb < nCB; ++cb) {
      const __mmask32 m = dw_mask32(C - cb * 32);
      // 32 channels of input position iw (flipped), or the pad row outside the input.
      auto load = [&](int64_t iw) {
        return row_in && iw >= 0 && iw < s.width
                   ? _mm256_xor_si256(_mm256_maskz_loadu_epi8(m, xr + iw * C + cb * 32), flipv)
                   : padv;
      };
      uint32_t* d = dst + cb * Wq * 32;
      if (s.dilation_w != 1 || st > 2) {
        for (int64_t p = 0; p < Wq * st; p += st, d += 32) {
          const int64_t iw = p - s.pad_w, dw = s.dilation_w;
          store_quads(load(iw), load(iw + dw), load(iw + 2 * dw), load(iw + 3 * dw), d);
        }
        continue;
      }
      if (st == 2) {
        // Dilation 1, even positions only: the byte pairs (x[iw + 2], x[iw + 3]) of one quad are the pairs
        // (x[iw], x[iw + 1]) of the next.
        __m256i a0 = load(-s.pad_w), a1 = load(1 - s.pad_w);
        __m256i lo0 = _mm256_unpacklo_epi8(a0, a1), hi0 = _mm256_unpackhi_epi8(a0, a1);
        for (int64_t p = 0; p < Wq * 2; p += 2, d += 32) {
          const __m256i a2 = load(p + 2 - s.pad_w), a3 = load(p + 3 - s.pad_w);
          const __m256i lo2 = _mm256_unpacklo_epi8(a2, a3), hi2 = _mm256_unpackhi_epi8(a2, a3);
          store_pair_quads(lo0, hi0, lo2, hi2, d);
          lo0 = lo2;
          hi0 = hi2;
        }
        continue;
      }
      // Dilation 1: a sliding window, one new input position per quad position. The byte pairs
      // (x[iw], x[iw + 1]) of position p are those of taps 2-3 two positions earlier, so each pair interleave
      // is computed once.
      __m256i x2 = load(2 - s.pad_w);
      __m256i x0 = load(-s.pad_w), x1 = load(1 - s.pad_w);
      __m256i lo0 = _mm256_unpacklo_epi8(x0, x1), hi0 = _mm256_unpackhi_epi8(x0, x1);
      __m256i lo1 = _mm256_unpacklo_epi8(x1, x2), hi1 = _mm256_unpackhi_epi8(x1, x2);
      for (int64_t p = 0; p < Wq; ++p, d += 32) {
        const __m256i x3 = load(p + 3 - s.pad_w);
        const __m256i lo2 = _mm256_unpacklo_epi8(x2, x3), hi2 = _mm256_unpackhi_epi8(x2, x3);
        store_pair_quads(lo0, hi0, lo2, hi2, d);
        lo0 = lo1;
        hi0 = hi1;
        lo1 = lo2;
        hi1 = hi2;
        x2 = x3;
      }
    }
  };
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.out_h, oh = row % s.out_h;
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
      want[i] = ih >= 0 && ih < s.height ? b * s.height + ih : kPadRow;
    }
    // Reuse cached rows; build the missing ones into slots no current kernel row needs.
    for (int64_t i = 0; i < KH; ++i) {
      qrow[i] = nullptr;
      for (int64_t k = 0; k < KH; ++k)
        if (tag[k] == want[i]) qrow[i] = rows + k * row_words;
    }
    for (int64_t i = 0; i < KH; ++i) {
      if (qrow[i] != nullptr) continue;
      int64_t slot = 0;
      for (; slot < KH; ++slot) {
        bool used = false;
        for (int64_t k = 0; k < KH; ++k) used = used || (qrow[k] == rows + slot * row_words);
        if (!used) break;
      }
      const int64_t ih = oh * s.stride_h - s.pad_h + i * s.dilation_h;
      build(rows + slot * row_words, b, ih);
      tag[slot] = want[i];
      for (int64_t k = i; k < KH; ++k)
        if (want[k] == want[i]) qrow[k] = rows + slot * row_words;
    }
    int32_t* o = out + (b * s.out_h + oh) * s.out_w * C;
    for (int64_t cb = 0; cb < nCB; ++cb) {
      const int64_t left = C - cb * 32;
      const __mmask16 m0 = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
      const __mmask16 m1 = left >= 32   ? static_cast<__mmask16>(0xffff)
                           : left > 16 ? static_cast<__mmask16>((1u << (left - 16)) - 1u)
                                       : static_cast<__mmask16>(0);
      int64_t ow = 0;
      for (; ow + kDwPix <= s.out_w; ow += kDwPix)
        dw_quads_block<kDwPix>(qrow, wt, bias, o, s, ow, cb, nCB, nquads, Wq, st, m0, m1);
      for (; ow < s.out_w; ++ow) dw_quads_block<1>(qrow, wt, bias, o, s, ow, cb, nCB, nquads, Wq, st, m0, m1);
    }
  }
  return true;
}

void depthwise_conv_s32(const void* x, bool x_signed, int32_t pad_value, const int8_t* w, int32_t* out,
                        const DepthwiseShape& shape, int64_t row_begin, int64_t row_end) {
  if (row_end <= row_begin || shape.out_w <= 0 || shape.channels <= 0) return;
  const bool pad_is_byte = x_signed ? pad_value >= -128 && pad_value <= 127 : pad_value >= 0 && pad_value <= 255;
  if (pad_is_byte && shape.kernel_h >= 1 && shape.kernel_h <= kDwMaxKh && shape.kernel_w >= 1) {
    const bool done = x_signed ? depthwise_rows_quads<true>(static_cast<const uint8_t*>(x), pad_value, w, out, shape,
                                                            row_begin, row_end)
                               : depthwise_rows_quads<false>(static_cast<const uint8_t*>(x), pad_value, w, out,
                                                             shape, row_begin, row_end);
    if (done) return;
  }
  if (x_signed) {
    depthwise_rows<true>(static_cast<const uint8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  } else {
    depthwise_rows<false>(static_cast<const uint8_t*>(x), pad_value, w, out, shape, row_begin, row_end);
  }
}

}  // namespace
}  // namespace vnni

// Called by the dispatcher only on a CPU with AVX512_VNNI (the whole file is compiled with its flags).
void fill_avx512vnni_gemm(KernelTable* t) {
  t->gemm_epilogue = gemm_epilogue_impl;
  t->gemm_n_step = vnni::kNR;
  t->gemm_packed_size = vnni::gemm_packed_size;
  t->gemm_pack = vnni::gemm_pack;
  t->gemm_s32 = vnni::gemm_s32;
  t->conv_implicit_s32 = vnni::conv_implicit_s32;
  t->conv_grouped_fits = vnni::conv_grouped_fits;
  t->conv_grouped_s32 = vnni::conv_grouped_s32;
  t->depthwise_conv_s32 = vnni::depthwise_conv_s32;
}

}  // namespace pyslim
