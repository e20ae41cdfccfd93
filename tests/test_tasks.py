r"""Evaluation tasks (kad.tasks): loading, the paper's prompts, answer extraction and grading.

Extraction cases are written like the chain-of-thought answers instruct models
give; each states the strict (paper) reading and the better (``strict=False``) one.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from kad.tasks import SYSTEM_PROMPT, TASKS, ChoiceTask, Item, chat_messages

COUNTS = {"gsm8k": 1319, "math500": 500, "svamp": 1000, "arc": 1172, "csqa": 1221, "tqa": 817}
MC_FOOTER = (
    "Provide your reasoning about the answer and finish your answer with the letter "
    "corresponding to the correct option (e.g., A, B, C, or D).\n\n"
)


def file_rows(name: str) -> list[dict]:
    """The task's test set as stored, independently of Task.load."""
    text = (resources.files("kad") / "data" / TASKS[name].filename).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", COUNTS)
def test_every_task_loads_its_whole_test_set(name):
    items = TASKS[name].load()
    assert len(items) == COUNTS[name]
    assert len({item.id for item in items}) == len(items)
    assert all(item.question and item.answer for item in items)


@pytest.mark.parametrize("name", COUNTS)
def test_limit_takes_the_first_items(name):
    task = TASKS[name]
    assert task.load(limit=3) == task.load()[:3]
    assert task.load(limit=0) == []


@pytest.mark.parametrize("name", ["arc", "csqa", "tqa"])
def test_choice_items_fit_their_task(name):
    task = TASKS[name]
    assert isinstance(task, ChoiceTask)
    for item in task.load():
        assert 2 <= len(item.choices) <= task.max_options
        assert "A" <= item.answer < chr(ord("A") + len(item.choices))


@pytest.mark.parametrize("name", ["arc", "csqa"])
def test_unshuffled_choices_keep_the_file_order(name):
    for item, row in zip(TASKS[name].load(), file_rows(name), strict=True):
        assert item.choices == tuple(choice["text"] for choice in row["choices"])
        assert item.answer == row["answer"]


def test_truthfulqa_choices_are_shuffled_per_item_with_a_fixed_seed():
    task = TASKS["tqa"]
    items = task.load()
    assert task.load() == items  # deterministic
    assert task.load(limit=5) == items[:5]  # an item's order does not depend on the others
    for item, row in zip(items, file_rows("tqa"), strict=True):
        texts = [choice["text"] for choice in row["choices"]]
        assert sorted(item.choices) == sorted(texts)
        # The file lists the correct answer first; the letter follows it.
        assert item.choices[ord(item.answer) - ord("A")] == texts[row["correct_index"]] == texts[0]
    letters = Counter(item.answer for item in items)
    assert letters["A"] < len(items) / 3 and len(letters) >= 5
    reseeded = task.load(seed=1)
    assert sum(a.choices != b.choices for a, b in zip(items, reseeded)) > len(items) / 2


# ---------------------------------------------------------------- prompts


def test_choice_prompt_is_the_papers_template():
    item = TASKS["csqa"].load(limit=1)[0]
    assert TASKS["csqa"].user_message(item) == (
        "Choose the correct answer to the following multiple-choice question.\n\n"
        "Question: A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?\n\n"
        "A). bank\nB). library\nC). department store\nD). mall\nE). new york\n"
        "\n" + MC_FOOTER
    )


def test_choice_prompt_shows_the_shuffled_order():
    item = Item("x", "Is the sky blue?", "B", ("No.", "Yes."))
    assert TASKS["tqa"].user_message(item) == (
        "Choose the correct answer to the following multiple-choice question.\n\n"
        "Question: Is the sky blue?\n\nA). No.\nB). Yes.\n\n" + MC_FOOTER
    )


@pytest.mark.parametrize("name", ["gsm8k", "svamp"])
def test_word_problem_prompt_is_the_bare_question(name):
    item, row = TASKS[name].load(limit=1)[0], file_rows(name)[0]
    assert TASKS[name].user_message(item) == row["question"]


