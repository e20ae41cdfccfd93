// Host-side dispatch shared by the CPU and CUDA launchers: the logits dtype and the
// rule kind become template arguments, so each (dtype, rule) loop compiles without
// a branch per token.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>

#include <type_traits>

#include "rules.h"

// AT_DISPATCH over the logits dtypes of docs/design.md §2.1 (fp32, bf16, fp16), scalar_t inside.
#define KAD_DISPATCH_LOGITS(TYPE, NAME, ...)                                              \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)    \
                                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__))

namespace kad {

// f(std::integral_constant<int64_t, KIND>{}) for the runtime kind of kad_kernels.rules.Kind.
template <typename F>
decltype(auto) with_kind(int64_t kind, F&& f) {
  switch (kind) {
    case kLogistic: return f(std::integral_constant<int64_t, kLogistic>{});
    case kPerceptron: return f(std::integral_constant<int64_t, kPerceptron>{});
    case kZeroOne: return f(std::integral_constant<int64_t, kZeroOne>{});
    case kSquared: return f(std::integral_constant<int64_t, kSquared>{});
    case kNudging: return f(std::integral_constant<int64_t, kNudging>{});
    case kMaxQMinus: return f(std::integral_constant<int64_t, kMaxQMinus>{});
    case kMaxQPlus: return f(std::integral_constant<int64_t, kMaxQPlus>{});
    case kMaxPPlus: return f(std::integral_constant<int64_t, kMaxPPlus>{});
    case kMinusMaxPPlus: return f(std::integral_constant<int64_t, kMinusMaxPPlus>{});
    case kPrimal: return f(std::integral_constant<int64_t, kPrimal>{});
    case kImplicitReward: return f(std::integral_constant<int64_t, kImplicitReward>{});
    default: TORCH_CHECK(false, "kad: unknown rule kind ", kind);
  }
}

}  // namespace kad
