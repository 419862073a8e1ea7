"""The documents hold together: README.md stays a short user's document, every relative link and image in README.md
and docs/*.md reaches an existing file and heading, every section the Python sources cite by title exists, and every
recipe the README names is there. Plain text checks: no heavy imports."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]
SOURCES = sorted({*ROOT.glob("*.py"), *(p for d in ("minisora", "models", "bench") for p in (ROOT / d).rglob("*.py"))})
MAX_README_LINES = 350
# flags and config names of experiments removed from the code (kept at commit 92eadaa): the documents describe them in
# words, so that a search of the repository for the names finds nothing left to clean up. Written in parts here so
# that this file does not hold them either.
REMOVED_NAMES = ["_".join(parts) for parts in (
    ("guide", "checkpoint"), ("guide", "scale"), ("first", "frame", "candidates"), ("label", "modulation"),
    ("code", "embeddings"), ("input", "noise"), ("later", "temperature"), ("blank", "token"), ("motion", "blank"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """Markdown without fenced code blocks (their `# comment` lines are not headings, their brackets not links)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (no code ticks, emphasis or link targets), lowercased,
    punctuation dropped except '-' and '_', spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](target) -> text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor the headings of a markdown file give, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(path.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]  # not http:, mailto: ...


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_docs_have_a_title(path):
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert first.startswith("# "), f"{rel(path)} should start with a '# Title' line, not {first!r}"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_links_reach_files_and_headings(path):
    bad = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading '#{anchor}' in {rel(dest)}")
    assert not bad, f"{rel(path)}: broken links:\n  " + "\n  ".join(bad)


def test_slug_rules():
    assert slug("2. VAE: `train_vqvae.py`") == "2-vae-train_vqvaepy"
    assert slug("The recipe rebuilt end to end (gX)") == "the-recipe-rebuilt-end-to-end-gx"
    assert slug("What a digit cell's code depends on") == "what-a-digit-cells-code-depends-on"
    assert slug("Per-frame codes help a little; the tokenizer's codes do not persist") == \
        "per-frame-codes-help-a-little-the-tokenizers-codes-do-not-persist"


def unescape(line: str) -> str:
    return line.replace('\\"', '"').replace("\\'", "'")


def with_next_line(lines: list[str], i: int) -> tuple[str, str]:
    """(line i, line i joined with its continuation): a reference may run on into the next line as a comment
    (`# (README "A cooler` + `# draw of the digits only")`) or an adjacent string literal (`"... (README: 'A "` +
    `"cooler ...')"`). Escaped quotes (`\\"Motion tokens\\"`) read as plain quotes."""
    first = unescape(lines[i])
    if i + 1 >= len(lines):
        return first, first
    nxt = unescape(lines[i + 1]).lstrip()
    head = first.rstrip()
    string = re.match(r"[rbfuRBFU]*([\"'])", nxt)
    if head.endswith(("'", '"')) and string and string.group(1) == head[-1]:
        return first, head[:-1] + nxt[string.end():]
    if nxt.startswith("#") and "#" in head:
        return first, head + " " + nxt.lstrip("#").strip()
    return first, first


# README "T", README: 'T', README, "T", README section 3, "T"; docs/x.md "T", docs/x.md, "T", docs/x.md#anchor
README_REF = re.compile(r"\bREADME(?:\.md)?(?:\s+section\s+\d+)?[,:]?\s+([\"'])([^\"'\n]{2,120}?)\1")
DOCS_REF = re.compile(r"\bdocs/([\w./-]+?\.md)(?:#([\w-]+)|[,:]?\s+([\"'])([^\"'\n]{2,120}?)\3)?")


def code_references() -> list[tuple[str, Path, str, str]]:
    """(file:line, document, cited title or '', cited anchor or '') for every titled reference in the sources."""
    refs = []
    for src in SOURCES:
        lines = src.read_text(encoding="utf-8").splitlines()
        for i in range(len(lines)):
            first, text = with_next_line(lines, i)
            where = f"{rel(src)}:{i + 1}"
            for m in README_REF.finditer(text):
                if m.start() < len(first):
                    refs.append((where, README, m.group(2), ""))
            for m in DOCS_REF.finditer(text):
                if m.start() < len(first) and (m.group(2) or m.group(4)):
                    refs.append((where, ROOT / "docs" / m.group(1), m.group(4) or "", m.group(2) or ""))
    return refs


def test_code_reference_forms_are_found():
    lines = ['# (README "A cooler', '# draw of the digits only")', 'help="x (README: \'Samples nobody "',
             '"prompted\')")', 'help="(README section 3, \\"Motion tokens\\"; R=5)"', "# docs/token_path.md#motion-tokens",
             '# README, tokenizer table', "help=\"see docs/x.md\""]
    found = []
    for i in range(len(lines)):
        first, text = with_next_line(lines, i)
        found += [m.group(2) for m in README_REF.finditer(text) if m.start() < len(first)]
        found += [m.group(2) for m in DOCS_REF.finditer(text) if m.start() < len(first) and m.group(2)]
    assert found == ["A cooler draw of the digits only", "Samples nobody prompted", "Motion tokens", "motion-tokens"]


def test_code_references_name_existing_sections():
    bad = []
    for where, doc, title, anchor in code_references():
        if not doc.exists():
            bad.append(f"{where}: cites {rel(doc)}, which does not exist")
            continue
        have = anchors(doc)
        if title and slug(title) not in have:
            bad.append(f"{where}: cites {rel(doc)} \"{title}\": no such heading")
        if anchor and anchor not in have:
            bad.append(f"{where}: cites {rel(doc)}#{anchor}: no such heading")
    assert not bad, "section references in the code that name no heading:\n  " + "\n  ".join(bad)


def test_readme_recipes_exist():
    names = set(re.findall(r"@recipes/([\w.-]+)", README.read_text(encoding="utf-8")))
    assert names, "the README names no recipe (@recipes/<name>.args)"
    missing = sorted(n for n in names if not (ROOT / "recipes" / n).is_file())
    assert not missing, f"README names recipes that do not exist: {missing}"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_removed_options_are_not_named(path):
    text = path.read_text(encoding="utf-8")
    found = sorted({n for n in REMOVED_NAMES if n in text})
    assert not found, f"{rel(path)} names removed options {found}: describe them in words (code at commit 92eadaa)"
