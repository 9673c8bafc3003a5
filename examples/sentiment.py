"""Many-to-one: the course's toy sentiment classifier.

Three 3-word sentences over the one-hot vocabulary cat, mat, rat: "cat mat rat" and
"mat cat rat" are positive (1), "rat cat mat" is negative (0). All three hold the same
words, so only the order tells them apart: the RNN reads the sentence and a sigmoid on
its last hidden state gives P(positive).

    python examples/sentiment.py [--cell rnn|lstm|gru]
"""

from __future__ import annotations

import argparse

from fastrnn.datasets import toy_sentiment
from fastrnn.models import SequenceClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()

    data = toy_sentiment()  # X: (3 sentences, 3 words, 3 one-hot), y: (3,)
    model = SequenceClassifier(hidden_size=8, cell=args.cell, epochs=100, seed=0)
    model.fit(data.X, data.y)

    for sentence, label, p in zip(
        data.extra["sentences"], data.y, model.predict_proba(data.X)[:, 1], strict=True
    ):
        print(f"{sentence:<12} label {label}   P(positive) = {p:.3f}")
    print(f"training accuracy: {model.score(data.X, data.y):.0%}")
    print(f"loss: {model.history_.loss[0]:.3f} (first epoch) -> {model.history_.loss[-1]:.4f}")


if __name__ == "__main__":
    main()
