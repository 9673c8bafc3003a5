"""Many-to-many, encoder-decoder: translate English number words into digits.

"three hundred forty two" -> 3 4 2, "seven hundred five" -> 7 0 5: input and output have
different, variable lengths. The encoder reads the words (with ``lengths``) and hands its
final state to the decoder, which is trained with teacher forcing and decodes greedily.
80% of the numbers 0..999 train the model, the other 20% are held out.

    python examples/seq2seq_numbers.py [--cell lstm]

The task is :func:`fastrnn.tasks.seq2seq`, which ``fastrnn train seq2seq`` runs too.
"""

from __future__ import annotations

import argparse

from fastrnn import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    tasks.seq2seq(cell=args.cell, epochs=args.epochs, progress=None)


if __name__ == "__main__":
    main()
