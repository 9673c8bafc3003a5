"""Many-to-many: a character-level language model that writes text.

Trains on a text file (default: the nursery rhymes shipped with fastrnn) to predict the
next character at every step, reports the loss against the uniform baseline ln(V), and
generates text greedily and by sampling at a few temperatures.

    python examples/char_lm.py [--text FILE] [--epochs 20] [--cell lstm]

The task is :func:`fastrnn.tasks.charlm`, which ``fastrnn train charlm`` runs too.
"""

from __future__ import annotations

import argparse

from fastrnn import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="a UTF-8 text file (default: the shipped rhymes)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=150, help="characters to generate")
    args = parser.parse_args()
    tasks.charlm(
        text=args.text,
        length=args.length,
        epochs=args.epochs,
        cell=args.cell,
        hidden_size=args.hidden_size,
        progress=None,
    )


if __name__ == "__main__":
    main()
