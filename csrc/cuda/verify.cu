// kad::native_verify on CUDA tensors: speculative verification of draft [B, γ]
// (drawn from q) against the target π (docs/design.md §2.3).  Logits [B, γ+1, V] are the
// N = B·(γ+1) rows of passes 1–2; then, per batch row b:
//
//   sampled  accept x_i iff u_i q_i(x_i) < π_i(x_i), in order: point evaluations,
//            one thread per position, no pass over V.  At the stop n < γ the
//            residual max(π_n − q_n, 0) (positive only on kept tokens, since
//            π − q = p(1 − d) + (α − 1) q) needs its slice masses: one pass over
//            row n; then one slice of it is scanned.  All accepted: the bonus
//            token from π_γ, whose slice masses the statistics give.
//   greedy   accept x_i iff x_i = argmax π_i: the arg-max of every position (in
//            the fused kernel each position's own block finds it before the
//            ticket), folded by the last block.
#include <torch/library.h>

#include "launch.cuh"

namespace kad::cuda {
namespace {

struct VerifyArgs {
  const void* draft;  // [B, γ], int32 or int64
  bool draft_int64;
  Uniforms accept;    // index b·γ + i, Philox counter b·(γ+1) + i
  Uniforms draw;      // index b, Philox counter b·(γ+1) + γ
  int64_t* tokens;    // [B, γ+1]
  int64_t* accepted;  // [B]

  __device__ __forceinline__ int64_t draft_at(int64_t b, int64_t i, int64_t gamma) const {
    return draft_int64 ? static_cast<const int64_t*>(draft)[b * gamma + i]
                       : static_cast<const int32_t*>(draft)[b * gamma + i];
  }
};

// The number of drafts of batch row b accepted in a row: the first i whose coin fails
// u_i · q_i(x_i) < π_i(x_i) (γ if none).  Every position is tested at once, one per
// thread; an out-of-vocabulary draft has π = q = 0 and fails.
template <typename T, int64_t KIND>
__device__ int64_t accept_chain(const Problem<T>& pr, const VerifyArgs& a, int64_t b) {
  const int64_t positions = pr.positions, gamma = positions - 1;
  int64_t reject = gamma;
  for (int64_t i = threadIdx.x; i < gamma; i += kThreads) {
    const int64_t n = b * positions + i, x = a.draft_at(b, i, gamma);
    PiQ at{0.0f, 0.0f};
    if (x >= 0 && x < pr.vocab) at = mixture_at_token<T, KIND>(pr, load_state(pr.state + n), n, x);
    const float u = a.accept.at(b * gamma + i, n);
    if (!(__fmul_rn(u, at.q) < at.pi) && i < reject) reject = i;
  }
  return block_reduce(reject, [](int64_t x, int64_t y) { return x < y ? x : y; });
}

// Σ max(π − q, 0) over slice j of row n.
template <typename T, int64_t KIND>
__device__ float residual_slice(const Problem<T>& pr, const RowState& st, int64_t n, int j) {
  constexpr int kN = kVec<T>;
  const RowPtrs<T> r = pr.rows_of(n);
  const int64_t end = pr.end(j);
  float sum = 0.0f;
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float pi[kN], q[kN];
    mixture_vec<T, KIND>(pr, r, st, col, end, pi, q);
#pragma unroll
    for (int k = 0; k < kN; ++k) sum += residual_weight(pi[k], q[k]);
  });
  return block_reduce(sum, [](float x, float y) { return x + y; });
}

// Writes batch row b's tokens: the accepted drafts, `token` at position `stop`, −1 after.
template <typename T>
__device__ void write_tokens(const Problem<T>& pr, const VerifyArgs& a, int64_t b, int64_t stop, int64_t token) {
  const int64_t positions = pr.positions, gamma = positions - 1;
  for (int64_t i = threadIdx.x; i < positions; i += kThreads)
    a.tokens[b * positions + i] = i < stop ? a.draft_at(b, i, gamma) : i == stop ? token : -1;
  if (threadIdx.x == 0) a.accepted[b] = stop;
}

// Greedy batch row b, once every position's arg-max partials are in: accept x_i iff it
// is the arg-max of π_i; emit the arg-max at the first mismatch, or at position γ.
template <typename T>
__device__ void greedy_finish(const Problem<T>& pr, const VerifyArgs& a, int64_t b) {
  const int64_t gamma = pr.positions - 1;
  for (int64_t i = 0;; ++i) {
    const int64_t token = fold_best(pr, b * pr.positions + i);
    if (i == gamma || a.draft_at(b, i, gamma) != token) {
      write_tokens(pr, a, b, i, token);
      return;
    }
  }
}

// Sampled batch row b, slice j: the stop (the accept chain) and this slice's share of
// the residual mass there, if a draft was rejected.
template <typename T, int64_t KIND>
__device__ int64_t sampled_slice(const Problem<T>& pr, const VerifyArgs& a, int64_t b, int j) {
  const int64_t stop = accept_chain<T, KIND>(pr, a, b);
  if (stop < pr.positions - 1) {
    const int64_t n = b * pr.positions + stop;
    const float mass = residual_slice<T, KIND>(pr, load_state(pr.state + n), n, j);
    if (threadIdx.x == 0) pr.slice_of(n, j)->residual = mass;
  }
  return stop;
}

