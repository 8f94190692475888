"""The documentation stays short, navigable and free of text that rots.

The README is a front page (at most 1,200 words) that points into docs/; `make help` lists every
target; the docs' relative links resolve; and no text refers to the tracker's issue numbers (they
say nothing to a reader without the tracker, and go stale when the tracker moves). Fast, offline,
reads the repository and never writes into it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAKEFILE = ROOT / "Makefile"

README_MAX_WORDS = 1200
# A reference to an issue by its number; the pattern is spelt so that this file does not match it.
ISSUE_REF = re.compile(r"issue #\d+", re.IGNORECASE)
# Looser, for the pages this test owns outright: "(issue N)", "issues #N" with digits, ...
ANY_ISSUE_REF = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
# A git commit id: 7-40 hex digits holding at least one digit and one letter.
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
# The pages that README.md hands its detail to.
OWN_PAGES = [README, DOCS / "usage.md", DOCS / "scaling.md", DOCS / "app.md"]
# Generated, never edited by hand: skipped when scanning src/ and tests/.
GENERATED = ("__pycache__", ".pytest_cache")


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_readme_is_short():
    words = len(README.read_text(encoding="utf-8").split())  # as `wc -w` counts
    assert words <= README_MAX_WORDS, (
        f"README.md has {words} words, over {README_MAX_WORDS}: move detail into docs/ and link it")


def test_readme_keeps_the_ci_test_command():
    """.ci/run runs the README's test command; the README must still give it."""
    assert re.search(r"^make test\b", README.read_text(encoding="utf-8"), re.MULTILINE)


def _phony_targets() -> list[str]:
    text = MAKEFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    targets = [t for line in text.splitlines() if line.startswith(".PHONY:")
               for t in line.split(":", 1)[1].split()]
    assert targets, "the Makefile has no .PHONY line"
    return targets


def _help_prerequisites() -> str:
    match = re.search(r"^help:([^#\n]*)", MAKEFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Makefile has no help target"
    return match.group(1).strip()


def test_help_target_installs_nothing():
    """`make help` must work on a fresh machine: no prerequisites (no `setup`)."""
    assert not _help_prerequisites(), f"help depends on {_help_prerequisites()!r}"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_phony_target():
    # Never run a help that has prerequisites: `setup` would install packages and write build/.
    assert not _help_prerequisites(), "help has prerequisites; not running it"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["MAKEFLAGS"] = ""
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], check=False, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    described = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 1)
        if parts:
            described[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    missing = [t for t in _phony_targets() if not described.get(t)]
    assert not missing, (f"`make help` does not describe {missing}: add `## description` after the "
                         f"target on its line\n{result.stdout}")


def _count_matches(paths, pattern: re.Pattern[str]) -> dict[str, int]:
    found = {}
    for path in paths:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if n := len(pattern.findall(text)):
            found[str(path.relative_to(ROOT))] = n
    return found


def _source_files() -> list[Path]:
    files = []
    for top in ("src", "tests"):
        for path in sorted((ROOT / top).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if path.is_file() and not any(p in GENERATED or p.endswith(".egg-info") for p in parts):
                files.append(path)
    return files


def test_no_issue_numbers_anywhere():
    found = _count_matches([*_markdown_files(), *_source_files()], ISSUE_REF)
    assert not found, "say what a thing does and why instead of citing an issue: " + ", ".join(
        f"{path} ({n})" for path, n in sorted(found.items()))


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: p.name)
def test_own_pages_do_not_rot(page: Path):
    """README.md and the pages it hands detail to cite no issue or commit: they say what and why."""
    text = page.read_text(encoding="utf-8")
    assert not ANY_ISSUE_REF.findall(text), ANY_ISSUE_REF.findall(text)
    assert not COMMIT_ID.findall(text), COMMIT_ID.findall(text)
    assert "name their issue" not in text


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", _without_code_blocks(page.read_text(encoding="utf-8")),
                              re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.name} links to what is not there: {broken}"
