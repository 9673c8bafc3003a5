"""``fastrnn gradflow``: the table, the PNG, no matplotlib, bad options; the old
``fastrnn.diagnostics.add_arguments``/``run`` names."""

from __future__ import annotations

import argparse
import re
import sys

import pytest

from fastrnn import diagnostics
from fastrnn.cli import gradflow
from fastrnn.cli import main as cli_main


def _table(out: str) -> dict[str, list[float]]:
    rows = {}
    for line in out.splitlines():
        numbers = re.findall(r"-?\d\.\d\de[+-]\d+", line)
        if len(numbers) == 3:
            rows[line.split()[0]] = [float(v) for v in numbers]
    return rows


def test_gradflow_prints_the_table_and_writes_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the optional plot extra")
    png = tmp_path / "flow.png"
    argv = ["gradflow", "--steps", "150", "--hidden", "8", "--batch", "2", "-o", str(png)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "lag 1" in out and "lag 100" in out and "lag 1000" not in out  # only lags <= T
    rows = _table(out)
    assert set(rows) == {"tanh", "relu", "irnn", "lstm", "gru"}
    assert rows["tanh"][2] < 1e-6 < rows["gru"][2]  # vanishes / keeps a signal at lag 100
    assert rows["relu"][2] > 1e3  # explodes
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in out


def test_gradflow_without_matplotlib_says_how_to_get_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "flow.png"
    assert cli_main(["gradflow", "-T", "20", "--hidden", "4", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert "pip install 'fastrnn[plot]'" in out
    assert "lag 10" in out and "tanh" in out
    assert not png.exists()


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--steps", "0"], "--steps must be a positive int, got 0"),
        (["--hidden", "-3"], "hidden_size must be a positive int, got -3"),
        (["--backend", "cuda"], "unknown backend 'cuda'"),
    ],
)
def test_gradflow_reports_bad_options(capsys, argv, pattern):
    assert cli_main(["gradflow", "--no-plot", *argv]) == 2
    assert re.search(pattern, capsys.readouterr().err)


def test_the_command_moved_out_of_diagnostics_with_an_alias():
    assert not hasattr(diagnostics, "argparse")  # the library module holds no argparse
    with pytest.warns(DeprecationWarning, match="moved to fastrnn.cli.gradflow.run"):
        assert diagnostics.run is gradflow.run
    with pytest.warns(DeprecationWarning, match="moved to fastrnn.cli.gradflow.add_arguments"):
        diagnostics.add_arguments(argparse.ArgumentParser())
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        diagnostics.nothing
