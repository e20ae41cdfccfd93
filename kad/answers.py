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


def _closing_braces(text: str) -> dict[int, int]:
    """The index of the brace that closes each ``{`` of ``text`` that is closed, in one
    pass (reading on from every unclosed box took time quadratic in a looping generation)."""
    closing, open_braces = {}, []
    for index, char in enumerate(text):
        if char == "{":
            open_braces.append(index)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = index
    return closing


def _last_braced_span(text: str, commands: tuple[str, ...], closed: bool = False) -> tuple[int, str] | None:
    """Where the last ``command{...}`` of any of ``commands`` starts, and its argument
    (nested braces included); ``None`` if there is none or it is never closed (a
    generation cut off by the token limit).  With ``closed``, the last one that is
    closed (an earlier answer, when the generation was cut off in a later box)."""
    starts = sorted((m.start(), command) for command in commands for m in re.finditer(re.escape(command + "{"), text))
    if not starts:
        return None
    closing = _closing_braces(text)
    for index, command in reversed(starts):
        brace = index + len(command)
        if brace in closing:
            return index, text[brace + 1 : closing[brace]]
        if not closed:
            return None
    return None


def last_braced(text: str, commands: tuple[str, ...], closed: bool = False) -> str | None:
    """The argument of the last ``command{...}`` in ``text`` (see :func:`_last_braced_span`)."""
    span = _last_braced_span(text, commands, closed)
    return None if span is None else span[1]


_LATEX_FRACTION = re.compile(r"(?<!\d)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_MIXED_NUMBER = re.compile(r"(-?)(\d+)\s*\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def plain_fractions(text: str) -> str:
    """``text`` with ``\\frac{a}{b}`` of integers written ``a/b``."""
    return _LATEX_FRACTION.sub(r"\1/\2", text)


# What as_number reads: not Fraction's whole syntax (3_5 is 35 there, 1e10000000 takes seconds).
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/-?\d+)?")


def as_number(text: str) -> Fraction | None:
    """The exact value of an integer, decimal, ``a/b``, ``\\frac{a}{b}`` or mixed
    number ``1\\frac{4}{5}``; ``None`` for anything else."""
    text = text.strip().replace("\u2212", "-")
    try:
        if mixed := _MIXED_NUMBER.fullmatch(text):
            sign, whole, numerator, denominator = mixed.groups()
            value = int(whole) + Fraction(int(numerator), int(denominator))
            return -value if sign else value
        plain = plain_fractions(text)
        return Fraction(plain) if _PLAIN_NUMBER.fullmatch(plain) else None
    except (ValueError, ZeroDivisionError):
        return None


# ---------------------------------------------------------------- numbers (GSM8K, SVAMP)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# A fraction or a percentage is one answer, and a comma goes only between digit
# groups, so that "3,4" stays two numbers.
# ".5" is a number where no word or number goes before its point.
_NUMBER_WITH_FORM = re.compile(r"-?(?:\d+(?:\.\d+)?|(?<![\w.])\.\d+)(?:/\d+)?%?")
# A mixed number, 5\frac{1}{2} or 5 1/2 (a proper fraction after a space), read as one
# improper fraction, 11/2: its whole part alone would be another answer.
# Digit groups go with the whole part ("1,234 1/2"); "6 1/4-pound" is a unit, not a mixed number.
_MIXED_NUMBERS = (re.compile(r"(?<![\d.,])" + _MIXED_NUMBER.pattern),
                  re.compile(r"(?<![\d.,/])(-?)(\d{1,3}(?:,\d{3})+|\d+) (\d+)/(\d+)(?![\d/]|-[A-Za-z])"))  # fmt: skip
DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_GROUP_SEPARATOR = r"(?<=\d)\{,\}(?=\d)"  # 1{,}080, in numbers and in LaTeX answers
# Other spellings of a digit-group separator (LaTeX's 1{,}080, 1,\!080 and 1\,080)
# and of the minus sign (U+2212), made plain before numbers are read.
_NUMBER_SPELLINGS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (_LATEX_GROUP_SEPARATOR, ","),
        (r"(?<=\d),\\!(?=\d)", ","),
        (r"(?<=\d)\\[,!](?=\d{3}(?!\d))", ""),
        ("\u2212", "-"),
        (r"(?<![\w)])-\\?\$(?=\d)", "-"),  # -$5 and -\$5 are -5 ("$10 - $3" keeps its space)
        # LaTeX's inline math \( \) as plain parentheses: "is \(18\)." reads 18 (a parenthesis opening a
        # stated answer is no aside), "is 18 \(= 9 \times 2\)" stays 18 (one after its number is).
        (r"(?<!\\)\\([()])", r"\1"),
        (r"(?<!\\)\\[\[\]]", " "),  # display math \[ \], on lines of its own: "is:\n\[\n18\n\]" reads 18
    )
)
# Where a stated answer begins: "the answer is", "Answer:", GSM8K's "####" before a
# number (not a markdown heading: "#### Step 3", "#### 1. Eggs laid").
_STATED_NUMBER = re.compile(r"(?i:answer)[ \t*_]*(?:is\b:?|:)|####(?=[ \t]*[-$\d])(?![ \t]*\d+[.)][ \t]+[A-Za-z])")
# A numbered list: an item of words, then the next item ("1. Eggs: 16\n2. Sold: ..."); "18. She
# has 3 more" alone is an answer and a sentence.
_NUMBERED_LIST = r"[*_]*\d+[.)][ \t]+[A-Za-z][^\n]*\n\s*[*_]*\d+[.)][ \t]"
# A stated answer runs to the end of its clause: a sentence's period ("18." ends it, "18.5"
# does not), the line, ";", an aside in parentheses, or a reason ("because", "since").  It
# goes on to the next line only when that line opens with the number ("Answer:\n**18**"),
# not a heading's ("Answer:\nStep 1: ...") or a numbered list's ("Answer:\n1. Eggs: 16");
# a parenthesis opening it is no aside ("is (18).").
_CLAUSE = re.compile(
    r"[ \t*_]*(?:\n\s*(?=[*_$\\(]*-?\.?\d)(?!" + _NUMBERED_LIST + r"))?\(?(.*?)(?:\.(?!\d)|[\n;(]|\s(?:because|since)\b|$)",
    re.DOTALL,
)
_TEXT_COMMAND = re.compile(r"\\(?:text|mbox)\{[^{}]*\}")
# In a box, a minus opening the answer (or its right-hand side) is its sign, spaced or not:
# "\boxed{- 5}", "\boxed{x = - 5}" (after "Answer:" a spaced dash is a list's bullet).
_SPACED_SIGN = re.compile(r"(^|=)\s*-\s+(?=\d)")


