"""``fastrnn train TASK``: train one of the course's example tasks from the command line.

Tasks (each runs in seconds with the defaults; a tqdm progress bar shows on a terminal):

- ``sentiment``: many-to-one classifier on the toy sentiment set (cat, mat, rat);
- ``deep``: many-to-many autocomplete of "deep" (d, e, p, <stop>);
- ``charlm``: character language model on a text file (``--text``, default: the shipped
  nursery rhymes), then generated text;
- ``generator``: one-to-many counting sequences from a (start, step) code;
- ``seq2seq``: number words to digits, exact match on held-out numbers;
- ``adding``: the adding problem (regression, baseline MSE 1/6);
- ``copy``: the copy-memory task (per-step tagging, baseline 10 ln 8 / (T + 20)).

Examples::

    fastrnn train sentiment
    fastrnn train charlm --text my.txt --epochs 30 --generate 300
    fastrnn train adding -T 50 --cell gru --clip-norm 1 --save adding.npz
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import datasets as ds
from .. import functional as F
from .. import models

# task -> (help, defaults for the model's hyper-parameters)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "sentiment": ("toy sentiment, many-to-one", {"hidden_size": 8, "epochs": 100}),
    "deep": ('"deep" autocomplete, many-to-many', {"hidden_size": 8, "epochs": 150}),
    "charlm": (
        "character language model",
        {"hidden_size": 64, "epochs": 20, "lr": 0.02, "batch_size": 16},
    ),
    "generator": (
        "one-to-many counting sequences",
        {"hidden_size": 32, "epochs": 150, "batch_size": 10, "cell": "gru"},
    ),
    "seq2seq": ("number words to digits", {"hidden_size": 32, "epochs": 20, "lr": 0.02}),
    "adding": ("the adding problem", {"hidden_size": 32, "epochs": 10, "cell": "gru"}),
    "copy": ("the copy-memory task", {"hidden_size": 64, "epochs": 10, "cell": "gru"}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fastrnn train``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = "Train one of the course's example tasks and show what it learned."
    parser.epilog = "tasks:\n" + "\n".join(
        f"  {name:<10} {help_text}" for name, (help_text, _) in sorted(TASKS.items())
    )
    parser.add_argument("task", choices=sorted(TASKS), help="which example to train")
    parser.add_argument("--cell", choices=F.CELLS, help="recurrent cell (default per task)")
    parser.add_argument("--activation", choices=F.ACTIVATIONS, help="rnn activation")
    parser.add_argument("--init", choices=F.INITS, help="weight initialisation")
    parser.add_argument("--hidden-size", type=int, help="hidden units per layer")
    parser.add_argument("--num-layers", type=int, help="stacked layers")
    parser.add_argument("--epochs", type=int, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, help="samples per mini-batch")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--optimizer", choices=models.OPTIMIZERS, help="default adam")
    parser.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--backend", help="numpy, numba, cpp or auto (default: configured)")
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="tqdm progress bar: auto shows it on a terminal",
    )
    parser.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
    parser.add_argument("-T", type=int, help="sequence length (adding, copy)")
    parser.add_argument("--samples", type=int, help="training samples (adding, copy)")
    parser.add_argument("--text", metavar="FILE", help="text file for charlm (UTF-8)")
    parser.add_argument("--generate", type=int, default=200, help="charlm: characters to write")
    parser.add_argument("--temperature", type=float, default=0.7, help="charlm sampling")


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs = dict(TASKS[args.task][1])
    for name in (
        "cell",
        "activation",
        "init",
        "hidden_size",
        "num_layers",
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "clip_norm",
    ):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    kwargs["seed"] = args.seed
    kwargs["progress"] = {"auto": None, "on": True, "off": False}[args.progress]
    return kwargs


def _hidden(kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_size"), kwargs


def _sentiment(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    d = ds.toy_sentiment()
    h, kw = _hidden(kwargs)
    model = models.SequenceClassifier(h, **kw).fit(d.X, d.y)
    proba = model.predict_proba(d.X)[:, 1]
    for sentence, label, p in zip(d.extra["sentences"], d.y, proba, strict=True):
        print(f"  {sentence:<12} label {label}  P(positive) = {p:.3f}")
    print(f"training accuracy: {model.score(d.X, d.y):.0%}")
    return model


def _deep(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    d = ds.deep_autocomplete()
    h, kw = _hidden(kwargs)
    model = models.SequenceTagger(h, **kw).fit(d.X, d.y)
    inputs = [d.vocab[i] for i in d.X[0].argmax(-1)]
    predicted = [d.vocab[i] for i in model.predict(d.X)[0]]
    print(f"after {' '.join(inputs)} the model predicts: {' '.join(predicted)}")
    return model


def _charlm(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    corpus = ds.char_corpus(args.text)
    h, kw = _hidden(kwargs)
    model = models.CharLanguageModel(h, **kw).fit(corpus)
    uniform = math.log(corpus.vocab_size)
    print(
        f"{len(corpus.text)} characters, vocabulary {corpus.vocab_size}: loss "
        f"{model.history_.loss[-1]:.3f} nats/char (uniform baseline ln V = {uniform:.3f})"
    )
    prompt = corpus.text[: min(10, len(corpus.text))]
    text = model.generate(prompt, args.generate, temperature=args.temperature, seed=args.seed)
    print(f"--- generated (temperature {args.temperature}) ---\n{text}")
    return model


def _generator(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    d = ds.counting_sequences()
    h, kw = _hidden(kwargs)
    model = models.SequenceGenerator(h, **kw).fit(d.X, d.y, d.y_lengths)
    pred = model.predict(d.X)
    exact = np.mean([np.array_equal(p, d.y[i, : d.y_lengths[i]]) for i, p in enumerate(pred)])
    for i in (4, 11, 27):
        start, step = (d.vocab[j] for j in np.flatnonzero(d.X[i]))
        print(f"  {start}, {step} -> {' '.join(d.decode_targets(pred[i]))}")
    print(f"exact sequences: {exact:.0%} of {len(d)}")
    return model


def _seq2seq(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    train, test = ds.number_words().split(0.2, seed=args.seed)
    h, kw = _hidden(kwargs)
    model = models.Seq2Seq(h, **kw).fit(train.X, train.y, train.lengths, train.y_lengths)
    pred = model.predict(test.X, test.lengths)
    for i in range(3):
        words = " ".join(test.vocab[j] for j in test.X[i, : test.lengths[i]].argmax(-1))
        print(f"  {words} -> {test.decode_targets(pred[i])}")
    acc = model.score(test.X, test.y, test.lengths, test.y_lengths)
    print(f"held-out exact match: {acc:.1%} of {len(test)} numbers")
    return model


def _adding(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    T = args.T or 50
    train = ds.adding_problem(args.samples or 2000, T, seed=args.seed)
    test = ds.adding_problem(500, T, seed=args.seed + 1)
    h, kw = _hidden(kwargs)
    model = models.SequenceRegressor(h, **kw).fit(train.X, train.y)
    mse = float(np.mean((model.predict(test.X) - test.y) ** 2))
    print(f"adding problem T={T}: test MSE {mse:.4f} (baseline {test.baseline:.3f})")
    return model


def _copy(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    T = args.T or 10
    train = ds.copy_memory(args.samples or 2000, T, seed=args.seed)
    test = ds.copy_memory(300, T, seed=args.seed + 1)
    h, kw = _hidden(kwargs)
    model = models.SequenceTagger(h, **kw).fit(train.X, train.y)
    proba = model.predict_proba(test.X)
    p = np.take_along_axis(proba, test.y[..., None], axis=-1)[..., 0]
    ce = float(-np.mean(np.log(np.maximum(p, 1e-12))))
    copied = np.mean(model.predict(test.X)[:, -10:] == test.y[:, -10:])
    print(
        f"copy memory T={T}: test cross-entropy {ce:.4f} (memoryless baseline "
        f"{test.baseline:.4f}); copied symbols right: {copied:.0%}"
    )
    return model


_RUNNERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], Any]] = {
    "sentiment": _sentiment,
    "deep": _deep,
    "charlm": _charlm,
    "generator": _generator,
    "seq2seq": _seq2seq,
    "adding": _adding,
    "copy": _copy,
}


def run(args: argparse.Namespace) -> int:
    """Train the task ``args.task``, print what it learned, optionally save the model."""
    import fastrnn

    try:
        kwargs = _model_kwargs(args)
        with fastrnn.use_backend(args.backend or fastrnn.get_backend()):
            print(f"task {args.task}: {TASKS[args.task][0]} (backend {fastrnn.get_backend()})")
            start = time.perf_counter()
            model = _RUNNERS[args.task](args, kwargs)
            print(f"trained in {time.perf_counter() - start:.1f} s: {model!r}")
    except (ValueError, TypeError, FloatingPointError, OSError) as exc:
        print(f"fastrnn train {args.task}: {exc}")
        return 2
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0
