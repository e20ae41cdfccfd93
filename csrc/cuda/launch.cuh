// The host side of the CUDA kernels: argument checks, the slice layout of docs/design.md §4,
// scratch memory, dispatch over dtype and rule, the stream.
#pragma once

// Only torch's device-generic headers: c10/cuda and ATen/cuda need the CUDA build of
// torch (and cuSPARSE headers), which the compile check of CI does not have.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kad/dispatch.h"
#include "kad/row_value.h"
#include "row.cuh"

namespace kad::cuda {

// The slice layout (docs/design.md §4): about kBlocksPerSm blocks in flight per SM, slices of
// at least kMinSlice tokens (8–16k).
constexpr int kBlocksPerSm = 4;
constexpr int64_t kMinSlice = 4 * kChunk;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_cuda(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "kad cuda backend: ", cudaGetErrorString(status));
}

// After each launch: a bad configuration shows here rather than at the next sync.
inline void check_launch() { check_cuda(cudaGetLastError()); }

// torch's current stream of `device` (at::cuda::getCurrentCUDAStream, reached through
// the device-generic guard interface).
inline cudaStream_t current_stream(const at::Device& device) {
  return static_cast<cudaStream_t>(c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle());
}

// The checked inputs of one call, the slice layout and the scratch memory of its
// kernels (kept alive here until they are queued; the caching allocator orders reuse
// by stream).
class Setup {
 public:
  // Logits [rows, V] (positions = 1) or [B, positions, V]; params of the B rows.
  Setup(int64_t kind, const RowParams& params, const at::Tensor& p, const at::Tensor& q,
        const c10::optional<at::Tensor>& ref, int64_t positions, const at::Tensor& flags)
      : kind_(kind), positions_(positions), params_(params), p_(p), q_(q), flags_(flags) {
    TORCH_CHECK(kind >= 0 && kind < kNumKinds, "kad: unknown rule kind ", kind);
    TORCH_CHECK(p.is_cuda() && q.device() == p.device(), "kad cuda backend: p and q must be on one CUDA device");
    TORCH_CHECK(p.sizes() == q.sizes() && p.scalar_type() == q.scalar_type(),
                "kad: p and q must have one shape and dtype, got ", p.sizes(), " ", p.scalar_type(), " and ",
                q.sizes(), " ", q.scalar_type());
    TORCH_CHECK(ref.has_value() == (kind == kImplicitReward), "kad: ref logits go with ImplicitReward, and only with it");
    if (ref.has_value()) {
      TORCH_CHECK(ref->device() == p.device() && ref->sizes() == p.sizes() && ref->scalar_type() == p.scalar_type(),
                  "kad: ref must match p in shape, dtype and device");
      ref_ = *ref;
    }
    vocab_ = p.size(-1);
    rows_ = p.numel() / (vocab_ > 0 ? vocab_ : 1);
    TORCH_CHECK(vocab_ > 0 && vocab_ < INT32_MAX, "kad: the vocabulary size must lie in [1, 2^31), got ", vocab_);
    TORCH_CHECK(rows_ % positions == 0, "kad: ", rows_, " rows are not a whole number of ", positions, " positions");
    for (const at::Tensor* t : {&p_, &q_, &ref_})
      TORCH_CHECK(!t->defined() || t->stride(-1) == 1 || vocab_ == 1, "kad: logits must be contiguous in the last dim");
    TORCH_INTERNAL_ASSERT(flags.is_contiguous() && flags.scalar_type() == at::kInt && flags.numel() == rows_);

    // One block per row when the rows alone fill the GPU, else slices.
    int sms = 0;
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.get_device()));
    const int64_t most = std::min<int64_t>(ceil_div(vocab_, kMinSlice), kMaxSlices);
    const int64_t wanted = std::max<int64_t>(1, std::min(ceil_div(int64_t{kBlocksPerSm} * sms, rows_), most));
    slice_len_ = wanted > 1 ? ceil_div(ceil_div(vocab_, kChunk), wanted) * kChunk : vocab_;
    slices_ = static_cast<int32_t>(ceil_div(vocab_, slice_len_));
    if (slices_ == 1) slice_len_ = vocab_;
    TORCH_CHECK(rows_ * slices_ < INT32_MAX, "kad: too many rows for one launch: ", rows_);

    aligned_ = rows_aligned(p_) && rows_aligned(q_) && (!ref_.defined() || rows_aligned(ref_));

    const auto bytes = p.options().dtype(at::kByte);
    const int64_t slice_bytes = rows_ * slices_ * static_cast<int64_t>(sizeof(SliceStats));
    scratch_ = at::empty({slice_bytes + rows_ * static_cast<int64_t>(sizeof(RowState))}, bytes);
    const bool tickets = slices_ > 1 || positions > 1;
    const bool hist = kind == kPrimal && slices_ > 1;
    ticket_bytes_ = tickets ? ceil_div(rows_ * 4, 16) * 16 : 0;
    if (tickets || hist)
      zeroed_ = at::zeros({ticket_bytes_ + (hist ? rows_ * kDigits * 8 : 0)}, bytes);
    hist_ = hist;
  }

  template <typename T>
  Problem<T> problem() const {
    Problem<T> pr;
    pr.p = rows_view<T>(p_);
    pr.q = rows_view<T>(q_);
    pr.ref = rows_view<T>(ref_);
    pr.param = params_.param;
    pr.temperature = params_.temperature;
    pr.kind = kind_;
    pr.rows = rows_;
    pr.vocab = vocab_;
    pr.positions = positions_;
    pr.slice_len = slice_len_;
    pr.slices = slices_;
    pr.aligned = aligned_;
    uint8_t* scratch = scratch_.data_ptr<uint8_t>();
    pr.slice = reinterpret_cast<SliceStats*>(scratch);
    pr.state = reinterpret_cast<RowState*>(scratch + rows_ * slices_ * sizeof(SliceStats));
    uint8_t* zeroed = zeroed_.defined() ? zeroed_.data_ptr<uint8_t>() : nullptr;
    pr.tickets = ticket_bytes_ > 0 ? reinterpret_cast<int32_t*>(zeroed) : nullptr;
    pr.hist = hist_ ? reinterpret_cast<unsigned long long*>(zeroed + ticket_bytes_) : nullptr;
    pr.flags = flags_.data_ptr<int32_t>();
    return pr;
  }

 private:
  // Every row of `t` starts on 16 bytes: the 16-byte vector loads apply.
  static bool rows_aligned(const at::Tensor& t) {
    bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    for (int64_t d = 0; d + 1 < t.dim(); ++d)
      ok = ok && (t.size(d) == 1 || t.stride(d) * t.element_size() % 16 == 0);
    return ok;
  }

  template <typename T>
  Rows<T> rows_view(const at::Tensor& t) const {
    if (!t.defined()) return {nullptr, 0, 0};
    return {t.data_ptr<T>(), t.stride(0), t.dim() == 3 ? t.stride(1) : 0};
  }

  int64_t kind_, positions_, rows_ = 0, vocab_ = 0, slice_len_ = 0, ticket_bytes_ = 0;
  int32_t slices_ = 1;
  bool aligned_ = false, hist_ = false;
  RowParams params_;
  at::Tensor p_, q_, ref_, flags_, scratch_, zeroed_;
};

// The uniforms of `count` draws: the caller's f32 tensor, or the Philox seed/offset
// (int64 [1] on the device, so a CUDA graph replays with new values).
inline Uniforms make_uniforms(const char* name, const c10::optional<at::Tensor>& given,
                              const c10::optional<at::Tensor>& seed, const c10::optional<at::Tensor>& offset,
                              int64_t count, const at::Device& device, at::Tensor& keep) {
  if (given.has_value()) {
    TORCH_CHECK(given->device() == device && given->scalar_type() == at::kFloat && given->numel() == count, "kad: ",
                name, " must be f32 with ", count, " values on the logits' device, got ", given->sizes());
    keep = given->contiguous();
    return {keep.data_ptr<float>(), nullptr, nullptr};
  }
  TORCH_CHECK(seed.has_value() && offset.has_value(), "kad: pass ", name, ", or seed and offset for Philox");
  for (const at::Tensor* t : {&*seed, &*offset})
    TORCH_CHECK(t->device() == device && t->scalar_type() == at::kLong && t->numel() == 1,
                "kad: seed and offset must be int64 [1] on the logits' device");
  return {nullptr, seed->data_ptr<int64_t>(), offset->data_ptr<int64_t>()};
}

}  // namespace kad::cuda
