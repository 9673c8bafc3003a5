"""``fastrnn bench`` on tiny shapes: the table, the JSON, the notes for backends that do
not run, the memory guard, the scaling mode and plot, and bad arguments. Speed itself is
never asserted here."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import fastrnn
from fastrnn import _sysinfo
from fastrnn import bench as lib
from fastrnn.bench import cases, runners, schedule
from fastrnn.cli import main

TINY = ["--D", "3", "--H", "5", "--B", "2", "--T", "7", "--repeat", "1", "--gemm-size", "32"]


def _no_torch(peer: str = "torch") -> str:
    """runners.torch_unavailable_reason as on a machine without torch."""
    return "torch not installed (here)"


def _double_dW_hh_in_float32(monkeypatch) -> None:
    """Make the NumPy backend's float32 backward return twice the true dW_hh."""
    from fastrnn.backends import numpy_backend

    real = numpy_backend.backward

    def off(*args, **kwargs):
        dx, dh0, dc0, dparams, norms, head = real(*args, **kwargs)
        if dh0.dtype == np.float32:  # (dx is None for token ids)
            dparams["W_hh"] *= np.float32(2)
        return dx, dh0, dc0, dparams, norms, head

    monkeypatch.setattr(numpy_backend, "backward", off)


def _bench(capsys, *argv: str) -> tuple[int, str]:
    code = main(["bench", *TINY, *argv])
    return code, capsys.readouterr().out


