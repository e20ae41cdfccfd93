r"""Final answers in generated text, and when two answers are equal (the grading of :mod:`kad.tasks`).

Every kind of answer is read two ways (docs/design.md §5.7):

* the paper's (``strict``): the last number, the last ``\boxed{}``, the last
  standalone capital letter, compared as strings;
* the better reading (``--lenient``): what the model *states* as its answer —
  a box, "the answer is …", "#### …", "B is correct" — wins over whatever comes
  after it, and answers are compared by value (numbers, fractions, percentages)
  or as normalized LaTeX.  Only when nothing is stated does the last candidate count.
"""

from __future__ import annotations

import re
from fractions import Fraction

# ---------------------------------------------------------------- shared


def trim(answer: str) -> str:
    """``answer`` without surrounding whitespace and a sentence's final period."""
    return answer.strip().removesuffix(".").rstrip()


def _last_braced_span(text: str, commands: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the last ``command{...}`` of any of ``commands`` starts, and its argument
    (nested braces included); ``None`` if there is none or it is never closed (a
    generation cut off by the token limit)."""
    index, command = max((text.rfind(command + "{"), command) for command in commands)
    if index < 0:
        return None
    start = index + len(command) + 1
    depth = 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return index, text[start:end]
    return None


def last_braced(text: str, commands: tuple[str, ...]) -> str | None:
    """The argument of the last ``command{...}`` in ``text`` (see :func:`_last_braced_span`)."""
    span = _last_braced_span(text, commands)
    return None if span is None else span[1]


# Not after a digit: 1\frac{4}{5} is a mixed number, not 14/5.
_LATEX_FRACTION = re.compile(r"(?<!\d)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_MIXED_NUMBER = re.compile(r"(-?)(\d+)\s*\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def plain_fractions(text: str) -> str:
    """``text`` with ``\\frac{a}{b}`` of integers written ``a/b``."""
    return _LATEX_FRACTION.sub(r"\1/\2", text)


def as_number(text: str) -> Fraction | None:
    """The exact value of an integer, decimal, ``a/b``, ``\\frac{a}{b}`` or mixed
    number ``1\\frac{4}{5}``; ``None`` for anything else."""
    try:
        if mixed := _MIXED_NUMBER.fullmatch(text.strip()):
            sign, whole, numerator, denominator = mixed.groups()
            value = int(whole) + Fraction(int(numerator), int(denominator))
            return -value if sign else value
        return Fraction(plain_fractions(text))
    except (ValueError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------- numbers (GSM8K, SVAMP)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# A fraction or a percentage is one answer, and a comma goes only between digit
# groups, so that "3,4" stays two numbers.
_NUMBER_WITH_FORM = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?%?")
DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Other spellings of a digit-group separator (LaTeX's 1{,}080, 1,\!080 and 1\,080)
# and of the minus sign (U+2212), made plain before numbers are read.
_NUMBER_SPELLINGS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"(?<=\d)\{,\}(?=\d)", ","),
        (r"(?<=\d),\\!(?=\d)", ","),
        (r"(?<=\d)\\[,!](?=\d{3}(?!\d))", ""),
        ("\u2212", "-"),
    )
)
# Where a stated answer begins: "the answer is", "Answer:", GSM8K's "####".
_STATED_NUMBER = re.compile(r"(?i:answer)[ \t*_]*(?:is\b|:)|####")
# A stated answer runs to the end of its sentence or line ("18." ends it, "18.5" does not).
_SENTENCE = re.compile(r"\s*(.*?)(?:\.(?!\d)|\n|$)", re.DOTALL)
_TEXT_COMMAND = re.compile(r"\\(?:text|mbox)\{[^{}]*\}")


def last_number(text: str) -> str | None:
    """The paper's reading: the last number of ``text``, commas removed (``"$1,234"`` gives ``"1234"``)."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def stated_number(text: str) -> str | None:
    """The better reading: the last number of the stated answer — the last
    ``\\boxed{}`` or the sentence after the last "answer is"/"Answer:"/"####",
    whichever comes later — else of the whole text.  Fractions and percentages
    stay whole (``"3/4"``, ``"25%"``); words in a box (``\\text{ dollars (9 eggs)}``)
    are not read when the box has a number outside them."""
    for pattern, replacement in _NUMBER_SPELLINGS:
        text = pattern.sub(replacement, text)
    scope = text
    box = _last_braced_span(text, ("\\boxed",))
    stated = list(_STATED_NUMBER.finditer(text))
    if box is not None and (not stated or box[0] > stated[-1].start()):
        without_words = _TEXT_COMMAND.sub("", box[1])
        scope = without_words if _NUMBER.search(without_words) else box[1]
    elif stated:
        sentence = _SENTENCE.match(text, stated[-1].end()).group(1)
        scope = sentence if _NUMBER.search(sentence) else text
    numbers = _NUMBER_WITH_FORM.findall(DIGIT_GROUP_COMMA.sub("", plain_fractions(scope)))
    return numbers[-1] if numbers else None


def same_number(extracted: str, reference: str) -> bool:
    """Equal values, whatever their form: ``"18.00"`` is 18, ``"1/2"`` is 0.5; a
    percentage matches the number of percent or the fraction it stands for."""
    value, expected = as_number(extracted.removesuffix("%")), as_number(reference)
    if value is None or expected is None:
        return False
    return expected == value or (extracted.endswith("%") and expected == value / 100)


# ---------------------------------------------------------------- LaTeX (MATH500)

# Rewrites that make equal LaTeX answers equal strings, in order: units and spacing
# commands before whitespace (whose removal would strand a backslash), whitespace
# before the brace forms (\frac12, \frac9{19}, \sqrt2, 52_{8}) are made one.
_LATEX_REWRITES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\\(?:left|right)(?![A-Za-z])", ""),
        # \\ (a matrix row's end) stays; \! \, \; \: and "\ " are spacing.
        (r"(\\\\)|\\[!,;: ]", r"\1"),
        (r"\\[dt]frac", r"\\frac"),
        # A unit after a number: 5.4 \text{ cents}, 864 \mbox{ inches}^2 (not "2 \text{ and } 3").
        (r"(?<=[\d}])\s*\\(?:text|mbox)\{\s*(?!(?:and|or)\s*\})[A-Za-z]+(?:\s+[A-Za-z]+)*\s*\}(?:\^\{?\d\}?)?", ""),
        (r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}", r"\1"),
        (r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree", ""),
        (r"\\?[%$]|\s", ""),
        (r"\\frac(\d)(\d)", r"\\frac{\1}{\2}"),
        (r"\\frac(\w)\{", r"\\frac{\1}{"),
        (r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}"),
        (r"\\sqrt(\w)", r"\\sqrt{\1}"),
        (r"([_^])\{(\w)\}", r"\1\2"),
        (DIGIT_GROUP_COMMA.pattern, ""),
        (r"(\d)\.0+(?!\d)", r"\1"),
        (r"\.$", ""),
        # A lettered choice: \text{(C)} is C.
        (r"^\(([A-Z])\)$", r"\1"),
    )
)
_ASSIGNED_VARIABLE = re.compile(r"^\s*[A-Za-z]\s*=")
_MEMBER_OF = re.compile(r"^\s*[A-Za-z]\s*\\in(?![A-Za-z])")


