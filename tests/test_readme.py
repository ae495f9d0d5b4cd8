"""The README stays a front page that tells the truth: short, quoting only measured figures, linking to files that
exist, and giving the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CI = ROOT / ".ci" / "run"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_CHARS = 12_000
MAX_LINE_CHARS = 400
TABLE_START, TABLE_END = "<!-- results-table:start -->", "<!-- results-table:end -->"
CI_MARKER = "# The README's test command, word for word:"
# A number as written: digits, with thousands commas and a decimal part kept ("11,725,788", "0.9883", "28.6").
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def results_table() -> list[list[str]]:
    """The cells of the README's results table (header row included, the |---| row left out)."""
    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1, "README needs one pair of table markers"
    body = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)]
    rows = [line.strip() for line in body.splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows
            if not re.fullmatch(r"[|\s:-]+", row)]


def occurs_as_written(number: str, text: str) -> bool:
    """Whether `number` appears in `text` as a whole number: "0.988" is not found in "0.9883", nor "28" in "128"."""
    return re.search(rf"(?<![\d.,]){re.escape(number)}(?![\d]|[.,]\d)", text) is not None


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8")) < MAX_README_CHARS


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_line_is_too_long(page):
    long = [(number, len(line)) for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > MAX_LINE_CHARS]
    assert not long, f"{page.name}: lines over {MAX_LINE_CHARS} characters (line, length): {long}"


def test_results_table_quotes_only_figures_from_results_md():
    table = results_table()
    assert len(table) >= 3, "the results table has a header and rows"
    results = RESULTS.read_text(encoding="utf-8")
    numbers = [n for row in table for cell in row for n in NUMBER.findall(cell)]
    assert numbers
    missing = sorted({n for n in numbers if not occurs_as_written(n, results)})
    assert not missing, f"figures in README's results table that benchmarks/RESULTS.md does not hold: {missing}"


def test_occurs_as_written_compares_whole_numbers():
    assert occurs_as_written("0.9883", "| 16.03 | 0.9883 |")
    assert not occurs_as_written("0.988", "| 0.9883 |")
    assert not occurs_as_written("28", "batch 128")
    assert occurs_as_written("11,725,788", "| 11,725,788 |")
    assert not occurs_as_written("725,788", "| 11,725,788 |")
    assert occurs_as_written("4.00", "| 4.00 |, 4.00x.")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    broken = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.name}: links to files that do not exist: {broken}"


def test_readme_gives_the_test_command_ci_runs():
    lines = CI.read_text(encoding="utf-8").splitlines()
    assert CI_MARKER in lines, f".ci/run has no line {CI_MARKER!r}"
    command = lines[lines.index(CI_MARKER) + 1].strip()
    assert command and not command.startswith("#")
    assert command in README.read_text(encoding="utf-8").splitlines(), \
        f"README.md does not give, on a line of its own, the test command .ci/run runs: {command}"
