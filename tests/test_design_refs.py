"""Every citation of the design document points at a section that exists.

Code, tests and docs cite ``docs/design.md §N`` or ``§N.M`` (also ranges and lists
such as ``docs/design.md §1–§3`` or ``§1.3, §2.5``).  Each cited number must be the
number of a heading ``## §N Title`` / ``### §N.M Title`` of ``docs/design.md``.  The
bare form of the old contract outside the repository (the word in capitals, then
``§``) must not come back: it points at a file the repository does not have.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
SCANNED_DIRS = ("kad", "kad_kernels", "csrc", "tests", "docs", "examples", "benchmarks")
SCANNED_FILES = ("README.md", "setup.py")
SUFFIXES = {".py", ".h", ".cuh", ".cpp", ".cu", ".md", ".sh"}
SKIPPED_PARTS = {"__pycache__", ".venv", "build", "node_modules"}

NUMBER = r"\d+(?:\.\d+)*"
HEADING = re.compile(rf"^#{{1,6}}\s+§({NUMBER})\s+\S", re.MULTILINE)
# "design.md §2.4", "design.md §1–§3", "design.md §1.3, §2.5"; the citation may wrap onto
# the next comment line ("#", "//", "*" in front).
CITATION = re.compile(
    rf"design\.md(?:[ \t]|\n[ \t]*(?:#|//|\*)?[ \t]*)*"
    rf"(§{NUMBER}(?:[ \t]*(?:–|—|-|,|and|or)[ \t]*§{NUMBER})*)"
)
SECTION = re.compile(rf"§({NUMBER})")
# Built from parts so that this file does not match itself.
BARE = re.compile("DES" + r"IGN\s*§")


def _sections() -> set[str]:
    return set(HEADING.findall(DESIGN.read_text(encoding="utf-8")))


def _scanned() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
                files.append(path)
    return files


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def citations() -> list[tuple[str, str]]:
    """``(where, section)`` for every cited section number, ``where`` = ``path:line``."""
    found = []
    for path in _scanned():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            where = f"{path.relative_to(ROOT)}:{_line(text, match.start())}"
            found.extend((where, number) for number in SECTION.findall(match.group(1)))
    return found


def test_design_document_numbers_its_sections() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    numbers = HEADING.findall(text)
    assert numbers, f"{DESIGN.relative_to(ROOT)} has no '## §N Title' headings"
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not repeated, f"section numbers used by more than one heading: {repeated}"
    orphans = sorted(n for n in numbers if "." in n and n.rsplit(".", 1)[0] not in numbers)
    assert not orphans, f"subsections without their parent section: {orphans}"


def test_cited_sections_exist() -> None:
    found = citations()
    # The repository cites the design in dozens of places: finding none means the scan broke.
    assert len(found) >= 40, f"only {len(found)} citations of docs/design.md found: is the pattern still right?"
    sections = _sections()
    missing = [f"{where}: §{number}" for where, number in found if number not in sections]
    assert not missing, (
        f"citations of sections that docs/design.md does not have (it has {sorted(sections)}):\n  "
        + "\n  ".join(missing)
    )


def test_internal_references_exist() -> None:
    """``§N.M`` inside docs/design.md (outside headings) names one of its sections."""
    text = DESIGN.read_text(encoding="utf-8")
    sections = _sections()
    missing = [
        f"docs/design.md:{_line(text, m.start())}: §{m.group(1)}"
        for m in SECTION.finditer(text)
        if m.group(1) not in sections
    ]
    assert not missing, "references to sections docs/design.md does not have:\n  " + "\n  ".join(missing)


def test_no_citations_of_the_old_contract() -> None:
    stale = []
    for path in _scanned():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if BARE.search(line):
                stale.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not stale, (
        "citations of the design contract that is not in the repository; cite docs/design.md §N instead:\n  "
        + "\n  ".join(stale)
    )
