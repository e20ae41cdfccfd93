// One row of the CPU backend: the passes of docs/design.md §4 over fp32 scratch rows.
//
// A thread takes whole rows (at::parallel_for over the batch) and keeps a
// Workspace of three fp32 rows of length V: the logits are read twice in their own
// dtype (max; exp and Σ, which stores e_v = exp((x_v − max) / T)) and every later
// pass runs over cache-resident fp32, forming p_v = e_v / Σ where it is used.
// Loops are written for the compiler's auto-vectorizer: fixed-width lane
// accumulators instead of a scalar running sum or max, and a polynomial exp
// instead of std::exp (which GCC does not vectorize without -ffast-math, and
// -ffast-math would also remove the NaN checks the bad-logits flag needs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kad/dispatch.h"
#include "kad/philox.h"
#include "kad/row_value.h"
#include "kad/rules.h"

namespace kad::cpu {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kLanes = 16;  // one AVX-512 register of fp32 (two AVX2 ones)

// Logit v of a row as fp32.  Half-precision rows are read as raw 16-bit words (and
// widened by hand or by the F16C/AVX-512 conversion of _Float16) because the
// compiler does not vectorize loops over the c10::BFloat16 / c10::Half structs.
inline float load(const float* x, int64_t v) { return x[v]; }
inline float load(const at::BFloat16* x, int64_t v) {
  const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(x)[v]) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}
inline float load(const at::Half* x, int64_t v) { return static_cast<float>(reinterpret_cast<const _Float16*>(x)[v]); }

// e^x for x <= 0, the only arguments a softmax produces (x - max).  Cody–Waite
// reduction x = n ln 2 + r, |r| <= ln2 / 2, and Cephes' degree-6 polynomial for
// e^r: within 2 ulp of expf, and exactly 1 at x = 0, so the arg-max of a row
// keeps p = 1 / Σ exactly as torch.softmax does.  x < ln 2^-126 (including -inf)
// gives 0: e^x is then below fp32's smallest normal, and so is p = e^x / Σ, which
// docs/design.md §2.4 lets a kernel flush.  A cut-off above it would flush normal
// probabilities too, and the accept test of a draft that q puts there would differ.
constexpr float kLogSmallestNormal = -87.33654475f;  // ln 2^-126: n = -126 below
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, kLogSmallestNormal);
  const float n = std::floor(clamped * 1.44269504088896341f + 0.5f);
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float er = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < kLogSmallestNormal ? 0.0f : er * scale;
}

// Tokens per block of the inverse CDF's block sums (InverseCdf).
constexpr int64_t kCdfBlock = 256;

// Scratch rows of one thread, kept between calls: fresh pages for 2 MB of scratch
// per call would cost more than a batch-1 call's arithmetic.
struct Workspace {
  static Workspace& local(int64_t vocab) {
    thread_local Workspace ws;
    if (static_cast<int64_t>(ws.p.size()) < vocab) {
      for (std::vector<float>* row : {&ws.p, &ws.q, &ws.aux}) row->resize(vocab);
      ws.blocks.resize((vocab + kCdfBlock - 1) / kCdfBlock);
    }
    return ws;
  }
  std::vector<float> p, q, aux;
  std::vector<double> blocks;  // inverse-CDF block sums
  std::vector<int64_t> candidates;  // primal radix select
};

// max_v x_v and the bad-logits bits of one row (NaN or +inf; every entry -inf).
struct RowMax {
  float max;
  int32_t flag;
};

// The vocabulary is walked in fixed chunks: a call with fewer rows than threads
// runs each pass's chunks in parallel (at::parallel_for; inside the row-parallel
// loop of a larger batch the same call runs inline), and reductions combine the
// per-chunk partials in chunk order, so results never depend on the thread count.
constexpr int64_t kChunk = 16384;

inline int64_t num_chunks(int64_t vocab) { return (vocab + kChunk - 1) / kChunk; }