def last_number(text: str) -> str | None:
    """The paper's reading: the last number of ``text``, commas removed (``"$1,234"`` gives ``"1234"``)."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def _clause_after(text: str, start: int) -> str:
    """The clause of ``text`` from ``start`` (:data:`_CLAUSE` matches everywhere, if only ``""``)."""
    match = _CLAUSE.match(text, start)
    assert match is not None  # each of its parts may be empty
    return match.group(1)


def stated_number(text: str) -> str | None:
    """The better reading: the number of the stated answer — the last closed
    ``\\boxed{}`` or the clause after the last "answer is"/"Answer:"/"####",
    whichever comes later (:func:`_answer_number`) — else the last number of the
    text.  Fractions and percentages stay whole (``"3/4"``, ``"25%"``); words in a
    box (``\\text{ dollars (9 eggs)}``) are not read when it has a number outside them."""
    for pattern, replacement in _NUMBER_SPELLINGS:
        text = pattern.sub(replacement, text)
    for pattern in _MIXED_NUMBERS:
        text = pattern.sub(_improper_fraction, text)
    statements = [(m.start(), _clause_after(text, m.end())) for m in _STATED_NUMBER.finditer(text)]
    box = _last_braced_span(text, ("\\boxed",), closed=True)
    if box is not None:
        content = _SPACED_SIGN.sub(r"\1-", box[1])
        without_words = _TEXT_COMMAND.sub("", content)
        statements.append((box[0], without_words if _NUMBER.search(without_words) else content))
    # The last statement that gives a number ("the answer is reasonable" gives none).
    for _, stated in sorted(statements, reverse=True):
        if (answer := _answer_number(stated)) is not None:
            return answer
    numbers = _NUMBER_WITH_FORM.findall(DIGIT_GROUP_COMMA.sub("", plain_fractions(text)))
    return numbers[-1] if numbers else None


def _improper_fraction(mixed: re.Match) -> str:
    """``-11/2`` for the groups ``("-", "5", "1", "2")`` of a proper fraction; else the text as it is."""
    sign, whole, numerator, denominator = mixed.groups()
    if not 0 <= int(numerator) < int(denominator):
        return mixed.group(0)
    return f"{sign}{int(whole.replace(',', '')) * int(denominator) + int(numerator)}/{denominator}"


def _answer_number(stated: str) -> str | None:
    """The number a stated answer gives: the first after its last ``=`` when it works
    a sum out ("9 * $2 = $18"), else its first ("18 eggs, not 20")."""
    stated = DIGIT_GROUP_COMMA.sub("", plain_fractions(stated)).rsplit("=", 1)[-1]
    numbers = _NUMBER_WITH_FORM.findall(stated)
    return numbers[0] if numbers else None


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
        ("\u2212", "-"),  # the Unicode minus
        (r"\\(?:left|right)(?![A-Za-z])", ""),
        # \\ (a matrix row's end) stays; \! \, \; \: and "\ " are spacing.
        (r"(\\\\)|\\[!,;: ]", r"\1"),
        (r"\\[dt]frac", r"\\frac"),
        (_LATEX_GROUP_SEPARATOR, ","),  # 10{,}080
        # A unit after a value: 5.4 \text{ cents}, 864 \mbox{ inches}^2, 6\pi \text{ cm}^2 — not
        # words that change the value or join two ("2 \text{ and } 3", "10 \text{ million}", 2\text{i}).
        (r"(?<=[\w}])\s*\\(?:text|mbox|mathrm)\{\s*(?!(?:and|or|to|than|more|less|times|hundred|thousand|million|billion)\b)"
         r"[A-Za-z]{2,}(?:\s+[A-Za-z]+)*\s*\}(?:\^\{?\d\}?)?", ""),
        (r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\{([^{}]*)\}", r"\1"),
        (r"\\displaystyle(?![A-Za-z])", ""),
        (r"\\(begin|end)\{bmatrix\}", r"\\\1{pmatrix}"),  # brackets or parentheses: one matrix
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
        # A fraction of single terms (a number, a letter run or one command) standing as a whole
        # term (a matrix entry: gold -1/3, a model's -\frac{1}{3}; (3, \pi/2) for (3, \frac{\pi}{2}))
        # as a/b — not \frac{a+b}{2} or \frac{1}{2\pi}, whose a/b would read otherwise (1/2\pi is
        # \frac{1}{2}\pi too), nor one after a digit (a mixed number's) or before a command.  After
        # the digit groups' commas go, so that "\frac{1}{2}, 100" does not become 1/2100.
        (r"(?:^|(?<=[-+,(\[{&\\])|(?<=\{pmatrix\}))\\frac\{(-?(?:\\[A-Za-z]+|[\w.]+))\}\{(\\[A-Za-z]+|[\w.]+)\}"
         r"(?=$|[,)\]}&]|\\\\|\\end\{)", r"\1/\2"),
        # A lettered choice: \text{(C)} is C.
        (r"^\(([A-Z])\)$", r"\1"),
    )
)
_ASSIGNED_VARIABLE = re.compile(r"^\s*[A-Za-z]\s*=")
_MEMBER_OF = re.compile(r"^\s*[A-Za-z]\s*\\in(?![A-Za-z])")
_WORD = re.compile(r"[A-Za-z]{2,}")  # an answer in words ("east", "Evelyn"), not a variable


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
    side, "x = 5" answers 5 unless the reference is an equation (of a plane, say) —
    but "x = -4, x = 4" does not answer 4; then equal after :func:`normalize_latex`
    (words in either case), or equal numbers."""
    reference = _MEMBER_OF.sub("", _ASSIGNED_VARIABLE.sub("", reference))
    extracted = _MEMBER_OF.sub("", extracted)
    if "=" not in reference and extracted.count("=") == 1:
        extracted = extracted.split("=")[1]
    extracted, reference = normalize_latex(extracted), normalize_latex(reference)
    if extracted == reference or (_WORD.fullmatch(reference) and extracted.lower() == reference.lower()):
        return True
    value, expected = as_number(extracted), as_number(reference)
    return value is not None and value == expected


