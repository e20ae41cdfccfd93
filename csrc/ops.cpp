// The operator schemas of the C++ backends and the Python module that carries them.
//
// One schema per operation, implemented per device by csrc/cpu/*.cpp (dispatch
// key CPU) and csrc/cuda/*.cu (key CUDA), so `cpu` and `cuda` are the same ops
// on different tensors.  Arguments are those of the backend interface in
// kad_kernels/_backend.py (called by kad_kernels/_native.py): kind = kad_kernels.rules.Kind; param and temperature
// f32 [B], or (tensor None) one float for every row (kad/row_value.h); flags int32
// with 2 bits per input tensor (p, q, ref).  Fake (meta)
// implementations are registered in kad_kernels/_native.py.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kad, m) {
  // probs f32 [N, V], alpha f32 [N], flags i32 [N]
  m.def("native_mixture(int kind, Tensor? param, float param_value, Tensor p, Tensor q, Tensor? ref,"
        " Tensor? temperature, float temperature_value)"
        " -> (Tensor, Tensor, Tensor)");
  // tokens i64 [N], flags i32 [N]; uniforms f32 [N], or seed/offset i64 [1] (Philox)
  m.def("native_sample(int kind, Tensor? param, float param_value, Tensor p, Tensor q, Tensor? ref,"
        " Tensor? temperature, float temperature_value, Tensor? uniforms, Tensor? seed, Tensor? offset) -> (Tensor, Tensor)");
  // tokens i64 [B, γ+1], num_accepted i64 [B], flags i32 [B, γ+1]
  m.def("native_verify(int kind, Tensor? param, float param_value, Tensor p, Tensor q, Tensor? ref,"
        " Tensor draft, Tensor? temperature, float temperature_value, Tensor? accept_uniforms, Tensor? draw_uniforms, Tensor? seed,"
        " Tensor? offset) -> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "kad_kernels C++/CUDA backends: the ops live in torch.ops.kad.native_*";
#ifdef KAD_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
}
