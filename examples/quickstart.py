"""Quickstart: KAD mixtures, sampling and one speculative step on random logits (CPU).

    python examples/quickstart.py

p is the large base model, q the small aligned model (q* in the paper).  A rule
picks the deferral mask d; the target is π = p⊙(1−d) + α q with α = Σ_v p_v d_v.
"""

import torch

import kad_kernels as kk

B, V, GAMMA = 4, 32000, 4
torch.manual_seed(0)



def fake_logits(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for the two models' next-token logits: each of p and q puts a random
    share of its mass on one favourite token (so rows differ in confidence), and
    the two favourites agree about half the time."""
    noise = 2.0 * torch.randn(*shape)
    top_p = torch.randint(V, (*shape[:-1], 1))
    top_q = torch.where(torch.rand(top_p.shape) < 0.5, top_p, torch.randint(V, top_p.shape))
    p = noise.scatter(-1, top_p, 10.0 + 5.0 * torch.rand(top_p.shape))
    q = (noise + torch.randn(*shape)).scatter(-1, top_q, 10.0 + 5.0 * torch.rand(top_q.shape))
    return p, q


p_logits, q_logits = fake_logits(B, V)

# 1. The mixture π and the deferred mass α for two KAD rules.
for rule in (kk.Dual(0.4), kk.Primal(0.9)):
    mix = kk.mixture(p_logits, q_logits, rule)
    alphas = ", ".join(f"{a:.3f}" for a in mix.alpha.tolist())
    print(f"{rule!r:<34} alpha per row = [{alphas}]   sum(pi) = {mix.probs.sum(-1).mean():.4f}")

# 2. One token per row from π (reproducible with a seeded generator).
rule = kk.Dual(0.4)
gen = torch.Generator().manual_seed(1234)
tokens = kk.sample(p_logits, q_logits, rule, temperature=1.0, generator=gen)
print(f"\nsample  -> tokens {tokens.tolist()}")

# 3. One speculative step: q drafts GAMMA tokens, π verifies them.  In a real loop
# the draft model runs GAMMA times and the base model scores all GAMMA+1
# positions in one forward pass; here every position gets fresh random logits.
p_steps, q_steps = fake_logits(B, GAMMA + 1, V)
q_probs = torch.softmax(q_steps[:, :GAMMA].float(), dim=-1)
drafts = torch.multinomial(q_probs.reshape(B * GAMMA, V), 1, generator=gen).view(B, GAMMA)

out = kk.verify(p_steps, q_steps, drafts, rule, temperature=1.0, generator=gen)
print(f"verify  drafts        {drafts.tolist()}")
print(f"        tokens        {out.tokens.tolist()}   (-1 = not emitted)")
print(f"        num_accepted  {out.num_accepted.tolist()}   (each row emits num_accepted + 1 tokens)")
print(f"\nbackends available here: {kk.available_backends()}")