// body(begin, end, chunk) for every chunk of [0, vocab).
template <typename F>
void for_chunks(int64_t vocab, const F& body) {
  at::parallel_for(0, num_chunks(vocab), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) body(c * kChunk, std::min((c + 1) * kChunk, vocab), c);
  });
}

// combine(...combine(init, partial(chunk 0)), ...) with partial(begin, end) per chunk.
template <typename P, typename F, typename C>
P reduce_chunks(int64_t vocab, P init, const F& partial, const C& combine) {
  std::vector<P> parts(num_chunks(vocab), init);
  for_chunks(vocab, [&](int64_t begin, int64_t end, int64_t c) { parts[c] = partial(begin, end); });
  P out = init;
  for (const P& part : parts) out = combine(out, part);
  return out;
}

// Rows of a call in parallel when there are enough of them to occupy the threads;
// otherwise one after the other, each row's passes split over the threads.
template <typename F>
void for_rows(int64_t rows, const F& body) {
  if (rows >= at::get_num_threads()) {
    at::parallel_for(0, rows, 1, [&](int64_t first, int64_t last) {
      for (int64_t n = first; n < last; ++n) body(n);
    });
  } else {
    for (int64_t n = 0; n < rows; ++n) body(n);
  }
}

// 16 fp32 lanes as a GCC/Clang vector: the max-and-NaN scan below is written with
// it because the auto-vectorizer leaves `x > m ? x : m` scalar (it may not assume
// the NaN and signed-zero behaviour of a vector max).
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef _Float16 f16x16 __attribute__((vector_size(32)));

inline f32x16 load16(const float* x, int64_t v) {
  f32x16 out;
  std::memcpy(&out, x + v, sizeof out);
  return out;
}
inline f32x16 load16(const at::BFloat16* x, int64_t v) {
  u16x16 raw;
  std::memcpy(&raw, x + v, sizeof raw);
  return reinterpret_cast<f32x16>(__builtin_convertvector(raw, i32x16) << 16);
}
inline f32x16 load16(const at::Half* x, int64_t v) {
  f16x16 raw;
  std::memcpy(&raw, x + v, sizeof raw);
  return __builtin_convertvector(raw, f32x16);
}

template <typename T>
RowMax slice_max(const T* x, int64_t begin, int64_t end) {
  static_assert(kLanes == 16, "slice_max reads 16 lanes at a time");
  f32x16 lane_max = f32x16{} - kInf;
  i32x16 lane_bad = {};
  int64_t v = begin;
  for (; v + kLanes <= end; v += kLanes) {
    const f32x16 xv = load16(x, v);
    lane_max = xv > lane_max ? xv : lane_max;  // NaN never wins: it is flagged instead
    lane_bad |= (xv != xv) | (xv == kInf);
  }
  RowMax out{-kInf, 0};
  for (int64_t l = 0; l < kLanes; ++l) {
    out.max = std::max(out.max, lane_max[l]);
    out.flag |= lane_bad[l] ? kBadNonfinite : 0;
  }
  for (; v < end; ++v) {
    const float xv = load(x, v);
    out.max = xv > out.max ? xv : out.max;
    out.flag |= (xv != xv) | (xv == kInf) ? kBadNonfinite : 0;
  }
  return out;
}

template <typename T>
RowMax row_max(const T* x, int64_t vocab) {
  RowMax out = reduce_chunks(
      vocab, RowMax{-kInf, 0}, [x](int64_t begin, int64_t end) { return slice_max(x, begin, end); },
      [](RowMax a, RowMax b) { return RowMax{std::max(a.max, b.max), a.flag | b.flag}; });
  if (out.max == -kInf) out.flag |= kBadAllNegInf;
  return out;
}

// Σ_{begin <= v < end} term(v) in kLanes partial sums (the order torch's vectorized sum uses too).
template <typename F>
float lane_sum(int64_t begin, int64_t end, const F& term) {
  float lane[kLanes] = {};
  int64_t v = begin;
  for (; v + kLanes <= end; v += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += term(v + l);
  for (; v < end; ++v) lane[0] += term(v);
  float total = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) total += lane[l];
  return total;
}

