"""The documentation site's code runs: every ```python block of every page under docs/.

The blocks of one page run in order in one namespace (a page may build on its earlier
blocks), in a temporary working directory. A block that is meant to be read and not run
(an MPI script, a fragment) is written as ```{code-block} python instead, which this test
does not collect. The examples/ scripts the site includes are run by
tests/test_examples_cli.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Pages whose ```python blocks are not examples: the design notes list the backend
# contract's signatures (checked by tests/test_contract.py instead).
NOT_EXAMPLES = {"design.md"}


def pages_with_code() -> list[Path]:
    return sorted(
        p
        for p in DOCS.rglob("*.md")
        if p.relative_to(DOCS).as_posix() not in NOT_EXAMPLES
        and "_build" not in p.parts
        and FENCE.search(p.read_text(encoding="utf-8"))
    )


def test_the_docs_have_runnable_code():
    """Guards the collection itself: a change of fence style would silently run nothing."""
    names = {p.relative_to(DOCS).as_posix() for p in pages_with_code()}
    assert {"getting-started.md", "notation.md"} <= names


@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    text = page.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        code = compile(match.group(1), f"{page}:{line}", "exec")
        exec(code, namespace)
