"""The package itself: the lazily loaded names as type checkers see them, one version."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

import pytest

import fastrnn

ROOT = Path(__file__).resolve().parents[1]


def _type_checking_names() -> set[str]:
    """The names imported under ``if TYPE_CHECKING:`` in fastrnn/__init__.py."""
    tree = ast.parse(inspect.getsource(fastrnn))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                names |= {alias.asname or alias.name for alias in stmt.names}
    return names


def test_type_checkers_see_every_lazy_name():
    """Each name fastrnn.__getattr__ loads lazily is imported for type checkers too, from
    the module that really defines it."""
    assert _type_checking_names() == set(fastrnn._LAZY) | fastrnn._SUBMODULES
    for name, module in fastrnn._LAZY.items():
        assert getattr(fastrnn, name) is getattr(sys.modules[module], name)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_one_source_for_the_version():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    version = meta["tool"]["scikit-build"]["metadata"]["version"]
    assert version["provider"] == "scikit_build_core.metadata.regex"
    source = (ROOT / version["input"]).read_text(encoding="utf-8")
    # scikit-build-core's default regex: the one assignment of __version__ in that file
    found = re.findall(r"""(?m)^__version__\s*=\s*['"]([^'"]+)['"]""", source)
    assert found == [fastrnn.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", fastrnn.__version__)
