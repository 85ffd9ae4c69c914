"""The documentation: README.md is a front page (short, every relative link leads to a file), and
the MkDocs site of docs/ builds with --strict (no broken link or anchor, no page left out of the nav)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
MAX_README_LINES = 250


def relative_links(markdown: str) -> list[str]:
    """Targets of the inline links, images and reference definitions of `markdown` that are not
    URLs or in-page anchors, without their #anchor; code blocks and code spans are not links.

    >>> relative_links("[a](docs/x.md#y) ![b](img.png) [c](https://e.org) `[d](no.md)`\\n[e]: f.md")
    ['docs/x.md', 'img.png', 'f.md']
    """
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    kept = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue
        kept.append(target.split("#", 1)[0])
    return kept


def test_the_readme_is_a_front_page_of_at_most_250_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, more than {MAX_README_LINES}: move the detail to a page of docs/")


def test_every_relative_link_of_the_readme_leads_to_a_file_that_exists():
    links = relative_links(README.read_text())
    assert links, "README.md links to no file: it should lead into docs/"
    missing = [link for link in links if not (README.parent / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_documentation_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")   # Material's notice about MkDocs 2, not ours
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                           cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    assert (site / "index.html").is_file()
