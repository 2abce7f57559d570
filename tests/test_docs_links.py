"""Every relative link and ``#anchor`` in README.md and docs/*.md resolves.

A relative link must name a file or folder that exists (relative to the linking file; ``/path`` is relative to
the repository root). An anchor into a Markdown file must match one of its headings by GitHub's slug rules:
the heading's text (inline code and link text kept, markup dropped), lower-cased, every character other than
letters, digits, spaces, ``-`` and ``_`` dropped, each space turned into ``-``; repeated slugs get ``-1``,
``-2``, ... External links (``http:``, ``https:``, ``mailto:`` or any other scheme) are not fetched. Headings
and links inside fenced code blocks and inline code spans do not count; headings are ATX (``#``) headings.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text] (one level of nested brackets), or ![alt]
    r"\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (target: <...> or balanced parentheses)
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _outside_code(lines: list[str]) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    kept, fence = [], None
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and (
                line.strip() == match.group(1)
            ):
                fence = None
        else:
            kept.append((number, line))
    return kept


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading's text (before the ``-1``, ``-2`` of repeated slugs)."""
    text = _CODE_SPAN.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown file offers: its headings' slugs and explicit ``<a name/id=...>``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _outside_code(lines):
        found.update(_HTML_ID.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(_CLOSING_HASHES.sub("", match.group(2) or ""))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code.

    Inline links are searched per paragraph (consecutive non-blank lines), so a link text that wraps onto the
    next line is found too; the line number is that of the link's ``[``.
    """
    found = []
    paragraph: list[tuple[int, str]] = []

    def flush() -> None:
        if paragraph:
            start = paragraph[0][0]
            text = "\n".join(_CODE_SPAN.sub("", line) for _, line in paragraph)
            for m in _INLINE_LINK.finditer(text):
                found.append((start + text.count("\n", 0, m.start()), m.group(2).strip("<>")))
            paragraph.clear()

    previous = None
    for number, line in _outside_code(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or previous is None or number != previous + 1:
            flush()
        previous = number
        definition = _REFERENCE_DEFINITION.match(line)
        if definition:
            flush()
            found.append((number, definition.group(1).strip("<>")))
        elif line.strip():
            paragraph.append((number, line))
    flush()
    return found


def broken_links(files: list[Path], root: Path = ROOT) -> list[str]:
    """'file:line: target (why)' for every relative link or anchor in ``files`` that does not resolve."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for source in files:
        for number, target in links(source):
            if not target or _SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            path_part = unquote(path_part.split("?", 1)[0])
            if not path_part:
                resolved = source
            elif path_part.startswith("/"):
                resolved = root / path_part.lstrip("/")
            else:
                resolved = source.parent / path_part
            where = f"{_shown(source, root)}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where} (no such file: {_shown(resolved.resolve(), root)})")
                continue
            if anchor and resolved.is_file() and resolved.suffix.lower() == ".md":
                if resolved not in cache:
                    cache[resolved] = anchors(resolved)
                if unquote(anchor) not in cache[resolved]:
                    problems.append(f"{where} (no heading with anchor #{anchor} in {_shown(resolved, root)})")
    return problems


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_and_anchor_resolves():
    files = documentation_files()
    assert len(files) > 1, "docs/*.md not found"
    problems = broken_links(files)
    assert not problems, f"{len(problems)} broken link(s) in README.md / docs/:\n" + "\n".join(problems)


def test_readme_opens_with_the_two_commands():
    # .ci/run runs "exactly README's test command"; the first screen must show both commands first.
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    opening = (
        "# imbalanced-seg\n\n"
        '```bash\npip install -e ".[dev]" && python train.py loss=focal_dice\n```\n'
        '```bash\npip install -e ".[dev]" && ruff check . && python -m pytest -q -n 3\n```\n'
    )
    assert text.startswith(opening)


def test_github_slugs():
    assert github_slug("Sweeps (`-m`)") == "sweeps--m"
    assert github_slug("Callback presets: EMA of the weights, early stopping") == (
        "callback-presets-ema-of-the-weights-early-stopping"
    )
    assert github_slug("Data (`datamodule=`)") == "data-datamodule"
    assert github_slug("Lovász and `per_image`") == "lovász-and-per_image"
    assert github_slug("See [the losses](losses.md#focal)") == "see-the-losses"


def test_the_checker_reports_broken_links(tmp_path):
    # The check must be able to fail: every kind of broken link is reported, and only those.
    (tmp_path / "other.md").write_text("# Other page\n\n## Part\n\n## Part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "## Sweeps (`-m`)\n\n"
        "[ok](other.md) [ok](other.md#part-1) [ok](#sweeps--m) [ok](https://example.org/x#y)\n"
        "[missing file](nowhere.md) and ![missing image](img/none.png)\n"
        "[missing anchor](other.md#part-2) [missing local anchor](#no-such-heading) [a wrapped\n"
        "link text](wrapped.md)\n"
        "`[in code](ignored.md)`\n\n"
        "```bash\n# Not a heading\n[in a fence](ignored.md)\n```\n\n"
        "[ref]: gone.md\n"
    )
    problems = broken_links([page], root=tmp_path)
    reported = [p.split(" (", 1)[0] for p in problems]
    assert reported == [
        "page.md:6: nowhere.md",
        "page.md:6: img/none.png",
        "page.md:7: other.md#part-2",
        "page.md:7: #no-such-heading",
        "page.md:7: wrapped.md",
        "page.md:16: gone.md",
    ], problems
    assert "#not-a-heading" not in anchors(page)
