"""Many-to-many, encoder-decoder: translate English number words into digits.

"three hundred forty two" -> 3 4 2, "seven hundred five" -> 7 0 5: input and output have
different, variable lengths. The encoder reads the words (with ``lengths``) and hands its
final state to the decoder, which is trained with teacher forcing and decodes greedily.
80% of the numbers 0..999 train the model, the other 20% are held out.

    python examples/seq2seq_numbers.py [--cell lstm]
"""

from __future__ import annotations

import argparse

from fastrnn.datasets import number_words
from fastrnn.models import Seq2Seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    train, test = number_words().split(0.2, seed=0)
    model = Seq2Seq(32, cell=args.cell, epochs=args.epochs, lr=0.02, seed=0, progress=None)
    model.fit(train.X, train.y, train.lengths, train.y_lengths)

    predicted = model.predict(test.X, test.lengths)
    for i in range(0, len(test), 25):
        words = " ".join(test.vocab[j] for j in test.X[i, : test.lengths[i]].argmax(-1))
        print(f"{words:<30} -> {test.decode_targets(predicted[i])}")
    score = model.score(test.X, test.y, test.lengths, test.y_lengths)
    print(f"held-out exact match: {score:.1%} of {len(test)} numbers")


if __name__ == "__main__":
    main()
