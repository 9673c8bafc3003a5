"""The course's example tasks: the data, a model, training, and what it learned, printed.

One function per task. Each takes the model's hyper-parameters as keyword arguments (the
task's defaults in :data:`TASKS` fill in the rest), builds the data from
:mod:`fastrnn.datasets`, fits the model, prints what it learned (unless
``verbose=False``) and returns a :class:`TaskResult`: the fitted model and the numbers
printed. ``fastrnn train TASK`` (:mod:`fastrnn.cli.train`) and the scripts in
``examples/`` call these functions, so the two always run the same code.

- :func:`xor`: one-to-one (T = 1), ``SequenceClassifier`` on XOR;
- :func:`sentiment`: many-to-one, the toy sentiment set (cat, mat, rat);
- :func:`deep`: many-to-many autocomplete of "deep" (d, e, p, <stop>);
- :func:`charlm`: a character language model on a text, then generated text;
- :func:`generator`: one-to-many counting sequences from a (start, step) code;
- :func:`seq2seq`: number words to digits, exact match on held-out numbers;
- :func:`adding`: the adding problem (regression, baseline MSE 1/6);
- :func:`copy`: the copy-memory task (per-step tagging, baseline 10 ln 8 / (T + 20)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, TypeVar

import numpy as np

from . import datasets as ds
from . import models


@dataclass
class TaskResult:
    """What a task returns: the fitted ``model`` and the ``metrics`` it printed."""

    model: Any
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A task: its one-line description, the model's default hyper-parameters, and the
    function that runs it."""

    help: str
    defaults: dict[str, Any]
    run: Callable[..., TaskResult]


_M = TypeVar("_M")
_V = TypeVar("_V")


def _model(cls: Callable[..., _M], defaults: dict[str, Any], given: dict[str, Any]) -> _M:
    """``cls`` with the task's ``defaults`` overridden by the ``given`` hyper-parameters."""
    kwargs = {**defaults, **given}
    return cls(kwargs.pop("hidden_size"), **kwargs)


def _given(value: _V | None, what: str) -> _V:
    """A field of a data set that the task needs (its data set always sets it)."""
    if value is None:
        raise ValueError(f"the data set of this task has no {what}")
    return value


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text)


