"""Every number in a notebook's prose is printed by a cell of the same notebook, at the same rounding.

A number in a markdown cell passes if a cell's stored output prints it, if it stands in a `>` quote (the paper's
words), in a table or table column labelled as the paper's, or in the short allow-list below, each entry with
its source. So a re-run that moves a number fails CI until the prose follows it. Run this file as a script to
list every offending number with its cell:

    python tests/test_prose_numbers.py
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

NUMBER = re.compile(r"(?<![\w.,/-])[−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w/])")
"""A number as prose and printouts write it: 67.8, −2.5, 1,000, 0.42 (not parts of names such as ViT-B/16 or 2d)."""

NOT_CLAIMS = [
    re.compile(r"`[^`]*`"),                                   # code
    re.compile(r"\$\$.*?\$\$", re.S),                         # displayed equations
    re.compile(r"\$[^$]*\$"),                                 # inline equations
    re.compile(r"\]\([^)]*\)"),                               # link targets
    re.compile(r"<!--.*?-->", re.S),                          # comments
    re.compile(r"(?:\b(?:Tables?|Figs?\.|Figures?|Eqs?\.|[Ss]ections?|[Nn]otebooks?|cells?)|§)\s*[\d.,–and ]*\d"),  # references
    re.compile(r"\d+(?: × \d+)+|\d+ GB"),                    # sizes: 512 × 512 crops, a 24 GB GPU
    re.compile(r"\bet al\.,? (?:[A-Z]+ )?\d{4}|\b(?:ICCV|CVPR|ECCV|NeurIPS|ICLR|ICML|AAAI|TPAMI) \d{4}"),  # citations
    re.compile(r"^#+ .*$", re.M),                             # headings
]
"""Where a digit is not a measured claim: code, equations, links, references to a table, section or notebook, sizes."""

SMALL = 10
"""Integers below this (four blocks, two steps, one pass) are counts the reader checks at a glance, not findings."""

ALLOWED: dict[str, dict[str, str]] = {}
"""Numbers that no cell prints: notebook stem -> {number: its source}. Empty: every number is printed or quoted."""


def normalise(number: str) -> str:
    return number.replace("−", "-").replace(",", "")


def printed_numbers(notebook: dict) -> set[str]:
    """Every number any cell's stored output prints: text streams, plain text, HTML and markdown."""
    printed = set()
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [output.get("data", {}).get(kind, "") for kind in
                                                ("text/plain", "text/html", "text/markdown")]
            for text in texts:
                text = "".join(text) if isinstance(text, list) else text
                printed.update(normalise(n) for n in NUMBER.findall(re.sub(r"<[^>]+>", " ", text)))
    return printed


def paper_table_lines(markdown: str) -> list[str]:
    """The prose with every table labelled as the paper's removed, and every column headed "paper …" blanked."""
    lines, kept, index = markdown.splitlines(), [], 0
    while index < len(lines):
        if not lines[index].lstrip().startswith("|"):
            kept.append(lines[index])
            index += 1
            continue
        end = index
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        caption = next((line for line in reversed(lines[:index]) if line.strip()), "")
        table = lines[index:end]
        if "paper" not in caption.lower():
            header = [cell.strip().lower() for cell in table[0].strip().strip("|").split("|")]
            papers = {i for i, cell in enumerate(header) if "paper" in cell}
            for row in table:
                cells = row.strip().strip("|").split("|")
                kept.append("|".join(cell for i, cell in enumerate(cells) if i not in papers))
        index = end
    return kept


def prose_numbers(markdown: str) -> list[str]:
    """The numbers a markdown cell claims: outside quotes, the paper's tables, code, equations and references."""
    text = "\n".join(line for line in paper_table_lines(markdown) if not line.lstrip().startswith(">"))
    for pattern in NOT_CLAIMS:
        text = pattern.sub(" ", text)
    numbers = [normalise(n) for n in NUMBER.findall(text)]
    return [n for n in numbers if "." in n or abs(int(n)) >= SMALL]


def unprinted(path: Path) -> list[tuple[int, str]]:
    """(cell index, number) for each number in the notebook's prose that no cell prints and no entry allows."""
    notebook = json.loads(path.read_text())
    printed, allowed = printed_numbers(notebook), ALLOWED.get(path.stem, {})
    return [(index, number) for index, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"
            for number in prose_numbers("".join(cell["source"])) if number not in printed and number not in allowed]


def test_the_guard_reads_claims_not_quotes_tables_or_references():
    markdown = """DeOP reaches 67.8 hIoU after 1,000 steps, −2.5 below PS (Table 3, §4.2, notebook 04).

> Impressively, our method attains around 3 to 4.5× speed up. — DeOP §5.1

The paper's Table 1:

| model | hIoU |
|---|---|
| DeOP | 38.2 |

| row | toy | paper |
|---|---|---|
| DeOP | 71.9 | 80.8 |

`lr = 0.02` at 512 × 512 in $\\sigma(3S - 3)$, 4 blocks (Lin et al. 2014)."""
    assert prose_numbers(markdown) == ["67.8", "1000", "-2.5", "71.9"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_prose_is_printed_by_a_cell(path):
    missing = unprinted(path)
    assert not missing, (f"{path.name}: numbers in the prose that no cell prints (cell, number): {missing}; "
                         "print them, quote the paper, or allow them in tests/test_prose_numbers.py with a source")


if __name__ == "__main__":
    for path in NOTEBOOKS:
        for index, number in unprinted(path):
            print(f"{path.stem} cell {index}: {number}")
