"""One-to-one: the sequence classifier with T=1 is a plain feed-forward network.

With a single time step there is no recurrence left to use: the hidden layer is
``h = tanh(W_ih x + b)`` and the head a logistic regression on it. XOR shows that the
hidden layer is doing the work (no linear model separates it).

    python examples/one_to_one.py

The task is :func:`fastrnn.tasks.xor`, which ``fastrnn train xor`` runs too.
"""

from __future__ import annotations

from fastrnn import tasks


def main() -> None:
    tasks.xor()


if __name__ == "__main__":
    main()