def _table_rows(out: str) -> list[list[str]]:
    """The table's data lines (between the dashed rule and the blank line), split."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_numpy_table_and_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    code, out = _bench(capsys, "--backends", "numpy", "--cells", "rnn,lstm", "--json", str(path))
    assert code == 0
    # the machine description comes first
    assert "CPU:" in out and "BLAS:" in out and "GEMM:" in out
    header = next(line for line in out.splitlines() if line.startswith("shape"))
    for column in ("seconds", "us/step", "x numpy", "GFLOP/s", "%GEMM", "bwd mem"):
        assert column in header
    rows = _table_rows(out)
    assert [(r[2], r[5]) for r in rows] == [("rnn", "numpy"), ("lstm", "numpy")]
    assert all(r[8] == "1.00" for r in rows)  # numpy against itself
    assert "FLOPs per step" in out

    doc = json.loads(path.read_text())
    assert doc["system"]["blas"] == _sysinfo.blas_info()
    assert {g["dtype"] for g in doc["gemm_gflops"]} == {"float32"}
    results = doc["results"]
    assert [r["cell"] for r in results] == ["rnn", "lstm"]
    T, B, D, H = 7, 2, 3, 5
    for r in results:
        assert r["status"] == "ok"
        assert (r["T"], r["B"], r["D"], r["H"]) == (T, B, D, H)
        assert len(r["times"]) == 1 and r["seconds"] == r["times"][0] > 0
        assert r["us_per_step"] == pytest.approx(r["seconds"] / T * 1e6)
        G = {"rnn": 1, "lstm": 4}[r["cell"]]
        assert r["flops"] == T * B * 3 * (2 * G * H * (D + H) + 2 * H * lib.CLASSES)
        assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e9)
        assert r["gemm_share"] == pytest.approx(r["gflops"] / doc["gemm_gflops"][0]["gflops"])
        assert r["speedup_vs_numpy"] == 1.0
    # memory held for backward: rnn keeps hs only; lstm also its 4 gates and the cell state
    assert results[0]["held_bytes"] == T * B * H * 4
    assert results[1]["held_bytes"] == T * B * H * 4 * (1 + 4 + 1)


def test_every_backend_runs_or_says_why(capsys):
    code, out = _bench(capsys, "--cells", "gru", "--dtype", "float64", "--threads", "1,2")
    assert code == 0
    rows = _table_rows(out)
    backends = ["numpy", "numba", "cpp", "torch", "fastrnn.torch"]
    assert [(r[4], r[5]) for r in rows] == [(t, b) for t in ("1", "2") for b in backends]
    available = set(fastrnn.available_backends())
    available |= {p for p in lib.PEERS if lib.torch_unavailable_reason(p) is None}
    for r in rows:
        if r[5] in available:
            assert r[6] != "unavailable" and float(r[6]) > 0, r
        else:
            assert r[6] == "unavailable", r
            assert f"note: {r[5]}: unavailable:" in out
    assert "x 1thr" in out  # a second thread count adds the speed-up over one thread


def test_missing_torch_is_said_in_its_column(capsys, monkeypatch):
    monkeypatch.setattr(runners, "torch_unavailable_reason", _no_torch)
    code, out = _bench(capsys, "--backends", "numpy,torch", "--cells", "rnn")
    assert code == 0
    rows = _table_rows(out)
    assert [r[5:7] for r in rows] == [["numpy", rows[0][6]], ["torch", "unavailable"]]
    assert "note: torch: unavailable: torch not installed (here)" in out


def test_wrong_backend_is_reported_not_timed(capsys, monkeypatch):
    """A backend whose float32 result is off is caught by the check against the float64
    reference, and the command fails."""
    from fastrnn.backends import numpy_backend

    real = numpy_backend.forward

    def off_in_float32(*args, **kwargs):
        hs, h_n, c_n, saved = real(*args, **kwargs)
        if hs.dtype == np.float32:
            hs = hs * np.float32(1.01)
        return hs, h_n, c_n, saved

    monkeypatch.setattr(numpy_backend, "forward", off_in_float32)
    code, out = _bench(capsys, "--backends", "numpy", "--cells", "rnn", "--what", "forward")
    assert code == 1
    assert "wrong (see below)" in out
    assert "hs differs from the reference" in out


def test_run_that_does_not_fit_is_skipped_with_a_message(capsys, monkeypatch):
    monkeypatch.setattr(_sysinfo, "available_memory", lambda: 1000)
    code, out = _bench(capsys, "--backends", "numpy", "--cells", "rnn")
    assert code == 0
    assert "skipped (see below)" in out
    assert "would not fit in memory: needs about" in out


def test_scaling_mode_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png, path = tmp_path / "scaling.png", tmp_path / "scaling.json"
    scaling = ["--scaling", "--T-max", "1000", "--H", "4", "--D", "3", "--backends", "numpy"]
    output = ["--plot", str(png), "--json", str(path)]
    code = main(["bench", *scaling, "--gemm-size", "32", "--repeat", "1", *output])
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(path.read_text())["results"]
    assert [(r["B"], r["T"]) for r in rows] == [(1, 100), (1, 1000), (16, 100), (16, 1000)]
    assert all(r["status"] == "ok" for r in rows)
    assert [r["held_bytes"] for r in rows] == [r["T"] * r["B"] * 4 * 4 for r in rows]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in out


def test_long_sequences_warm_up_on_a_short_one(capsys, monkeypatch):
    monkeypatch.setattr(schedule, "LONG", 5)  # T=7 counts as long here
    made = []  # T of each case made with positional dims (the check's small cases use keywords)
    real = cases.make_case

    def make_case(*a, **k):
        if len(a) > 4:
            made.append(a[4])
        return real(*a, **k)

    monkeypatch.setattr(cases, "make_case", make_case)
    code, out = _bench(capsys, "--backends", "numpy", "--cells", "rnn")
    assert code == 0
    assert made == [7, schedule.WARMUP_T]  # the timed case, then the warm-up case
    assert _table_rows(out)[0][6] != "error"


def test_scaling_estimate_refuses_the_largest_runs():
    """The estimate that guards --scaling: linear in T and B, and T=1e6, B=16 for lstm
    needs more than 10 GB (so it is refused on small machines)."""
    small = lib.estimate_bytes("lstm", 32, 64, 16, 1000, np.float32, "train")
    assert lib.estimate_bytes("lstm", 32, 64, 16, 10_000, np.float32, "train") == 10 * small
    assert lib.estimate_bytes("lstm", 32, 64, 16, 1_000_000, np.float32, "train") > 10e9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "expected a positive whole number, got '0'"),
        (["--threads", "1,x"], "expected a positive whole number, got 'x'"),
        (["--backends", "numpy,tensorflow"], "'tensorflow' is not one of numpy, numba, cpp"),
        (["--cells", "transformer"], "'transformer' is not one of rnn, lstm, gru"),
        (["--T", "-5"], "expected a positive whole number, got '-5'"),
        (["--shapes", "S9"], "'S9' is not one of S1, S2, S3, S4"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
    ],
)
def test_bad_arguments_name_what_is_wrong(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_scaling_and_quick_exclude_each_other(capsys):
    assert main(["bench", "--scaling", "--quick"]) == 2
    assert "not both" in capsys.readouterr().err


def test_held_bytes_counts_each_buffer_once():
    case = lib.make_case("gru", 3, 4, 2, 5, np.float64)
    res = fastrnn.forward("gru", case.params, case.x, backend="numpy")
    gates, hn = res.saved
    expected = res.hs.nbytes + gates.nbytes + hn.nbytes
    assert lib.held_bytes(res) == expected
    # a view of a saved buffer does not count twice
    twice = type(res)(**{**vars(res), "saved": (gates, hn, gates[1:])})
    assert lib.held_bytes(twice) == expected


# --- the inference forward ----------------------------------------------------------------


def test_inference_is_timed_beside_the_training_forward(capsys, tmp_path):
    """--what inference times each backend's training forward too, in the same rounds;
    x fwd is the forward's median over the inference's; nothing is held for backward."""
    backends = [b for b in ("numpy", "cpp") if b in fastrnn.available_backends()]
    if lib.torch_unavailable_reason() is None:
        backends.append("torch")
    path = tmp_path / "inference.json"
    argv = ["--what", "inference", "--cells", "lstm", "--repeat", "2", "--json", str(path)]
    code, out = _bench(capsys, *argv, "--backends", ",".join(backends))
    assert code == 0
    assert "training=False" in out
    header = next(line for line in out.splitlines() if line.startswith("shape")).split("  ")
    assert {"what", "x fwd", "bwd mem"} <= {h.strip() for h in header}
    rows = _table_rows(out)
    pairs = [(b, w) for b in backends for w in ("forward", "inference")]
    assert [(r[5], r[6]) for r in rows] == pairs
    results = json.loads(path.read_text())["results"]
    T, B, D, H = 7, 2, 3, 5
    by = {(r["backend"], r["what"]): r for r in results}
    for backend in backends:
        train, infer = by[(backend, "forward")], by[(backend, "inference")]
        assert train["status"] == infer["status"] == "ok"
        assert len(infer["times"]) == len(train["times"]) == 2
        assert infer["speedup_vs_forward"] == pytest.approx(train["seconds"] / infer["seconds"])
        assert train["speedup_vs_forward"] is None
        assert infer["flops"] == train["flops"] == T * B * 2 * 4 * H * (D + H)
        assert infer["held_bytes"] == 0, backend
        assert train["held_bytes"] > 0, backend
    # numpy's lstm forward holds hs, the 4 gates and the cell state
    assert by[("numpy", "forward")]["held_bytes"] == T * B * H * 4 * (1 + 4 + 1)
    # x numpy compares the same workload: numpy's inference over itself is 1
    assert by[("numpy", "inference")]["speedup_vs_numpy"] == 1.0


def test_wrong_inference_forward_is_caught(capsys, monkeypatch):
    """The inference forward is checked against the reference's training forward: a
    backend whose training=False path is off is reported, its training forward is not."""
    from fastrnn.backends import numpy_backend

    real = numpy_backend.forward

    def off_in_inference(*args, **kwargs):
        hs, h_n, c_n, saved = real(*args, **kwargs)
        if not kwargs["training"] and hs.dtype == np.float32:
            hs = hs * np.float32(1.01)
        return hs, h_n, c_n, saved

    monkeypatch.setattr(numpy_backend, "forward", off_in_inference)
    code, out = _bench(capsys, "--backends", "numpy", "--cells", "rnn", "--what", "inference")
    assert code == 1
    rows = _table_rows(out)
    assert [r[6] for r in rows] == ["forward", "inference"]
    assert rows[0][7] != "wrong" and rows[1][7] == "wrong"
    assert "numpy (inference): wrong: numpy rnn float32 inference: hs differs" in out


def test_held_bytes_of_an_inference_forward_is_what_it_saved():
    case = lib.make_case("lstm", 3, 4, 2, 5, np.float64)
    res = fastrnn.forward("lstm", case.params, case.x, backend="numpy", training=False)
    assert res.saved is None and lib.held_bytes(res) == 0
    # had the backend saved something anyway, it would show
    leaked = type(res)(**{**vars(res), "saved": (res.hs.copy(),)})
    assert lib.held_bytes(leaked) == res.hs.nbytes


def test_openblas_coretype_is_warned_about():
    assert any(
        "OPENBLAS_CORETYPE=Haswell" in w
        for w in _sysinfo.warnings_for({"OPENBLAS_CORETYPE": "Haswell"})
    )
    assert _sysinfo.warnings_for({}) == []


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "fastrnn", "bench", *TINY, "--backends", "numpy", "--cells", "rnn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout and "us/step" in proc.stdout


def test_backends_and_thread_counts_take_turns(capsys, monkeypatch):
    """Each case's runs go in rounds (every backend and thread count once per round), each
    timed run right after an untimed run of the same row, with a pause whenever the backend
    changes; every row gets exactly its repeats, and the table keeps its order."""
    order, sleeps, events = [], [], []  # events: every run of a runner, and which were timed
    real_time_once, real_make_runner = schedule.time_once, runners.make_runner
    real_run = runners.Runner.run

    alive = weakref.WeakSet()  # the runners not yet freed: one case's rows hold no state

    def make_runner(case, backend, what):
        assert not alive, "a runner is made while another still holds its last results"
        runner = real_make_runner(case, backend, what)
        alive.add(runner)
        return runner

    def run(runner):
        events.append(("run", id(runner)))
        return real_run(runner)

    def time_once(row, runner):
        order.append((row.cell, row.backend, row.threads))
        events.append(("timed", id(runner)))
        real_time_once(row, runner)

    monkeypatch.setattr(runners, "make_runner", make_runner)
    monkeypatch.setattr(runners.Runner, "run", run)
    monkeypatch.setattr(schedule, "time_once", time_once)
    monkeypatch.setattr(schedule.time, "sleep", lambda s: sleeps.append((len(order), s)))
    argv = ["--backends", "cpp,numpy", "--threads", "2,1", "--cells", "rnn,gru", "--repeat", "3"]
    code, out = _bench(capsys, *argv)
    if "unavailable" in out:  # the cpp extension is not built here: numpy rows only
        pytest.skip("the cpp backend is not available")
    assert code == 0
    one_round = [("numpy", 1), ("numpy", 2), ("cpp", 1), ("cpp", 2)]
    want = [(cell, b, t) for cell in ("rnn", "gru") for _ in range(3) for b, t in one_round]
    assert order == want
    for i, (kind, runner) in enumerate(events):
        if kind == "timed":  # an untimed run of the same runner just before, then the timed one
            assert events[i - 1] == ("run", runner) and events[i + 1] == ("run", runner)
    # before the first run of each case (after the warm-ups) and at every change of backend
    assert [i for i, _ in sleeps] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert all(s == schedule.SETTLE for _, s in sleeps)
    table = _table_rows(out)
    assert [(r[2], r[5], r[4]) for r in table] == [
        (cell, b, t) for cell in ("rnn", "gru") for t in ("2", "1") for b in ("cpp", "numpy")
    ]
    assert all(r[6] != "error" for r in table)


# --- the char-LM workload ----------------------------------------------------------------

LM_TINY = ["--what", "charlm", "--D", "6", "--H", "5", "--B", "3", "--T", "4"]


def test_charlm_table_against_torch_and_json(capsys, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "lm.json"
    code = main(["bench", *LM_TINY, "--repeat", "1", "--gemm-size", "32", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "one training step of a character LM as CharLanguageModel.fit runs it" in out
    header = next(line for line in out.splitlines() if line.startswith("shape"))
    assert "x torch" in header.split("  ")
    rows = _table_rows(out)
    # a custom charlm shape keeps LM128's cells; every backend, torch and the drop-in
    assert [r[2] for r in rows] == ["lstm"] * 5 + ["gru"] * 5
    results = json.loads(path.read_text())["results"]
    D, H, B, T = 6, 5, 3, 4
    for r in results:
        assert r["what"] == "charlm"
        if r["status"] == "unavailable":
            continue
        assert r["status"] == "ok", r
        G = {"lstm": 4, "gru": 3}[r["cell"]]
        assert r["flops"] == T * B * 3 * (2 * G * H * (D + H) + 2 * H * D)  # K = D
        torch_row = next(t for t in results if t["backend"] == "torch" and t["cell"] == r["cell"])
        assert r["speedup_vs_torch"] == pytest.approx(torch_row["seconds"] / r["seconds"])


def test_charlm_without_torch_times_fastrnn_alone(capsys, monkeypatch):
    monkeypatch.setattr(runners, "torch_unavailable_reason", _no_torch)
    code = main(["bench", *LM_TINY, "--cells", "gru", "--backends", "numpy,torch", "--repeat", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = _table_rows(out)
    assert [r[5] for r in rows] == ["numpy", "torch"]
    assert float(rows[0][6]) > 0 and rows[1][6] == "unavailable"
    assert "x torch" not in out


def test_charlm_default_shapes_are_the_lm_shapes():
    from fastrnn.cli import bench as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    shapes = command._shapes(parser.parse_args(["--what", "charlm"]))
    assert [(s.name, s.D, s.H, s.B, s.T, s.cells) for s in shapes] == [
        ("LM128", 100, 128, 32, 64, ("lstm", "gru")),
        ("LM512", 100, 512, 32, 64, ("lstm", "gru")),
    ]
    quick = command._shapes(parser.parse_args(["--what", "charlm", "--quick"]))
    assert [(s.name, s.T) for s in quick] == [("LM128/4", 16), ("LM512/4", 16)]
    assert command._shapes(parser.parse_args(["--shapes", "LM512"]))[0].H == 512
    all_threads = parser.parse_args(["--threads", "1,all"]).threads
    assert all_threads == [1, _sysinfo.usable_cores()]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_charlm_step_is_the_same_training_step_in_fastrnn_and_torch(monkeypatch, cell):
    """From the same weights, two steps of fastrnn's CharLanguageModel (as fit runs them)
    and two of the PyTorch model give the same weights in float64: the same loss, the same
    gradients, the same clipping (forced here by a small max norm) and the same Adam."""
    pytest.importorskip("torch")
    monkeypatch.setattr(runners, "LM_CLIP", 0.05)
    case = lib.make_case(cell, 7, 5, 3, 6, np.float64, what="charlm")
    ours = runners.make_runner(case, "numpy", "charlm")
    theirs = runners.make_runner(case, "torch", "charlm")
    for _ in range(2):
        history = ours.run()
        loss = theirs.run()
        assert history["step_loss"][-1] == pytest.approx(loss.item(), rel=1e-9)
        assert history["grad_norm"][-1] > 0.05  # the clipping was active
    got = ours.model.parameters()
    for name in got:
        want = theirs._parameter(name).detach().numpy()
        # Adam divides by sqrt(v) + 1e-8: for a gradient entry near 1e-8 (clipping makes
        # them small), a rounding difference of 1e-14 in the summed gradient becomes 1e-8
        # of a weight (lr 0.01 / 1e-8 = 1e6 times larger); a step itself moves weights by
        # about lr, so a different clipping or Adam would be off by 1e-3
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-7, err_msg=name)


def test_charlm_check_catches_a_wrong_gradient(monkeypatch):
    """The check compares gradients, not weights after Adam (whose first step is about
    lr * sign(gradient), the same for a gradient twice too large): that error is caught."""
    _double_dW_hh_in_float32(monkeypatch)
    error = runners.check_against_reference("numpy", "gru", "float32", "charlm")
    assert error is not None and "differs from the reference" in error


# --- the PyTorch drop-in and the packed workload -----------------------------------------


def test_packed_lengths_spread_over_1_to_T_unsorted():
    lengths = lib.packed_lengths(6, 50)
    assert sorted(lengths) == [1, 11, 21, 30, 40, 50]
    assert list(lengths) != sorted(lengths, reverse=True)  # enforce_sorted=False is needed
    assert list(lib.packed_lengths(1, 9)) == [9]
    assert lib.make_case("gru", 3, 4, 6, 50, np.float32, what="packed").lengths.tolist() == (
        lengths.tolist()
    )
    assert lib.make_case("gru", 3, 4, 6, 50, np.float32).lengths is None


def test_packed_rows_are_torch_and_the_dropin(capsys, tmp_path):
    """--what packed runs torch.nn and fastrnn.torch only (the other backends are dropped
    from the plan), on the sum of the lengths for the FLOPs; x torch is the ratio of the
    two medians."""
    pytest.importorskip("torch")
    path = tmp_path / "packed.json"
    argv = ["--what", "packed", "--cells", "lstm,gru", "--json", str(path)]
    code, out = _bench(capsys, *argv, "--backends", "numpy,cpp,torch,fastrnn.torch")
    assert code == 0, out
    assert "PackedSequence" in out
    assert "drop-in:  fastrnn.torch" in out and f"fastrnn's {fastrnn.get_backend()}" in out
    rows = _table_rows(out)
    assert [(r[2], r[5]) for r in rows] == [
        (c, b) for c in ("lstm", "gru") for b in ("torch", "fastrnn.torch")
    ]
    results = json.loads(path.read_text())["results"]
    T, B, D, H = 7, 2, 3, 5
    steps = int(lib.packed_lengths(B, T).sum())
    for r in results:
        assert r["status"] == "ok", r
        G = {"lstm": 4, "gru": 3}[r["cell"]]
        assert r["flops"] == steps * 3 * (2 * G * H * (D + H) + 2 * H * lib.CLASSES)
        theirs = next(t for t in results if t["backend"] == "torch" and t["cell"] == r["cell"])
        assert r["speedup_vs_torch"] == pytest.approx(theirs["seconds"] / r["seconds"])
        assert r["speedup_vs_numpy"] is None


def test_the_dropin_row_times_the_torch_model_with_fastrnns_modules():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    case = lib.make_case("gru", 3, 5, 4, 6, np.float64, what="packed")
    ours, theirs = (runners.make_runner(case, b, "packed") for b in ("fastrnn.torch", "torch"))
    assert isinstance(ours.rnn, ft.GRU) and type(theirs.rnn) is torch.nn.GRU
    got, want = ours.check_outputs(), theirs.check_outputs()
    assert got.keys() == want.keys() and {"hs", "loss", "dx", "dW_hh", "dV"} <= got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    # the padded input's gradient is zero past each sequence's end
    dx = got["dx"]
    for b, n in enumerate(case.lengths):
        assert not dx[n:, b].any() and dx[n - 1, b].any()
    with pytest.raises(ValueError, match="packed workload runs on"):
        runners.make_runner(case, "numpy", "packed")


def test_packed_check_catches_a_wrong_dropin_gradient(monkeypatch):
    """The drop-in's packed step is checked against torch.nn in float64: a backend whose
    float32 weight gradient is off fails the check."""
    pytest.importorskip("torch")
    from fastrnn import _config

    monkeypatch.setattr(_config, "_global_backend", "numpy")
    assert runners.check_against_reference("fastrnn.torch", "lstm", "float32", "packed") is None
    _double_dW_hh_in_float32(monkeypatch)
    error = runners.check_against_reference("fastrnn.torch", "lstm", "float32", "packed")
    assert error is not None and "dW_hh differs from the reference" in error


def test_packed_default_shape_is_s2():
    from fastrnn.cli import bench as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    shapes = command._shapes(parser.parse_args(["--what", "packed"]))
    assert [s.name for s in shapes] == ["S2"]


# --- the machine lines -------------------------------------------------------------------


def test_machine_lines_name_each_blas_its_kernel_and_the_cpp_isa():
    info = _sysinfo.system_info()
    info["blas"] = [
        {"owner": "numpy", "internal_api": "openblas", "version": "0.3.31", "num_threads": 2,
         "architecture": "Zen", "threading_layer": "pthreads"},
        {"owner": "scipy", "internal_api": "openblas", "version": "0.3.30", "num_threads": 4,
         "architecture": "Haswell", "threading_layer": "pthreads"},
    ]  # fmt: skip
    info["env"] = {"OPENBLAS_L2_SIZE": "1048576"}
    info["cpp_isa"] = {"in_use": "avx2", "requested": "avx2", "built": ["generic", "avx2"]}
    lines = _sysinfo.format_system_info(info).splitlines()
    blas = [line for line in lines if line.startswith("BLAS:")]
    assert blas == [
        "BLAS:     numpy's openblas 0.3.31, kernel Zen, 2 threads by default, threading pthreads",
        "BLAS:     scipy's openblas 0.3.30, kernel Haswell, 4 threads by default, "
        "threading pthreads",
    ]
    assert "OpenBLAS: OPENBLAS_CORETYPE unset, OPENBLAS_L2_SIZE=1048576" in lines
    assert "cpp ISA:  avx2 (FASTRNN_CPP_ISA=avx2; built: generic, avx2)" in lines


def test_blas_info_sees_numpys_and_scipys_openblas():
    owners = {lib["owner"]: lib for lib in _sysinfo.blas_info()}
    assert {"numpy", "scipy"} <= set(owners), owners
    for lib_ in owners.values():
        assert set(lib_) >= {"internal_api", "version", "architecture", "num_threads"}
    assert _sysinfo._owner("/x/site-packages/numpy.libs/libscipy_openblas64_-1.so") == "numpy"
    assert _sysinfo._owner("/x/site-packages/scipy.libs/libscipy_openblas-2.so") == "scipy"
    assert _sysinfo._owner("/usr/lib/libopenblas.so") == "other"


def test_the_cpp_isa_line_follows_fastrnn_cpp_isa():
    if "cpp" not in fastrnn.available_backends():
        pytest.skip("the cpp backend is not available")
    code = "from fastrnn import _sysinfo as s; print(s.format_system_info(s.system_info()))"
    env = {**os.environ, "FASTRNN_CPP_ISA": "generic"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "cpp ISA:  generic (FASTRNN_CPP_ISA=generic; built: " in proc.stdout
    assert f"cpp ISA:  {_sysinfo.cpp_isa()['in_use']} (" in _sysinfo.format_system_info(
        _sysinfo.system_info()
    )


def test_the_numba_line_says_which_cpu_numba_compiles_for():
    pytest.importorskip("numba")
    code = "from fastrnn import _sysinfo as s; print(s.format_system_info(s.system_info()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    host = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = next(s for s in host.stdout.splitlines() if s.startswith("numba:"))
    assert "the host CPU's own features (the host)" in line
    env.update(NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = next(s for s in forced.stdout.splitlines() if s.startswith("numba:"))
    assert "compiles for haswell, that CPU's default features" in line
    assert "NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=" in forced.stdout  # the env line
