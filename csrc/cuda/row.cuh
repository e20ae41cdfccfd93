// The passes of docs/design.md §4 over one row of logits: the device functions shared by the
// CUDA kernels of mixture.cu, sample.cu and verify.cu (their host side: launch.cuh).
//
// Rows are those of the flattened [N, V] logits (verify: n = b·(γ+1) + i).  Each
// row is cut into S slices.  A large batch takes S = 1: one block per row runs
// every pass in a single launch (the `*_fused` kernels).  A small batch cannot
// fill the GPU that way, so every slice gets its own block and each pass is one
// launch over all (row, slice) blocks (row.cu for the statistics passes).  A pass
// leaves one small partial per slice; the last block of a row to finish it (a
// ticket counter: no block ever waits for another) folds the partials into the
// row's state, which every later pass reads.  Both regimes run the same phase
// functions below — the fused kernels call them in sequence with S = 1 — so no
// [N, V] intermediate reaches global memory and p and q are read in their own
// dtype, 16 bytes per load, a few times per row (the later passes from L2 while
// the rows in flight fit in it):
//
//   stats    max and Σexp of p and q (Σexp² of p; of the ImplicitReward score),
//            and the bad-logits bits                        reads p, q (ref)
//   primal   Primal only, three radix levels of 11 bits over the order-preserving
//            key of p's logits: the threshold without a sort  reads p, 3 times
//   mass     S_d = Σ p d and S_kept = Σ p (1 − d), hence α  reads p (q)
//   op       mixture: π written out (p, q); sample/verify: the arg-max of π (p, q),
//            or an inverse CDF that scans one slice, picked from slice masses the
//            statistics already give (1/S of p and q); verify's residual needs one
//            more pass at the stop position.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kad/philox.h"
#include "kad/row_value.h"
#include "kad/rules.h"

namespace kad::cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunk = 2048;  // slice lengths are multiples of this: one bf16 load per thread
constexpr int kMaxSlices = 128;   // the draw keeps one mass per slice in shared memory

// Radix select of the Primal threshold over logit_key (rules.h), 32 bits: three 11-bit
// digits cover it (the top digit has 10; the shifts run in 64 bits).
constexpr int kDigitBits = 11;
constexpr int kDigits = 1 << kDigitBits;
constexpr int kLevels = 3;
static_assert(kDigitBits * kLevels >= 32, "the digits must cover the 32 bits of a key");
static_assert(kDigits % kThreads == 0, "the walk gives every thread the same number of digits");

// Masses of the radix select in fixed point: an integer histogram sums exactly in any
// order, so every slice split and every radix level sees the very same cumulative
// masses (float histograms could disagree with themselves between levels), and the
// atomics that build it stay deterministic.  2^-56 per unit: Σ p <= 1 fits 2^56 units.
constexpr float kUnitsPerMass = 0x1p56f;

constexpr float kInf = __builtin_huge_valf();
constexpr float kLog2e = 1.4426950408889634f;

// ----------------------------------------------------------------------------- loads

template <typename T>
struct Dtype;
template <>
struct Dtype<float> {
  using Bits = float;
  static __device__ __forceinline__ float to_float(float x) { return x; }
};
template <>
struct Dtype<c10::BFloat16> {
  using Bits = uint16_t;
  static __device__ __forceinline__ float to_float(uint16_t x) { return __uint_as_float(uint32_t{x} << 16); }
};
template <>
struct Dtype<c10::Half> {
  using Bits = uint16_t;
  static __device__ __forceinline__ float to_float(uint16_t x) { return __half2float(__ushort_as_half(x)); }
};

// Elements of one 16-byte load.
template <typename T>
constexpr int kVec = 16 / sizeof(T);
static_assert(kChunk % (kThreads * kVec<c10::BFloat16>) == 0 && kChunk % (kThreads * kVec<float>) == 0,
              "a slice start must keep every thread's loads 16-byte aligned");

// The kVec<T> logits of `row` from `col` (a multiple of kVec<T>) as fp32; entries at or
// past `end` read as −inf, which every pass treats as an absent token (p = q = 0).
template <typename T>
__device__ __forceinline__ void load_vec(const T* row, int64_t col, int64_t end, bool aligned, float (&x)[kVec<T>]) {
  using Bits = typename Dtype<T>::Bits;
  const Bits* bits = reinterpret_cast<const Bits*>(row) + col;
  if (aligned && col + kVec<T> <= end) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(bits));
    Bits v[kVec<T>];
    memcpy(v, &raw, sizeof raw);
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) x[k] = Dtype<T>::to_float(v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) x[k] = col + k < end ? Dtype<T>::to_float(__ldg(bits + k)) : -kInf;
  }
}

template <typename T>
__device__ __forceinline__ float load_one(const T* row, int64_t col) {
  return Dtype<T>::to_float(__ldg(reinterpret_cast<const typename Dtype<T>::Bits*>(row) + col));
}

