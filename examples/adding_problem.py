"""The remedies for vanishing and exploding gradients, demonstrated on the adding problem.

The adding problem (Hochreiter & Schmidhuber 1997): every step carries a value uniform in
[0, 1] and a marker; exactly two steps are marked (one in each half) and the target is
the sum of their values. Always predicting 1 scores MSE 1/6 = 0.167; beating it means the
network carried information across up to T steps.

With the same budget (hidden size, training samples, batch size, number of updates) this
trains, at T=150:

- a tanh RNN (orthogonal recurrent weights): gradients vanish over 150 steps, so it is
  expected to stay near the baseline;
- an IRNN (ReLU, recurrent weights initialised to the identity; Le et al. 2015);
- an LSTM (forget-gate bias 1) and a GRU, whose gates keep an additive path for the
  gradient;

each without and with gradient clipping by global norm, and prints the test MSE of each
against the 0.167 baseline. Defaults take a few minutes on 2 cores; ``--quick`` runs a
small version (T=30) in seconds.

    python examples/adding_problem.py
    python examples/adding_problem.py --quick
    python examples/adding_problem.py --T 200 --epochs 40 --models lstm,gru
"""

from __future__ import annotations

import argparse
import time

import fastrnn
from fastrnn import tasks

MODELS = {
    "tanh": ("tanh RNN", {"cell": "rnn", "activation": "tanh", "init": "orthogonal"}),
    "irnn": ("IRNN", {"cell": "rnn", "activation": "relu", "init": "identity"}),
    "lstm": ("LSTM", {"cell": "lstm", "init": "orthogonal"}),
    "gru": ("GRU", {"cell": "gru", "init": "orthogonal"}),
}
BASELINE = 1 / 6  # the MSE of always predicting 1


def compare(
    *,
    T: int = 150,
    hidden_size: int = 32,
    n_train: int = 3200,
    n_test: int = 1000,
    batch_size: int = 32,
    epochs: int = 25,
    lr: float = 0.01,
    clip_norm: float = 1.0,
    models: tuple[str, ...] = ("tanh", "irnn", "lstm", "gru"),
    seed: int = 0,
) -> list[dict]:
    """Train every model without and with clipping (each run is the task
    :func:`fastrnn.tasks.adding`, as ``fastrnn train adding`` runs it); return one result
    row per run."""
    rows = []
    for key in models:
        name, kwargs = MODELS[key]
        for clip in (None, clip_norm):
            start = time.perf_counter()
            row = {"model": name, "clip": clip, "mse": float("nan"), "solved": None}
            row.update(worst=float("nan"), note="")
            try:
                result = tasks.adding(
                    T=T,
                    samples=n_train,
                    test_samples=n_test,
                    verbose=False,
                    hidden_size=hidden_size,
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    clip_norm=clip,
                    seed=seed,
                    progress=None,
                    **kwargs,
                )
                history = result.model.history_
                row["mse"] = result.metrics["mse"]
                below = [i for i, v in enumerate(history.loss, 1) if v < 0.05]
                row["solved"] = below[0] if below else None
                row["worst"] = max(history["step_loss"])
            except FloatingPointError as exc:  # exploding gradients stop training
                row["note"] = "diverged: " + str(exc).split(";")[0]
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            print(_format_row(row, BASELINE), flush=True)
    return rows


def _format_row(row: dict, baseline: float) -> str:
    clip = "-" if row["clip"] is None else f"{row['clip']:g}"
    solved = "-" if row["solved"] is None else str(row["solved"])
    ratio = row["mse"] / baseline
    return (
        f"| {row['model']:<8} | {clip:>4} | {row['mse']:8.4f} | {ratio:7.2f} | "
        f"{row['worst']:10.3g} | {solved:>6} | {row['seconds']:6.1f} | {row['note']}"
    ).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=150, help="sequence length (default 150)")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=3200, help="training samples")
    parser.add_argument("--test", type=int, default=1000, help="test samples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None, help="default 25 (quick: 10)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--clip-norm", type=float, default=1.0, help="the clipped runs' norm")
    parser.add_argument("--models", default="tanh,irnn,lstm,gru", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="numpy, numba, cpp (default: auto)")
    parser.add_argument("--quick", action="store_true", help="T=30, 10 epochs: seconds")
    args = parser.parse_args()
    if args.quick:
        args.T, args.train, args.test = 30, 1600, 500
    if args.epochs is None:
        args.epochs = 10 if args.quick else 25
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.backend:
        fastrnn.set_backend(args.backend)
    steps = args.epochs * -(-args.train // args.batch_size)
    print(
        f"adding problem, T={args.T}: {args.train} training / {args.test} test sequences, "
        f"hidden {args.hidden_size}, batch {args.batch_size}, {args.epochs} epochs = {steps} "
        f"Adam updates (lr {args.lr:g}) per run, backend {fastrnn.get_backend()}; "
        "baseline MSE 1/6 = 0.167"
    )
    print("| model    | clip | test MSE | / 0.167 | worst loss | solved | time s | note")
    print("|----------|------|----------|---------|------------|--------|--------|-----")
    start = time.perf_counter()
    rows = compare(
        T=args.T,
        hidden_size=args.hidden_size,
        n_train=args.train,
        n_test=args.test,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        clip_norm=args.clip_norm,
        models=models,
        seed=args.seed,
    )
    print(
        "'worst loss': the largest mini-batch loss met in training (an explosion shows "
        "here); 'solved': the first epoch whose training loss fell below 0.05. Total "
        f"{time.perf_counter() - start:.0f} s for {len(rows)} runs."
    )


if __name__ == "__main__":
    main()
