"""docs/PROTOCOLS.md is the spec the code cites: every cited section is a heading there, and nothing points outside.

Citations look like ``PROTOCOLS.md A.3, B §2.3``, ``B §5.1-5.2`` (a range: every section in it), ``B §2.3, §2.4`` or
``B §1.2/§1.10`` (a list continuing a Part B citation), or a bare ``A.4`` / ``B §3.2``. A bare ``§3.3`` that does not
continue a Part B citation is someone else's section (a paper's) and is not checked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "PROTOCOLS.md"
THIS = Path(__file__).resolve()
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt", ".json"}
TEXT_NAMES = {"Makefile", "run"}  # .ci/run

# A heading that defines a section id: "### A.3 VOC07 SVM ..." or "#### B §2.3 Full-data SVM".
HEADING = re.compile(r"^#{3,4} (A\.\d+|B §\d+(?:\.\d+)?)(?= |$)", re.M)
# Any heading that looks like it means to define one (checked to be well-formed).
HEADING_LIKE = re.compile(r"^#+ *(?:A\s*\.|B\s*§).*$", re.M)

NUM = r"\d+(?:\.\d+)?"
# A Part B citation starts at "B §<number>"; further items follow after ",", "/" or "and" and start with "§".
B_START = re.compile(r"(?<![\w§])B\s*§\s*(?=\d)")
B_ITEM = re.compile(rf"({NUM})(?:\s*[-–]\s*§?\s*({NUM}))?")
B_NEXT = re.compile(r"\s*(?:,|/|\band\b)\s*§\s*(?=\d)")
# Part A: "A.3" (or a range "A.1-A.3") not inside a word, a dotted name or someone else's "App. A.1".
A_REF = re.compile(r"(?<![\w.§/-])(?<!App\. )(?<!Appendix )(?<!Table )(?<!Fig\. )A\.(\d+)"
                   r"(?:\s*[-–]\s*(?:A\.)?(\d+))?")
# Right after a section number: "2.3.1" or "2.x" is not an id this file has (a typo, or a deeper level).
BAD_TAIL = re.compile(r"\.?[0-9A-Za-z_]")
# "PROTOCOLS.md" followed by what looks like a section: it must be a well-formed A or B id.
AFTER_SPEC = re.compile(r"PROTOCOLS\.md[\s,:;]+(?=[A-Z]\s*[.§]\s*\d|§)")
SPEC_ID_START = re.compile(r"A\.\d|B\s*§\s*\d")
# Line breaks inside comments / docstrings, replaced by spaces of the same length (offsets keep their lines).
CONTINUATION = re.compile(r"\n[ \t]*(?:#+[ \t]*)?")

# Nothing in the repository may lean on files outside it.
OUTSIDE = re.compile(r"\.\./shared|shared/PROTOCOLS|/work/shared|ANCHORS\.md|\bSTYLE\b")
# The issue's own check: `grep -rn "shared/" README.md docs byol_bench benchmarks` finds nothing.
NO_SHARED_PATHS = ("README.md", "docs/", "byol_bench/", "benchmarks/")


def _expand(part: str, first: str, last: str | None) -> list[str]:
    """Section ids of one cited item; a range ``5.1-5.2`` (or ``1-3``) expands to every id in it."""
    if last is None:
        return [f"{part}{first}"]
    if "." in first and "." not in last:  # "5.1-2": the minor number of the same section
        last = f"{first.split('.')[0]}.{last}"
    if ("." in first) != ("." in last) or (("." in first) and first.split(".")[0] != last.split(".")[0]):
        raise ValueError(f"range {first}-{last} mixes levels or sections")
    if "." in first:
        major = first.split(".")[0]
        lo, hi = int(first.split(".")[1]), int(last.split(".")[1])
        ids = [f"{major}.{n}" for n in range(lo, hi + 1)]
    else:
        lo, hi = int(first), int(last)
        ids = [str(n) for n in range(lo, hi + 1)]
    if lo >= hi:
        raise ValueError(f"range {first}-{last} is empty or reversed")
    return [f"{part}{i}" for i in ids]


def parse_citations(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """Every section id cited in ``text`` as ``(offset, id, what was written)``, and the malformed citations."""
    flat = CONTINUATION.sub(lambda m: " " * len(m.group()), text)
    found: list[tuple[int, str, str]] = []
    errors: list[tuple[int, str]] = []

    def item(part: str, m: re.Match[str], start: int) -> None:
        written = flat[start:m.end()]
        tail = BAD_TAIL.match(flat, m.end())
        if tail:
            errors.append((start, f"{flat[start:tail.end()]!r} is not a section id of the form A.n / B §n / B §n.m"))
            return
        try:
            found.extend((start, sid, written) for sid in _expand(part, m.group(1), m.group(2)))
        except ValueError as exc:
            errors.append((start, f"{written!r}: {exc}"))

    for start in B_START.finditer(flat):
        pos = start.end()
        while True:
            m = B_ITEM.match(flat, pos)
            assert m is not None  # B_START and B_NEXT only stop in front of a digit
            item("B §", m, start.start())
            nxt = B_NEXT.match(flat, m.end())
            if nxt is None:
                break
            pos = nxt.end()
    for m in A_REF.finditer(flat):
        item("A.", m, m.start())
    for m in AFTER_SPEC.finditer(flat):
        if not SPEC_ID_START.match(flat, m.end()):
            errors.append((m.start(), f"{flat[m.start():m.end() + 12]!r}: a section must be A.n or B §n[.m]"))
    return found, errors


def spec_ids() -> list[str]:
    return HEADING.findall(SPEC.read_text(encoding="utf-8"))


def repo_text_files() -> list[Path]:
    """Tracked text files (as of the index; renamed or deleted ones skipped), plus the spec itself."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = {ROOT / name for name in out.decode().split("\0") if name}
    files.add(SPEC)
    return sorted(p for p in files
                  if p.is_file() and p.resolve() != THIS and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def test_spec_headings_are_well_formed_unique_and_nested() -> None:
    text = SPEC.read_text(encoding="utf-8")
    bad = [h for h in HEADING_LIKE.findall(text) if not HEADING.match(h)]
    assert not bad, f"docs/PROTOCOLS.md: headings that look like section ids but do not parse: {bad}"
    ids = spec_ids()
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"docs/PROTOCOLS.md: duplicate section ids {duplicates}"
    assert [i for i in ids if i.startswith("A.")] == [f"A.{n}" for n in range(1, 8)]
    current = None
    for sid in ids:
        if sid.startswith("B §") and "." not in sid:
            current = sid
        elif sid.startswith("B §"):
            assert current == sid.split(".")[0], f"{sid} is not under its section {sid.split('.')[0]}"


def test_parser_reads_every_citation_form() -> None:
    def ids(text: str) -> list[str]:
        found, errors = parse_citations(text)
        assert not errors, errors
        return [sid for _, sid, _ in found]

    assert ids("(PROTOCOLS.md A.3, B §2.3)") == ["B §2.3", "A.3"]
    assert ids("PROTOCOLS.md A.6, B §5.1-5.2).") == ["B §5.1", "B §5.2", "A.6"]
    assert ids("B §1.2-1.4") == ["B §1.2", "B §1.3", "B §1.4"]
    assert ids("PROTOCOLS.md B §2.3, §2.4): cost grids") == ["B §2.3", "B §2.4"]
    assert ids("PROTOCOLS.md B §1.2/§1.10; mmselfsup") == ["B §1.2", "B §1.10"]
    assert ids("(PROTOCOLS.md A.6,\n# B §5.3 and §5.0)") == ["B §5.3", "B §5.0", "A.6"]
    assert ids("the algorithm is the same (PROTOCOLS.md\n# A.1), and") == ["A.1"]
    assert ids("B §4, A.5 and B §9: an assumption") == ["B §4", "B §9", "A.5"]
    assert ids("(paper §3.3), (Krizhevsky et al. 2012, §4.1), App. A.2, bare PROTOCOLS.md") == []
    assert ids('"""<Protocol> (<paper>; PROTOCOLS.md A.x, B §y)."""') == []  # the template in docs/RUNNERS.md
    for typo in ("B §2.3.1", "B §2.x", "PROTOCOLS.md C.3", "PROTOCOLS.md §2.3", "B §5.2-5.1", "B §5.3-6.1"):
        assert parse_citations(typo)[1], f"{typo!r} should be rejected"
    # A citation of a section that does not exist parses, and is then caught by the resolution check below.
    assert ids("B §2.9") == ["B §2.9"] and "B §2.9" not in spec_ids()


def test_every_protocols_citation_resolves() -> None:
    known = set(spec_ids())
    problems = []
    cited = 0
    for path in repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        found, errors = parse_citations(text)
        rel = path.relative_to(ROOT)
        problems += [f"{rel}:{_line(text, off)}: {msg}" for off, msg in errors]
        problems += [f"{rel}:{_line(text, off)}: {written!r} cites {sid}, which is not a heading of docs/PROTOCOLS.md"
                     for off, sid, written in found if sid not in known]
        cited += len(found)
    assert cited > 50, f"only {cited} citations found: the scan is not reading the repository"
    assert not problems, "\n".join(problems)


def test_nothing_points_outside_the_repository() -> None:
    problems = []
    for path in repo_text_files():
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) or ("shared/" in line and rel.startswith(NO_SHARED_PATHS)):
                problems.append(f"{rel}:{n}: {line.strip()}")
    assert not problems, ("files outside the repository are referenced (docs/PROTOCOLS.md is the spec, "
                          "docs/RUNNERS.md the conventions, results/published/ the published numbers):\n"
                          + "\n".join(problems))