// f(col) for this thread's 16-byte vectors of [start, end), in increasing column order
// (the arg-max keeps the lowest index of a tie by comparing strictly).
template <typename T, typename F>
__device__ __forceinline__ void for_each_vec(int64_t start, int64_t end, F&& f) {
#pragma unroll 2
  for (int64_t col = start + threadIdx.x * kVec<T>; col < end; col += kThreads * kVec<T>) f(col);
}

// ----------------------------------------------------------------------------- reductions
//
// Fixed trees and fixed fold orders: a reduction gives the same bits on every run, and
// every block that folds the same partials gets the same row state.

template <typename V>
__device__ __forceinline__ V shfl_down(V v, int delta) {
  static_assert(sizeof(V) % 4 == 0 && std::is_trivially_copyable<V>::value, "shuffled as 32-bit words");
  int words[sizeof(V) / 4];
  memcpy(words, &v, sizeof(V));
#pragma unroll
  for (int w = 0; w < static_cast<int>(sizeof(V) / 4); ++w) words[w] = __shfl_down_sync(0xffffffffu, words[w], delta);
  memcpy(&v, words, sizeof(V));
  return v;
}

// The fold of a warp's values; valid in lane 0.  The whole warp calls it.
template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v = op(v, shfl_down(v, delta));
  return v;
}

// The fold of the block's values, in every thread.  The whole block calls it.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op) {
  __shared__ V partial[kWarps];
  v = warp_reduce(v, op);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  V total = partial[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = op(total, partial[w]);
  __syncthreads();  // `partial` is free for the next call
  return total;
}