# ---------------------------------------------------------------- letters (ARC, CSQA, TruthfulQA)


def last_capital(text: str, last: str) -> str | None:
    """The paper's reading: the last standalone capital letter from A to ``last``."""
    letters = re.findall(rf"\b[A-{last}]\b", text)
    return letters[-1] if letters else None


# A capital A or I before a lowercase word is the article ("A bank needs ...") or the
# pronoun ("I think", "I'm"), unless the word goes on about the letter ("A is", "I because",
# "I which says"; "A was" and "A then" too, where "I was" and "I then" are the pronoun's).
# Put before the letter's group.
_ABOUT_THE_LETTER = r"(?:is|seems|looks|fits|because|since|as|and|or|but|not|it|so|here|instead|which|that|in|with)\b"
_ABOUT_A = rf"(?:{_ABOUT_THE_LETTER}|(?:was|then)\b)"


def _not_a_word(article: str) -> str:
    """The letter is not the article (``article``: the spellings that are one) or the pronoun I."""
    return rf"(?!{article}(?:['’]|[ \t]+(?!{_ABOUT_A})[a-z])|[Ii](?:['’]|[ \t]+(?!{_ABOUT_THE_LETTER})[a-z]))"


_NOT_A_WORD = _not_a_word("[Aa]")
# Mid-sentence ("the answer is A in this case") the article is lowercase: only "a" is one.
_NOT_A_WORD_MID_SENTENCE = _not_a_word("a")
# What opens a statement of the answer (shared by statements and hedges, so a hedge is read
# wherever a statement would be).
_ANSWER_KEYWORD = r"(?i:answer|(?:correct|right|best|final)[ \t]+(?:option|choice))"
_ANSWER_VERB = r"(?:is|would[ \t]+be|should[ \t]+be|must[ \t]+be|will[ \t]+be)"
# Where "B is correct" ends as a statement (not "D is correct only for ..."): punctuation, the
# line's end or the text's, after the closing ** or _ of bold or italics.
_STATEMENT_END = r"[ \t*_]*(?:[.!,;:)\n]|$)"


def _stated_letter_patterns(letter: str) -> tuple[re.Pattern, ...]:
    """Phrases stating an answer; each pattern's one group is the letter (either case)."""
    any_case = f"(?i:{letter})"
    # Not one of a list of letters ("Answer: (A) and (C) are wrong; B", "(a) or (c)"); a lowercase
    # letter standing alone there is the article ("C, a chart").
    # A second letter going on in the singular is a new sentence ("The answer is C, D is wrong").
    alone = rf"(?!\)?[ \t]*(?:,|/|&|and\b|or\b)[ \t]*(?:\({any_case}\)|{letter}(?![A-Za-z]))(?![ \t]+is\b))"
    noun = r"(?:answer|option|choice|one)\b"

    def then_letter(not_a_word: str) -> str:  # the letter after an answer phrase, in quotes, brackets or bold
        return rf"(?i:(?:option|choice)[ \t*_]+)?[(\[*_'\"‘“]?(?:(?<=['\"‘“])|{not_a_word})({any_case})(?![A-Za-z]){alone}"

    return (
        # \boxed{B}, \boxed{(B)}, \boxed{\text{B}}
        re.compile(rf"\\boxed\{{\s*(?:\\text(?:bf)?\{{)?\s*\(?({any_case})\)?\s*\}}?\s*\}}"),
        # "the answer is (B)", "the best option would be option C", "the answer is A in this case"
        re.compile(rf"{_ANSWER_KEYWORD}[ \t*_]+(?i:{_ANSWER_VERB})[ \t*_]*" + then_letter(_NOT_A_WORD_MID_SENTENCE)),
        # ... and on the next line, where "A bank ..." may open a sentence
        re.compile(rf"{_ANSWER_KEYWORD}[ \t*_]+(?i:{_ANSWER_VERB})[ \t*_]*\n[\s*_]*" + then_letter(_NOT_A_WORD)),
        # "Answer: b", "**Answer:** B", "the answer is: C" (after a colon "A bank ..." may open a sentence)
        re.compile(rf"{_ANSWER_KEYWORD}(?:[ \t*_]+(?i:{_ANSWER_VERB}))?[ \t*_]*:[\s*_]*" + then_letter(_NOT_A_WORD)),
        # "B is correct.", "(C) is the best answer", "Option I is the right one", "A is the answer"
        # (not "A is the best insulator", "D is correct only for mammals")
        re.compile(
            rf"(?:(?i:option|choice)[ \t]+)?\(?(?<![A-Za-z0-9])({letter})\)?[ \t]+is[ \t]+(?i:"
            rf"(?:the|my)[ \t]+(?:(?:correct|right|best|final|most[ \t]+\w+)[ \t]+)?{noun}(?={_STATEMENT_END})"
            rf"|(?:correct|right)(?={_STATEMENT_END}))"
        ),
    )