// Σ_v term(v) over a row, chunk by chunk.
template <typename F>
float row_sum(int64_t vocab, const F& term) {
  return reduce_chunks(
      vocab, 0.0f, [&term](int64_t begin, int64_t end) { return lane_sum(begin, end, term); },
      [](float a, float b) { return a + b; });
}

// Softmax statistics of one row of logits at temperature 1 / inv_t.
struct RowSoftmax {
  float max;      // of the raw logits: the shift is applied before 1/T (see exp_row)
  float sum;      // Σ_v exp((x_v − max) / T)
  int32_t flag;
  float scale() const { return 1.0f / sum; }  // p_v = e_v · scale, as torch.softmax normalizes
};

// e_v = exp((x_v − max) / T) into `out` [V] and its statistics, in two passes over the
// logits (max, then exp and Σ).  The probabilities are e_v · scale(), formed where
// they are used rather than in a pass of their own.  Shifting by the raw max before
// scaling by 1/T makes the arg-max's term exactly e^0 = 1, hence max p = scale().
template <typename T>
RowSoftmax exp_row(const T* x, int64_t vocab, float inv_t, float* out) {
  RowMax m = row_max(x, vocab);
  const float shift = m.max == -kInf ? 0.0f : m.max;  // an all -inf row: flagged, kept NaN-free here
  const float sum = row_sum(vocab, [x, out, shift, inv_t](int64_t v) {
    const float e = exp_nonpositive((load(x, v) - shift) * inv_t);
    out[v] = e;
    return e;
  });
  return {shift, sum, m.flag};
}

// Primal threshold key (docs/design.md §1.4): defer v iff logit_key(x_v) < key, where key
// is the key of the smallest logit whose cumulative mass C = Σ_{u: x_u <= x_v} p_u
// exceeds the budget.  A radix select over 11 + 11 + 10 bits of the keys finds it in
// three histogram passes (the last over the few candidates left) instead of a sort.
// Tokens with equal logits share one key, hence are deferred together or not at all.
// `x` [V]: the fp32 logits of p.
inline uint32_t primal_key(const float* x, const float* e, float scale, int64_t vocab, float budget,
                           std::vector<int64_t>& candidates) {
  if (budget >= 1.0f) return 0xFFFFFFFFu;
  constexpr int kShifts[3] = {21, 10, 0};
  constexpr int kWidths[3] = {11, 11, 10};
  std::vector<double> hist(size_t{1} << 11);
  uint32_t prefix = 0, prefix_mask = 0;
  double below = 0.0;  // mass of every key below the current prefix range
  candidates.clear();
  for (int level = 0; level < 3; ++level) {
    const int shift = kShifts[level];
    const uint32_t digit_mask = (1u << kWidths[level]) - 1;
    std::fill(hist.begin(), hist.end(), 0.0);
    auto add = [&](int64_t v) {
      const float p = e[v] * scale;
      const uint32_t key = logit_key(x[v]);
      if ((key & prefix_mask) != prefix) return false;
      hist[(key >> shift) & digit_mask] += p;
      return true;
    };
    if (level == 0) {
      for (int64_t v = 0; v < vocab; ++v) add(v);
    } else if (level == 1) {
      for (int64_t v = 0; v < vocab; ++v)
        if (add(v)) candidates.push_back(v);
    } else {
      for (int64_t v : candidates) add(v);
    }
    uint32_t digit = 0;
    while (digit <= digit_mask && below + hist[digit] <= budget) below += hist[digit++];
    if (digit > digit_mask) {
      // Everything in range fits: at level 0 the whole row; deeper, the parent
      // bucket crossed the budget only by the rounding of a different summation order.
      return level == 0 ? 0xFFFFFFFFu : prefix + (1u << kShifts[level - 1]);
    }
    prefix |= digit << shift;
    prefix_mask |= digit_mask << shift;
  }
  return prefix;
}