// Σ of the values of the threads before this one; `total` gets the block's Σ.
template <typename V>
__device__ V block_exclusive_scan(V v, V& total) {
  __shared__ V warp_total[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  V inclusive = v;
#pragma unroll
  for (int delta = 1; delta < 32; delta <<= 1) {
    const V other = __shfl_up_sync(0xffffffffu, inclusive, delta);
    if (lane >= delta) inclusive += other;
  }
  V exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
  if (lane == 0) exclusive = V(0);
  if (lane == 31) warp_total[warp] = inclusive;
  __syncthreads();
  V before = V(0);
  total = V(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_total[w];
    total += warp_total[w];
  }
  __syncthreads();
  return before + exclusive;
}

// The fold of load(j) over the slices j < count by one warp (lane j takes j, j + 32, ...,
// then a fixed tree): valid in lane 0.  The whole warp calls it.
template <typename V, typename Load, typename Op>
__device__ __forceinline__ V fold_slices(int count, V identity, Load load, Op op) {
  V acc = identity;
  for (int j = threadIdx.x % 32; j < count; j += 32) acc = op(acc, load(j));
  return warp_reduce(acc, op);
}

struct Add2 {
  __device__ __forceinline__ float2 operator()(float2 a, float2 b) const { return make_float2(a.x + b.x, a.y + b.y); }
};

// True in the one block, of the `count` sharing `counter`, that takes the last ticket:
// it may then read what the others wrote before their call, and leaves the counter at 0
// for the next pass.  Nobody waits, so no co-residency of blocks is assumed.  The whole
// block calls it; count = 1 (a fused kernel) needs no counter.
__device__ __forceinline__ bool last_of(int32_t* counter, int64_t count) {
  __shared__ bool last;
  __threadfence();  // this block's partials are visible device-wide before its ticket
  __syncthreads();
  if (threadIdx.x == 0) {
    last = count == 1 || atomicAdd(counter, 1) == count - 1;
    if (last && count > 1) *counter = 0;
  }
  __syncthreads();
  if (last) __threadfence();  // and the others' partials are read after it
  return last;
}

// ----------------------------------------------------------------------------- softmax statistics

// Running softmax statistics of some logits: their max m and z = Σ 2^((x − m)·scale)
// (z2 = Σ 2^(2(x − m)·scale), for Σ p² of the squared loss), scale = log2(e) / T.
struct Lse {
  float m, z, z2;
};

__device__ __forceinline__ Lse lse_empty() { return {-kInf, 0.0f, 0.0f}; }

// One logit into the statistics with ONE exp2 (pass 1 is otherwise ALU-bound at HBM
// speed): with d = (x − m)·scale, either x is the new max (rescale the sums by 2^−d) or
// it adds 2^d — both are 2^−|d|.  −inf adds nothing (d is NaN when m is −inf too); NaN
// adds nothing and never becomes the max (it is flagged instead).
template <bool kSquares>
__device__ __forceinline__ void lse_add(Lse& s, float x, float scale) {
  const float d = (x - s.m) * scale;
  const float e = x > -kInf ? exp2f(-fabsf(d)) : 0.0f;
  const bool grow = d > 0.0f;
  s.z = grow ? __fmaf_rn(s.z, e, 1.0f) : __fadd_rn(s.z, e);
  if constexpr (kSquares) s.z2 = grow ? __fmaf_rn(s.z2, __fmul_rn(e, e), 1.0f) : __fmaf_rn(e, e, s.z2);
  s.m = fmaxf(s.m, x);
}

// Explicit roundings (no contraction), so that p and q, which run through the same
// code, get the same bits from the same logits (Primal(budget >= 1) must give π = q
// exactly, the q of a Primal(0) call with p and q swapped).
__device__ __forceinline__ Lse lse_merge(const Lse& a, const Lse& b, float scale) {
  const float m = fmaxf(a.m, b.m);
  const float shift = m == -kInf ? 0.0f : m;
  const float sa = exp2f((a.m - shift) * scale), sb = exp2f((b.m - shift) * scale);
  return {m, __fmaf_rn(a.z, sa, __fmul_rn(b.z, sb)),
          __fmaf_rn(a.z2, __fmul_rn(sa, sa), __fmul_rn(__fmul_rn(b.z2, sb), sb))};
}

// p_v = 2^((x_v − m)·scale) / z (docs/design.md §1.2).  The logits are shifted by the raw max
// BEFORE the 1/T scaling, so the arg-max gets 2^0 = 1 exactly and p = 1/z: max p is
// exactly 1/z, which the zero_one and max_p rules compare with.  Rounded products, so
// that every pass and verify's point evaluations see the same p.
__device__ __forceinline__ float prob(float x, float m, float scale, float inv_z) {
  return __fmul_rn(exp2f(__fmul_rn(x - m, scale)), inv_z);
}

// The ImplicitReward score T·(log p + log q − log q_ref) up to a row constant; −inf
// where q_ref = 0 (reference.implicit_reward) or where it is undefined.
__device__ __forceinline__ float reward_score(float xp, float xq, float xr) {
  const float y = xr > -kInf ? xp + xq - xr : -kInf;
  return y != y ? -kInf : y;
}

// Bits of one logit: kBadNonfinite if NaN or +inf, and kBadAllNegInf *set when the
// entry is above −inf* — inverted once a row is folded (every entry −inf = no bit seen).
__device__ __forceinline__ int32_t entry_bits(float x) {
  return (x != x || x == kInf ? kBadNonfinite : 0) | (x != -kInf ? kBadAllNegInf : 0);
}

struct Softmaxes {
  Lse p, q, y;   // y: the ImplicitReward score
  int32_t bits;  // entry_bits of p, q, ref at bits 0–1, 2–3, 4–5
};

__device__ __forceinline__ Softmaxes softmaxes_empty() { return {lse_empty(), lse_empty(), lse_empty(), 0}; }

__device__ __forceinline__ Softmaxes softmaxes_merge(const Softmaxes& a, const Softmaxes& b, float scale) {
  return {lse_merge(a.p, b.p, scale), lse_merge(a.q, b.q, scale), lse_merge(a.y, b.y, scale), a.bits | b.bits};
}

// ----------------------------------------------------------------------------- workspace

// The partials of one (row, slice).
struct alignas(16) SliceStats {
  Softmaxes soft;         // stats pass
  float deferred, kept;   // mass pass: Σ p d, Σ p (1 − d)
  float residual;         // verify: Σ max(π − q, 0) at the stop position
  float best;             // greedy rows: max π of the slice ...
  int32_t best_index;     // ... and its lowest index
};

// What every pass after the statistics needs to evaluate p, q and π anywhere in a row.
struct alignas(16) RowState {
  float scale;                // log2(e) / T, with T = 1 on greedy rows (T = 0)
  float m_p, inv_z_p;         // p_v = prob(x_v, m_p, scale, inv_z_p)
  float m_q, inv_z_q;
  float m_y, inv_z_y;         // ImplicitReward: π_v = prob(score_v, m_y, ...), uniform if m_y = −inf
  float alpha;                // α (0 for ImplicitReward)
  RowRule rule;
  uint32_t prefix;            // Primal radix walk: the key digits fixed so far
  unsigned long long below;   // mass (units) of the keys under the prefix's range
  int32_t level;              // next radix level; kLevels once rule.primal_key is final
};

static_assert(sizeof(RowState) % 16 == 0 && std::is_trivially_copyable<RowState>::value, "loaded as uint4");

// A row state written by another block of this kernel (the fused verify) or by the
// previous one: through L2, never a stale L1 line.
__device__ __forceinline__ RowState load_state(const RowState* src) {
  uint4 words[sizeof(RowState) / 16];
#pragma unroll
  for (int w = 0; w < static_cast<int>(sizeof(RowState) / 16); ++w) words[w] = __ldcg(reinterpret_cast<const uint4*>(src) + w);
  RowState out;
  memcpy(&out, words, sizeof out);
  return out;
}

__device__ __forceinline__ Lse load_lse(const Lse& s) { return {__ldcg(&s.m), __ldcg(&s.z), __ldcg(&s.z2)}; }

// One logits tensor as rows n = b·positions + i, each with its own strides.
template <typename T>
struct Rows {
  const T* data;
  int64_t stride_b, stride_i;
  __device__ __forceinline__ const T* row(int64_t n, int64_t positions) const {
    return data + (n / positions) * stride_b + (n % positions) * stride_i;
  }
};

template <typename T>
struct RowPtrs {
  const T *p, *q, *ref;
};

// One call as the kernels see it.
template <typename T>
struct Problem {
  Rows<T> p, q, ref;          // ref.data is null unless ImplicitReward
  RowValue param;             // of batch row n / positions
  RowValue temperature;
  int64_t kind, rows, vocab, positions, slice_len;
  int32_t slices;
  bool aligned;               // every row starts on 16 bytes: vector loads
  SliceStats* slice;          // [rows, slices]
  RowState* state;            // [rows]
  int32_t* tickets;           // [rows], zero; null when no pass needs one
  unsigned long long* hist;   // [rows, kDigits], zero; Primal with slices > 1 only
  int32_t* flags;             // [rows]: the op's bad-logits output

  __device__ __forceinline__ int64_t start(int j) const { return j * slice_len; }
  __device__ __forceinline__ int64_t end(int j) const {
    const int64_t stop = start(j) + slice_len;
    return stop < vocab ? stop : vocab;
  }
  __device__ __forceinline__ float temperature_of(int64_t n) const { return temperature.of(n / positions); }
  __device__ __forceinline__ float param_of(int64_t n) const { return param.of(n / positions); }
  __device__ __forceinline__ int32_t* ticket(int64_t i) const { return tickets == nullptr ? nullptr : tickets + i; }
  __device__ __forceinline__ SliceStats* slice_of(int64_t n, int j) const { return slice + n * slices + j; }
  __device__ __forceinline__ RowPtrs<T> rows_of(int64_t n) const {
    return {p.row(n, positions), q.row(n, positions), ref.data == nullptr ? nullptr : ref.row(n, positions)};
  }
};

// ----------------------------------------------------------------------------- pass 1: statistics

// Folds the slices' statistics into the row state and writes the row's flags.  The
// whole block calls it, after last_of.
template <typename T>
__device__ void finalize_stats(const Problem<T>& pr, int64_t n, float scale) {
  if (threadIdx.x < 32) {
    const Softmaxes s = fold_slices(
        pr.slices, softmaxes_empty(),
        [&](int j) {
          const Softmaxes& src = pr.slice_of(n, j)->soft;
          return Softmaxes{load_lse(src.p), load_lse(src.q), load_lse(src.y), __ldcg(&src.bits)};
        },
        [scale](const Softmaxes& a, const Softmaxes& b) { return softmaxes_merge(a, b, scale); });
    if (threadIdx.x == 0) {
      RowState st;
      st.scale = scale;
      st.m_p = s.p.m;
      st.inv_z_p = 1.0f / s.p.z;
      st.m_q = s.q.m;
      st.inv_z_q = 1.0f / s.q.z;
      st.m_y = s.y.m;
      st.inv_z_y = 1.0f / s.y.z;
      st.alpha = 0.0f;
      const float param = pr.param_of(n);
      // max p = 1/z exactly: the arg-max's term is 2^0 (see prob).
      st.rule = RowRule{param, st.inv_z_p, st.inv_z_q, __fmul_rn(__fmul_rn(s.p.z2, st.inv_z_p), st.inv_z_p),
                        0xFFFFFFFFu};
      st.prefix = 0;
      st.below = 0;
      st.level = pr.kind == kPrimal && param < 1.0f ? 0 : kLevels;  // budget >= 1 defers everything
      pr.state[n] = st;
      const int32_t present = pr.ref.data != nullptr ? 0x3F : 0x0F;
      pr.flags[n] = (s.bits & 0x15) | (~s.bits & 0x2A & present);
      __threadfence();
    }
  }
  __syncthreads();
}

// Pass 1 over slice j of row n.
template <typename T, bool kRef>
__device__ void stats_phase(const Problem<T>& pr, int64_t n, int j) {
  constexpr int kN = kVec<T>;
  const float t = pr.temperature_of(n);
  const float scale = t > 0.0f ? kLog2e / t : kLog2e;
  const RowPtrs<T> r = pr.rows_of(n);
  const int64_t end = pr.end(j);
  Softmaxes s = softmaxes_empty();
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float xp[kN], xq[kN], xr[kN];
    load_vec(r.p, col, end, pr.aligned, xp);
    load_vec(r.q, col, end, pr.aligned, xq);
    if constexpr (kRef) load_vec(r.ref, col, end, pr.aligned, xr);
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      s.bits |= entry_bits(xp[k]) | entry_bits(xq[k]) << 2;
      lse_add<true>(s.p, xp[k], scale);
      lse_add<false>(s.q, xq[k], scale);
      if constexpr (kRef) {
        s.bits |= entry_bits(xr[k]) << 4;
        lse_add<false>(s.y, reward_score(xp[k], xq[k], xr[k]), scale);
      }
    }
  });
  s = block_reduce(s, [scale](const Softmaxes& a, const Softmaxes& b) { return softmaxes_merge(a, b, scale); });
  if (threadIdx.x == 0) pr.slice_of(n, j)->soft = s;
  if (!last_of(pr.ticket(n), pr.slices)) return;
  finalize_stats(pr, n, scale);
}

