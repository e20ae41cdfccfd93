// kad::native_mixture on CPU tensors: π [N, V] and α [N] (docs/design.md §1.1), for tests
// and analysis.
#include <torch/library.h>

#include "row.h"

namespace kad::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixture(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const c10::optional<at::Tensor>& temperature, double temperature_value) {
  check_inputs(kind, p, q, ref, 2);
  const int64_t rows = p.size(0), vocab = p.size(1);
  const RowParams rp = row_params(param, param_value, temperature, temperature_value, p);
  at::Tensor probs = at::empty({rows, vocab}, p.options().dtype(at::kFloat));
  at::Tensor alpha = at::empty({rows}, p.options().dtype(at::kFloat));
  at::Tensor flags = at::empty({rows}, p.options().dtype(at::kInt));
  float* probs_out = probs.data_ptr<float>();
  float* alpha_out = alpha.data_ptr<float>();
  int32_t* flags_out = flags.data_ptr<int32_t>();
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_cpu_mixture", [&] {
    const LogitRows<scalar_t> logits(p, q, ref, 1);
    for_rows(rows, [&](int64_t n) {
      Workspace& ws = Workspace::local(vocab);
      const Mixed mixed =
          mixture_row(kind, rp.param.of(n), rp.temperature.of(n), logits.row(n), vocab, ws, probs_out + n * vocab);
      alpha_out[n] = mixed.alpha;
      flags_out[n] = mixed.flag;
    });
  });
  return {probs, alpha, flags};
}

}  // namespace

TORCH_LIBRARY_IMPL(kad, CPU, m) { m.impl("native_mixture", &mixture); }

}  // namespace kad::cpu
