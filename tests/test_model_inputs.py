"""Model inputs and training control: the Embedding input of CharLanguageModel and the
decoders, the unknown-character policy, callbacks and "adamw" through fit, and the
numpydoc sections of every model's public methods."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pytest

import fastrnn
from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn.models import (
    CharLanguageModel,
    Seq2Seq,
    SequenceClassifier,
    SequenceGenerator,
    SequenceRegressor,
    SequenceTagger,
)
from fastrnn.training import EarlyStopping, LambdaCallback

TEXT = "the cat sat on the mat; the rat ate the hat. " * 3


@pytest.fixture(autouse=True)
def _reference_backend():
    with fastrnn.use_backend("numpy"):
        yield


def _translation_data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5, 3))
    y = np.full((n, 4), -1, dtype=np.int64)
    for i in range(n):
        k = 1 + i % 4
        y[i, :k] = rng.integers(0, 5, size=k)
    return X, y


# --- Embedding as the input of the text models --------------------------------------------


def test_char_lm_with_embedding_trains_saves_and_loads_bit_for_bit(tmp_path):
    lm = CharLanguageModel(8, seq_len=8, embedding_dim=5, epochs=3, seed=0).fit(TEXT)
    params = lm.parameters()
    assert params["embed.weight"].shape == (len(lm.vocab_), 5)
    assert params["rnn.weight_ih_l0"].shape == (4 * 8, 5)  # the LSTM reads the vectors
    assert lm.history_["loss"][-1] < lm.history_["loss"][0]
    assert lm.get_params()["embedding_dim"] == 5
    path = tmp_path / "lm.npz"
    lm.save(path)
    for back in [fastrnn.load(path), pickle.loads(pickle.dumps(lm))]:
        assert back.cross_entropy("the cat") == lm.cross_entropy("the cat")
        assert back.generate("the", 20, seed=1) == lm.generate("the", 20, seed=1)
        for k, v in lm.parameters().items():
            np.testing.assert_array_equal(back.parameters()[k], v)


def test_char_lm_with_embedding_and_tbptt_learns():
    lm = CharLanguageModel(
        12, seq_len=16, tbptt=4, embedding_dim=6, epochs=8, seed=0, dtype="float64"
    ).fit(TEXT)
    assert lm.history_["loss"][-1] < 0.8 * lm.history_["loss"][0]
    assert lm.cross_entropy(TEXT[:40]) < np.log(len(lm.vocab_))  # beats the uniform guess


def test_char_lm_without_embedding_keeps_one_hot_input():
    lm = CharLanguageModel(6, seq_len=8, epochs=1, seed=0).fit(TEXT)
    assert not any(k.startswith("embed.") for k in lm.parameters())
    assert lm.parameters()["rnn.weight_ih_l0"].shape == (4 * 6, len(lm.vocab_))


def _check_embedding_gradient(model, batch, name="embed.weight"):
    loss, grads = model.loss_and_grads(batch)
    weight = model.parameters()[name]
    analytic = grads[name].copy()
    numeric = central_differences(lambda: model.loss(batch), weight)
    tol = fd_tolerance(np.float64, 10 * max(loss, 1.0))
    assert_matches_central_differences(analytic, numeric, tol, err_msg=name)
    assert np.count_nonzero(analytic) > analytic.shape[1]  # several rows are checked


def test_char_lm_embedding_gradient_matches_central_differences():
    lm = CharLanguageModel(
        5, seq_len=6, embedding_dim=3, cell="gru", epochs=1, seed=0, dtype="float64"
    ).fit("abcab cba bca")
    X, y, lens = lm._windows(lm._encode_text("abcab cb", "text"), "text")
    assert X.dtype == np.int64 and X.ndim == 2  # ids, not one-hot
    _check_embedding_gradient(lm, (X, y, lens))


def test_seq2seq_and_generator_with_embedding():
    X, y = _translation_data()
    s2s = Seq2Seq(6, embedding_dim=4, epochs=2, seed=0, dtype="float64").fit(X, y)
    K = len(s2s.classes_)
    assert s2s.parameters()["embed.weight"].shape == (K + 1, 4)  # + <start>
    assert s2s.parameters()["decoder.weight_ih_l0"].shape == (4 * 6, 4)
    back = pickle.loads(pickle.dumps(s2s))
    for a, b in zip(back.predict(X), s2s.predict(X), strict=True):
        np.testing.assert_array_equal(a, b)
    lens = np.full(len(X), X.shape[1])
    ylens = (y >= 0).sum(axis=1)
    _check_embedding_gradient(s2s, (X[:4], lens[:4], s2s._encode(y, ylens)[:4], ylens[:4]))

    gen = SequenceGenerator(6, embedding_dim=3, epochs=1, seed=0).fit(X[:, 0], y)
    assert gen.parameters()["embed.weight"].shape == (K + 1, 3)
    assert len(gen.predict(X[:3, 0])) == 3


def test_new_hyper_parameters_survive_sklearn_clone():
    from sklearn.base import clone

    for model in [
        CharLanguageModel(embedding_dim=4, unknown="unk"),
        Seq2Seq(embedding_dim=3),
        SequenceGenerator(embedding_dim=2),
    ]:
        params = clone(model).get_params()
        assert params == model.get_params()
        assert params["embedding_dim"] == model.embedding_dim


def test_embedding_dim_is_checked():
    with pytest.raises(ValueError, match="embedding_dim"):
        CharLanguageModel(embedding_dim=0)
    with pytest.raises(TypeError, match="embedding_dim"):
        Seq2Seq(embedding_dim=2.5)


# --- unknown characters -------------------------------------------------------------------


def test_unknown_error_lists_the_unseen_characters():
    lm = CharLanguageModel(4, seq_len=4, epochs=1, seed=0).fit("abcabcabc")
    assert lm.unknown == "error"
    for call in [
        lambda: lm.cross_entropy("abxzx"),
        lambda: lm.score("abxzx"),
        lambda: lm.generate("zabx", 2),
    ]:
        with pytest.raises(ValueError, match=r"2 character\(s\).*\['x', 'z'\].*unknown='unk'"):
            call()
    with pytest.raises(ValueError, match=r"validation_data holds 1 character.*\['q'\]"):
        CharLanguageModel(4, seq_len=4, epochs=1).fit("abcabcabc", validation_data="abqabc")


@pytest.mark.parametrize("embedding_dim", [None, 3])
def test_unknown_unk_reads_unseen_characters_as_unk(embedding_dim):
    lm = CharLanguageModel(
        6, seq_len=4, epochs=2, unknown="unk", embedding_dim=embedding_dim, seed=0
    ).fit("abcabcabcab")
    assert lm.vocab_ == ("a", "b", "c", "<unk>")
    np.testing.assert_array_equal(lm._encode_text("axbé", "text"), [0, 3, 1, 3])
    # an unseen character costs -log p(<unk>): finite, and more than a seen one
    assert np.isfinite(lm.cross_entropy("abxabc"))
    assert lm.cross_entropy("abxabc") > lm.cross_entropy("abcabc")
    assert lm.score("abcabc") == -lm.cross_entropy("abcabc")
    out = lm.generate("xyz", 30, temperature=5.0, seed=0)  # a hot sampler, still no <unk>
    assert out.startswith("xyz") and set(out[3:]) <= {"a", "b", "c"}
    assert set(lm.generate("ab", 10, greedy=True)[2:]) <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="unknown"):
        CharLanguageModel(unknown="skip")


# --- callbacks and optimizers through fit -------------------------------------------------


def test_fit_forwards_callbacks_and_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6, 2))
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    snapshots = {}

    def remember(epoch, logs):
        snapshots[epoch] = {k: v.copy() for k, v in clf.parameters().items()}

    # min_delta so large that no epoch after the first counts as an improvement
    stop = EarlyStopping(patience=2, min_delta=1e9)
    clf = SequenceClassifier(6, epochs=10, seed=0, optimizer="adamw")
    clf.fit(
        X[:30],
        y[:30],
        validation_data=(X[30:], y[30:]),
        callbacks=[LambdaCallback(on_epoch_end=remember), stop],
    )
    assert len(clf.history_["loss"]) == 3 and len(clf.history_["val_loss"]) == 3
    assert (stop.best_epoch, stop.stopped_epoch) == (1, 3)  # epochs count from 1
    for k, v in clf.parameters().items():
        np.testing.assert_array_equal(v, snapshots[1][k])
    assert not all(np.array_equal(snapshots[3][k], v) for k, v in snapshots[1].items())


def test_every_model_fit_takes_callbacks():
    X, y = _translation_data()
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(8, 4, 2))
    cases = [
        (SequenceClassifier(3), (Xs, np.arange(8) % 2)),
        (SequenceRegressor(3), (Xs, rng.normal(size=8))),
        (SequenceTagger(3), (Xs, np.tile(np.arange(4) % 2, (8, 1)))),
        (CharLanguageModel(3, seq_len=4), ("abcabcabc",)),
        (SequenceGenerator(3), (X[:, 0], y)),
        (Seq2Seq(3), (X, y)),
    ]
    for model, data in cases:
        epochs: list[int] = []
        model.set_params(epochs=2, seed=0)
        model.fit(
            *data, callbacks=[LambdaCallback(on_epoch_end=lambda e, _, seen=epochs: seen.append(e))]
        )
        assert epochs == [1, 2], type(model).__name__  # epochs count from 1


def test_char_lm_validation_text_and_adamw():
    lm = CharLanguageModel(6, seq_len=8, epochs=2, optimizer="adamw", seed=0)
    lm.fit(TEXT, validation_data="the hat sat on the cat. ")
    assert len(lm.history_["val_loss"]) == 2
    assert "adamw" in fastrnn.models.OPTIMIZERS
    with pytest.raises(ValueError, match="optimizer"):
        SequenceClassifier(optimizer="lbfgs")


# --- help() -----------------------------------------------------------------------------

MODELS = [
    CharLanguageModel,
    Seq2Seq,
    SequenceClassifier,
    SequenceGenerator,
    SequenceRegressor,
    SequenceTagger,
]
METHODS = ["fit", "predict", "predict_proba", "score", "generate", "cross_entropy"]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_help_lists_parameters_returns_and_raises(cls):
    found = [m for m in METHODS if hasattr(cls, m)]
    assert "fit" in found
    for name in found:
        doc = inspect.getdoc(getattr(cls, name)) or ""
        for section in ("Parameters\n----------", "Returns\n-------", "Raises\n------"):
            assert section in doc, f"{cls.__name__}.{name}: no {section.splitlines()[0]}"
        params = [p for p in inspect.signature(getattr(cls, name)).parameters if p != "self"]
        for p in params:
            assert p in doc, f"{cls.__name__}.{name}: parameter {p} is not described"


@pytest.mark.parametrize("embedding_dim", [None, 3])
def test_seq2seq_reads_source_token_ids(embedding_dim, tmp_path):
    rng = np.random.default_rng(0)
    n, T = 24, 5
    X = rng.integers(0, 6, size=(n, T))
    lens = rng.integers(2, T + 1, size=n)
    X[np.arange(T)[None, :] >= lens[:, None]] = -1  # padding: anything goes there
    y = X[:, :2].copy()  # copy the first two source tokens
    model = Seq2Seq(8, embedding_dim=embedding_dim, epochs=2, seed=0, dtype="float64").fit(
        X, y, lens
    )
    assert model._meta["source_vocab"] == 6
    if embedding_dim is None:
        assert model.parameters()["encoder.weight_ih_l0"].shape[1] == 6  # one-hot
    else:
        assert model.parameters()["src_embed.weight"].shape == (6, 3)
        ids, lens2 = model._check_source(X[:4], lens[:4])
        ylens = np.full(4, 2)
        _check_embedding_gradient(model, (ids, lens2, y[:4], ylens), "src_embed.weight")
    path = tmp_path / "s2s.npz"
    model.save(path)
    back = fastrnn.load(path)
    for a, b in zip(back.predict(X, lens), model.predict(X, lens), strict=True):
        np.testing.assert_array_equal(a, b)
    assert 0.0 <= model.score(X, y, lens) <= 1.0
    bad = X.copy()
    bad[3, 1] = 6
    with pytest.raises(ValueError, match=r"X\[3, 1\] = 6 is out of range.*0\.\.5"):
        model.predict(bad, lens)
    with pytest.raises(ValueError, match="fitted on token ids"):
        model.predict(rng.normal(size=(2, T, 3)))
    features = Seq2Seq(4, epochs=1).fit(rng.normal(size=(n, T, 3)), y)
    with pytest.raises(ValueError, match="fitted on features"):
        features.predict(X, lens)
    with pytest.raises(ValueError, match=r"X\[0, 0\] = -2 is out of range"):
        Seq2Seq(4, epochs=1).fit(np.full((3, 2), -2), y[:3])