// ----------------------------------------------------------------------------- Primal: radix select

__device__ __forceinline__ unsigned long long mass_units(float p) {
  return __float2ull_ru(__fmul_rn(p, kUnitsPerMass));  // rounded up: a positive p never weighs 0
}

// A block's histogram in shared memory as two 32-bit words per digit: 32-bit shared
// atomics are native (one instruction, hardware-serialized on conflicts) where 64-bit
// ones become compare-and-swap loops, and level 0 puts many tokens of a warp in the
// same few digits.  A carry out of the low word is seen in its old value.
struct SharedHist {
  uint32_t low[kDigits], high[kDigits];

  __device__ __forceinline__ void add(int digit, unsigned long long units) {
    const uint32_t low_units = static_cast<uint32_t>(units);
    const uint32_t carry = atomicAdd(low + digit, low_units) > 0xFFFFFFFFu - low_units ? 1u : 0u;
    const uint32_t high_units = static_cast<uint32_t>(units >> 32) + carry;
    if (high_units != 0) atomicAdd(high + digit, high_units);
  }
  __device__ __forceinline__ unsigned long long at(int digit) const {
    return static_cast<unsigned long long>(high[digit]) << 32 | low[digit];
  }
  __device__ __forceinline__ void set(int digit, unsigned long long units) {
    low[digit] = static_cast<uint32_t>(units);
    high[digit] = static_cast<uint32_t>(units >> 32);
  }
};

