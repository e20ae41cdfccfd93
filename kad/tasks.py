r"""Evaluation tasks of ``kad eval``: the paper's six benchmarks, their prompts and grading.

A :class:`Task` loads its test set from the JSONL files shipped in ``kad/data``
(sources and licences in ``kad/data/README.md`` and ``LICENSES.md``), writes
the user message of the paper's zero-shot chain-of-thought protocol, pulls the
final answer out of a generation and grades it::

    task = TASKS["gsm8k"]
    item = task.load(limit=1)[0]
    messages = kad.decoding.chat_messages(task.user_message(item))  # for tokenizer.apply_chat_template
    text = ...  # generate with TEMPERATURE and MAX_NEW_TOKENS
    task.is_correct(task.extract(text), item)

The paper's protocol is the default: the system message ``kad.SYSTEM_PROMPT`` in
the aligned model's chat template, no exemplars, sampling at ``TEMPERATURE``
for at most ``MAX_NEW_TOKENS`` tokens, answers read the paper's way
(``strict=True``) and compared as strings:

* ``gsm8k``, ``svamp``: the last number of the text, commas removed;
* ``math500``: the last ``\boxed{...}``, the part after its last ``=``;
* ``arc``, ``csqa``, ``tqa``: the last standalone capital letter A–J (A–M for
  ``tqa``, whose 13 options the paper's A–J could not all read).

``strict=False`` reads and compares answers better, so that scores measure
the model rather than its formatting: the answer the model states ("the answer
is (B)", a box, "#### 18") over whatever follows it, numeric equivalence, LaTeX
normalization; its scores are not comparable with the paper's.  Both readings
are in :mod:`kad.answers` (docs/design.md §5.7).
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from string import ascii_uppercase

from . import answers

# Sampling settings of the paper's evaluations.
TEMPERATURE = 1.0
MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class Item:
    """One test question.

    ``answer`` is the reference answer: a number (``"18"``), a LaTeX
    expression (``"\\frac{14}{3}"``) or an option letter (``"C"``).  ``choices`` are the option texts of a multiple-choice
    question in the order they are shown, labelled A, B, ... (empty otherwise)."""

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task(ABC):
    """A benchmark: its test set (``filename`` in ``kad/data``), prompt and grading."""

    name: str
    filename: str

    def load(self, limit: int | None = None, seed: int = 0) -> list[Item]:
        """The first ``limit`` items of the test set (all of them if ``None``), in
        file order.  ``seed`` fixes the option order of a task that shuffles its
        choices and is ignored by the others."""
        path = resources.files(__package__) / "data" / self.filename
        with path.open(encoding="utf-8") as lines:
            return [self._item(json.loads(line), seed) for line in islice(lines, limit)]

    def _item(self, row: dict, seed: int) -> Item:
        return Item(row["id"], row["question"], row["answer"])

    @abstractmethod
    def user_message(self, item: Item) -> str:
        """The user turn of the paper's prompt for ``item``."""

    @abstractmethod
    def extract(self, text: str, strict: bool = True) -> str | None:
        """The final answer given in the generated ``text``, ``None`` if there is none."""

    def is_correct(self, extracted: str | None, item: Item, strict: bool = True) -> bool:
        """Whether ``extracted`` (from :meth:`extract` with the same ``strict``)
        answers ``item``; a missing answer is wrong."""
        return extracted is not None and self._matches(extracted, item.answer, strict)

    @abstractmethod
    def _matches(self, extracted: str, reference: str, strict: bool) -> bool: ...


@dataclass(frozen=True)
class NumberTask(Task):
    """Word problems with a numeric answer (GSM8K, SVAMP), prompted with the bare question."""

    def user_message(self, item: Item) -> str:
        return item.question

    def extract(self, text: str, strict: bool = True) -> str | None:
        """The last number (:func:`~kad.answers.last_number`); not strict: the
        stated one (:func:`~kad.answers.stated_number`)."""
        return answers.last_number(text) if strict else answers.stated_number(text)

    def _matches(self, extracted: str, reference: str, strict: bool) -> bool:
        if strict:
            return answers.trim(extracted) == answers.trim(reference)
        return answers.same_number(extracted, reference)


