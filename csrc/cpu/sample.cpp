// kad::native_sample on CPU tensors: one token per row from π (docs/design.md §2.1).
#include <torch/library.h>

#include "row.h"

namespace kad::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> sample(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const c10::optional<at::Tensor>& temperature, double temperature_value,
    const c10::optional<at::Tensor>& uniforms, const c10::optional<at::Tensor>& seed,
    const c10::optional<at::Tensor>& offset) {
  check_inputs(kind, p, q, ref, 2);
  const int64_t rows = p.size(0), vocab = p.size(1);
  const RowParams rp = row_params(param, param_value, temperature, temperature_value, p);
  const Uniforms u("uniforms", uniforms, seed, offset, rows);
  at::Tensor tokens = at::empty({rows}, p.options().dtype(at::kLong));
  at::Tensor flags = at::empty({rows}, p.options().dtype(at::kInt));
  int64_t* tokens_out = tokens.data_ptr<int64_t>();
  int32_t* flags_out = flags.data_ptr<int32_t>();
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_cpu_sample", [&] {
    const LogitRows<scalar_t> logits(p, q, ref, 1);
    for_rows(rows, [&](int64_t n) {
      Workspace& ws = Workspace::local(vocab);
      float* pi = ws.aux.data();
      const float t = rp.temperature.of(n);
      flags_out[n] = mixture_row(kind, rp.param.of(n), t, logits.row(n), vocab, ws, pi).flag;
      tokens_out[n] = t == 0.0f ? argmax(pi, vocab) : InverseCdf(pi, vocab, ws.blocks).draw(u.at(n, n));
    });
  });
  return {tokens, flags};
}

}  // namespace

TORCH_LIBRARY_IMPL(kad, CPU, m) { m.impl("native_sample", &sample); }

}  // namespace kad::cpu