// One radix step from the row's histogram of the current digit: the first digit whose
// cumulative mass exceeds the budget holds the critical item; the keys below it are all
// deferred.  If none does, every key of the range fits.  The whole block calls it.
template <typename T>
__device__ void primal_step(const Problem<T>& pr, int64_t n, const RowState& st, int level, const SharedHist& hist) {
  constexpr int kPer = kDigits / kThreads;
  const int shift = (kLevels - 1 - level) * kDigitBits;
  const unsigned long long limit = __float2ull_rd(__fmul_rn(pr.param_of(n), kUnitsPerMass));
  unsigned long long h[kPer], sum = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    h[k] = hist.at(threadIdx.x * kPer + k);
    sum += h[k];
  }
  unsigned long long total;
  unsigned long long cumulative = st.below + block_exclusive_scan(sum, total);
  int digit = kDigits;
  unsigned long long below = 0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    if (digit == kDigits && cumulative + h[k] > limit) {
      digit = threadIdx.x * kPer + k;
      below = cumulative;
    }
    cumulative += h[k];
  }
  const int first = block_reduce(digit, [](int a, int b) { return a < b ? a : b; });
  RowState* out = pr.state + n;
  if (first == kDigits) {
    // Everything in range fits: at level 0 the whole row (all tokens deferred); deeper it
    // cannot happen, the integer masses of a bucket being the same at every level.
    if (threadIdx.x == 0) {
      out->rule.primal_key = level == 0 ? 0xFFFFFFFFu : st.prefix + (1u << (shift + kDigitBits));
      out->level = kLevels;
    }
  } else if (digit == first) {
    const uint32_t prefix = st.prefix | static_cast<uint32_t>(first) << shift;
    out->prefix = prefix;
    out->below = below;
    out->level = level + 1;
    if (level + 1 == kLevels) out->rule.primal_key = prefix;  // defer v iff key(x_v) < key of the critical item
  }
  __threadfence();
  __syncthreads();
}