def test_math_prompt_asks_for_a_boxed_answer():
    item = TASKS["math500"].load(limit=1)[0]
    assert TASKS["math500"].user_message(item) == (
        "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer in "
        "the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$"
        "\n\nPresent the answer in LaTex format: \\boxed{Your answer}"
    )


def test_chat_messages():
    assert SYSTEM_PROMPT == "Answer the question by walking through the reasoning step by step."
    assert chat_messages("What is 2 + 2?") == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    assert chat_messages("What is 2 + 2?", None) == [{"role": "user", "content": "What is 2 + 2?"}]


# ---------------------------------------------------------------- extraction


GSM_OUTPUT = (
    "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4, so she uses 3 + 4 = 7 eggs.\n"
    "That leaves 16 - 7 = 9 eggs, which she sells for $2 each: 9 * $2 = $18.\n"
    "The answer is 18."
)


@pytest.mark.parametrize(
    "text, strict, better",
    [
        (GSM_OUTPUT, "18", "18"),
        ("The new roof costs 1,000 + 234 = $1,234 in total.", "1234", "1234"),
        ("It was 3 degrees and fell by 8, so it is now 3 - 8 = -5 degrees.", "-5", "-5"),
        ("Each notebook costs $2.50, so 3 notebooks cost 3 * 2.50 = $7.50.", "7.50", "7.50"),
        ("The problem does not say how many apples there are, so it cannot be answered.", None, None),
        ("", None, None),
        # Paper: the last number wins even after the final answer.
        ("So she makes \\boxed{18} dollars a day, 2 more than the 16 eggs suggest.", "16", "18"),
        ("Each friend gets 1/2 of the pizza.", "2", "1/2"),
        ("Each friend gets $\\boxed{\\frac{3}{4}}$ of the pizza.", "4", "3/4"),
        ("The price went down by 25%.", "25", "25%"),
        # Paper: every comma goes, digit groups or not.
        ("The two numbers are 3,4", "34", "4"),
    ],
)
def test_number_extraction(text, strict, better):
    task = TASKS["gsm8k"]
    assert task.extract(text) == strict
    assert task.extract(text, strict=False) == better


@pytest.mark.parametrize(
    "text, strict, better",
    [
        (
            "Since $r = \\sqrt{0^2 + 3^2} = 3$ and the point lies on the positive $y$-axis, $\\theta = "
            "\\frac{\\pi}{2}$. The answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        ("The probability is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "\\frac{1}{2}"),
        ("Solving $2x - 3 = 7$ gives $\\boxed{x = 5}$.", "5", "x = 5"),
        ("First I got $\\boxed{3}$, but I dropped a sign; the answer is $\\boxed{-4}$.", "-4", "-4"),
        ("Adding them up gives 7, so the answer is 7.", None, None),
        ("So the sum is $\\boxed{\\frac{1}{", None, None),  # cut off by the token limit
        ("The answer is $\\fbox{7}$.", None, "7"),
    ],
)
def test_math_extraction(text, strict, better):
    task = TASKS["math500"]
    assert task.extract(text) == strict
    assert task.extract(text, strict=False) == better


@pytest.mark.parametrize(
    "name, text, strict, better",
    [
        ("arc", "A planet that spins faster has shorter days. The answer is C.", "C", "C"),
        ("arc", "I think (C) is right... so the answer is B", "B", "B"),
        ("arc", "**Answer: D**", "D", "D"),
        ("csqa", "Banks need security, so the best choice is \\boxed{A}.", "A", "A"),
        ("csqa", "Because a revolving door slows people down, banks use them.", None, None),
        ("csqa", "", None, None),
        # Paper: the pronoun "I" and the article "A" count as answers.
        ("arc", "The answer is (B). I hope this helps!", "I", "B"),
        ("csqa", "The correct answer is: (C). A mall has many doors.", "A", "C"),
        # Paper: only A-J; TruthfulQA's shuffled 13 options need A-M, or answers K-M could never score.
        ("tqa", "So the answer is K.", "K", "K"),
        ("tqa", "So the answer is N.", None, None),
        ("arc", "So the answer is K.", None, None),
    ],
)
def test_choice_extraction(name, text, strict, better):
    task = TASKS[name]
    assert task.extract(text) == strict
    assert task.extract(text, strict=False) == better


