"""The documentation site builds with ``mkdocs build --strict``: no broken link, no missing page.

The build writes into a temporary folder (the site is never committed). ``mkdocs.yml``
lists the pages; the API reference renders docstrings with mkdocstrings, so a renamed
public function breaks this test instead of the published site.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _nav_pages() -> set[str]:
    return set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), flags=re.M))


def test_every_page_linked_from_the_readme_is_in_the_site_nav():
    linked = set(re.findall(r"\]\(docs/([\w/.-]+\.md)\)", (REPO / "README.md").read_text()))
    assert linked, "the README links no docs pages"
    assert linked <= _nav_pages(), (
        f"README pages missing from mkdocs.yml nav: {linked - _nav_pages()}"
    )


def test_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) < 150


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("spiral_order", "load_model", "read_embeddings", "export_embeddings"):
        assert name in api, f"the API reference lacks {name}"
