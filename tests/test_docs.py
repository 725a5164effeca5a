"""The documentation: README.md stays one screen and links only to pages that exist; the MkDocs site
(mkdocs.yml, docs/) builds with --strict and without a single warning."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_mkdocs_build_strict_has_no_warning(tmp_path):
    # NO_MKDOCS_2_WARNING silences Material's end-of-life banner, which is not a build warning
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").is_file()
    # the pages that include README.md, CHANGELOG.md and CONTRIBUTING.md (pymdownx.snippets) got their text
    assert "Read this first" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "## [" not in (tmp_path / "site" / "changelog" / "index.html").read_text(encoding="utf-8")


def test_readme_is_one_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move the detail to a page under docs/"


def test_readme_links_to_docs_pages_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", text)
    pages = [t for t in targets if t.endswith(".md")]
    assert len(pages) >= 10, targets  # the README points to the documentation
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"
    # every other relative link too (CHANGELOG.md, CONTRIBUTING.md, ...)
    others = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert not [t for t in others if not (ROOT / t).exists()], others


def test_every_page_of_docs_is_in_the_nav():
    # the hand-written pages (docs/*.md); generated tables in sub-folders may be listed or not (not_in_nav)
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f": {p}\n" not in nav] == []
