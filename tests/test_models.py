"""The models: shapes, lengths, seeds, save/load, bad input, and the course's done-when checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastrnn
from fastrnn import datasets as ds
from fastrnn.models import (
    CharLanguageModel,
    NotFittedError,
    Seq2Seq,
    SequenceClassifier,
    SequenceGenerator,
    SequenceRegressor,
    SequenceTagger,
)

CELLS = ["rnn", "lstm", "gru"]


def _seq_data(n=12, T=6, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=n)
    lengths[0] = T
    return X, lengths


def _pad_with_noise(X, lengths, seed=1):
    """X with every padded step replaced by noise (must not change any prediction)."""
    noisy = X.copy()
    rng = np.random.default_rng(seed)
    for i, n in enumerate(lengths):
        noisy[i, n:] = rng.normal(size=noisy[i, n:].shape)
    return noisy


# --- one factory per model: (model, fit args, predict args, check of the prediction) ------


def _classifier(cell, seed=0, **kw):
    X, lengths = _seq_data()
    y = np.array([0, 1, 2] * 4)
    return (
        SequenceClassifier(6, cell=cell, epochs=2, seed=seed, **kw),
        (X, y, lengths),
        (X, lengths),
    )


def _regressor(cell, seed=0, **kw):
    X, lengths = _seq_data()
    y = X[:, 0, :2].copy()
    return SequenceRegressor(6, cell=cell, epochs=2, seed=seed, **kw), (X, y, lengths), (X, lengths)


def _tagger(cell, seed=0, **kw):
    X, lengths = _seq_data()
    y = (X[..., 0] > 0).astype(np.int64)
    return SequenceTagger(6, cell=cell, epochs=2, seed=seed, **kw), (X, y, lengths), (X, lengths)


def _generator(cell, seed=0, **kw):
    d = ds.counting_sequences(n_digits=5, steps=(1, 2))
    model = SequenceGenerator(6, cell=cell, epochs=2, seed=seed, **kw)
    return model, (d.X, d.y, d.y_lengths), (d.X,)


def _seq2seq(cell, seed=0, **kw):
    d = ds.reverse_strings(12, max_length=5, alphabet="abc", seed=0)
    model = Seq2Seq(6, cell=cell, epochs=2, seed=seed, **kw)
    return model, (d.X, d.y, d.lengths, d.y_lengths), (d.X, d.lengths)


FACTORIES = {
    "classifier": _classifier,
    "regressor": _regressor,
    "tagger": _tagger,
    "generator": _generator,
    "seq2seq": _seq2seq,
}


def _same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    return np.array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_shapes(cell):
    X, lengths = _seq_data()
    n, T, _ = X.shape
    clf = SequenceClassifier(6, cell=cell, epochs=2, seed=0).fit(X, np.arange(n) % 3, lengths)
    assert clf.predict(X, lengths).shape == (n,)
    proba = clf.predict_proba(X, lengths)
    assert proba.shape == (n, 3)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    binary = SequenceClassifier(6, cell=cell, epochs=2, seed=0).fit(X, np.arange(n) % 2 == 0)
    assert binary.predict_proba(X).shape == (n, 2)
    assert binary.predict(X).dtype == bool and binary.classes_.tolist() == [False, True]

    reg = SequenceRegressor(6, cell=cell, epochs=2, seed=0).fit(X, X[:, 0, 0], lengths)
    assert reg.predict(X, lengths).shape == (n,)
    reg2 = SequenceRegressor(6, cell=cell, epochs=2, seed=0).fit(X, X[:, 0, :2])
    assert reg2.predict(X).shape == (n, 2)

    y = (X[..., 0] > 0).astype(np.int64) * 3 + 2  # labels 2 and 5
    tag = SequenceTagger(6, cell=cell, epochs=2, seed=0).fit(X, y, lengths)
    pred = tag.predict(X, lengths)
    assert pred.shape == (n, T) and tag.classes_.tolist() == [2, 5]
    for i, k in enumerate(lengths):
        assert set(pred[i, :k]) <= {2, 5} and (pred[i, k:] == ds.PAD).all()
    assert tag.predict_proba(X, lengths).shape == (n, T, 2)

    model, fit_args, pred_args = _generator(cell)
    out = model.fit(*fit_args).predict(*pred_args, max_length=4)
    assert len(out) == len(fit_args[0]) and all(len(o) <= 4 for o in out)

    model, fit_args, pred_args = _seq2seq(cell)
    out = model.fit(*fit_args).predict(*pred_args)
    assert len(out) == len(fit_args[0]) and all(o.ndim == 1 for o in out)


@pytest.mark.parametrize("name", ["classifier", "regressor", "tagger", "seq2seq"])
def test_padding_is_ignored(name):
    """With lengths, the content of the padded steps changes nothing."""
    model, fit_args, (X, lengths) = FACTORIES[name]("gru")
    model.fit(*fit_args)
    assert _same(model.predict(X, lengths), model.predict(_pad_with_noise(X, lengths), lengths))


def test_lengths_match_trimmed_sequences():
    """A padded batch predicts what each sequence predicts alone, trimmed to its length."""
    X, lengths = _seq_data()
    y = np.arange(len(X)) % 2
    clf = SequenceClassifier(6, cell="lstm", bidirectional=True, epochs=2, seed=0)
    proba = clf.fit(X, y, lengths).predict_proba(X, lengths)
    for i in (1, 2, 3):
        alone = clf.predict_proba(X[i : i + 1, : lengths[i]])
        np.testing.assert_allclose(proba[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_seed_reproducibility(name):
    model_a, fit_args, pred_args = FACTORIES[name]("lstm", seed=3)
    model_b, _, _ = FACTORIES[name]("lstm", seed=3)
    model_c, _, _ = FACTORIES[name]("lstm", seed=4)
    a = model_a.fit(*fit_args)
    b = model_b.fit(*fit_args)
    c = model_c.fit(*fit_args)
    assert a.history_.loss == b.history_.loss
    for key, value in a.parameters().items():
        np.testing.assert_array_equal(value, b.parameters()[key])
    assert _same(a.predict(*pred_args), b.predict(*pred_args))
    assert any(not np.array_equal(v, c.parameters()[k]) for k, v in a.parameters().items())


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("cell", CELLS)
def test_save_load_identical_predictions(name, cell, tmp_path):
    kw = {"activation": "relu", "init": "identity"} if cell == "rnn" else {}
    model, fit_args, pred_args = FACTORIES[name](cell, num_layers=2, **kw)
    model.fit(*fit_args)
    path = tmp_path / f"{name}.npz"
    model.save(path)
    loaded = fastrnn.load(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    for key, value in model.parameters().items():
        np.testing.assert_array_equal(value, loaded.parameters()[key])
    assert _same(model.predict(*pred_args), loaded.predict(*pred_args))
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(
            model.predict_proba(*pred_args), loaded.predict_proba(*pred_args)
        )


def test_char_lm_save_load(tmp_path):
    lm = CharLanguageModel(8, seq_len=8, epochs=1, seed=0).fit("hello world, hello rnn")
    lm.save(tmp_path / "lm.npz")
    loaded = fastrnn.load(tmp_path / "lm.npz")
    assert loaded.vocab_ == lm.vocab_
    assert loaded.generate("he", 20, seed=5) == lm.generate("he", 20, seed=5)
    assert loaded.cross_entropy("hello") == lm.cross_entropy("hello")


def test_float64_models():
    X, _ = _seq_data()
    clf = SequenceClassifier(4, epochs=1, seed=0, dtype=np.float64).fit(X, np.arange(12) % 2)
    assert clf.parameters()["rnn.weight_ih_l0"].dtype == np.float64
    assert clf.predict_proba(X).dtype == np.float64


# --- bad input ----------------------------------------------------------------------------


def test_bad_hyper_parameters_are_named():
    with pytest.raises(ValueError, match="cell"):
        SequenceClassifier(cell="transformer")
    with pytest.raises(ValueError, match="hidden_size"):
        SequenceClassifier(0)
    with pytest.raises(ValueError, match="activation"):
        SequenceClassifier(cell="lstm", activation="relu")
    with pytest.raises(ValueError, match="bidirectional"):
        SequenceGenerator(bidirectional=True)
    with pytest.raises(ValueError, match="lr"):
        SequenceRegressor(lr=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        SequenceRegressor(dtype=np.int32)


def test_bad_data_is_named():
    X, _ = _seq_data()
    clf = SequenceClassifier(4, epochs=1)
    with pytest.raises(NotFittedError, match="fit"):
        clf.predict(X)
    with pytest.raises(ValueError, match=r"X has shape \(12, 6\)"):
        clf.fit(X[..., 0], np.zeros(12))
    with pytest.raises(ValueError, match="y has shape"):
        clf.fit(X, np.zeros(5))
    with pytest.raises(ValueError, match="lengths"):
        clf.fit(X, np.arange(12) % 2, np.full(12, 9))
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(X, np.zeros(12))
    clf.fit(X, np.arange(12) % 2)
    with pytest.raises(ValueError, match="fitted on 3 features"):
        clf.predict(X[..., :2])
    with pytest.raises(ValueError, match="y has shape"):
        SequenceTagger(4, epochs=1).fit(X, np.zeros((12, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        SequenceTagger(4, epochs=1).fit(X, np.zeros((12, 6)))
    lm = CharLanguageModel(4, seq_len=4, epochs=1).fit("abcabcabc")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        lm.generate("xyz", 3)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate("ab", 3, temperature=0)


# --- the course's done-when checks ----------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_toy_sentiment_reaches_full_training_accuracy(cell):
    d = ds.toy_sentiment()
    clf = SequenceClassifier(8, cell=cell, epochs=100, seed=0).fit(d.X, d.y)
    assert clf.score(d.X, d.y) == 1.0
    assert clf.history_.loss[-1] < 0.1 < clf.history_.loss[0]


@pytest.mark.parametrize("cell", CELLS)
def test_deep_autocomplete(cell):
    d = ds.deep_autocomplete()
    tagger = SequenceTagger(8, cell=cell, epochs=150, seed=0).fit(d.X, d.y)
    assert [d.vocab[i] for i in tagger.predict(d.X)[0]] == ["e", "e", "p", "<stop>"]


def test_one_to_one_classifier():
    """T=1: the classifier is a plain feed-forward network (XOR needs the hidden layer)."""
    X = np.array([[[0, 0]], [[0, 1]], [[1, 0]], [[1, 1]]], dtype=np.float32)
    y = np.array([0, 1, 1, 0])
    clf = SequenceClassifier(8, cell="rnn", epochs=300, batch_size=4, lr=0.05, seed=0)
    assert clf.fit(X, y).score(X, y) == 1.0


def test_regressor_learns_the_adding_problem_short():
    train = ds.adding_problem(1000, T=10, seed=0)
    test = ds.adding_problem(300, T=10, seed=1)
    reg = SequenceRegressor(16, cell="gru", epochs=8, seed=0).fit(train.X, train.y)
    mse = float(np.mean((reg.predict(test.X) - test.y) ** 2))
    assert mse < 0.3 * test.baseline


def test_seq2seq_translates_held_out_number_words():
    d = ds.number_words()
    train, test = d.split(0.2, seed=0)
    model = Seq2Seq(32, cell="lstm", epochs=20, lr=0.02, seed=0)
    model.fit(train.X, train.y, train.lengths, train.y_lengths)
    assert model.score(test.X, test.y, test.lengths, test.y_lengths) >= 0.95


def test_generator_learns_counting():
    d = ds.counting_sequences()
    gen = SequenceGenerator(32, cell="gru", epochs=150, batch_size=10, seed=0)
    pred = gen.fit(d.X, d.y, d.y_lengths).predict(d.X)
    exact = np.mean([np.array_equal(p, d.y[i, : d.y_lengths[i]]) for i, p in enumerate(pred)])
    assert exact >= 0.9


def test_char_lm_learns_and_generates():
    corpus = ds.char_corpus()
    lm = CharLanguageModel(64, seq_len=32, epochs=10, lr=0.02, seed=0).fit(corpus.text)
    uniform = math.log(corpus.vocab_size)
    assert lm.history_.loss[-1] < 0.6 * uniform
    assert lm.cross_entropy(corpus.text) < 0.6 * uniform
    text = lm.generate("Twinkle", 50, temperature=0.8, seed=0)
    assert text.startswith("Twinkle") and len(text) == len("Twinkle") + 50
    assert set(text) <= set(corpus.vocab)
    greedy = lm.generate("Twinkle", 30, greedy=True)
    assert greedy == lm.generate("Twinkle", 30, greedy=True)


def test_validation_loss_is_recorded_without_gradients():
    X, lengths = _seq_data()
    y = np.arange(12) % 3
    clf = SequenceClassifier(6, epochs=3, seed=0)
    clf.fit(X, y, lengths, validation_data=(X, y, lengths))
    assert len(clf.history_.val_loss) == 3
    batch = (X, y, lengths)
    before = {k: v.copy() for k, v in clf._grads().items()}
    loss = clf.loss(batch)
    for key, value in clf._grads().items():  # loss() computed no gradients
        np.testing.assert_array_equal(value, before[key])
    assert loss == pytest.approx(clf.loss_and_grads(batch)[0], rel=1e-6)
    assert clf.history_.val_loss[-1] == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("name", ["classifier", "tagger", "seq2seq"])
def test_models_train_alike_on_every_backend(name, backend):
    """The models only use the layers: in float64 every backend gives the numpy losses."""
    results = []
    for b in ("numpy", backend):
        model, fit_args, _ = FACTORIES[name]("lstm", seed=1, dtype="float64")
        with fastrnn.use_backend(b):
            results.append(model.fit(*fit_args).history_.loss)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-8)


def test_tagger_truncated_bptt():
    X, lengths = _seq_data(T=8)
    y = (X[..., 0] > 0).astype(np.int64)
    full = SequenceTagger(6, cell="gru", epochs=3, seed=0, dtype="float64")
    whole = SequenceTagger(6, cell="gru", epochs=3, seed=0, dtype="float64", tbptt=8)
    cut = SequenceTagger(6, cell="gru", epochs=3, seed=0, dtype="float64", tbptt=3)
    full.fit(X, y, lengths)
    whole.fit(X, y, lengths)
    cut.fit(X, y, lengths)
    # a chunk that covers the sequence is full BPTT
    np.testing.assert_allclose(whole.history_.loss, full.history_.loss, rtol=1e-12)
    # chunks of 3 make 3 optimizer steps per batch and a different model
    assert len(cut.history_["step_loss"]) == 3 * len(full.history_["step_loss"])
    assert not np.allclose(cut.history_.loss, full.history_.loss)
    assert cut.predict(X, lengths).shape == X.shape[:2]
    with pytest.raises(ValueError, match="tbptt"):
        SequenceTagger(bidirectional=True, tbptt=4)
    with pytest.raises(ValueError, match="tbptt"):
        SequenceTagger(tbptt=0)


def test_char_lm_truncated_bptt_carries_the_state(tmp_path):
    text = "abcdefgh" * 40
    lm = CharLanguageModel(16, seq_len=64, tbptt=8, epochs=15, seed=0).fit(text)
    assert lm.tbptt == 8
    assert lm.cross_entropy(text) < 0.3 * math.log(8)
    assert lm.generate("abc", 8, greedy=True) == "abcdefghabc"
    lm.save(tmp_path / "lm.npz")
    assert fastrnn.load(tmp_path / "lm.npz").tbptt == 8


def test_get_and_set_params():
    model = Seq2Seq(16, cell="gru", max_length=5, epochs=3)
    params = model.get_params()
    assert params["hidden_size"] == 16 and params["cell"] == "gru" and params["max_length"] == 5
    assert "bidirectional" in params and "tbptt" not in params
    assert set(CharLanguageModel().get_params()) >= {"seq_len", "tbptt", "cell"}
    assert model.set_params(cell="lstm", lr=0.1) is model
    assert model.cell == "lstm" and model.lr == 0.1 and model.hidden_size == 16
    with pytest.raises(ValueError, match="unknown hyper-parameters"):
        model.set_params(colour="red")
    with pytest.raises(ValueError, match="cell"):
        model.set_params(cell="transformer")
    assert model.cell == "lstm"
    assert "lr=0.1" in repr(model) and "cell=" not in repr(model)  # lstm is the default
