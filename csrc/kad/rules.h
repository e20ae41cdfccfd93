// The deferral rules of docs/design.md §1.3 for one token, shared by the CPU and CUDA kernels.
// Kind values mirror kad_kernels.rules.Kind; the reference is deferral_mask() in
// kad_kernels/reference.py.
#pragma once

#include <cstdint>

#include "philox.h"  // KAD_HOST_DEVICE

namespace kad {

enum Kind : int64_t {
  kLogistic = 0,        // p_v < lam
  kPerceptron = 1,      // max p - p_v > mu
  kZeroOne = 2,         // [p_v < max p] > mu
  kSquared = 3,         // 1 - 2 p_v + ||p||^2 > mu
  kNudging = 4,         // max p < lam, every v at once
  kMaxQMinus = 5,       // p_v < max q - lam
  kMaxQPlus = 6,        // p_v < max q + lam
  kMaxPPlus = 7,        // q_v < max p + lam
  kMinusMaxPPlus = 8,   // q_v > max p + lam
  kPrimal = 9,          // logit_key(x_v) < primal_key (the radix-selected threshold)
  kImplicitReward = 10  // not a mask: pi ∝ p q / q_ref
};
constexpr int64_t kNumKinds = 11;

// Bits of the per-row bad-logits flag (reference.BAD_*), 2 per input tensor: p, q, ref.
constexpr int32_t kBadNonfinite = 1;
constexpr int32_t kBadAllNegInf = 2;

// A rule as one row applies it: its parameter and the row's quantities that a mask
// needs besides p_v, q_v and the logit x_v of p_v.
struct RowRule {
  float param;           // lam, mu or the primal budget
  float max_p, max_q;    // max_v p_v, max_v q_v
  float sum_p2;          // Σ p_v², for the squared loss
  uint32_t primal_key;   // defer v iff logit_key(x_v) < primal_key (Primal only)
};

// A key that orders like the logit x (an fp32 value; bf16 and fp16 logits convert
// exactly): p rises with x, so Primal ranks tokens by it, and equal logits, the
// genuine ties, share a key (−0 is folded into +0; docs/design.md §1.4).  Negative
// floats order backwards in their bits, so their bits are flipped, positives go above.
KAD_HOST_DEVICE uint32_t logit_key(float x) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(x == 0.0f ? 0.0f : x);
#else
  const float folded = x == 0.0f ? 0.0f : x;
  __builtin_memcpy(&bits, &folded, sizeof bits);
#endif
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// d_v of docs/design.md §1.3 for the token with probabilities p, q and p-logit x.  KIND
// is a template argument so each rule's loop compiles (and vectorizes) without a branch
// per token.
template <int64_t KIND>
KAD_HOST_DEVICE bool defers(float p, float q, float x, const RowRule& rule) {
  const float param = rule.param;
  if constexpr (KIND == kLogistic) return p < param;
  if constexpr (KIND == kPerceptron) return rule.max_p - p > param;
  if constexpr (KIND == kZeroOne) return (p < rule.max_p ? 1.0f : 0.0f) > param;
  if constexpr (KIND == kSquared) return 1.0f - 2.0f * p + rule.sum_p2 > param;
  if constexpr (KIND == kNudging) return rule.max_p < param;
  if constexpr (KIND == kMaxQMinus) return p < rule.max_q - param;
  if constexpr (KIND == kMaxQPlus) return p < rule.max_q + param;
  if constexpr (KIND == kMaxPPlus) return q < rule.max_p + param;
  if constexpr (KIND == kMinusMaxPPlus) return q > rule.max_p + param;
  if constexpr (KIND == kPrimal) return logit_key(x) < rule.primal_key;
  return false;
}

}  // namespace kad
