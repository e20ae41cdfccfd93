// kad::native_mixture on CUDA tensors: π [N, V] written out and α [N] (docs/design.md §1.1),
// for analysis and tests.  The only op with an [N, V] output; it reads p and q
// once more to write it.
#include <torch/library.h>

#include "launch.cuh"

namespace kad::cuda {
namespace {

// π of slice j of row n into probs [N, V]; block j = 0 also writes α.
template <typename T, int64_t KIND>
__device__ void mixture_phase(const Problem<T>& pr, float* probs, float* alpha, int64_t n, int j) {
  constexpr int kN = kVec<T>;
  const RowState st = load_state(pr.state + n);
  if (j == 0 && threadIdx.x == 0) alpha[n] = st.alpha;
  const RowPtrs<T> r = pr.rows_of(n);
  float* out = probs + n * pr.vocab;
  const bool vector_stores = pr.vocab % 4 == 0;  // every row of probs then starts on 16 bytes
  const int64_t end = pr.end(j);
  for_each_vec<T>(pr.start(j), end, [&](int64_t col) {
    float pi[kN], q[kN];
    mixture_vec<T, KIND>(pr, r, st, col, end, pi, q);
    if (vector_stores && col + kN <= end) {
#pragma unroll
      for (int k = 0; k < kN; k += 4)
        *reinterpret_cast<float4*>(out + col + k) = make_float4(pi[k], pi[k + 1], pi[k + 2], pi[k + 3]);
    } else {
#pragma unroll
      for (int k = 0; k < kN; ++k)
        if (col + k < end) out[col + k] = pi[k];
    }
  });
}

// One block per row: every pass in one launch.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) mixture_fused(const Problem<T> pr, float* probs, float* alpha) {
  row_phases<T, KIND>(pr, blockIdx.x, 0);
  mixture_phase<T, KIND>(pr, probs, alpha, blockIdx.x, 0);
}

// One block per (row, slice), after launch_row_phases.
template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) mixture_slices(const Problem<T> pr, float* probs, float* alpha) {
  mixture_phase<T, KIND>(pr, probs, alpha, blockIdx.x / pr.slices, blockIdx.x % pr.slices);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixture(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const c10::optional<at::Tensor>& temperature, double temperature_value) {
  TORCH_CHECK(p.dim() == 2, "kad: mixture takes logits [N, V], got ", p.sizes());
  const c10::DeviceGuard guard(p.device());
  const int64_t rows = p.size(0), vocab = p.size(1);
  const auto f32 = p.options().dtype(at::kFloat);
  at::Tensor probs = at::empty({rows, vocab}, f32);
  at::Tensor alpha = at::empty({rows}, f32);
  at::Tensor flags = at::empty({rows}, p.options().dtype(at::kInt));
  if (rows == 0) return {probs, alpha, flags};
  const Setup setup(kind, row_params(param, param_value, temperature, temperature_value, p), p, q, ref, /*positions=*/1,
                    flags);
  const cudaStream_t stream = current_stream(p.device());
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_mixture", [&] {
    const Problem<scalar_t> pr = setup.problem<scalar_t>();
    with_kind(kind, [&](auto k) {
      constexpr int64_t KIND = decltype(k)::value;
      if (pr.slices == 1) {
        mixture_fused<scalar_t, KIND><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(pr, probs.data_ptr<float>(), alpha.data_ptr<float>());
      } else {
        launch_row_phases(pr, stream);
        mixture_slices<scalar_t, KIND><<<static_cast<unsigned>(rows * pr.slices), kThreads, 0, stream>>>(pr, probs.data_ptr<float>(),
                                                                                   alpha.data_ptr<float>());
      }
      check_launch();
    });
  });
  return {probs, alpha, flags};
}

}  // namespace
}  // namespace kad::cuda

TORCH_LIBRARY_IMPL(kad, CUDA, m) { m.impl("native_mixture", &kad::cuda::mixture); }