// Sampled batch row b, once the residual partials are in: the draw at the stop.
template <typename T, int64_t KIND>
__device__ void sampled_finish(const Problem<T>& pr, const VerifyArgs& a, int64_t b, int64_t stop) {
  const int64_t gamma = pr.positions - 1, n = b * pr.positions + stop;
  const float u = a.draw.at(b, b * pr.positions + gamma);
  write_tokens(pr, a, b, stop, draw<T, KIND>(pr, load_state(pr.state + n), n, u, stop < gamma));
}

// One block per row n: passes 1–2, a greedy row's arg-max, and the last of the γ+1 rows
// of batch row b to finish verifies it — a single launch.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) verify_fused(const Problem<T> pr, const VerifyArgs a) {
  const int64_t n = blockIdx.x, b = n / pr.positions;
  row_phases<T, KIND>(pr, n, 0);
  const bool greedy = pr.temperature_of(n) == 0.0f;
  if (greedy) store_best(pr.slice_of(n, 0), argmax_slice<T, KIND>(pr, load_state(pr.state + n), n, 0));
  if (!last_of(pr.ticket(b), pr.positions)) return;
  if (greedy)
    greedy_finish(pr, a, b);
  else
    sampled_finish<T, KIND>(pr, a, b, sampled_slice<T, KIND>(pr, a, b, 0));
}

// One block per (batch row b, slice j), after launch_row_phases: the slice's share of
// the passes over V (every position's arg-max, or the residual at the stop); the last
// block of b folds them.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) verify_slices(const Problem<T> pr, const VerifyArgs a) {
  const int64_t b = blockIdx.x / pr.slices;
  const int j = blockIdx.x % pr.slices;
  const int64_t first = b * pr.positions;
  if (pr.temperature_of(first) == 0.0f) {
    for (int64_t n = first; n < first + pr.positions; ++n)
      store_best(pr.slice_of(n, j), argmax_slice<T, KIND>(pr, load_state(pr.state + n), n, j));
    if (!last_of(pr.ticket(b), pr.slices)) return;
    greedy_finish(pr, a, b);
  } else {
    const int64_t stop = sampled_slice<T, KIND>(pr, a, b, j);
    if (!last_of(pr.ticket(b), pr.slices)) return;
    sampled_finish<T, KIND>(pr, a, b, stop);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const at::Tensor& draft, const c10::optional<at::Tensor>& temperature,
    double temperature_value,
    const c10::optional<at::Tensor>& accept_uniforms, const c10::optional<at::Tensor>& draw_uniforms,
    const c10::optional<at::Tensor>& seed, const c10::optional<at::Tensor>& offset) {
  TORCH_CHECK(p.dim() == 3, "kad: verify takes logits [B, γ+1, V], got ", p.sizes());
  const c10::DeviceGuard guard(p.device());
  const int64_t batch = p.size(0), positions = p.size(1), gamma = positions - 1;
  TORCH_CHECK(positions >= 1, "kad: verify needs γ+1 >= 1 positions, got ", p.sizes());
  TORCH_CHECK(draft.device() == p.device() && (draft.scalar_type() == at::kLong || draft.scalar_type() == at::kInt) &&
                  draft.dim() == 2 && draft.size(0) == batch && draft.size(1) == gamma,
              "kad: draft must be int32/int64 [", batch, ", ", gamma, "] on the logits' device, got ", draft.sizes());
  TORCH_CHECK(accept_uniforms.has_value() == draw_uniforms.has_value(),
              "kad: pass both accept and draw uniforms, or neither (Philox)");
  const auto options = p.options();
  at::Tensor tokens = at::empty({batch, positions}, options.dtype(at::kLong));
  at::Tensor accepted = at::empty({batch}, options.dtype(at::kLong));
  at::Tensor flags = at::empty({batch, positions}, options.dtype(at::kInt));
  if (batch == 0) return {tokens, accepted, flags};
  const Setup setup(kind, row_params(param, param_value, temperature, temperature_value, p), p, q, ref, positions,
                    flags);
  const at::Tensor drafts = draft.contiguous();
  at::Tensor kept_accept, kept_draw;
  VerifyArgs args;
  args.draft = drafts.data_ptr();
  args.draft_int64 = drafts.scalar_type() == at::kLong;
  args.accept = make_uniforms("accept uniforms", accept_uniforms, seed, offset, batch * gamma, p.device(), kept_accept);
  args.draw = make_uniforms("draw uniforms", draw_uniforms, seed, offset, batch, p.device(), kept_draw);
  args.tokens = tokens.data_ptr<int64_t>();
  args.accepted = accepted.data_ptr<int64_t>();
  const cudaStream_t stream = current_stream(p.device());
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_verify", [&] {
    const Problem<scalar_t> pr = setup.problem<scalar_t>();
    with_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      if (pr.slices == 1) {
        verify_fused<scalar_t, KIND><<<static_cast<unsigned>(pr.rows), kThreads, 0, stream>>>(pr, args);
      } else {
        launch_row_phases(pr, stream);
        verify_slices<scalar_t, KIND><<<static_cast<unsigned>(batch * pr.slices), kThreads, 0, stream>>>(pr, args);
      }
      check_launch();
    });
  });
  return {tokens, accepted, flags};
}

}  // namespace
}  // namespace kad::cuda

TORCH_LIBRARY_IMPL(kad, CUDA, m) { m.impl("native_verify", &kad::cuda::verify); }
