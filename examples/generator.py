"""One-to-many: a generator that turns one input vector into a sequence.

The input is a code vector (here a start digit and a step, one-hot; in captioning it
would be an image's features) that sets the decoder's initial state. The decoder then
emits tokens one by one; in training it reads the true previous token (teacher forcing),
at prediction time its own previous output, until it emits <stop>. Task: count from the
start by the step while below 10, e.g. (3, 2) -> 3 5 7 9.

    python examples/generator.py [--cell gru]

The task is :func:`fastrnn.tasks.generator`, which ``fastrnn train generator`` runs too.
"""

from __future__ import annotations

import argparse

from fastrnn import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()
    tasks.generator(cell=args.cell)


if __name__ == "__main__":
    main()