// Radix level `level` over slice j of row n (docs/design.md §1.4 Primal: C_v <= budget with ties
// together iff logit_key(x_v) < the key of the first logit, in increasing order, whose
// cumulative mass exceeds the budget).  Histogram of the next digit of the keys that
// share the prefix found so far, weighted by mass.
template <typename T>
__device__ void primal_phase(const Problem<T>& pr, int64_t n, int j, int level) {
  __shared__ SharedHist hist;
  const RowState st = load_state(pr.state + n);
  if (st.level != level) return;  // not Primal, budget >= 1, or the key is final: the whole row agrees
  for (int d = threadIdx.x; d < kDigits; d += kThreads) hist.set(d, 0);
  __syncthreads();
  const int shift = (kLevels - 1 - level) * kDigitBits;
  const uint64_t prefix_high = static_cast<uint64_t>(st.prefix) >> (shift + kDigitBits);  // level 0: zero
  const T* p = pr.p.row(n, pr.positions);
  const int64_t end = pr.end(j);
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float x[kVec<T>];
    load_vec(p, col, end, pr.aligned, x);
#pragma unroll
    for (int k = 0; k < kVec<T>; ++k) {
      const float pv = prob(x[k], st.m_p, st.scale, st.inv_z_p);
      const uint64_t key = logit_key(x[k]);
      // p = 0 weighs nothing and never decides the threshold; NaN fails the test.
      if (pv > 0.0f && (key >> (shift + kDigitBits)) == prefix_high)
        hist.add(static_cast<int>((key >> shift) & (kDigits - 1)), mass_units(pv));
    }
  });
  __syncthreads();
  if (pr.slices > 1) {
    unsigned long long* row_hist = pr.hist + n * kDigits;
    for (int d = threadIdx.x; d < kDigits; d += kThreads)
      if (hist.at(d) != 0) atomicAdd(row_hist + d, hist.at(d));
    if (!last_of(pr.ticket(n), pr.slices)) return;
    for (int d = threadIdx.x; d < kDigits; d += kThreads) {
      hist.set(d, __ldcg(row_hist + d));
      row_hist[d] = 0;  // zero again for the next level
    }
    __syncthreads();
  }
  primal_step(pr, n, st, level, hist);
}

// ----------------------------------------------------------------------------- pass 2: α

// S_d and S_kept over slice j of row n; the last block sets α = S_d / (S_d + S_kept),
// which is exactly 0 when nothing is deferred and exactly 1 when everything is.
template <typename T, int64_t KIND>
__device__ void mass_phase(const Problem<T>& pr, int64_t n, int j) {
  constexpr int kN = kVec<T>;
  constexpr bool kNeedsQ = KIND == kMaxPPlus || KIND == kMinusMaxPPlus;  // the only rules that test q_v
  const RowState st = load_state(pr.state + n);
  const RowPtrs<T> r = pr.rows_of(n);
  const int64_t end = pr.end(j);
  float2 sums = make_float2(0.0f, 0.0f);  // (deferred, kept)
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float xp[kN], xq[kN];
    load_vec(r.p, col, end, pr.aligned, xp);
    if constexpr (kNeedsQ) load_vec(r.q, col, end, pr.aligned, xq);
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const float p = prob(xp[k], st.m_p, st.scale, st.inv_z_p);
      const float q = kNeedsQ ? prob(xq[k], st.m_q, st.scale, st.inv_z_q) : 0.0f;
      if (defers<KIND>(p, q, xp[k], st.rule))
        sums.x += p;
      else
        sums.y += p;
    }
  });
  sums = block_reduce(sums, Add2{});
  if (threadIdx.x == 0) {
    pr.slice_of(n, j)->deferred = sums.x;
    pr.slice_of(n, j)->kept = sums.y;
  }
  if (!last_of(pr.ticket(n), pr.slices)) return;
  if (threadIdx.x < 32) {
    const float2 row = fold_slices(
        pr.slices, make_float2(0.0f, 0.0f),
        [&](int s) { return make_float2(__ldcg(&pr.slice_of(n, s)->deferred), __ldcg(&pr.slice_of(n, s)->kept)); },
        Add2{});
    if (threadIdx.x == 0) {
      pr.state[n].alpha = row.x / (row.x + row.y);
      __threadfence();
    }
  }
  __syncthreads();
}

// Passes 1–2 of row n, slice j, in one block (the fused kernels, S = 1).
template <typename T, int64_t KIND>
__device__ void row_phases(const Problem<T>& pr, int64_t n, int j) {
  stats_phase<T, KIND == kImplicitReward>(pr, n, j);
  if constexpr (KIND == kPrimal)
    for (int level = 0; level < kLevels; ++level) primal_phase(pr, n, j, level);
  if constexpr (KIND != kImplicitReward) mass_phase<T, KIND>(pr, n, j);
}

// Passes 1–2 as one launch each over all (row, slice) blocks (row.cu).
template <typename T>
void launch_row_phases(const Problem<T>& pr, cudaStream_t stream);

// ----------------------------------------------------------------------------- π

struct PiQ {
  float pi, q;
};

// π and q of one token from its logits: π = p (1 − d) + α q (docs/design.md §1.1) —
// separate roundings, as the reference — or the ImplicitReward softmax of the score,
// `uniform` where no score is finite.  The one formula of every pass and point evaluation.
template <int64_t KIND>
__device__ __forceinline__ PiQ mixture_at(const RowState& st, float xp, float xq, float xr, float uniform) {
  const float q = prob(xq, st.m_q, st.scale, st.inv_z_q);
  if constexpr (KIND == kImplicitReward) {
    return {st.m_y == -kInf ? uniform : prob(reward_score(xp, xq, xr), st.m_y, st.scale, st.inv_z_y), q};
  } else {
    const float p = prob(xp, st.m_p, st.scale, st.inv_z_p);
    const float shared = __fmul_rn(st.alpha, q);
    return {defers<KIND>(p, q, xp, st.rule) ? shared : __fadd_rn(p, shared), q};
  }
}

