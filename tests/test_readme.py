"""README's first screen, its length, the CI blocks .ci/run reads, and every relative link in the docs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _block(text: str, marker: str) -> str:
    """The fenced bash block after ``<!-- marker -->``, as .ci/run's awk extracts it."""
    lines = text.splitlines()
    start = lines.index(f"<!-- {marker} -->")
    body, inside = [], False
    for line in lines[start + 1 :]:
        if not inside and line.startswith("```bash"):
            inside = True
        elif inside and line.startswith("```"):
            return "\n".join(body)
        elif inside:
            body.append(line)
    raise AssertionError(f"no bash block after {marker}")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_first_screen_has_install_and_main_command_and_a_picture() -> None:
    first = README.read_text().splitlines()[:40]
    text = "\n".join(first)
    assert "pip install -e" in text
    assert any(line.startswith("hf-sparseout finetune") for line in first)
    pictures = [m.group(2) for m in LINK.finditer(text) if m.group(2)]
    assert pictures and all((ROOT / p).is_file() and p.endswith(".png") for p in pictures)


def test_readme_is_short_and_keeps_the_ci_blocks() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "pip install -e" in _block(text, "ci:install")
    assert _block(text, "ci:test").strip() == "python -m pytest -q"
    assert "tested on 20 architectures" not in text


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
        for match in LINK.finditer(text):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            if not path:
                if anchor not in anchors:
                    broken.append(f"{doc.name}: #{anchor}")
            elif not (doc.parent / path).exists():
                broken.append(f"{doc.name}: {target}")
    assert not broken


def test_every_code_fence_is_closed() -> None:
    """An unclosed fence turns the rest of the page into code (it happened to README's examples)."""
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        opening = None
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                if opening is None:
                    opening = number
                elif line.strip() == "```":
                    opening = None
                else:  # a fence with a language while one is open: the previous one was never closed
                    raise AssertionError(f"{page.name}:{opening}: fence not closed before line {number}")
        assert opening is None, f"{page.name}:{opening}: fence never closed"
