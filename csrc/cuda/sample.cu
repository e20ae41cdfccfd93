// kad::native_sample on CUDA tensors: one token per row from π (docs/design.md §2.1).
// Sampled rows: the inverse CDF at u (uniforms[n], or Philox at offset + n), one
// slice scanned; greedy rows (T = 0): the arg-max of π, lowest index on ties.
#include <torch/library.h>

#include "launch.cuh"

namespace kad::cuda {
namespace {

// Block (n, j): a greedy row's blocks each find their slice's arg-max and the last
// one folds them; a sampled row needs block 0 only.
template <typename T, int64_t KIND>
__device__ void sample_phase(const Problem<T>& pr, const Uniforms& uniforms, int64_t* tokens, int64_t n, int j) {
  const RowState st = load_state(pr.state + n);
  if (pr.temperature_of(n) == 0.0f) {
    store_best(pr.slice_of(n, j), argmax_slice<T, KIND>(pr, st, n, j));
    if (!last_of(pr.ticket(n), pr.slices)) return;
    const int64_t token = fold_best(pr, n);
    if (threadIdx.x == 0) tokens[n] = token;
  } else if (j == 0) {
    const int64_t token = draw<T, KIND>(pr, st, n, uniforms.at(n, n), /*residual=*/false);
    if (threadIdx.x == 0) tokens[n] = token;
  }
}

// One block per row: every pass in one launch.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) sample_fused(const Problem<T> pr, const Uniforms uniforms, int64_t* tokens) {
  row_phases<T, KIND>(pr, blockIdx.x, 0);
  sample_phase<T, KIND>(pr, uniforms, tokens, blockIdx.x, 0);
}

// One block per (row, slice), after launch_row_phases.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) sample_slices(const Problem<T> pr, const Uniforms uniforms, int64_t* tokens) {
  sample_phase<T, KIND>(pr, uniforms, tokens, blockIdx.x / pr.slices, blockIdx.x % pr.slices);
}

std::tuple<at::Tensor, at::Tensor> sample(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const c10::optional<at::Tensor>& temperature, double temperature_value,
    const c10::optional<at::Tensor>& uniforms, const c10::optional<at::Tensor>& seed,
    const c10::optional<at::Tensor>& offset) {
  TORCH_CHECK(p.dim() == 2, "kad: sample takes logits [N, V], got ", p.sizes());
  const c10::DeviceGuard guard(p.device());
  const int64_t rows = p.size(0);
  at::Tensor tokens = at::empty({rows}, p.options().dtype(at::kLong));
  at::Tensor flags = at::empty({rows}, p.options().dtype(at::kInt));
  if (rows == 0) return {tokens, flags};
  const Setup setup(kind, row_params(param, param_value, temperature, temperature_value, p), p, q, ref, /*positions=*/1,
                    flags);
  at::Tensor kept_uniforms;
  const Uniforms u = make_uniforms("uniforms", uniforms, seed, offset, rows, p.device(), kept_uniforms);
  const cudaStream_t stream = current_stream(p.device());
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_sample", [&] {
    const Problem<scalar_t> pr = setup.problem<scalar_t>();
    with_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      if (pr.slices == 1) {
        sample_fused<scalar_t, KIND><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(pr, u, tokens.data_ptr<int64_t>());
      } else {
        launch_row_phases(pr, stream);
        sample_slices<scalar_t, KIND>
            <<<static_cast<unsigned>(rows * pr.slices), kThreads, 0, stream>>>(pr, u, tokens.data_ptr<int64_t>());
      }
      check_launch();
    });
  });
  return {tokens, flags};
}

}  // namespace
}  // namespace kad::cuda

TORCH_LIBRARY_IMPL(kad, CUDA, m) { m.impl("native_sample", &kad::cuda::sample); }
