// Passes 1–2 of docs/design.md §4 for small batches: each pass is one launch over all
// (row, slice) blocks, block x = n·S + j; the last block of a row folds the slices'
// partials into its state (row.cuh).  Large batches run the same phases inside the
// fused kernels of mixture.cu, sample.cu and verify.cu instead.
#include "launch.cuh"

namespace kad::cuda {
namespace {

template <typename T, bool kRef>
__global__ void __launch_bounds__(kThreads) stats_kernel(const Problem<T> pr) {
  stats_phase<T, kRef>(pr, blockIdx.x / pr.slices, blockIdx.x % pr.slices);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) primal_kernel(const Problem<T> pr, int level) {
  primal_phase(pr, blockIdx.x / pr.slices, blockIdx.x % pr.slices, level);
}

template <typename T, int64_t KIND>
__global__ void __launch_bounds__(kThreads) mass_kernel(const Problem<T> pr) {
  mass_phase<T, KIND>(pr, blockIdx.x / pr.slices, blockIdx.x % pr.slices);
}

}  // namespace

template <typename T>
void launch_row_phases(const Problem<T>& pr, cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(pr.rows * pr.slices);
  with_kind(pr.kind, [&](auto kind) {
    constexpr int64_t KIND = decltype(kind)::value;
    stats_kernel<T, KIND == kImplicitReward><<<grid, kThreads, 0, stream>>>(pr);
    check_launch();
    if constexpr (KIND == kPrimal) {
      for (int level = 0; level < kLevels; ++level) {
        primal_kernel<T><<<grid, kThreads, 0, stream>>>(pr, level);
        check_launch();
      }
    }
    if constexpr (KIND != kImplicitReward) {
      mass_kernel<T, KIND><<<grid, kThreads, 0, stream>>>(pr);
      check_launch();
    }
  });
}

template void launch_row_phases<float>(const Problem<float>&, cudaStream_t);
template void launch_row_phases<c10::BFloat16>(const Problem<c10::BFloat16>&, cudaStream_t);
template void launch_row_phases<c10::Half>(const Problem<c10::Half>&, cudaStream_t);

}  // namespace kad::cuda