# The paper's instruction after a MATH problem, so that the answer can be found.
_MATH_INSTRUCTION = "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"


@dataclass(frozen=True)
class MathTask(Task):
    """Competition problems with a LaTeX answer (MATH500)."""

    def user_message(self, item: Item) -> str:
        return item.question + _MATH_INSTRUCTION

    def extract(self, text: str, strict: bool = True) -> str | None:
        """The content of the last ``\\boxed{...}``, the part after its last ``=``
        (:func:`~kad.answers.paper_boxed`).  Not strict: the last closed box (an
        earlier one when the generation was cut off inside a later), ``\\fbox{...}``
        counts too, and the content stays whole: :meth:`is_correct` decides about ``=``."""
        if strict:
            return answers.paper_boxed(text)
        return answers.last_braced(text, ("\\boxed", "\\fbox"), closed=True)

    def _matches(self, extracted: str, reference: str, strict: bool) -> bool:
        if strict:
            # The reference is cut at "=" too: the paper read both sides with one function.
            return answers.trim(extracted) == answers.trim(reference.split("=")[-1])
        return answers.same_latex(extracted, reference)


_MC_HEADER = "Choose the correct answer to the following multiple-choice question.\n\n"
_MC_FOOTER = (
    "Provide your reasoning about the answer and finish your answer with the letter "
    "corresponding to the correct option (e.g., A, B, C, or D).\n\n"
)
# The paper reads A–J; a task with more options reads up to its last one (TruthfulQA's 13:
# its shuffle puts correct options at K–M, which A–J could never read).
_PAPER_LAST_LETTER = "J"


@dataclass(frozen=True)
class ChoiceTask(Task):
    """Multiple-choice questions (ARC-Challenge, CommonsenseQA, TruthfulQA MC1)
    with at most ``max_options`` options.  With ``shuffle`` the options are put
    in a fixed random order per item: TruthfulQA lists the correct one first."""

    max_options: int
    shuffle: bool = False

    def _item(self, row: dict, seed: int) -> Item:
        labels = [choice["label"] for choice in row["choices"]]
        # Indices rather than texts: a few CommonsenseQA items repeat an option text.
        order = list(range(len(labels)))
        if self.shuffle:
            # Seeded by the item, so that the order does not depend on `limit` or on the other items.
            random.Random(f"{seed}:{row['id']}").shuffle(order)
        return Item(
            row["id"],
            row["question"],
            ascii_uppercase[order.index(labels.index(row["answer"]))],
            tuple(row["choices"][i]["text"] for i in order),
        )

    def user_message(self, item: Item) -> str:
        options = "".join(f"{letter}). {text}\n" for letter, text in zip(ascii_uppercase, item.choices))
        return f"{_MC_HEADER}Question: {item.question}\n\n{options}\n{_MC_FOOTER}"

    def extract(self, text: str, strict: bool = True) -> str | None:
        """The last standalone capital letter A–J (up to the last option's letter
        for a task of more than 10 options; :func:`~kad.answers.last_capital`).
        Not strict: the stated letter among this task's options
        (:func:`~kad.answers.stated_letter`)."""
        last = ascii_uppercase[self.max_options - 1]
        if strict:
            return answers.last_capital(text, max(last, _PAPER_LAST_LETTER))
        return answers.stated_letter(text, last)

    def _matches(self, extracted: str, reference: str, strict: bool) -> bool:
        return extracted == reference


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        NumberTask("gsm8k", "gsm8k.jsonl"),
        MathTask("math500", "math500.jsonl"),
        NumberTask("svamp", "svamp.jsonl"),
        ChoiceTask("arc", "arc_challenge.jsonl", max_options=5),
        ChoiceTask("csqa", "commonsenseqa.jsonl", max_options=5),
        ChoiceTask("tqa", "truthfulqa_mc1.jsonl", max_options=13, shuffle=True),
    )
}