// α = S_d / (S_d + S_kept) and π_v = p_v (1 − d_v) + α q_v (docs/design.md §1.1) into pi [V],
// from e_p, e_q and their scales (p_v = e_p[v] · p_scale); `xp` [V] holds p's fp32 logits
// for Primal, which ranks by them (nullptr for the other rules).  The ratio form gives
// α = 0 exactly when nothing is deferred and 1 when everything is.
template <int64_t KIND>
float defer_and_mix(const float* ep, float p_scale, const float* eq, float q_scale, const float* xp, int64_t vocab,
                    RowRule rule, float* pi) {
  auto logit = [xp](int64_t v) {
    if constexpr (KIND == kPrimal) return xp[v];
    return 0.0f;
  };
  struct Masses {
    float deferred, kept;
  };
  // Both sums in one pass; lambdas capture by value (the vectorizer gives up on
  // loads through captured references).
  auto slice_masses = [ep, p_scale, eq, q_scale, logit, rule](int64_t begin, int64_t end) {
    float deferred[kLanes] = {}, kept[kLanes] = {};
    auto accumulate = [ep, p_scale, eq, q_scale, logit, rule, &deferred, &kept](int64_t v, int64_t l) {
      const float p = ep[v] * p_scale;
      const bool d = defers<KIND>(p, eq[v] * q_scale, logit(v), rule);
      deferred[l] += d ? p : 0.0f;
      kept[l] += d ? 0.0f : p;
    };
    int64_t v = begin;
    for (; v + kLanes <= end; v += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) accumulate(v + l, l);
    for (; v < end; ++v) accumulate(v, 0);
    Masses out{0.0f, 0.0f};
    for (int64_t l = 0; l < kLanes; ++l) {
      out.deferred += deferred[l];
      out.kept += kept[l];
    }
    return out;
  };
  const Masses m = reduce_chunks(vocab, Masses{0.0f, 0.0f}, slice_masses,
                                 [](Masses a, Masses b) { return Masses{a.deferred + b.deferred, a.kept + b.kept}; });
  const float alpha = m.deferred / (m.deferred + m.kept);
  for_chunks(vocab, [=](int64_t begin, int64_t end, int64_t) {
    for (int64_t v = begin; v < end; ++v) {
      const float p = ep[v] * p_scale, q = eq[v] * q_scale;
      const float shared = alpha * q;
      pi[v] = defers<KIND>(p, q, logit(v), rule) ? shared : p + shared;
    }
  });
  return alpha;
}

// π ∝ p · q / q_ref (ImplicitReward) into pi [V], in log space as reference.implicit_reward:
// score = log p + log q − log q_ref where q_ref > 0, softmax of the score, uniform if
// no score is finite.  Below T = 1 the score is T times that, each term (x − max) − T·log Σ
// (finite wherever x − max is), divided by T only in the softmax: (x − max)/T overflows to
// −inf at T ≈ 1e-38, which would leave no common support instead of the arg-max of
// x_p + x_q − x_ref.
template <typename T>
void implicit_reward_row(const T* p, const T* q, const T* ref, int64_t vocab, float temperature,
                         const RowSoftmax& sp, const RowSoftmax& sq, const RowSoftmax& sr, float* pi) {
  const bool below_one = temperature < 1.0f;
  const float inv_t = 1.0f / temperature, log_scale = below_one ? temperature : 1.0f;  // score: log_scale · log π
  const float x_scale = below_one ? 1.0f : inv_t;  // of x − max in log_scale · log p
  const float log_sp = log_scale * std::log(sp.sum), log_sq = log_scale * std::log(sq.sum),
              log_sr = log_scale * std::log(sr.sum);
  for_chunks(vocab, [=](int64_t begin, int64_t end, int64_t) {
    for (int64_t v = begin; v < end; ++v) {
      const float log_ref = (load(ref, v) - sr.max) * x_scale - log_sr;
      const float log_p = (load(p, v) - sp.max) * x_scale - log_sp;
      const float log_q = (load(q, v) - sq.max) * x_scale - log_sq;
      pi[v] = log_ref > -kInf ? log_p + log_q - log_ref : -kInf;
    }
  });
  const RowSoftmax score = exp_row(pi, vocab, below_one ? inv_t : 1.0f, pi);
  if (score.flag & kBadAllNegInf) {
    std::fill_n(pi, vocab, 1.0f / static_cast<float>(vocab));
    return;
  }
  const float scale = score.scale();
  for_chunks(vocab, [=](int64_t begin, int64_t end, int64_t) {
    for (int64_t v = begin; v < end; ++v) pi[v] *= scale;
  });
}