// π and q of this thread's vector at `col`; zero at and past `end`.
template <typename T, int64_t KIND>
__device__ __forceinline__ void mixture_vec(const Problem<T>& pr, const RowPtrs<T>& r, const RowState& st,
                                            int64_t col, int64_t end, float (&pi)[kVec<T>], float (&q)[kVec<T>]) {
  constexpr int kN = kVec<T>;
  float xp[kN], xq[kN], xr[kN] = {};
  load_vec(r.p, col, end, pr.aligned, xp);
  load_vec(r.q, col, end, pr.aligned, xq);
  if constexpr (KIND == kImplicitReward) load_vec(r.ref, col, end, pr.aligned, xr);
  const float uniform = 1.0f / static_cast<float>(pr.vocab);
#pragma unroll
  for (int k = 0; k < kN; ++k) {
    const PiQ v = mixture_at<KIND>(st, xp[k], xq[k], xr[k], uniform);
    const bool inside = col + k < end;
    pi[k] = inside ? v.pi : 0.0f;
    q[k] = inside ? v.q : 0.0f;
  }
}

// π and q at token x of row n (verify's accept test): the arithmetic of mixture_vec.
template <typename T, int64_t KIND>
__device__ PiQ mixture_at_token(const Problem<T>& pr, const RowState& st, int64_t n, int64_t x) {
  const RowPtrs<T> r = pr.rows_of(n);
  const float xr = KIND == kImplicitReward ? load_one(r.ref, x) : 0.0f;
  return mixture_at<KIND>(st, load_one(r.p, x), load_one(r.q, x), xr, 1.0f / static_cast<float>(pr.vocab));
}

// The residual weight max(π − q, 0) of verify (positive only on kept tokens:
// docs/design.md §1.1).
__device__ __forceinline__ float residual_weight(float pi, float q) { return fmaxf(__fsub_rn(pi, q), 0.0f); }

// ----------------------------------------------------------------------------- the draw

struct Best {
  float value;
  int32_t index;
};

// The larger π, the lower index on ties (torch.argmax, docs/design.md §1.2 greedy rows).
struct Better {
  __device__ __forceinline__ Best operator()(Best a, Best b) const {
    return b.value > a.value || (b.value == a.value && b.index < a.index) ? b : a;
  }
};

// arg-max of π over slice j of row n, in every thread.
template <typename T, int64_t KIND>
__device__ Best argmax_slice(const Problem<T>& pr, const RowState& st, int64_t n, int j) {
  constexpr int kN = kVec<T>;
  const RowPtrs<T> r = pr.rows_of(n);
  const int64_t end = pr.end(j);
  Best best{-1.0f, static_cast<int32_t>(pr.start(j))};  // π >= 0: any token of the slice beats it
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float pi[kN], q[kN];
    mixture_vec<T, KIND>(pr, r, st, col, end, pi, q);
#pragma unroll
    for (int k = 0; k < kN; ++k)
      if (col + k < end && pi[k] > best.value) best = {pi[k], static_cast<int32_t>(col + k)};
  });
  return block_reduce(best, Better{});
}

// Writes this block's arg-max of slice j of row n for the fold below.
__device__ __forceinline__ void store_best(SliceStats* slot, const Best& best) {
  if (threadIdx.x == 0) {
    slot->best = best.value;
    slot->best_index = best.index;
  }
}

// The arg-max of π over row n from its slices' partials, in every thread.
template <typename T>
__device__ int64_t fold_best(const Problem<T>& pr, int64_t n) {
  __shared__ int64_t result;
  if (threadIdx.x < 32) {
    const Best best = fold_slices(
        pr.slices, Best{-kInf, 0x7FFFFFFF},
        [&](int j) { return Best{__ldcg(&pr.slice_of(n, j)->best), __ldcg(&pr.slice_of(n, j)->best_index)}; },
        Better{});
    if (threadIdx.x == 0) result = best.index;
  }
  __syncthreads();
  const int64_t index = result;
  __syncthreads();
  return index;
}

// Σ_v π_v over slice j of row n from the statistics alone, no pass over V:
// S_kept + α Σ_slice q, or the slice's share of the score's softmax (ImplicitReward;
// of V when the row is uniform).
template <typename T, int64_t KIND>
__device__ float pi_slice_mass(const Problem<T>& pr, const RowState& st, int64_t n, int j) {
  const SliceStats* s = pr.slice_of(n, j);
  if constexpr (KIND == kImplicitReward) {
    if (st.m_y == -kInf) return static_cast<float>(pr.end(j) - pr.start(j)) / static_cast<float>(pr.vocab);
    return __fmul_rn(__ldcg(&s->soft.y.z), prob(__ldcg(&s->soft.y.m), st.m_y, st.scale, st.inv_z_y));
  } else {
    const float q_mass = __fmul_rn(__ldcg(&s->soft.q.z), prob(__ldcg(&s->soft.q.m), st.m_q, st.scale, st.inv_z_q));
    return __ldcg(&s->kept) + __fmul_rn(st.alpha, q_mass);
  }
}

