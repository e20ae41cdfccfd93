// kad::native_verify on CPU tensors: speculative verification of γ drafts from q
// against the target π (docs/design.md §2.3).  A row is sequential: position i is mixed only
// if drafts 0..i−1 were accepted, so a rejection skips the rest of the row's work.
#include <torch/library.h>

#include "row.h"

namespace kad::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify(
    int64_t kind, const c10::optional<at::Tensor>& param, double param_value, const at::Tensor& p, const at::Tensor& q,
    const c10::optional<at::Tensor>& ref, const at::Tensor& draft, const c10::optional<at::Tensor>& temperature,
    double temperature_value,
    const c10::optional<at::Tensor>& accept_uniforms, const c10::optional<at::Tensor>& draw_uniforms,
    const c10::optional<at::Tensor>& seed, const c10::optional<at::Tensor>& offset) {
  check_inputs(kind, p, q, ref, 3);
  const int64_t batch = p.size(0), positions = p.size(1), vocab = p.size(2), gamma = positions - 1;
  const RowParams rp = row_params(param, param_value, temperature, temperature_value, p);
  TORCH_CHECK(draft.dim() == 2 && draft.size(0) == batch && draft.size(1) == gamma,
              "kad: draft must be [", batch, ", ", gamma, "]");
  const at::Tensor drafts = draft.to(at::kLong).contiguous();
  // Philox counters: offset + b·(γ+1) + i for accept coin i, offset + b·(γ+1) + γ for the draw.
  const Uniforms accept_u("accept uniforms", accept_uniforms, seed, offset, batch * gamma);
  const Uniforms draw_u("draw uniforms", draw_uniforms, seed, offset, batch);
  at::Tensor tokens = at::full({batch, positions}, -1, p.options().dtype(at::kLong));
  at::Tensor num_accepted = at::empty({batch}, p.options().dtype(at::kLong));
  at::Tensor flags = at::empty({batch, positions}, p.options().dtype(at::kInt));
  const int64_t* draft_tokens = drafts.data_ptr<int64_t>();
  int64_t* tokens_out = tokens.data_ptr<int64_t>();
  int64_t* accepted_out = num_accepted.data_ptr<int64_t>();
  int32_t* flags_out = flags.data_ptr<int32_t>();
  KAD_DISPATCH_LOGITS(p.scalar_type(), "kad_cpu_verify", [&] {
    const LogitRows<scalar_t> logits(p, q, ref, positions);
    for_rows(batch, [&](int64_t b) {
      Workspace& ws = Workspace::local(vocab);
      float* pi = ws.aux.data();
      const bool greedy = rp.temperature.of(b) == 0.0f;
      int64_t i = 0;
      for (;; ++i) {
        const int64_t n = b * positions + i;
        const Mixed mixed = mixture_row(kind, rp.param.of(b), rp.temperature.of(b), logits.row(n), vocab, ws, pi);
        flags_out[n] = mixed.flag;
        const float* eq = ws.q.data();
        const float q_scale = mixed.q_scale;
        const int64_t target = greedy ? argmax(pi, vocab) : -1;
        if (i == gamma) {  // every draft accepted: the bonus token from π_γ
          tokens_out[n] = greedy ? target : InverseCdf(pi, vocab, ws.blocks).draw(draw_u.at(b, n));
          break;
        }
        const int64_t x = draft_tokens[b * gamma + i];
        // Accept x with probability min(1, π(x) / q(x)): u · q(x) < π(x).  An unchecked
        // (check=False) draft outside the vocabulary has π = q = 0 and fails, as on CUDA.
        const bool in_vocab = 0 <= x && x < vocab;
        const bool accept =
            in_vocab && (greedy ? x == target : accept_u.at(b * gamma + i, n) * (eq[x] * q_scale) < pi[x]);
        if (accept) {
          tokens_out[n] = x;
          continue;
        }
        if (greedy) {
          tokens_out[n] = target;
          break;
        }
        // Rejected: draw from the residual max(π − q, 0), or from π if it is empty.
        // π − q = p(1 − d) + (α − 1) q is positive on kept tokens only
        // (docs/design.md §1.1).
        float* residual = ws.p.data();
        for_chunks(vocab, [=](int64_t begin, int64_t end, int64_t) {
          for (int64_t v = begin; v < end; ++v) residual[v] = std::max(pi[v] - eq[v] * q_scale, 0.0f);
        });
        const InverseCdf from_residual(residual, vocab, ws.blocks);
        const float u = draw_u.at(b, b * positions + gamma);
        tokens_out[n] = from_residual.total() > 0.0 ? from_residual.draw(u) : InverseCdf(pi, vocab, ws.blocks).draw(u);
        break;
      }
      accepted_out[b] = i;
      for (int64_t j = i + 1; j < positions; ++j) flags_out[b * positions + j] = row_flags(logits.row(b * positions + j), vocab);
    });
  });
  return {tokens, num_accepted, flags};
}

}  // namespace

TORCH_LIBRARY_IMPL(kad, CPU, m) { m.impl("native_verify", &verify); }

}  // namespace kad::cpu