// One row of logits of each model (ref only for ImplicitReward).
template <typename T>
struct RowLogits {
  const T* p;
  const T* q;
  const T* ref;  // nullptr unless the rule needs it
};

// Row n of logits viewed as [N, V] rows: [N, V] itself, or [B, P, V] with n = b·P + i
// (verify's positions); each tensor keeps its own strides.
template <typename T>
class LogitRows {
 public:
  LogitRows(const at::Tensor& p, const at::Tensor& q, const c10::optional<at::Tensor>& ref, int64_t positions)
      : p_(view(p)), q_(view(q)), ref_(ref.has_value() ? view(*ref) : View{}), positions_(positions) {}

  RowLogits<T> row(int64_t n) const {
    const int64_t b = n / positions_, i = n % positions_;
    return {p_.at(b, i), q_.at(b, i), ref_.base == nullptr ? nullptr : ref_.at(b, i)};
  }

 private:
  struct View {
    const T* base = nullptr;
    int64_t stride_b = 0, stride_i = 0;
    const T* at(int64_t b, int64_t i) const { return base + b * stride_b + i * stride_i; }
  };
  static View view(const at::Tensor& x) {
    return {x.data_ptr<T>(), x.stride(0), x.dim() == 3 ? x.stride(1) : 0};
  }
  View p_, q_, ref_;
  int64_t positions_;
};

struct Mixed {
  float alpha;
  int32_t flag;   // 2 bad-logits bits per tensor: p, q, ref
  float q_scale;  // q_v = ws.q[v] · q_scale
};

// The mixture π of one row into pi [V]; leaves e_q in ws.q (verify's accept test and
// residual need q).  T = 0 (greedy) mixes at T = 1.
template <typename T>
Mixed mixture_row(int64_t kind, float param, float temperature, const RowLogits<T>& row, int64_t vocab,
                  Workspace& ws, float* pi) {
  const float inv_t = temperature > 0.0f ? 1.0f / temperature : 1.0f;
  const RowSoftmax sp = exp_row(row.p, vocab, inv_t, ws.p.data());
  const RowSoftmax sq = exp_row(row.q, vocab, inv_t, ws.q.data());
  if (kind == kImplicitReward) {
    const RowSoftmax sr = exp_row(row.ref, vocab, inv_t, ws.aux.data());
    implicit_reward_row(row.p, row.q, row.ref, vocab, temperature > 0.0f ? temperature : 1.0f, sp, sq, sr, pi);
    return {0.0f, sp.flag | (sq.flag << 2) | (sr.flag << 4), sq.scale()};
  }
  const float* ep = ws.p.data();
  const float p_scale = sp.scale(), q_scale = sq.scale();
  // max p = e^0 · scale: the arg-max's e is exactly 1 (exp_row).
  RowRule rule{param, 1.0f * p_scale, 1.0f * q_scale, 0.0f, 0u};
  if (kind == kSquared) rule.sum_p2 = row_sum(vocab, [ep, p_scale](int64_t v) { return (ep[v] * p_scale) * (ep[v] * p_scale); });
  const float* xp = nullptr;  // p's fp32 logits, the ranking of Primal
  if (kind == kPrimal) {
    float* logits = ws.aux.data();
    for_chunks(vocab, [&](int64_t begin, int64_t end, int64_t) {
      for (int64_t v = begin; v < end; ++v) logits[v] = load(row.p, v);
    });
    xp = logits;
    rule.primal_key = primal_key(xp, ep, p_scale, vocab, param, ws.candidates);
  }
  const float alpha = with_kind(kind, [&](auto k) {
    return defer_and_mix<decltype(k)::value>(ep, p_scale, ws.q.data(), q_scale, xp, vocab, rule, pi);
  });
  return {alpha, sp.flag | (sq.flag << 2), q_scale};
}