def _hedge_pattern(letter: str) -> re.Pattern:
    """An answer phrase that states two letters and ends there: "the answer is C or D.",
    "Answer: (A)/(B)" — no one answer (the second letter is group 2)."""
    any_case = f"(?i:{letter})"
    one = rf"[(\[*_'\"‘“]*({any_case})(?![A-Za-z])[)\]*_'\"’”]*"
    # Ending there as a statement: not "Answer: (a) or (c) are wrong", not a question ("Is the
    # answer A or B?"), not the start of a longer list ("the answer is A, B, C, or D").
    more = rf"[ \t]*(?:(?i:and|or)[ \t]+)?[(\[*_'\"‘“]*{any_case}(?![A-Za-z])"
    end = rf"[ \t]*(?:[.!;:\n]|,(?!{more})|$)"
    return re.compile(
        rf"{_ANSWER_KEYWORD}(?:[ \t*_]+(?i:{_ANSWER_VERB}))?[ \t*_]*:?[ \t*_]*(?:(?i:either)[ \t]+)?{one}"
        rf"[ \t]*(?:,|/|&|(?i:or|and)\b)[ \t]*(?:(?i:maybe|possibly|perhaps)[ \t]+)?{one}{end}"
    )


def stated_letter(text: str, last: str) -> str | None:
    """The better reading: the letter (A to ``last``) of the last stated answer
    (:func:`_stated_letter_patterns`), none if that statement names two letters
    (:func:`_hedge_pattern`), else the last standalone capital letter that
    is not the pronoun I, the article A, or an option of a listing the model wrote
    out (``"A) mall\\nB) bank"``: two or more lines opening with a letter)."""
    letter = f"[A-{last}]"
    stated = [(m.start(1), False, m) for pattern in _stated_letter_patterns(letter) for m in pattern.finditer(text)]
    hedged = [(m.start(1), True, m) for m in _hedge_pattern(letter).finditer(text)]
    if stated or hedged:
        _, hedge, match = max(stated + hedged, key=lambda found: found[:2])  # a hedge over a statement at one letter
        return None if hedge else match.group(1).upper()
    listed = _listing(text, list(re.finditer(rf"(?m)^[ \t>*#-]*\(?({letter})[).:]", text)))
    # Not glued to a digit or a letter: "group 1A", "B12", "C4" name no option.
    standalone = re.finditer(rf"(?<![A-Za-z0-9'’]){_NOT_A_WORD}({letter})(?![A-Za-z0-9])", text)
    letters = [m for m in standalone if m.start(1) not in listed]
    return letters[-1].group(1) if letters else None


def _listing(text: str, headers: list[re.Match]) -> set[int]:
    """Where the options of a listing the model wrote out start, from the lines opening
    with a letter (``headers``): none unless two letters open lines.  A last header that
    repeats an earlier letter after a line of other text restates one option as the
    answer ("A. …\nB. …\nC. …\nD. …\nTherefore:\nC. …"); the listing's first letter
    again opens a second listing (one cut off by the token limit), and a header right
    after another goes on a listing."""
    if len({m.group(1) for m in headers}) < 2:
        return set()
    *earlier, last = headers
    letter = last.group(1)
    after_previous_line = text.find("\n", earlier[-1].start())
    apart = text[after_previous_line : text.rfind("\n", 0, last.start()) + 1].strip() != ""
    repeated = letter in {m.group(1) for m in earlier}
    if repeated and apart and letter != min(m.group(1) for m in earlier):
        return {m.start(1) for m in earlier}
    return {m.start(1) for m in headers}
