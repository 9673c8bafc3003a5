"""What tests/test_distributed.py runs under ``mpiexec -n N python -m mpi4py``.

``python tests/mpi_worker.py SCENARIO OUTDIR``: every rank trains with ``comm=COMM_WORLD``
and writes ``OUTDIR/rank<r>.npz`` (its parameters, loss history and what it saw); rank 0
also trains the same model alone (no communicator) for the reference. Scenarios:

- ``lstm``: float64 LSTM classifier, variable lengths, gradient clipping;
- ``uneven``: float64 LSTM tagger (loss over steps), truncated BPTT, batches of 7 samples
  (the last of 2) on 3 ranks: uneven splits and a rank with no sample;
- ``families``: the other model families, float64, each a few epochs (files
  ``rank<r>-<Model>.npz``): vector regression, a generator and a seq2seq model (losses
  over variable-length outputs), a character LM with truncated BPTT;
- ``callbacks``: ``train`` with validation data, a ModelCheckpoint (rank 0 only) and a
  callback that stops training on rank 1 alone (every rank must stop), then ``save`` on
  every rank (rank 0 writes);
- ``raise``: rank 1 raises RuntimeError in the 3rd step (the job must end, not hang);
- ``nan``: rank 1's gradient of one parameter becomes NaN in the 3rd step: every rank
  must stop with the same FloatingPointError (written to its file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fastrnn import models, training


def data(n: int, T: int, D: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, D))
    lengths = rng.integers(2, T + 1, size=n)
    y = (X[:, 0, 0] > 0).astype(np.int64)
    tags = (X[..., 0] > 0).astype(np.int64)
    return X, y, lengths, tags


def classifier() -> models.SequenceClassifier:
    return models.SequenceClassifier(
        hidden_size=6, epochs=3, batch_size=8, dtype="float64", seed=3, clip_norm=0.5, lr=0.05
    )


def tagger() -> models.SequenceTagger:
    return models.SequenceTagger(
        hidden_size=5, epochs=3, batch_size=7, dtype="float64", seed=4, tbptt=3, lr=0.05
    )


def families() -> list[tuple[object, tuple]]:
    """(a factory of the model, the fit arguments) for every other model family."""
    rng = np.random.default_rng(7)
    X, _, lengths, _ = data(17, 6, 2, seed=2)
    ylens = rng.integers(1, 5, size=17)
    tokens = np.where(np.arange(4)[None, :] < ylens[:, None], rng.integers(0, 3, (17, 4)), -1)
    common = {"hidden_size": 4, "epochs": 3, "batch_size": 5, "dtype": "float64", "seed": 5}
    chars = "".join(rng.choice(list("abcde"), size=90))
    return [
        (lambda: models.SequenceRegressor(**common), (X, X[:, -1, :] * 2, lengths)),
        (lambda: models.SequenceGenerator(**common), (X[:, 0, :], tokens, ylens)),
        (lambda: models.Seq2Seq(**common), (X, tokens, lengths, ylens)),
        (lambda: models.CharLanguageModel(**common, seq_len=8, tbptt=3), (chars,)),
    ]


class StopOnRank1(training.Callback):
    """Sets ``stop_training`` on rank 1 only, after its 5th batch."""

    def on_batch_end(self, step: int, logs: dict[str, float]) -> None:
        assert self.context is not None
        if MPI.COMM_WORLD.Get_rank() == 1 and step == 5:
            self.context.stop_training = True


def callbacks(outdir: Path) -> None:
    comm = MPI.COMM_WORLD
    X, y, lengths, _ = data(30, 9, 3, seed=1)
    model = classifier().fit(X, y, lengths, comm=comm)
    ckpt = training.ModelCheckpoint(str(outdir / "ckpt-{epoch}.npz"))
    train_data = (X, model._encode(y), lengths)
    hist = training.train(
        model,
        train_data,
        epochs=4,
        batch_size=8,
        validation_data=tuple(a[:10] for a in train_data),
        callbacks=[ckpt, StopOnRank1()],
        comm=comm,
        seed=0,
    )
    model.save(outdir / "model.npz")  # rank 0 writes, the others do nothing
    out = {k: np.array(hist[k]) for k in ("loss", "val_loss", "step_loss")}
    out["saved"] = np.array(len(ckpt.saved))
    out.update({f"param:{k}": v for k, v in model.parameters().items()})
    np.savez(outdir / f"rank{comm.Get_rank()}.npz", **out)


def main(scenario: str, outdir: Path) -> None:
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if scenario == "callbacks":
        callbacks(outdir)
        return
    if scenario == "families":
        for make, fit_args in families():
            together, alone = make(), make()  # type: ignore[operator]
            together.fit(*fit_args, comm=comm)
            out = record(together, "param", "")
            if rank == 0:
                out.update(record(alone.fit(*fit_args), "single", "single_"))
            np.savez(outdir / f"rank{rank}-{type(together).__name__}.npz", **out)
        return
    X, y, lengths, tags = data(30 if scenario != "uneven" else 23, 9, 3, seed=1)
    out: dict[str, object] = {}
    if scenario in ("lstm", "raise", "nan"):
        model = classifier()
        fit_args: tuple = (X, y, lengths)
    else:
        model = tagger()
        fit_args = (X, tags, lengths)
    if scenario == "raise" and rank == 1:
        calls = {"n": 0}
        original = model.loss_and_grads

        def failing(batch):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("rank 1 fails on purpose")
            return original(batch)

        model.loss_and_grads = failing  # type: ignore[method-assign]
    if scenario == "nan" and rank == 1:
        calls = {"n": 0}
        original = model.loss_and_grads

        def poisoned(batch):  # type: ignore[no-untyped-def]
            loss, grads = original(batch)
            calls["n"] += 1
            if calls["n"] == 3:
                grads = dict(grads)
                grads["head.bias"] = np.full_like(grads["head.bias"], np.nan)
            return loss, grads

        model.loss_and_grads = poisoned  # type: ignore[method-assign]
    try:
        model.fit(*fit_args, comm=comm)
    except FloatingPointError as exc:
        out["error"] = str(exc)
    else:
        out.update(record(model, "param", ""))
        if rank == 0:  # the reference: the same model trained by this process alone
            alone = classifier() if scenario == "lstm" else tagger()
            out.update(record(alone.fit(*fit_args), "single", "single_"))
    out["size"] = comm.Get_size()
    np.savez(outdir / f"rank{rank}.npz", **out)  # type: ignore[arg-type]


def record(model, params: str, losses: str) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The parameters (as ``params:name``) and the loss histories of a fitted model."""
    out = {f"{params}:{k}": v for k, v in model.parameters().items()}
    out[f"{losses}loss"] = np.array(model.history_["loss"])
    out[f"{losses}step_loss"] = np.array(model.history_["step_loss"])
    return out


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