// Bad-logits bits of one row without computing anything else (verify's positions
// after a rejection still report their flags).
template <typename T>
int32_t row_flags(const RowLogits<T>& row, int64_t vocab) {
  int32_t flag = row_max(row.p, vocab).flag | (row_max(row.q, vocab).flag << 2);
  if (row.ref != nullptr) flag |= row_max(row.ref, vocab).flag << 4;
  return flag;
}

// arg-max of w [V], lowest index on ties (greedy rows, docs/design.md §1.2).
inline int64_t argmax(const float* w, int64_t vocab) {
  struct Best {
    float value;
    int64_t index;
  };
  auto slice_best = [w](int64_t begin, int64_t end) {
    float lane[kLanes];
    std::fill_n(lane, kLanes, -kInf);
    int64_t v = begin;
    for (; v + kLanes <= end; v += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lane[l] = w[v + l] > lane[l] ? w[v + l] : lane[l];
    for (; v < end; ++v) lane[0] = w[v] > lane[0] ? w[v] : lane[0];
    const float best = *std::max_element(lane, lane + kLanes);
    return Best{best, std::find(w + begin, w + end, best) - w};
  };
  // Chunks combine in order, so a tie keeps the earlier chunk's (lower) index.
  return reduce_chunks(vocab, Best{-kInf, 0}, slice_best, [](Best a, Best b) { return b.value > a.value ? b : a; })
      .index;
}

// Inverse CDF of non-negative weights w [V] (docs/design.md §2.4): the smallest v with
// Σ_{u<=v} w_u > u · Σ w, clamped to the last positive weight, with cumulative
// sums in double rounded to fp32 as torch.cumsum does on CPU.  Block sums first,
// so the sequential scan covers one block instead of the whole vocabulary.
class InverseCdf {
 public:
  static constexpr int64_t kBlock = kCdfBlock;

  InverseCdf(const float* w, int64_t vocab, std::vector<double>& blocks) : w_(w), vocab_(vocab), blocks_(blocks) {
    static_assert(kChunk % kBlock == 0, "a chunk holds whole blocks");
    double* sums = blocks.data();
    for_chunks(vocab, [w, sums](int64_t chunk_begin, int64_t chunk_end, int64_t) {
      for (int64_t start = chunk_begin; start < chunk_end; start += kBlock) {
        const int64_t end = std::min(start + kBlock, chunk_end);
        double lane[8] = {};
        int64_t v = start;
        for (; v + 8 <= end; v += 8)
          for (int64_t l = 0; l < 8; ++l) lane[l] += w[v + l];
        for (; v < end; ++v) lane[0] += w[v];
        double block = 0.0;
        for (double x : lane) block += x;
        sums[start / kBlock] = block;
      }
    });
    for (int64_t k = 0; k < (vocab + kBlock - 1) / kBlock; ++k) total_ += blocks_[k];
    last_positive_ = vocab - 1;  // also when no weight is positive, as reference.inverse_cdf
    for (int64_t v = vocab - 1; v >= 0; --v) {
      if (w[v] > 0.0f) {
        last_positive_ = v;
        break;
      }
    }
  }

  double total() const { return total_; }

  int64_t draw(float u) const {
    const float target = u * static_cast<float>(total_);
    double cumulative = 0.0;
    for (int64_t start = 0, k = 0; start < vocab_; start += kBlock, ++k) {
      if (static_cast<float>(cumulative + blocks_[k]) <= target) {
        cumulative += blocks_[k];
        continue;
      }
      const int64_t end = std::min(start + kBlock, vocab_);
      for (int64_t v = start; v < end; ++v) {
        cumulative += w_[v];
        if (static_cast<float>(cumulative) > target) return std::min(v, last_positive_);
      }
    }
    return last_positive_;
  }

 private:
  const float* w_;
  int64_t vocab_;
  std::vector<double>& blocks_;
  double total_ = 0.0;
  int64_t last_positive_;
};

// Uniform number `index` of a call: from the caller's tensor, or Philox at
// offset + counter (the counter layout of kad_kernels/_random.py).
class Uniforms {
 public:
  // `uniforms` (`count` f32 values) if given, else the Philox seed/offset (int64 [1] each).
  // The op is public (torch.ops.kad), so the sizes are checked here, not only in Python.
  Uniforms(const char* name, const c10::optional<at::Tensor>& uniforms, const c10::optional<at::Tensor>& seed,
           const c10::optional<at::Tensor>& offset, int64_t count) {
    if (uniforms.has_value()) {
      TORCH_CHECK(uniforms->device().is_cpu() && uniforms->scalar_type() == at::kFloat && uniforms->numel() == count,
                  "kad: ", name, " must be f32 with ", count, " values on the CPU, got ", uniforms->scalar_type(), " ",
                  uniforms->sizes());
      given_ = uniforms->contiguous();
      data_ = given_.data_ptr<float>();
      return;
    }
    TORCH_CHECK(seed.has_value() && offset.has_value(), "kad: pass ", name, ", or seed and offset for Philox");
    for (const at::Tensor* t : {&*seed, &*offset})
      TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->numel() == 1,
                  "kad: seed and offset must be int64 [1] on the CPU");
    seed_ = seed->item<int64_t>();
    offset_ = offset->item<int64_t>();
  }

  float at(int64_t index, int64_t counter) const {
    return data_ != nullptr ? data_[index] : philox_uniform(seed_, philox_counter(offset_, counter));
  }

 private:
  at::Tensor given_;
  const float* data_ = nullptr;
  int64_t seed_ = 0, offset_ = 0;
};

