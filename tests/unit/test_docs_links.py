"""Every relative link in the project's Markdown points at a file (or folder) that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)


def markdown_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO_ROOT / name for name in listed if not name.startswith("bench/results/")]


def relative_links(path: Path) -> list[str]:
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    links = (match.group(1) for match in LINK.finditer(text))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", link)]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_that_exist(path: Path) -> None:
    missing = [link for link in relative_links(path) if not (path.parent / link.split("#", 1)[0]).exists()]
    assert missing == [], f"{path.relative_to(REPO_ROOT)} links to missing files: {missing}"


def test_the_readme_stays_a_first_page() -> None:
    assert len((REPO_ROOT / "README.md").read_bytes()) < 8 * 1024
