"""The package's import structure, read from its source (nothing is imported): no import
cycle between its modules, and no module reaching into another module's private names.

Every ``import`` counts, at module level or inside a function (a lazy import hides a
cycle from the interpreter, not from a reader), except those under ``if TYPE_CHECKING:``,
which never run. Private modules of the package (``_config``, ``_sysinfo``, ...) are the
package's own and may be imported anywhere in it (their private names may not); the kernel
modules (``_kernels_<level>``, ``backends._numba_kernels``) only by their backend.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastrnn

ROOT = Path(fastrnn.__file__).parent
PACKAGE = "fastrnn"


def _modules() -> dict[str, Path | None]:
    """Dotted name -> source file (None for a compiled one), for every module of the package."""
    out: dict[str, Path | None] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    for path in sorted([*ROOT.rglob("*.so"), *ROOT.rglob("*.pyd")]):
        parts = path.relative_to(ROOT.parent).parts
        out[".".join([*parts[:-1], parts[-1].split(".")[0]])] = None
    return out


MODULES = _modules()

# kernel module -> the one module allowed to import it (importlib calls are not seen here)
KERNELS = {m: "fastrnn.backends.cpp_backend" for m in MODULES if m.startswith("fastrnn._kernels_")}
KERNELS["fastrnn.backends._numba_kernels"] = "fastrnn.backends.numba_backend"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` in ``module``."""
    if not node.level:
        return node.module or ""
    is_package = str(MODULES[module]).endswith("__init__.py")
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imports(module: str) -> tuple[set[str], list[str]]:
    """The package modules ``module`` imports, and its imports of other modules' private
    names (as readable strings)."""
    deps: set[str] = set()
    private: list[str] = []
    source_file = MODULES[module]
    if source_file is None:  # compiled: imports nothing of the package
        return deps, private
    tree = ast.parse(source_file.read_text(), filename=str(source_file))
    aliases: dict[str, str] = {}  # local name -> package module it is bound to

    def use(target: str, what: str, line: int) -> None:
        deps.add(target)
        owner = KERNELS.get(target)
        if owner is not None and owner != module:
            private.append(f"{module}:{line} imports {what} (only {owner} may)")

    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    use(a.name, a.name, node.lineno)
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source not in MODULES:
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in MODULES:  # a module: fastrnn's private modules are its own
                    use(sub, sub, node.lineno)
                    aliases[a.asname or a.name] = sub
                    continue
                deps.add(source)
                if _private(a.name) and source != module:
                    private.append(f"{module}:{node.lineno} imports {source}.{a.name}")
    for node in _runtime_nodes(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and aliases.get(node.value.id, module) != module
            and _private(node.attr)
            and f"{aliases[node.value.id]}.{node.attr}" not in MODULES
        ):
            private.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    deps.discard(module)
    return deps, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    """The walk is not vacuous: it finds the modules and the edges every reader knows."""
    assert {"fastrnn", "fastrnn.functional", "fastrnn.backends.numpy_backend"} <= set(MODULES)
    if "cpp" in fastrnn.available_backends():  # the compiled modules are seen
        assert "fastrnn._kernels_generic" in KERNELS
    assert "fastrnn.functional" in _imports("fastrnn.layers")[0]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_inside_the_package():
    graph = {m: _imports(m)[0] for m in MODULES}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c)
        for c in cycles
    )


def test_no_module_imports_another_modules_private_names():
    found = [line for m in sorted(MODULES) for line in sorted(_imports(m)[1])]
    assert not found, "private names used across modules:\n" + "\n".join(found)