def normalize_latex(answer: str) -> str:
    for pattern, replacement in _LATEX_REWRITES:
        answer = pattern.sub(replacement, answer)
    return answer


def paper_boxed(text: str) -> str | None:
    """The paper's reading: the content of the last ``\\boxed{...}``, the part after its
    last ``=`` (``"x = 5"`` gives ``"5"``)."""
    boxed = last_braced(text, ("\\boxed",))
    return None if boxed is None else boxed.split("=")[-1].strip()


def same_latex(extracted: str, reference: str) -> bool:
    """The better comparison: "y = 2x + 3" and "x \\in [a, b]" ask for the right-hand
    side, "x = 5" answers 5 unless the reference is an equation (of a plane, say);
    then equal after :func:`normalize_latex`, or equal numbers."""
    reference = _MEMBER_OF.sub("", _ASSIGNED_VARIABLE.sub("", reference))
    extracted = _MEMBER_OF.sub("", extracted)
    if "=" not in reference:
        extracted = extracted.split("=")[-1]
    extracted, reference = normalize_latex(extracted), normalize_latex(reference)
    if extracted == reference:
        return True
    value, expected = as_number(extracted), as_number(reference)
    return value is not None and value == expected


# ---------------------------------------------------------------- letters (ARC, CSQA, TruthfulQA)


def last_capital(text: str, last: str) -> str | None:
    """The paper's reading: the last standalone capital letter from A to ``last``."""
    letters = re.findall(rf"\b[A-{last}]\b", text)
    return letters[-1] if letters else None


# A letter used as a word is no answer: the pronoun I ("I think", "I'm"), the article A ("A bank").
# Put before the letter's group.
_NOT_A_WORD = r"(?![AaIi](?:['’]|[ \t]+[a-z]))"
_ANSWER_VERB = r"(?:is|would[ \t]+be|should[ \t]+be|must[ \t]+be|will[ \t]+be)"


def _stated_letter_patterns(letter: str) -> tuple[re.Pattern, ...]:
    """Phrases stating an answer; each pattern's one group is the letter (either case)."""
    any_case = f"(?i:{letter})"
    keyword = r"(?i:answer|(?:correct|right|best|final)[ \t]+(?:option|choice))"
    return (
        # \boxed{B}, \boxed{(B)}, \boxed{\text{B}}
        re.compile(rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?({any_case})\)?\s*\}}?\s*\}}"),
        # "the answer is (B)", "Answer: b", "**Answer:** B", "the best option would be: option C"
        re.compile(
            rf"{keyword}(?:[ \t*_]+(?i:{_ANSWER_VERB})(?:[ \t*_]*:)?|[ \t*_]*:)[\s*_]*"
            rf"(?i:(?:option|choice)[ \t]+)?[(\[]?{_NOT_A_WORD}({any_case})(?![A-Za-z])"
        ),
        # "B is correct", "(C) is the best answer", "Option I is the right one"
        re.compile(
            rf"(?:(?i:option|choice)[ \t]+)?\(?\b({letter})\)?[ \t]+is[ \t]+(?:the[ \t]+)?(?i:correct|right|best)\b"
        ),
    )


def stated_letter(text: str, last: str) -> str | None:
    """The better reading: the letter (A to ``last``) of the last stated answer
    (:func:`_stated_letter_patterns`), else the last standalone capital letter that
    is not the pronoun I, the article A, or an option of a listing the model wrote
    out (``"A) mall\\nB) bank"``: two or more lines opening with a letter)."""
    letter = f"[A-{last}]"
    stated = [m for pattern in _stated_letter_patterns(letter) for m in pattern.finditer(text)]
    if stated:
        return max(stated, key=lambda m: m.start(1)).group(1).upper()
    headers = list(re.finditer(rf"(?m)^[ \t>*#-]*\(?({letter})[).:]", text))
    listed = {m.start(1) for m in headers} if len({m.group(1) for m in headers}) >= 2 else set()
    standalone = re.finditer(rf"(?<![A-Za-z'’]){_NOT_A_WORD}({letter})(?![A-Za-z])", text)
    letters = [m for m in standalone if m.start(1) not in listed]
    return letters[-1].group(1) if letters else None
