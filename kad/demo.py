"""``kad demo``: one GSM8K question answered by the base model, the aligned model,
KAD and speculative KAD, each answer streamed, then one table to compare them."""

from __future__ import annotations

from transformers import TextStreamer

import kad_kernels as kk

from .choices import GAMMA, LAM, Mode
from .decoding import Decoder
from .report import number
from .stats import GenerationStats
from .tasks import TASKS, TEMPERATURE

# (title, mode, rule) in the order they run: the two models alone, then KAD with
# the paper's dual rule (λ = LAM), one token at a time and speculatively (γ = GAMMA).
RUNS: tuple[tuple[str, Mode, kk.Rule | None], ...] = (
    ("base", "base", None),
    ("aligned", "aligned", None),
    (f"kad (dual λ={LAM:g})", "kad", kk.Dual(LAM)),
    (f"kad-spec (dual λ={LAM:g}, γ={GAMMA})", "kad-spec", kk.Dual(LAM)),
)


def table(rows: list[tuple[str, bool, GenerationStats]]) -> str:
    """Markdown table: correct?, tokens, tok/s, acceptance rate, mean α per run."""
    lines = ["| run | correct | tokens | tok/s | acceptance | mean α |", "|---|---|---|---|---|---|"]
    for title, correct, s in rows:
        lines.append(
            f"| {title} | {'yes' if correct else 'no'} | {s.new_tokens} | {s.tokens_per_s:.1f} "
            f"| {number(s.acceptance_rate, '.0%')} | {number(s.mean_alpha, '.3f')} |"
        )
    return "\n".join(lines)


def demo(decoder: Decoder, item_index: int = 0, seed: int = 0, max_new_tokens: int = 320) -> str:
    """Run :data:`RUNS` on GSM8K test item ``item_index``, print each answer as it is
    generated, then print and return the table."""
    task = TASKS["gsm8k"]
    item = task.load(item_index + 1)[item_index]
    print(f"GSM8K test item {item_index} (reference answer: {item.answer})\n\n{item.question}\n")
    rows = []
    for title, mode, rule in RUNS:
        print(f"── {title} " + "─" * max(0, 60 - len(title)))
        streamer = TextStreamer(decoder.tokenizer, skip_prompt=True, skip_special_tokens=True)
        out = decoder.generate(
            task.user_message(item),
            mode,
            rule,
            gamma=GAMMA,
            temperature=TEMPERATURE,
            max_new_tokens=max_new_tokens,
            seed=seed,
            chat=True,
            streamer=streamer,
        )
        extracted = task.extract(out.texts[0])
        correct = task.is_correct(extracted, item)
        print(f"\n[answer read: {extracted}; {'correct' if correct else 'wrong'}]\n")
        rows.append((title, correct, out.stats))
    result = table(rows)
    print(result)
    return result
