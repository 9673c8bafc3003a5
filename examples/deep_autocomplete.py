"""Many-to-many (synchronised): autocomplete of "deep", one prediction per step.

Vocabulary d, e, p, <stop>. Reading d, e, e, p the model must predict the next character
at every step: e, e, p, <stop>. The input "e" is followed once by "e" and once by "p", so
the hidden state must remember what came before.

    python examples/deep_autocomplete.py [--cell rnn|lstm|gru]
"""

from __future__ import annotations

import argparse

import numpy as np

from fastrnn.datasets import deep_autocomplete
from fastrnn.models import SequenceTagger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    args = parser.parse_args()

    data = deep_autocomplete()  # X: (1, 4, 4) one-hot d e e p; y: (1, 4) ids of e e p <stop>
    model = SequenceTagger(hidden_size=8, cell=args.cell, epochs=150, seed=0)
    model.fit(data.X, data.y)

    proba = model.predict_proba(data.X)[0]
    for t, (x, p) in enumerate(zip(data.X[0].argmax(-1), proba, strict=True)):
        best = int(np.argmax(p))  # columns follow model.classes_ (the labels seen in fit)
        token = data.vocab[model.classes_[best]]
        print(f"step {t}: read {data.vocab[x]!r:>5} -> predict {token!r:<8} (p = {p[best]:.3f})")
    predicted = [data.vocab[i] for i in model.predict(data.X)[0]]
    print("after d e e p the model predicts:", " ".join(predicted))


if __name__ == "__main__":
    main()