// The inverse CDF of slice j of row n (docs/design.md §2.4): the smallest v with
// Σ_{start <= w <= v} weight_w > target, among positive weights (a parallel scan is
// monotone only up to rounding, so a zero weight an ulp above its neighbour must not
// win); the last positive weight if the target is not reached.  Weights are π, or the
// residual max(π − q, 0).  The whole block calls it; every thread gets the token.
template <typename T, int64_t KIND>
__device__ int64_t scan_slice(const Problem<T>& pr, const RowState& st, int64_t n, int j, float target,
                              bool residual) {
  constexpr int kN = kVec<T>;
  constexpr int64_t kNone = INT64_MAX;
  const RowPtrs<T> r = pr.rows_of(n);
  const int64_t start = pr.start(j), end = pr.end(j);
  float running = 0.0f;
  int64_t last = -1;
  for (int64_t base = start; base < end; base += kThreads * kN) {  // the same trip count in every thread
    const int64_t col = base + threadIdx.x * kN;
    float w[kN], q[kN], cdf[kN];
    mixture_vec<T, KIND>(pr, r, st, col, end, w, q);
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      if (residual) w[k] = residual_weight(w[k], q[k]);
      sum += w[k];
      cdf[k] = sum;
      if (w[k] > 0.0f) last = col + k;
    }
    float total;
    const float before = running + block_exclusive_scan(sum, total);
    int64_t hit = kNone;
#pragma unroll
    for (int k = kN - 1; k >= 0; --k)
      if (w[k] > 0.0f && before + cdf[k] > target) hit = col + k;
    hit = block_reduce(hit, [](int64_t a, int64_t b) { return a < b ? a : b; });
    if (hit != kNone) return hit;
    running += total;
  }
  last = block_reduce(last, [](int64_t a, int64_t b) { return a > b ? a : b; });
  return last >= 0 ? last : start;
}

// The token drawn at uniform u from row n: the inverse CDF of π, or of the residual
// max(π − q, 0) when `residual` and it has mass (π otherwise, as the reference).  The
// slice holding u·Σ is picked from the slice masses (a sequential prefix: exactly
// monotone), then only that slice is scanned.  The whole block calls it.
template <typename T, int64_t KIND>
__device__ int64_t draw(const Problem<T>& pr, const RowState& st, int64_t n, float u, bool residual) {
  __shared__ float mass[kMaxSlices];
  __shared__ int chosen;
  __shared__ float chosen_target;
  __shared__ bool use_residual;
  const int slices = pr.slices;
  if (residual)
    for (int j = threadIdx.x; j < slices; j += kThreads) mass[j] = __ldcg(&pr.slice_of(n, j)->residual);
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    if (residual)
      for (int j = 0; j < slices; ++j) total += mass[j];
    use_residual = total > 0.0f;
  }
  __syncthreads();
  if (!use_residual)
    for (int j = threadIdx.x; j < slices; j += kThreads) mass[j] = pi_slice_mass<T, KIND>(pr, st, n, j);
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int j = 0; j < slices; ++j) total += mass[j];
    const float target = u * total;
    int pick = -1, last = 0;
    float cumulative = 0.0f, below = 0.0f;
    for (int j = 0; j < slices; ++j) {
      const float next = cumulative + mass[j];
      if (mass[j] > 0.0f) last = j;
      if (pick < 0 && next > target) {
        pick = j;
        below = cumulative;
      }
      cumulative = next;
    }
    // u·Σ at the very top (rounding): the last token of positive weight, as the reference.
    chosen = pick >= 0 ? pick : last;
    chosen_target = pick >= 0 ? target - below : kInf;
  }
  __syncthreads();
  const int j = chosen;
  const float target = chosen_target;
  const bool weights_residual = use_residual;
  __syncthreads();  // the shared choice is read before any later draw rewrites it
  return scan_slice<T, KIND>(pr, st, n, j, target, weights_residual);
}

// Uniforms of a call: the caller's tensor, or Philox at offset + counter (the counter
// layout of kad_kernels/_random.py, bit-identical to tl.rand).
struct Uniforms {
  const float* given;  // null: Philox
  const int64_t* seed;
  const int64_t* offset;
  __device__ __forceinline__ float at(int64_t index, int64_t counter) const {
    return given != nullptr ? given[index] : philox_uniform(*seed, philox_counter(*offset, counter));
  }
};

}  // namespace kad::cuda
