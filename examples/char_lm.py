"""Many-to-many: a character-level language model that writes text.

Trains on a text file (default: the nursery rhymes shipped with fastrnn) to predict the
next character at every step, reports the loss against the uniform baseline ln(V), and
generates text greedily and by sampling at a few temperatures.

    python examples/char_lm.py [--text FILE] [--epochs 20] [--cell lstm]
"""

from __future__ import annotations

import argparse
import math

from fastrnn.datasets import char_corpus
from fastrnn.models import CharLanguageModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="a UTF-8 text file (default: the shipped rhymes)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=150, help="characters to generate")
    args = parser.parse_args()

    corpus = char_corpus(args.text)
    model = CharLanguageModel(
        args.hidden_size,
        cell=args.cell,
        seq_len=32,
        epochs=args.epochs,
        lr=0.02,
        seed=0,
        progress=None,
    )
    model.fit(corpus)
    print(
        f"{len(corpus.text)} characters, vocabulary of {corpus.vocab_size}: "
        f"loss {model.cross_entropy(corpus.text):.3f} nats/char "
        f"(uniform baseline ln {corpus.vocab_size} = {math.log(corpus.vocab_size):.3f})"
    )
    prompt = corpus.text[:8]
    print(f"\n--- greedy ---\n{model.generate(prompt, args.length, greedy=True)}")
    for temperature in (0.5, 1.0):
        text = model.generate(prompt, args.length, temperature=temperature, seed=1)
        print(f"\n--- temperature {temperature} ---\n{text}")


if __name__ == "__main__":
    main()
