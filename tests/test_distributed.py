"""Data-parallel training over MPI (fastrnn.distributed, ``train(..., comm=)``, ``fit(...,
comm=)``): the flat gradient buffer and the whole loop on a 1-rank communicator
(``COMM_SELF``) in this process, and real jobs of 2 and 3 ranks started with the venv's
own ``mpiexec`` in subprocesses (tests/mpi_worker.py), each with a timeout.

mpi4py is an optional peer (``fastrnn[mpi]``, in the ``test`` extra): without it these tests
skip, except in CI (``FASTRNN_REQUIRE_BACKENDS`` set), where a missing mpi4py fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REQUIRE_VAR
from fastrnn import distributed as D
from fastrnn import models, training

try:
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get(REQUIRE_VAR):
        pytest.fail(f"mpi4py is required in CI ({REQUIRE_VAR} is set): {exc}", pytrace=False)
    pytest.skip(f"mpi4py unavailable: {exc}", allow_module_level=True)

HERE = Path(__file__).parent
WORKER = HERE / "mpi_worker.py"
SELF = MPI.COMM_SELF


def mpiexec() -> str:
    """The mpiexec next to this Python (PyPI's mpich puts it there), else the one on PATH."""
    own = Path(sys.executable).parent / "mpiexec"
    found = str(own) if own.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py imports but no mpiexec was found next to python or on PATH")
    return found


def run_job(n: int, scenario: str, outdir: Path, timeout: float = 60.0):
    """Run the worker on ``n`` ranks; (completed process, seconds)."""
    return run_mpi(n, ["-m", "mpi4py", str(WORKER), scenario, str(outdir)], timeout)


def run_mpi(n: int, args: list[str], timeout: float = 60.0, cwd: Path | None = None):
    """``mpiexec -n N python ARGS``; (completed process, seconds). On a timeout the whole
    process group (mpiexec and its ranks) is killed and the test fails."""
    env = dict(os.environ)
    package = str(Path(training.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package, env.get("PYTHONPATH")) if p)
    env.update(FASTRNN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} did not end within {timeout} s (a hang)")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.perf_counter() - start


def rank_files(outdir: Path, n: int, suffix: str = "") -> list[dict[str, np.ndarray]]:
    return [dict(np.load(outdir / f"rank{r}{suffix}.npz")) for r in range(n)]


def assert_matches_single_process(ranks: list[dict[str, np.ndarray]]) -> None:
    """Every rank has the same bits; rank 0's parameters equal the single process to 1e-12
    (float64: a few epochs of summation-order rounding), and so do the losses."""
    first = ranks[0]
    names = [k for k in first if k.startswith("param:")]
    assert names
    for other in ranks[1:]:
        for k in [*names, "loss", "step_loss"]:
            assert other[k].tobytes() == first[k].tobytes(), k
    for k in names:
        single = first["single:" + k.removeprefix("param:")]
        assert first[k].dtype == np.float64
        np.testing.assert_allclose(first[k], single, rtol=1e-12, atol=1e-12 * np.abs(single).max())
    np.testing.assert_allclose(first["loss"], first["single_loss"], rtol=1e-12)
    np.testing.assert_allclose(first["step_loss"], first["single_step_loss"], rtol=1e-12)
    assert len(first["step_loss"]) == len(first["single_step_loss"])


# --- real jobs --------------------------------------------------------------------------------


def test_two_ranks_train_an_lstm_as_one_process(tmp_path):
    done, _ = run_job(2, "lstm", tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = rank_files(tmp_path, 2)
    assert all(int(r["size"]) == 2 for r in ranks)
    assert_matches_single_process(ranks)


def test_three_ranks_uneven_batches_tbptt_and_a_rank_without_samples(tmp_path):
    # 23 samples in batches of 7: 7 = 3 + 2 + 2 and the last 2 = 1 + 1 + 0; a tagger whose
    # loss averages over real steps (variable lengths), truncated BPTT in chunks of 3
    done, _ = run_job(3, "uneven", tmp_path)
    assert done.returncode == 0, done.stderr
    assert_matches_single_process(rank_files(tmp_path, 3))


def test_every_model_family_trains_on_two_ranks_as_one_process(tmp_path):
    # losses over samples (vector regression), over variable-length outputs (generator,
    # seq2seq: each rank weighted by its number of targets), truncated BPTT (the LM)
    done, _ = run_job(2, "families", tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("SequenceRegressor", "SequenceGenerator", "Seq2Seq", "CharLanguageModel"):
        assert_matches_single_process(rank_files(tmp_path, 2, f"-{name}"))


def test_callbacks_checkpoints_and_save_on_two_ranks(tmp_path):
    done, _ = run_job(2, "callbacks", tmp_path)
    assert done.returncode == 0, done.stderr
    ranks = rank_files(tmp_path, 2)
    for k in ranks[0]:  # the same history (with val_loss) and parameters everywhere
        if k != "saved":
            assert ranks[0][k].tobytes() == ranks[1][k].tobytes(), k
    # rank 1 stopped after its 5th batch (4 batches an epoch): both ranks stopped there
    assert len(ranks[0]["loss"]) == len(ranks[0]["val_loss"]) == 2
    assert len(ranks[0]["step_loss"]) == 5
    # only rank 0 ran the checkpoint (2 epochs) and wrote the model
    assert (int(ranks[0]["saved"]), int(ranks[1]["saved"])) == (2, 0)
    assert sorted(p.name for p in tmp_path.glob("*.npz") if not p.name.startswith("rank")) == [
        "ckpt-1.npz",
        "ckpt-2.npz",
        "model.npz",
    ]


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    done, seconds = run_job(2, "raise", tmp_path, timeout=30.0)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert seconds < 30


def test_a_nan_on_one_rank_stops_every_rank_with_the_message(tmp_path):
    done, _ = run_job(2, "nan", tmp_path)
    assert done.returncode == 0, done.stderr
    errors = [str(r["error"]) for r in rank_files(tmp_path, 2)]
    assert errors[0] == errors[1]
    for part in ("head.bias", "epoch 1", "step 3", "NaN", "2 ranks"):
        assert part in errors[0]


def test_cli_distributed_prints_and_saves_on_rank_0(tmp_path):
    args = ["-m", "fastrnn", "train", "sentiment", "--distributed", "--save", "m.npz"]
    done, _ = run_mpi(2, [*args, "--progress", "off"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("task sentiment") == 1 and "MPI processes: 2" in done.stdout
    assert done.stdout.count("saved to m.npz") == 1 and (tmp_path / "m.npz").exists()


def test_cli_distributed_error_ends_the_job_with_status_2(tmp_path):
    args = ["-m", "fastrnn", "train", "sentiment", "--distributed", "--lr", "-1"]
    done, seconds = run_mpi(2, args, timeout=30.0, cwd=tmp_path)
    assert done.returncode == 2
    assert "lr must be finite and > 0" in done.stdout and seconds < 30


# --- one rank, in this process ----------------------------------------------------------------


def test_gradient_buffer_views_and_sum():
    params = {
        "b": np.zeros((2, 3), np.float32),
        "a": np.zeros(4, np.float64),
        "c": np.zeros(5, np.float32),
    }
    buf = D.GradientBuffer(params, SELF, n_stats=2)
    # one flat buffer per dtype; every gradient a view of it with the parameter's shape
    assert sorted(str(dt) for dt in buf.buffers) == ["float32", "float64"]
    assert buf.buffers[np.dtype(np.float32)].size == 6 + 5
    assert buf.buffers[np.dtype(np.float64)].size == 4 + 2  # the stats go with float64
    for name, p in params.items():
        view = buf.grads[name]
        assert view.shape == p.shape and view.dtype == p.dtype
        assert np.shares_memory(view, buf.buffers[p.dtype])
    assert np.shares_memory(buf.stats, buf.buffers[np.dtype(np.float64)])
    rng = np.random.default_rng(0)
    grads = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
    buf.load(grads, 3.0)
    buf.stats[:] = (1.5, 3.0)
    buf.allreduce()  # one rank: the sum is itself
    buf.divide(3.0)
    for k, g in grads.items():
        np.testing.assert_allclose(buf.grads[k], g, rtol=2 * np.finfo(g.dtype).eps)
    assert buf.stats.tolist() == [1.5, 3.0]
    buf.load({"a": grads["a"]})  # a missing gradient is 0
    assert not buf.grads["b"].any() and np.array_equal(buf.grads["a"], grads["a"])
    buf.zero()
    assert not any(b.any() for b in buf.buffers.values())
    with pytest.raises(ValueError, match="unknown parameters"):
        buf.load({"zz": np.zeros(1)})


def test_float32_only_parameters_keep_the_stats_in_float32():
    buf = D.GradientBuffer({"w": np.zeros(3, np.float32)}, SELF, n_stats=2)
    assert list(buf.buffers) == [np.dtype(np.float32)] and buf.stats.dtype == np.float32


def test_helpers_on_one_rank():
    assert (D.rank(SELF), D.size(SELF), D.is_root(SELF)) == (0, 1, True)
    assert (D.rank(None), D.size(None), D.is_root(None)) == (0, 1, True)
    idx = np.arange(7)
    assert np.array_equal(D.split(idx, SELF), idx)
    assert D.on_root(SELF, lambda x: x + 1, 1) == 2
    assert D.on_root(SELF, lambda: 5, share=True) == 5
    with pytest.raises(KeyError):
        D.on_root(SELF, {}.__getitem__, "x", share=True)
    assert D.allreduce_max(SELF, 4) == 4 and D.allreduce_any(SELF, False) is False
    assert D.allreduce_sum(SELF, 2.5) == 2.5
    D.check_same(SELF, "train", n=3)  # one rank agrees with itself
    assert D.world() is MPI.COMM_WORLD
    with pytest.raises(TypeError, match=r"comm must be an mpi4py communicator.*got int"):
        D.check_comm(3)


def test_broadcast_parameters_in_place():
    p = {"w": np.arange(6.0).reshape(2, 3), "t": np.arange(6.0).reshape(2, 3).T}
    before = {k: v.copy() for k, v in p.items()}
    D.broadcast_parameters(p, SELF)
    for k in p:
        assert np.array_equal(p[k], before[k])


def test_split_shares_a_batch_as_array_split():
    class Fake:  # the sizes of a 3-rank communicator, for the split alone
        def __init__(self, r):
            self.r = r

        def Get_rank(self):
            return self.r

        def Get_size(self):
            return 3

    parts = [D.split(np.arange(7), Fake(r)).tolist() for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert [D.split(np.arange(2), Fake(r)).size for r in range(3)] == [1, 1, 0]


def _tagger_data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(13, 6, 2))
    lengths = rng.integers(1, 7, size=13)
    return X, (X[..., 0] > 0).astype(np.int64), lengths


@pytest.mark.parametrize("tbptt", [None, 2])
def test_fit_on_one_rank_equals_fit_without_comm(tbptt, tmp_path):
    X, y, lengths = _tagger_data()

    def model():
        return models.SequenceTagger(
            hidden_size=4, epochs=2, batch_size=4, dtype="float64", seed=2, tbptt=tbptt
        )

    alone, together = model().fit(X, y, lengths), model().fit(X, y, lengths, comm=SELF)
    for k, v in alone.parameters().items():
        np.testing.assert_allclose(together.parameters()[k], v, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(together.history_["loss"], alone.history_["loss"], rtol=1e-13)
    together.save(tmp_path / "m.npz")  # rank 0 writes
    assert (tmp_path / "m.npz").exists()


def test_save_is_a_no_op_on_other_ranks(tmp_path):
    X, y, lengths = _tagger_data()
    m = models.SequenceTagger(hidden_size=3, epochs=1, seed=0).fit(X, y, lengths)
    m._fit_rank = 1  # as after fit(..., comm=) on rank 1
    m.save(tmp_path / "a.npz")
    import fastrnn

    fastrnn.save(m, tmp_path / "b.npz")
    assert not list(tmp_path.iterdir())


def test_loss_weight_counts_what_the_loss_averages():
    X, y, lengths = _tagger_data()
    tagger = models.SequenceTagger(hidden_size=3, epochs=1, seed=0).fit(X, y, lengths)
    batch = (X, y, lengths)
    assert tagger.loss_weight(batch) == lengths.sum()
    assert tagger.loss_weight(batch, 2, 4) == np.clip(lengths - 2, 0, 2).sum()
    clf = models.SequenceClassifier(hidden_size=3, epochs=1, seed=0)
    assert clf.loss_weight((X, y[:, 0], lengths)) == 13


def test_fit_signature_and_docs_name_comm():
    import inspect

    for cls in (models.SequenceClassifier, models.SequenceTagger, models.Seq2Seq):
        params = inspect.signature(cls.fit).parameters
        assert params["comm"].kind is inspect.Parameter.KEYWORD_ONLY
        assert "comm" in (cls.fit.__doc__ or "")
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        models.SequenceClassifier(epochs=1).fit(np.zeros((4, 2, 1)), [0, 1, 0, 1], comm="x")


def test_root_only_callbacks_and_validation_on_one_rank(tmp_path):
    X, y, lengths = _tagger_data()
    m = models.SequenceTagger(hidden_size=3, epochs=1, seed=0, dtype="float64")
    m.fit(X, y, lengths)
    ckpt = training.ModelCheckpoint(str(tmp_path / "c-{epoch}.npz"))
    assert ckpt.root_only and not training.EarlyStopping().root_only
    hist = training.train(
        m,
        (X, m._encode(y, lengths), lengths),
        epochs=2,
        batch_size=5,
        validation_data=(X, m._encode(y, lengths), lengths),
        callbacks=[ckpt, training.EarlyStopping(patience=5)],
        comm=SELF,
        seed=0,
    )
    assert len(ckpt.saved) == 2 and len(hist["val_loss"]) == 2
    val = training.evaluate(m, (X, m._encode(y, lengths), lengths), batch_size=5)
    assert training.evaluate(
        m, (X, m._encode(y, lengths), lengths), batch_size=5, comm=SELF
    ) == pytest.approx(val, rel=1e-12)