// Common argument checks of the three ops: logits [rows, V] (positions 0) or [B, positions, V].
// The public API validates more (values, drafts); these keep a direct torch.ops call in bounds.
inline void check_inputs(int64_t kind, const at::Tensor& p, const at::Tensor& q, const c10::optional<at::Tensor>& ref,
                         int64_t dims) {
  TORCH_CHECK(kind >= 0 && kind < kNumKinds, "kad: unknown rule kind ", kind);
  TORCH_CHECK(p.dim() == dims && p.size(-1) > 0, "kad: logits must be ", dims, "-D with a vocabulary, got ", p.sizes());
  for (const at::Tensor* t : {&p, &q}) {
    TORCH_CHECK(t->device().is_cpu(), "kad cpu backend: tensors must be on the CPU");
    TORCH_CHECK(t->stride(-1) == 1 || t->size(-1) == 1, "kad: logits must be contiguous in the last dim");
  }
  TORCH_CHECK(p.sizes() == q.sizes() && p.scalar_type() == q.scalar_type(), "kad: p and q must match");
  TORCH_CHECK(ref.has_value() == (kind == kImplicitReward), "kad: ref logits go with ImplicitReward, and only with it");
  if (ref.has_value())
    TORCH_CHECK(ref->device().is_cpu() && ref->sizes() == p.sizes() && ref->scalar_type() == p.scalar_type() &&
                    (ref->stride(-1) == 1 || ref->size(-1) == 1),
                "kad: ref must match p");
}

}  // namespace kad::cpu
