"""Many-to-one: the course's toy sentiment classifier.

Three 3-word sentences over the one-hot vocabulary cat, mat, rat: "cat mat rat" and
"mat cat rat" are positive (1), "rat cat mat" is negative (0). All three hold the same
words, so only the order tells them apart: the RNN reads the sentence and a sigmoid on
its last hidden state gives P(positive).

    python examples/sentiment.py [--cell rnn|lstm|gru]

The task is :func:`fastrnn.tasks.sentiment`, which ``fastrnn train sentiment`` runs too.
"""

from __future__ import annotations

import argparse

from fastrnn import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()
    tasks.sentiment(cell=args.cell)


if __name__ == "__main__":
    main()
