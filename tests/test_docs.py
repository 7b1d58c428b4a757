"""The documentation: every relative link in README.md and docs/**/*.md points at a file (and heading) that exists,
the pages name subjects, not work items, and the README keeps its shape (the set-up commands on top, at most 150
lines)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted([os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
WORK_ITEM = re.compile(r"issue *#?[0-9]", re.IGNORECASE)


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(CODE_SPAN.sub("", line))
    return lines


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of ``text`` (code is not searched)."""
    return [target for line in prose_lines(text) for target in LINK.findall(line)]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {anchor(m.group(1)) for line in prose_lines(f.read()) if (m := HEADING.match(line))}


def broken_links(page: str) -> list[str]:
    """``target: reason`` for every relative link of ``page`` whose file or heading does not exist."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(resolved):
            broken.append(f"{target}: no such file {os.path.relpath(resolved, ROOT)}")
        elif fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {os.path.relpath(resolved, ROOT)}")
    return broken


def test_link_parser_finds_links_and_images_but_not_code():
    text = "See [a](a.md#x) and ![fig](f.png).\n`[not](code.md)`\n```\n[nor](fenced.md)\n```\n[web](https://x.org)\n"
    assert links(text) == ["a.md#x", "f.png", "https://x.org"]
    assert anchor("The paper's tables at the `cpu` size") == "the-papers-tables-at-the-cpu-size"
    assert (
        anchor("12. 3D: box mapping, prompt-aware sliding windows") == "12-3d-box-mapping-prompt-aware-sliding-windows"
    )


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#a-section) [self](#top) [gone](missing.md) [bad](b.md#nowhere)\n\n# Top\n")
    assert broken_links(str(page)) == [
        f"missing.md: no such file {os.path.relpath(tmp_path / 'missing.md', ROOT)}",
        f"b.md#nowhere: no heading #nowhere in {os.path.relpath(tmp_path / 'b.md', ROOT)}",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_readme_starts_with_the_set_up_commands_and_stays_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    commands = [line for line in lines[:8] if line.startswith("pip install")]
    assert commands[0].startswith("pip install torch==2.13.0 -e . && python tools/demo.py")
    assert commands[1].startswith('pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q')
    assert len(lines) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_pages_name_subjects_not_work_items(page):
    with open(page, encoding="utf-8") as f:
        mentions = [f"{number}: {line.strip()}" for number, line in enumerate(f, 1) if WORK_ITEM.search(line)]
    assert mentions == []