def xor(*, verbose: bool = True, **model: Any) -> TaskResult:
    """One-to-one: with a single time step the sequence classifier is a feed-forward
    network ``h = tanh(W_ih x + b)`` with a logistic head; XOR shows the hidden layer at
    work (no linear model separates it)."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)[:, None, :]  # T = 1
    y = np.array([0, 1, 1, 0])
    clf = _model(models.SequenceClassifier, TASKS["xor"].defaults, model).fit(X, y)
    for x, label, p in zip(X[:, 0], y, clf.predict_proba(X)[:, 1], strict=True):
        _say(verbose, f"x = {x.astype(int).tolist()}  XOR = {label}  P(1) = {p:.3f}")
    accuracy = clf.score(X, y)
    _say(verbose, f"accuracy: {accuracy:.0%}")
    return TaskResult(clf, {"accuracy": accuracy})


def sentiment(*, verbose: bool = True, **model: Any) -> TaskResult:
    """Many-to-one: "cat mat rat" and "mat cat rat" are positive, "rat cat mat" negative.
    All three hold the same words, so only the order tells them apart: the RNN reads the
    sentence and a sigmoid on its last hidden state gives P(positive)."""
    data = ds.toy_sentiment()  # X: (3 sentences, 3 words, 3 one-hot), y: (3,)
    clf = _model(models.SequenceClassifier, TASKS["sentiment"].defaults, model)
    clf.fit(data.X, data.y)
    proba = clf.predict_proba(data.X)[:, 1]
    for sentence, label, p in zip(data.extra["sentences"], data.y, proba, strict=True):
        _say(verbose, f"{sentence:<12} label {label}   P(positive) = {p:.3f}")
    accuracy = clf.score(data.X, data.y)
    loss = clf.history_.loss
    _say(verbose, f"training accuracy: {accuracy:.0%}")
    _say(verbose, f"loss: {loss[0]:.3f} (first epoch) -> {loss[-1]:.4f}")
    return TaskResult(clf, {"accuracy": accuracy, "loss": loss[-1]})


def deep(*, verbose: bool = True, **model: Any) -> TaskResult:
    """Many-to-many, synchronised: reading d, e, e, p the model predicts the next
    character at every step: e, e, p, <stop>. The input "e" is followed once by "e" and
    once by "p", so the hidden state must remember what came before."""
    data = ds.deep_autocomplete()  # X: (1, 4, 4) one-hot d e e p; y: (1, 4) ids of e e p <stop>
    vocab = _given(data.vocab, "vocab")
    tagger = _model(models.SequenceTagger, TASKS["deep"].defaults, model).fit(data.X, data.y)
    proba = tagger.predict_proba(data.X)[0]
    for t, (x, p) in enumerate(zip(data.X[0].argmax(-1), proba, strict=True)):
        best = int(np.argmax(p))  # columns follow model.classes_ (the labels seen in fit)
        token = vocab[tagger.classes_[best]]
        _say(
            verbose,
            f"step {t}: read {vocab[x]!r:>5} -> predict {token!r:<8} (p = {p[best]:.3f})",
        )
    predicted = tagger.predict(data.X)[0]
    _say(verbose, f"after d e e p the model predicts: {' '.join(vocab[i] for i in predicted)}")
    return TaskResult(tagger, {"accuracy": float(np.mean(predicted == data.y[0]))})


def charlm(
    *,
    text: str | PathLike[str] | None = None,
    length: int = 200,
    temperatures: Sequence[float] = (0.5, 1.0),
    verbose: bool = True,
    **model: Any,
) -> TaskResult:
    """Many-to-many: a character language model on the UTF-8 file ``text`` (default: the
    shipped nursery rhymes). Prints the loss per character against the uniform baseline
    ln(V), then ``length`` generated characters, greedily and at each temperature."""
    corpus = ds.char_corpus(text)
    lm = _model(models.CharLanguageModel, TASKS["charlm"].defaults, model).fit(corpus)
    loss, uniform = lm.cross_entropy(corpus.text), math.log(corpus.vocab_size)
    _say(
        verbose,
        f"{len(corpus.text)} characters, vocabulary of {corpus.vocab_size}: loss {loss:.3f} "
        f"nats/char (uniform baseline ln {corpus.vocab_size} = {uniform:.3f})",
    )
    prompt = corpus.text[: min(8, len(corpus.text))]
    _say(verbose, f"\n--- greedy ---\n{lm.generate(prompt, length, greedy=True)}")
    for temperature in temperatures:
        sample = lm.generate(prompt, length, temperature=temperature, seed=1)
        _say(verbose, f"\n--- temperature {temperature} ---\n{sample}")
    return TaskResult(lm, {"loss": loss, "baseline": uniform})


def generator(*, verbose: bool = True, **model: Any) -> TaskResult:
    """One-to-many: a code vector (a start digit and a step, one-hot) sets the decoder's
    initial state; the decoder emits tokens until <stop> (teacher forcing in training, its
    own outputs at prediction). Task: count from the start by the step while below 10."""
    data = ds.counting_sequences()  # X: (30, 13) codes; y: (30, 10) token ids, padded with -1
    vocab, y_lengths = _given(data.vocab, "vocab"), _given(data.y_lengths, "y_lengths")
    gen = _model(models.SequenceGenerator, TASKS["generator"].defaults, model)
    gen.fit(data.X, data.y, y_lengths)
    predicted = gen.predict(data.X)
    for i in range(0, len(data), 7):
        start, step = (vocab[j] for j in np.flatnonzero(data.X[i]))
        _say(verbose, f"{start:<8} {step:<7} -> {' '.join(data.decode_targets(predicted[i]))}")
    exact = float(
        np.mean([np.array_equal(p, data.y[i, : y_lengths[i]]) for i, p in enumerate(predicted)])
    )
    _say(verbose, f"exactly right: {exact:.0%} of {len(data)} sequences")
    return TaskResult(gen, {"exact": exact})


def seq2seq(*, verbose: bool = True, **model: Any) -> TaskResult:
    """Encoder-decoder: English number words to digits ("three hundred forty two" -> 3 4 2);
    80% of the numbers 0..999 train the model, the other 20% are held out."""
    train, test = ds.number_words().split(0.2, seed=model.get("seed", 0) or 0)
    s2s = _model(models.Seq2Seq, TASKS["seq2seq"].defaults, model)
    s2s.fit(train.X, train.y, train.lengths, train.y_lengths)
    predicted = s2s.predict(test.X, test.lengths)
    vocab, lengths = _given(test.vocab, "vocab"), _given(test.lengths, "lengths")
    for i in range(0, len(test), 25):
        words = " ".join(vocab[j] for j in test.X[i, : lengths[i]].argmax(-1))
        _say(verbose, f"{words:<30} -> {test.decode_targets(predicted[i])}")
    score = s2s.score(test.X, test.y, test.lengths, test.y_lengths)
    _say(verbose, f"held-out exact match: {score:.1%} of {len(test)} numbers")
    return TaskResult(s2s, {"exact": score})


def adding(
    *,
    T: int = 50,
    samples: int = 2000,
    test_samples: int = 500,
    verbose: bool = True,
    **model: Any,
) -> TaskResult:
    """The adding problem (Hochreiter & Schmidhuber 1997): two marked values among ``T``,
    the target their sum; always predicting 1 scores MSE 1/6. ``samples`` training and
    ``test_samples`` test sequences (seeds ``seed`` and ``seed + 1``)."""
    seed = model.get("seed", 0) or 0
    train = ds.adding_problem(samples, T, seed=seed)
    test = ds.adding_problem(test_samples, T, seed=seed + 1)
    reg = _model(models.SequenceRegressor, TASKS["adding"].defaults, model).fit(train.X, train.y)
    mse = float(np.mean((reg.predict(test.X) - test.y) ** 2))
    baseline = _given(test.baseline, "baseline")
    _say(verbose, f"adding problem T={T}: test MSE {mse:.4f} (baseline {baseline:.3f})")
    return TaskResult(reg, {"mse": mse, "baseline": baseline})


def copy(
    *,
    T: int = 10,
    samples: int = 2000,
    test_samples: int = 300,
    verbose: bool = True,
    **model: Any,
) -> TaskResult:
    """The copy-memory task: remember 10 symbols across ``T`` blank steps and write them
    out at the end; a memoryless model scores cross-entropy 10 ln 8 / (T + 20)."""
    seed = model.get("seed", 0) or 0
    train = ds.copy_memory(samples, T, seed=seed)
    test = ds.copy_memory(test_samples, T, seed=seed + 1)
    tagger = _model(models.SequenceTagger, TASKS["copy"].defaults, model).fit(train.X, train.y)
    proba = tagger.predict_proba(test.X)
    p = np.take_along_axis(proba, test.y[..., None], axis=-1)[..., 0]
    ce = float(-np.mean(np.log(np.maximum(p, 1e-12))))
    baseline = _given(test.baseline, "baseline")
    copied = float(np.mean(tagger.predict(test.X)[:, -10:] == test.y[:, -10:]))
    _say(
        verbose,
        f"copy memory T={T}: test cross-entropy {ce:.4f} (memoryless baseline "
        f"{baseline:.4f}); copied symbols right: {copied:.0%}",
    )
    return TaskResult(tagger, {"cross_entropy": ce, "baseline": baseline, "copied": copied})


# name -> the task: help, the model's default hyper-parameters, the function
TASKS: dict[str, Task] = {
    "xor": Task(
        "XOR, one-to-one (T = 1)",
        {"hidden_size": 8, "cell": "rnn", "epochs": 300, "batch_size": 4, "lr": 0.05, "seed": 0},
        xor,
    ),
    "sentiment": Task(
        "toy sentiment, many-to-one",
        {"hidden_size": 8, "cell": "rnn", "epochs": 100, "seed": 0},
        sentiment,
    ),
    "deep": Task(
        '"deep" autocomplete, many-to-many',
        {"hidden_size": 8, "cell": "rnn", "epochs": 150, "seed": 0},
        deep,
    ),
    "charlm": Task(
        "character language model",
        {"hidden_size": 64, "cell": "lstm", "epochs": 20, "lr": 0.02, "seq_len": 32, "seed": 0},
        charlm,
    ),
    "generator": Task(
        "one-to-many counting sequences",
        {"hidden_size": 32, "cell": "gru", "epochs": 150, "batch_size": 10, "seed": 0},
        generator,
    ),
    "seq2seq": Task(
        "number words to digits",
        {"hidden_size": 32, "cell": "lstm", "epochs": 20, "lr": 0.02, "seed": 0},
        seq2seq,
    ),
    "adding": Task(
        "the adding problem", {"hidden_size": 32, "cell": "gru", "epochs": 10, "seed": 0}, adding
    ),
    "copy": Task(
        "the copy-memory task", {"hidden_size": 64, "cell": "gru", "epochs": 10, "seed": 0}, copy
    ),
}

__all__ = [
    "TASKS",
    "Task",
    "TaskResult",
    "adding",
    "charlm",
    "copy",
    "deep",
    "generator",
    "sentiment",
    "seq2seq",
    "xor",
]