# ---------------------------------------------------------------- grading


NUMBER_GRADES = [
    ("18", "18", True, True),
    ("17", "18", False, False),
    (None, "18", False, False),
    ("18.00", "18", False, True),
    ("1/2", "0.5", False, True),
    ("50%", "50", False, True),
    ("50%", "0.5", False, True),
    ("50%", "5", False, False),
]


@pytest.mark.parametrize(
    "task_name, extracted, reference, strict, better",
    [("svamp", *case) for case in NUMBER_GRADES]
    + [("math500", *case) for case in [
        ("\\frac{14}{3}", "\\frac{14}{3}", True, True),
        ("\\frac{14}{3}.", "\\frac{14}{3}", True, True),
        ("\\frac{14}{5}", "\\frac{14}{3}", False, False),
        (None, "\\frac{14}{3}", False, False),
        ("\\dfrac{14}{3}", "\\frac{14}{3}", False, True),
        ("\\tfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", False, True),
        ("14/3", "\\frac{14}{3}", False, True),
        ("1.25", "\\frac{5}{4}", False, True),
        ("5.0", "5", False, True),
        ("(2.0, -1)", "(2,-1)", False, True),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", False, True),
        ("90", "90^\\circ", False, True),
        ("Evelyn", "\\text{Evelyn}", False, True),
        ("11\\sqrt{2}", "11\\sqrt2", False, True),
        ("3, 5, 7", "3,5,7", False, True),
        ("36", "\\$36", False, True),  # the escaped dollar goes with its backslash
        ("32,348", "\\$32,\\!348", False, True),
        ("\\$18.90", "\\$18.90", True, True),
        ("\\sqrt{2}", "\\sqrt{3}", False, False),
        # Answers with "=": the paper keeps what follows the last "=" on both sides.
        ("x = 5", "5", False, True),
        ("2x + 3", "y = 2x + 3", True, True),
        ("y=2x+3", "y = 2x + 3", False, True),
        ("0", "5x - 7y + 11z + 4 = 0", True, False),
        ("5x-7y+11z+4=0", "5x - 7y + 11z + 4 = 0", False, True),
    ]],
)
def test_grading(task_name, extracted, reference, strict, better):
    """Strict (the paper's) and better (strict=False) grading of one extracted answer."""
    task, item = TASKS[task_name], Item("q", "question", reference)
    assert task.is_correct(extracted, item) is strict
    assert task.is_correct(extracted, item, strict=False) is better


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name, seed", [(name, 0) for name in COUNTS] + [("tqa", 3)])
def test_every_reference_answer_grades_correct_and_others_do_not(name, seed, strict):
    """A model that ends with the reference answer scores on every item, one that ends with another does
    not; TruthfulQA at another seed too (its shuffle puts some correct options at K-M)."""
    task = TASKS[name]
    for item in task.load(seed=seed):
        if isinstance(task, ChoiceTask):
            right, wrong = item.answer, "B" if item.answer == "A" else "A"
        elif name == "math500":
            right, wrong = f"\\boxed{{{item.answer}}}", f"\\boxed{{{item.answer}+1}}"
        else:
            right, wrong = item.answer, str(int(item.answer) + 1)
        for answer, expected in ((right, True), (wrong, False)):
            text = f"Putting it all together, the answer is {answer}."
            assert task.is_correct(task.extract(text, strict), item, strict) is expected, (item.id, text)
