"""MkDocs hook: the docs link to repository files outside ``docs/`` and still build strictly.

The pages link to committed data files, scripts and figures with paths relative to the page
(``../benchmarks/core_deit_s_cpu.json``), which work on a repository browser. MkDocs only
knows files under ``docs/``, so this hook

- copies every such target into the site under ``repo/`` and rewrites the link to the copy;
- fails the build (a warning, which ``--strict`` turns into an error) when a target is missing;
- expands ``<!-- include: PATH -->`` with the text of a repository file (its headings two levels
  down, its relative links rebased), or a note while the file does not exist yet.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.repo_files")
LINK = re.compile(r"(\]\()([^)\s]+?)(\))")
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
PREFIX = "repo"


def _root(config) -> Path:
    return Path(config["docs_dir"]).resolve().parent


def _outside(target: str, page_dir: Path, docs: Path, root: Path) -> Path | None:
    """The repository file a relative link points to, if it lies outside docs/."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = (page_dir / target.split("#")[0]).resolve()
    if path.is_relative_to(docs) or not path.is_relative_to(root):
        return None
    return path


def _include(markdown: str, page_dir: Path, root: Path) -> str:
    def sub(m: re.Match) -> str:
        src = root / m[1]
        if not src.is_file():
            return f"*`{m[1]}` is not written yet.*"
        # its headings two levels down: an included page sits under a "##" section
        text = re.sub(r"^(#+) ", r"##\1 ", src.read_text(), flags=re.M)

        def rebase(k: re.Match) -> str:
            t = k[2]
            if re.match(r"^[a-z][a-z0-9+.-]*:", t) or t.startswith(("#", "/")):
                return k[0]
            new = os.path.relpath((src.parent / t).resolve(), page_dir).replace(os.sep, "/")
            return k[1] + new + k[3]

        return LINK.sub(rebase, text)

    return INCLUDE.sub(sub, markdown)


def _targets(markdown: str, page_dir: Path, docs: Path, root: Path) -> list[Path]:
    text = FENCE.sub("", markdown)
    found = [_outside(m[2], page_dir, docs, root) for m in LINK.finditer(text)]
    return [p for p in found if p is not None]


def on_files(files: Files, config) -> Files:
    docs, root = Path(config["docs_dir"]).resolve(), _root(config)
    seen: set[Path] = set()
    for md in sorted(docs.rglob("*.md")):
        text = _include(md.read_text(), md.parent, root)
        for path in _targets(text, md.parent, docs, root):
            if path.is_file() and path not in seen:
                seen.add(path)
                uri = f"{PREFIX}/{path.relative_to(root).as_posix()}"
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs, root = Path(config["docs_dir"]).resolve(), _root(config)
    page_dir = (docs / page.file.src_uri).parent
    markdown = _include(markdown, page_dir, root)
    fences = [m.span() for m in FENCE.finditer(markdown)]

    def sub(m: re.Match) -> str:
        if any(a <= m.start() < b for a, b in fences):
            return m[0]
        path = _outside(m[2], page_dir, docs, root)
        if path is None:
            return m[0]
        if not path.exists():
            log.warning("%s links to %s, which does not exist", page.file.src_uri, m[2])
            return m[0]
        if path.is_dir():  # a folder: no page to copy; keep the link for the repository view
            log.warning("%s links to the folder %s; link a file in it", page.file.src_uri, m[2])
            return m[0]
        anchor = "#" + m[2].split("#", 1)[1] if "#" in m[2] else ""
        copy = docs / PREFIX / path.relative_to(root)
        new = os.path.relpath(copy, page_dir).replace(os.sep, "/")
        return m[1] + new + anchor + m[3]

    return LINK.sub(sub, markdown)
