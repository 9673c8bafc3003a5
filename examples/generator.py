"""One-to-many: a generator that turns one input vector into a sequence.

The input is a code vector (here a start digit and a step, one-hot; in captioning it
would be an image's features) that sets the decoder's initial state. The decoder then
emits tokens one by one; in training it reads the true previous token (teacher forcing),
at prediction time its own previous output, until it emits <stop>. Task: count from the
start by the step while below 10, e.g. (3, 2) -> 3 5 7 9.

    python examples/generator.py [--cell gru]
"""

from __future__ import annotations

import argparse

import numpy as np

from fastrnn.datasets import counting_sequences
from fastrnn.models import SequenceGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()

    data = counting_sequences()  # X: (30, 13) codes; y: (30, 10) token ids, padded with -1
    model = SequenceGenerator(32, cell=args.cell, epochs=150, batch_size=10, seed=0)
    model.fit(data.X, data.y, data.y_lengths)

    predicted = model.predict(data.X)
    for i in range(0, len(data), 7):
        start, step = (data.vocab[j] for j in np.flatnonzero(data.X[i]))
        print(f"{start:<8} {step:<7} -> {' '.join(data.decode_targets(predicted[i]))}")
    exact = np.mean(
        [np.array_equal(p, data.y[i, : data.y_lengths[i]]) for i, p in enumerate(predicted)]
    )
    print(f"exactly right: {exact:.0%} of {len(data)} sequences")


if __name__ == "__main__":
    main()
