r"""Evaluation tasks (kad.tasks): loading, the paper's prompts, answer extraction and grading.

Extraction cases are written like the chain-of-thought answers instruct models
give; each states the strict (paper) reading and the better (``strict=False``) one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources

import pytest

from kad.decoding import SYSTEM_PROMPT, chat_messages
from kad.tasks import TASKS, ChoiceTask, Item

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
    assert chat_messages("What is 2 + 2?", "") == [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("system_prompt", [5, 0, False, ["be brief"]], ids=repr)
def test_a_system_prompt_that_is_not_text_is_refused(system_prompt):
    """A template would print it (5 as "5") or, if falsy, drop the system turn without a word."""
    with pytest.raises(TypeError, match=f"system_prompt must be a str or None, got {re.escape(repr(system_prompt))}"):
        chat_messages("What is 2 + 2?", system_prompt)


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
        # Better: LaTeX digit-group separators and the Unicode minus are read as such.
        ("The answer is $\\boxed{1,\\!080}$.", "080", "1080"),
        ("The answer is $\\boxed{1{,}080}$.", "080", "1080"),
        ("The answer is $\\boxed{1\\,080}$.", "080", "1080"),
        ("The temperature fell to \u22123 degrees.", "3", "-3"),
        # Better: the stated answer wins over numbers after it, and its sentence's last number is it.
        ("The answer is 18.\n\nNote: she keeps 2 eggs for tomorrow.", "2", "18"),
        ("#### 18\n\nCheck: 16 - 3 - 4 = 9 eggs.", "9", "18"),
        ("The answer is: she makes 16 - 7 = 9 eggs, 9 * $2 = $18.50 a day.", "18.50", "18.50"),
        ("The answer is $\\boxed{18 \\text{ dollars (from 9 eggs)}}$", "9", "18"),
        ("The answer is 20... no: I counted twice. So \\boxed{18}, as 2 + 16 = 18", "18", "18"),
        # Better: a stated answer is its first number, or the first after its last "=", up to
        # the end of its clause (a period, ";", "(", the line).
        ("The answer is 18 eggs, not 20.", "20", "18"),
        ("The answer is 20; she gives away 2.", "2", "20"),
        ("#### 18 dollars (9 eggs * $2)", "2", "18"),
        ("The answer is 20 (after giving away 2).", "2", "20"),
        ("The answer is (18). Check: 16 - 7 = 9 eggs.", "9", "18"),
        ("The answer is 18 dollars, which is 2 more than 16.", "16", "18"),
        # Better: "####" is a marker only before a number (not a markdown heading); "because"
        # ends a stated answer; a later remark giving no number leaves the statement before it.
        ("#### Step 1: Eggs\n#### Step 3: Conclusion\nJanet makes $18 every day.", "18", "18"),
        ("#### 1. Eggs laid\n16 eggs.\n#### 3. Eggs sold\n9 * $2 = $18.\n\nJanet makes $18 a day.", "18", "18"),
        # Better: a stated answer goes on to the next line only when that line opens with the number.
        ("Answer:\nStep 1: The ducks lay 16 eggs.\nStep 2: 9 * 2 = $18.\n\nSo she makes $18.", "18", "18"),
        ("**Answer:**\n\n**18** dollars.\n\nCheck: 16 - 7 = 9 eggs.", "9", "18"),
        ("The answer is 12 because x = 12 satisfies 3x = 36.", "36", "12"),
        ("So $\\boxed{18}$.\n\nWe can check that the answer is reasonable.", "18", "18"),
        ("So the answer is 18.\n\nThis answer is reasonable because she sells 9 eggs.", "9", "18"),
        # Better: a box cut off by the token limit leaves the one before it.
        ("So $\\boxed{18}$. Check: $\\boxed{9 \\times", "9", "18"),
        # Better: a number is read whole, not as its whole part or its digits (each was read "5").
        ("The answer is .5 hours.", "5", ".5"),
        ("It takes him \\boxed{5\\frac{1}{2}} hours.", "2", "11/2"),
        ("The answer is 5 1/2 hours.", "2", "11/2"),
        ("The answer is -$5.", "5", "-5"),
        # Better: a minus opening the stated answer is its sign, spaced or not; not one between numbers.
        ("The answer is \\boxed{- 5}", "5", "-5"),
        ("The answer is \\boxed{x = - 5}", "5", "-5"),
        ("**Answer:** - 12 dollars", "12", "12"),  # a bullet's dash
        ("It fell 10 - 3 = 7 degrees", "7", "7"),
        ("The answer is $\\boxed{-\\$5}$.", "5", "-5"),
        ("So it costs $10 - $3 = $7 in all, 1/2 of it tax.", "2", "1/2"),  # no sign: "- $3" is a difference
        ("It takes 1 2/4 hours, about 5 3/2 pieces.", "2", "3/2"),  # 5 3/2 is no mixed number
        ("The answer is 1,234 1/2 dollars.", "2", "2469/2"),
        ("The answer is 6 1/4-pound bags.", "4", "6"),  # a unit, not a mixed number
        ("Version 2.5 came out.", "2.5", "2.5"),
        # Better: LaTeX's math delimiters are no aside; a numbered list after "Answer:" is no answer.
        ("So the answer is \\(18\\). She keeps 3 eggs.", "3", "18"),
        ("**Answer:** \\(18\\) dollars. She keeps 3.", "3", "18"),
        ("The answer is:\n\\[\n18\n\\]\nShe keeps 3 eggs.", "3", "18"),
        ("### Final Answer:\n1. Eggs per day: 16\n2. Sold: 9 * $2 = $18", "18", "18"),
        ("Answer:\n18. She has 3 more than 15 apples", "15", "18"),  # one item is no list: a sentence
        ("The answer is 18 \\(= 9 \\times 2\\) dollars.", "2", "18"),  # math after the number is an aside
        ("So the answer is 9 \\(= 16 - 3 - 4\\) eggs.", "4", "9"),
        ("**Answer:**\n1. Janet's ducks lay 16 eggs.\n2. She makes $18.", "18", "18"),
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
        ("So $\\boxed{5}$.\nCheck: $\\boxed{\\frac{1}{", None, "5"),
        ("So $x = \\boxed{\u22124}$.", "\u22124", "\u22124"),  # the Unicode minus (graded as -4 below)
    ],
)
def test_math_extraction(text, strict, better):
    task = TASKS["math500"]
    assert task.extract(text) == strict
    assert task.extract(text, strict=False) == better


REJECTED = "Option B says plants absorb light; wrong.\nOption C is wrong too.\n"
LISTING = ("Let's analyze each option:\nA. density - incorrect.\nB. years - incorrect.\nC. days - correct.\n"
           "D. gravity - incorrect.\n\n")
OPTIONS = "Let's analyze each option:\n\nA) mall - busy, but no special need.\nB) bank - needs security.\nC) library\n\n"


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
        # Better: phrases that state an answer, wherever the letter stands in them ...
        ("csqa", OPTIONS + "The best answer would be B.", "B", "B"),
        ("csqa", OPTIONS + "Therefore, B is the correct answer.", "B", "B"),
        ("tqa", "Option I is the correct one.", "I", "I"),
        ("arc", "The final answer is $\\boxed{\\text{B}}$. A plant needs light.", "A", "B"),
        ("csqa", "The answer is b.", None, "B"),
        # ... but not an option's header, "another option is", the article A or the pronoun I.
        ("arc", "Another option is A, but it is wrong. So the correct one must be C.", "C", "C"),
        ("csqa", "**Answer:** A revolving door keeps heat in. Banks need security, so B.", "B", "B"),
        ("tqa", "Answer: I would go with B.", "B", "B"),
        ("csqa", "B is the best fit. A bank needs security.", "A", "B"),
        # ... and A or I going on about themselves are letters ("A is", "I because").
        ("arc", REJECTED + "Therefore, A is the answer.", "A", "A"),
        ("arc", REJECTED + "The answer is A because it fits.", "A", "A"),
        ("arc", "The correct answer is A since it conducts heat.", "A", "A"),
        ("tqa", "Option I is the truthful statement, so I is the answer.", "I", "I"),
        # Better: not a letter of a list after "Answer:", nor "X is correct" going on, nor "X is the best <noun>".
        ("arc", "Answer: (A) and (C) are both wrong; B", "B", "B"),
        ("arc", "Answer: B and C are wrong, so A.", "A", "A"),
        ("arc", "The answer is C. D is correct only for mammals.", "D", "C"),
        # ... but "X is correct" ending its line, or in bold, is a statement.
        ("arc", "C is correct\nA is wrong: rotation does not change density.", "A", "C"),
        ("arc", "**C is correct**\n\nA is wrong: rotation does not change density.", "A", "C"),
        ("arc", "**C is the correct answer**\n\nA is wrong.", "A", "C"),
        ("arc", "_C is right_. A is wrong.", "A", "C"),
        ("arc", "The answer is B. Note: A is the best insulator, not conductor.", "A", "B"),
        ("arc", "The answer is B. Note that A is the correct answer only if it asked about shops.", "A", "B"),
        # Better: a listing of the options is no answer; one option restated is.
        ("csqa", OPTIONS + "The bank is where security matters most.", "C", None),
        ("arc", "Option A is tempting, but no.\n\nB) It conducts heat.", "B", "B"),
        # Better: the article after a stated letter is no second letter; markdown and quotes around it.
        ("arc", "The correct answer is C, a chart. Options A and B are incorrect.", "B", "C"),
        ("arc", "The correct answer is option **C**. Option A is incorrect.", "A", "C"),
        ("arc", "Thus the answer is 'E'.", "E", "E"),
        ("arc", "Thus the answer is 'A'. I checked.", "I", "A"),
        ("arc", "Answer: (a) or (c) are wrong; B", "B", "B"),
        # Better: mid-sentence after "the answer is", a capital A is the letter (the article is "a")
        # and so is an I going on about itself; "I was" is the pronoun.
        ("tqa", "Options C and D are myths. So the answer is A in this case.", "A", "A"),
        ("tqa", "Options C and D are myths. The correct answer is I which says nothing happens.", "I", "I"),
        ("csqa", "So the answer is a bank.", None, None),
        ("tqa", "So I'd pick D. I was careful to check.", "I", "D"),
        # Better: a letter glued to a digit names no option ("group 18 (8A)", "B12").
        ("arc", "Thus the best match is D, group 18 (8A)", "D", "D"),
        ("tqa", "D. Vitamin B12 helps.", "D", "D"),
        # Better: a listing's option restated out of order is the answer; a second listing is none.
        ("arc", LISTING + "Therefore:\nC. Planetary days will become shorter.", "C", "C"),
        ("arc", LISTING + "Final:\n\n(C)", "C", "C"),
        ("arc", LISTING + "Again:\nA. x\nB. y\nC. z\nD. w\n", "D", None),
        ("arc", LISTING + "Let's analyze each option again:\nA. density - it is", "A", None),  # cut off
        ("arc", LISTING + "The most relevant:\nB. years is plausible\nD. gravity is", "D", None),
        ("arc", "The answer is\nA bank is where money is.", "A", None),  # a new line may open with "A bank"
        ("arc", "The answer is\nB", "B", "B"),
        # Better: a second letter going on in the singular starts a new sentence, not a list.
        ("arc", "The answer is C, D is wrong because gravity depends on mass.", "D", "C"),
        ("arc", "The answer is (C), (D) is a distractor.", "D", "C"),
        # Better: an answer phrase naming two letters is no answer (a hedge), not its last letter ...
        ("arc", "The answer is C or D.", "D", None),
        ("arc", "The answer is **C** or **D**.", "D", None),
        ("arc", "Answer: (A)/(B)", "B", None),
        ("csqa", "The correct answer is A and C.", "C", None),
        ("arc", "Answer: C or maybe D.", "D", None),
        ("arc", "The correct answer is either B or D.", "D", None),
        # ... not a question, a longer list, or letters going on ("A, B, and C are incorrect").
        ("arc", "Is the answer A or B? Friction acts on the block, so B.", "B", "B"),
        ("arc", "We must decide whether the answer is A, B, C, or D. So B.", "B", "B"),
        ("arc", "Answer: A, B, and C are incorrect because they ignore friction. D remains.", "D", "D"),
        # ... unless a later statement names one.
        ("arc", "The answer is C or D. Final answer: D", "D", "D"),
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


PMATRIX = "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}"


@pytest.mark.parametrize(
    "task_name, extracted, reference, strict, better",
    [("svamp", *case) for case in NUMBER_GRADES]
    + [("math500", *case) for case in [
        ("\\frac{14}{3}", "\\frac{14}{3}", True, True),
        ("\\frac{14}{3}.", "\\frac{14}{3}", True, True),
        ("\\frac{14}{5}", "\\frac{14}{3}", False, False),
        # A matrix's entries as fractions of either form, in brackets or parentheses.
        ("\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
         False, True),
        ("\\begin{bmatrix} -2 \\\\ 7 \\end{bmatrix}", "\\begin{pmatrix} -2 \\\\ 7 \\end{pmatrix}", False, True),
        ("21/2", "2\\frac{1}{2}", False, False),  # a mixed number is not 21/2
        ("3, \\frac{1}{2}.", "3, \\frac{1}{2}", True, True),
        ("\\frac{1}{2}, 100", "\\frac{1}{2100}", False, False),  # the comma is no digit group's
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", False, True),  # a real model's answer
        ("\\frac{-\\pi}{6}", "-\\frac{\\pi}{6}", False, True),
        ("a+b/2", "\\frac{a+b}{2}", False, False),  # a/b only where a and b are single terms
        ("\\frac{1}{2\\pi}", "\\frac{1}{2}\\pi", False, False),  # not both 1/2\\pi
        ("5 \\mathrm{cm}", "5", False, True),
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
        ("10{,}080", "10,\\!080", False, True),
        ("\\$18.90", "\\$18.90", True, True),
        ("\\sqrt{2}", "\\sqrt{3}", False, False),
        # Answers with "=": the paper keeps what follows the last "=" on both sides.
        ("x = 5", "5", False, True),
        ("2x + 3", "y = 2x + 3", True, True),
        ("y=2x+3", "y = 2x + 3", False, True),
        ("0", "5x - 7y + 11z + 4 = 0", True, False),
        ("5x-7y+11z+4=0", "5x - 7y + 11z + 4 = 0", False, True),
        # Better: the reference's own forms — matrices, braces left out, units, subscripts, sets.
        ("\\begin{pmatrix}-2\\\\-14\\\\-7\\end{pmatrix}", PMATRIX, False, True),
        ("\\begin{pmatrix} -2 \\\\\n-14 \\\\\n-7 \\end{pmatrix}", PMATRIX, False, True),
        ("\\begin{pmatrix}-2\\\\-14-7\\end{pmatrix}", PMATRIX, False, False),
        ("\\frac{9}{19}", "\\frac9{19}", False, True),
        ("\\frac{270}{7}^\\circ", "\\frac{270}7\\text{ degrees}", False, True),
        ("5.4", "5.4 \\text{ cents}", False, True),
        ("864", "864 \\mbox{ inches}^2", False, True),
        ("90 \\text{ degrees}", "90^\\circ", False, True),
        ("23", "2 \\text{ and } 3", False, False),
        ("52_{8}", "52_8", False, True),
        ("x^{2}+1", "x^2 + 1", False, True),
        ("[-2, 7]", "x \\in [-2,7]", False, True),
        ("C", "\\text{(C)}", False, True),
        # Better: a mixed number is its value, and not the digits run together.
        ("\\frac{9}{5}", "1\\frac{4}{5}", False, True),
        ("137.5", "137 \\frac{1}{2}", False, True),
        ("14/5", "1\\frac{4}{5}", False, False),
        # Better: not "x = -4, x = 4" for 4, nor Fraction's own syntax (3_5 is 35 there), nor
        # words that change a value; text answers in either case.
        ("x = -4, x = 4", "4", False, False),
        ("x = 2 \\text{ or } x = 3", "3", False, False),
        ("3_5", "35", False, False),
        ("1e10000000", "1", False, False),  # Fraction would take seconds to build it
        ("2\\text{i}", "2", False, False),
        ("5\\text{ or more}", "5", False, False),
        ("10 \\text{ million}", "10", False, False),
        ("6\\pi \\text{ cm}^2", "6\\pi", False, True),
        ("\\text{East}", "\\text{east}", False, True),
        ("\u22124", "-4", False, True),  # the Unicode minus
        ("\\mathbf{6}", "6", False, True),
        ("\\displaystyle \\frac{1}{2}", "\\frac12", False, True),
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


def _number_forms(answer: str) -> list[str]:
    value = int(answer)
    latex_separators = f"So it is $\\boxed{{{value:,}}}$".replace(",", "{,}")
    return [f"So she pays ${value:,}.", f"The answer is ${answer}.00.", f"#### {answer}",
            f"The answer is \\boxed{{{answer}}}.\n\nCheck: 2 * 3 = 6", latex_separators]


def _math_forms(answer: str) -> list[str]:
    without_sizes = answer.replace("\\left", "").replace("\\right", "")
    forms = [answer.replace("\\frac", "\\dfrac"), answer.replace(" ", ""), without_sizes]
    return [f"The final answer is $\\boxed{{{form}}}$." for form in forms]


def _choice_forms(item: Item, letter: str) -> list[str]:
    listing = "".join(f"{chr(65 + i)}) {text}\n" for i, text in enumerate(item.choices))
    return [f"The answer is {letter}) {item.choices[ord(letter) - 65]}", f"**Answer: {letter}**",
            f"Therefore, {letter} is correct. I hope this helps!",
            f"Let's evaluate each option:\n{listing}\nSo, {letter} is the best answer."]


@pytest.mark.parametrize("name", list(COUNTS))
def test_every_reference_answer_in_a_models_other_forms_grades_correct_when_lenient(name):
    """The better reading finds the reference answer in the forms models write it (a thousands
    separator, "$18.00", a check after the box, \\dfrac, spaces, an option's text after its letter,
    a listing of the options before the stated one), and another answer in the same form scores not."""
    task = TASKS[name]
    for item in task.load():
        if isinstance(task, ChoiceTask):
            wrong = "B" if item.answer == "A" else "A"
            cases = [(text, True) for text in _choice_forms(item, item.answer)]
            cases += [(text, False) for text in _choice_forms(item, wrong)]
        elif name == "math500":
            cases = [(text, True) for text in _math_forms(item.answer)]
            cases += [(text, False) for text in _math_forms(f"{item.answer}+1")]
        else:
            cases = [(text, True) for text in _number_forms(item.answer)]
            cases += [(text, False) for text in _number_forms(str(int(item.answer) + 1))]
        for text, expected in cases:
            assert task.is_correct(task.extract(text, strict=False), item, strict=False) is expected, (item.id, text)
