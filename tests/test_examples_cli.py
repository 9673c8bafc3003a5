"""``fastrnn train TASK``: the quickest task end to end, in process and as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastrnn
from fastrnn import datasets as ds
from fastrnn.cli import main


def test_train_deep_prints_the_prediction_and_saves(tmp_path, capsys):
    path = tmp_path / "deep.npz"
    code = main(["train", "deep", "--progress", "off", "--cell", "gru", "--save", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "after d e e p the model predicts: e e p <stop>" in out
    model = fastrnn.load(path)
    d = ds.deep_autocomplete()
    assert model.cell == "gru"
    np.testing.assert_array_equal(model.predict(d.X), d.y)


def test_train_bad_hyper_parameter_is_reported(capsys):
    code = main(["train", "sentiment", "--hidden-size", "0", "--progress", "off"])
    assert code == 2
    assert "hidden_size must be a positive int" in capsys.readouterr().out


def test_train_command_shows_a_progress_bar():
    proc = subprocess.run(
        [sys.executable, "-m", "fastrnn", "train", "deep", "--epochs", "20", "--progress", "on"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model predicts" in proc.stdout
    assert "20/20" in proc.stderr  # the tqdm bar on stderr: 20 steps of one batch


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "script, args, expect",
    [
        ("sentiment.py", [], "training accuracy: 100%"),
        ("one_to_one.py", [], "accuracy: 100%"),
        ("deep_autocomplete.py", [], "predicts: e e p <stop>"),
        ("generator.py", [], "exactly right"),
        ("seq2seq_numbers.py", ["--epochs", "2"], "held-out exact match"),
        ("char_lm.py", ["--epochs", "1", "--length", "20"], "--- greedy ---"),
        ("adding_problem.py", ["--quick", "--models", "gru", "--epochs", "1"], "| GRU"),
    ],
)
def test_examples_run(script, args, expect):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout


def test_example_and_command_run_the_same_task_code(capsys):
    """examples/deep_autocomplete.py and `fastrnn train deep` both call fastrnn.tasks.deep:
    the same defaults, the same seed, the same lines."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "deep_autocomplete.py"), "--cell", "gru"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert main(["train", "deep", "--cell", "gru", "--progress", "off"]) == 0
    command = capsys.readouterr().out.splitlines()
    example = proc.stdout.splitlines()
    assert example[-1].startswith("after d e e p the model predicts:")
    assert command[1 : 1 + len(example)] == example  # between the header and "trained in"


def test_every_task_is_a_train_command_and_examples_use_the_tasks():
    from fastrnn import tasks
    from fastrnn.cli import build_parser

    parser = build_parser("train")
    for name in tasks.TASKS:
        assert parser.parse_args(["train", name]).task == name
    for script in EXAMPLES.glob("*.py"):
        assert "from fastrnn import tasks" in script.read_text(), script.name


def test_a_task_returns_its_model_and_metrics(capsys):
    from fastrnn import tasks

    result = tasks.xor(verbose=False, epochs=300)
    assert capsys.readouterr().out == ""
    assert result.metrics == {"accuracy": 1.0}
    assert result.model.predict(np.eye(2, dtype=np.float32)[None, None, 0]).tolist() == [1]
