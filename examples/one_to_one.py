"""One-to-one: the sequence classifier with T=1 is a plain feed-forward network.

With a single time step there is no recurrence left to use: the hidden layer is
``h = tanh(W_ih x + b)`` and the head a logistic regression on it. XOR shows that the
hidden layer is doing the work (no linear model separates it).

    python examples/one_to_one.py
"""

from __future__ import annotations

import numpy as np

from fastrnn.models import SequenceClassifier


def main() -> None:
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)[:, None, :]  # T = 1
    y = np.array([0, 1, 1, 0])
    model = SequenceClassifier(8, cell="rnn", epochs=300, batch_size=4, lr=0.05, seed=0)
    model.fit(X, y)
    for x, label, p in zip(X[:, 0], y, model.predict_proba(X)[:, 1], strict=True):
        print(f"x = {x.astype(int).tolist()}  XOR = {label}  P(1) = {p:.3f}")
    print(f"accuracy: {model.score(X, y):.0%}")


if __name__ == "__main__":
    main()
