"""Many-to-many (synchronised): autocomplete of "deep", one prediction per step.

Vocabulary d, e, p, <stop>. Reading d, e, e, p the model must predict the next character
at every step: e, e, p, <stop>. The input "e" is followed once by "e" and once by "p", so
the hidden state must remember what came before.

    python examples/deep_autocomplete.py [--cell rnn|lstm|gru]

The task is :func:`fastrnn.tasks.deep`, which ``fastrnn train deep`` runs too.
"""

from __future__ import annotations

import argparse

from fastrnn import tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()
    tasks.deep(cell=args.cell)


if __name__ == "__main__":
    main()
