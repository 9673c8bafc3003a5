"""The ``fastrnn`` command line as a whole: ``--version``, ``info``, the entry points, one
module per command, no argparse in the library, and the old module names."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fastrnn
from fastrnn.cli import SUBCOMMANDS, main

PACKAGE = Path(fastrnn.__file__).resolve().parent


def test_version_prints_name_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"fastrnn {fastrnn.__version__}\n"


def test_version_through_the_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "fastrnn", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fastrnn {fastrnn.__version__}"


def test_info_lists_the_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"fastrnn {fastrnn.__version__}\n")
    assert f"active backend:     {fastrnn.get_backend()}" in out
    # where the C++ kernels' workers run (the suite hands PyTorch's team back: own threads)
    assert f"kernel workers:     {fastrnn.build_info()['threads']} (" in out
    for name, cache in fastrnn.output_cache_info().items():  # numba's, and cpp's if it loads
        limit = cache["limit"] / 2**20
        assert f"output cache:       {name}: keeps up to {limit:.0f} MiB of large outputs" in out


def test_info_says_what_auto_resolves_to_and_why(capsys, monkeypatch):
    from fastrnn import _config
    from fastrnn import backends as registry

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    with fastrnn.use_backend("auto") as auto:  # what set_backend("auto") would run on
        pass
    line = next(s for s in out.splitlines() if s.startswith("auto resolves to:"))
    assert line.split()[3] == f"{auto}:"
    assert " > ".join(registry.BACKENDS) in line
    # a faster backend that does not load here is named, with its reason
    monkeypatch.setattr(registry, "available", lambda: ["numba", "numpy"])
    monkeypatch.setattr(registry, "unavailable_reasons", lambda: {"cpp": "no compiler here"})
    monkeypatch.setattr(_config, "_global_backend", "auto")
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto_backend"] == "numba"
    assert "passed over: cpp (unavailable: no compiler here)" in info["auto_rule"]


def test_console_script_target_is_main():
    # the repository's pyproject.toml, next to tests/ (the package may be installed elsewhere)
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'fastrnn = "fastrnn.cli:main"' in text
    module, _, name = "fastrnn.cli:main".partition(":")
    assert getattr(importlib.import_module(module), name) is main


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_one_module_per_command(command):
    module = importlib.import_module(f"fastrnn.cli.{command}")
    assert callable(module.add_arguments) and callable(module.run)


def test_no_argparse_outside_the_command_line():
    """Library modules do not import argparse; the command line lives in fastrnn.cli."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if "argparse" in names:
                offenders.append(str(rel))
    assert offenders == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("fastrnn._benchlib", "fastrnn.bench"),
        ("fastrnn.examples_cli", "fastrnn.cli.train"),
    ],
)
def test_old_modules_still_import_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module.__name__ == old


def test_old_bench_command_names_warn_and_work():
    from fastrnn import bench
    from fastrnn.cli import bench as command

    with pytest.warns(DeprecationWarning, match="moved to fastrnn.cli.bench.run"):
        assert bench.run is command.run
    with pytest.warns(DeprecationWarning, match="moved to fastrnn.cli.bench.add_arguments"):
        assert bench.add_arguments is command.add_arguments
