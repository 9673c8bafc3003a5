"""The models as scikit-learn estimators, across processes, and their input checks."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

import fastrnn
from fastrnn.layers import LSTM
from fastrnn.models import (
    CharLanguageModel,
    Seq2Seq,
    SequenceClassifier,
    SequenceGenerator,
    SequenceRegressor,
    SequenceTagger,
)

sklearn = pytest.importorskip("sklearn")  # in the test extra; fastrnn itself does not need it
from sklearn.base import clone, is_classifier, is_regressor  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402


def _data(n=24, T=5, D=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, D)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    return X, y


def _models():
    """(an unfitted model, its fit arguments, its predict arguments) for every model."""
    X, y = _data()
    yield SequenceClassifier(4, epochs=2, seed=0), (X, y), (X,)
    yield SequenceRegressor(4, epochs=2, seed=0), (X, X[:, 0, :2]), (X,)
    tags = (X[..., 0] > 0).astype(np.int64)
    yield SequenceTagger(4, epochs=2, seed=0), (X, tags), (X,)
    yield CharLanguageModel(4, seq_len=4, epochs=1, seed=0), ("abcabcabcab",), ("ab", 3)
    tokens = np.array([[1, 2, -1], [2, 1, 1]] * 3)
    yield SequenceGenerator(4, epochs=2, seed=0), (X[:6, 0], tokens), (X[:6, 0],)
    yield Seq2Seq(4, epochs=2, seed=0), (X[:6], tokens), (X[:6],)


def _fitted_models():
    for model, fit_args, predict_args in _models():
        yield model.fit(*fit_args), predict_args


def _predict(model, args):
    if isinstance(model, CharLanguageModel):
        return model.generate(*args, greedy=True)
    return model.predict(*args)


def _same(a, b):
    if isinstance(a, list):
        assert len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    else:
        np.testing.assert_array_equal(a, b)


# --- the scikit-learn contract ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        SequenceClassifier(8, cell="gru", lr=0.05, dtype=np.float64, clip_norm=1),
        SequenceRegressor(3, bidirectional=True, seed=4),
        SequenceTagger(5, tbptt=3),
        CharLanguageModel(6, seq_len=8),
        SequenceGenerator(4, max_length=7),
        Seq2Seq(4, cell="rnn", activation="relu"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_clone_gives_an_unfitted_copy_with_the_same_hyper_parameters(model):
    copy = clone(model)
    assert type(copy) is type(model) and copy is not model
    assert copy.get_params() == model.get_params()
    assert copy.get_params(deep=True) == copy.get_params(deep=False)


def test_estimator_types_and_tags():
    clf, reg = SequenceClassifier(), SequenceRegressor()
    assert is_classifier(clf) and not is_regressor(clf)
    assert is_regressor(reg) and not is_classifier(reg)
    assert not is_classifier(SequenceTagger()) and not is_regressor(Seq2Seq())
    tags = clf.__sklearn_tags__()
    assert tags.input_tags.three_d_array and not tags.input_tags.allow_nan
    assert tags.target_tags.required
    assert reg.__sklearn_tags__().target_tags.multi_output
    assert SequenceGenerator().__sklearn_tags__().input_tags.two_d_array
    assert not CharLanguageModel().__sklearn_tags__().target_tags.required


def test_cross_val_score_and_grid_search_over_hidden_size():
    X, y = _data(n=30)
    clf = SequenceClassifier(4, epochs=3, seed=0)
    scores = cross_val_score(clf, X, y, cv=3)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    search = GridSearchCV(clf, {"hidden_size": [2, 6]}, cv=2).fit(X, y)
    assert search.best_params_["hidden_size"] in (2, 6)
    assert search.best_estimator_.hidden_size == search.best_params_["hidden_size"]
    assert search.best_estimator_.predict(X).shape == y.shape
    assert clf.hidden_size == 4 and not clf._parts  # the search worked on clones
    reg_scores = cross_val_score(SequenceRegressor(4, epochs=2, seed=0), X, X[:, -1, 0], cv=2)
    assert reg_scores.shape == (2,) and np.all(np.isfinite(reg_scores))


# --- no per-call state, pickling, processes ------------------------------------------------------


@pytest.mark.parametrize("index", range(6))
def test_prediction_and_training_steps_leave_no_state_on_the_estimator(index):
    model, args = list(_fitted_models())[index]
    before = dict(vars(model))
    _predict(model, args)
    assert vars(model).keys() == before.keys()
    assert all(vars(model)[k] is v for k, v in before.items())
    assert all(not part.training for part in model._parts.values())  # eval between steps


@pytest.mark.parametrize("index", range(6))
def test_pickled_fitted_model_predicts_the_same(index):
    model, args = list(_fitted_models())[index]
    copy = pickle.loads(pickle.dumps(model))
    _same(_predict(copy, args), _predict(model, args))
    assert copy.get_params() == model.get_params()


def test_pickle_keeps_no_activations():
    layer = LSTM(3, 8)
    small = len(pickle.dumps(layer))
    layer(np.ones((50, 4, 3), np.float32))  # a training-mode forward keeps its activations
    assert len(pickle.dumps(layer)) == small
    layer.eval()(np.ones((2, 1, 3), np.float32))
    assert len(pickle.dumps(layer)) == small


def test_model_round_trips_through_another_process():
    model, (X,) = next(_fitted_models())
    _, y = _data()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = pool.submit(model.predict_proba, X).result()
        refitted = pool.submit(clone(model).fit, X, y).result()
    np.testing.assert_array_equal(remote, model.predict_proba(X))
    # fitted in the other process from the same seed: the same model as fitted here
    np.testing.assert_array_equal(refitted.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("index", range(6))
def test_inference_runs_forwards_that_save_nothing(index, monkeypatch):
    """predict, predict_proba, score, generate and cross_entropy run every forward with
    training=False; fit runs training forwards."""
    model, fit_args, predict_args = list(_models())[index]
    seen = []
    real = fastrnn.functional.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("training", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(fastrnn.functional, "forward", spy)
    model.fit(*fit_args)
    assert any(seen), f"fit ran no training forward (training= of each forward: {seen})"
    seen.clear()
    _predict(model, predict_args)
    if hasattr(model, "predict_proba"):
        model.predict_proba(*predict_args)
    if isinstance(model, CharLanguageModel):
        model.cross_entropy("abcab")
    elif hasattr(model, "score"):
        model.score(*fit_args)
    assert seen and not any(seen)


# --- input checks (scikit-learn's check_array) ---------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_X_or_y_is_refused_before_training(bad):
    X, y = _data()
    Xb = X.copy()
    Xb[3, 2, 1] = bad
    what = "NaN" if np.isnan(bad) else "infinity"
    clf = SequenceClassifier(4, epochs=1)
    with pytest.raises(ValueError, match=rf"^X contains {what} at index \(3, 2, 1\)"):
        clf.fit(Xb, y)
    assert not clf._parts and not hasattr(clf, "history_")  # nothing trained
    yr = X[:, 0, 0].astype(np.float64)
    yr[5] = bad
    reg = SequenceRegressor(4, epochs=1)
    with pytest.raises(ValueError, match=rf"^y contains {what} at index 5"):
        reg.fit(X, yr)
    assert not reg._parts
    yc = y.astype(np.float64)
    yc[0] = bad
    with pytest.raises(ValueError, match=rf"^y contains {what} at index 0"):
        SequenceClassifier(4, epochs=1).fit(X, yc)
    with pytest.raises(ValueError, match=rf"^validation_data X contains {what} at index"):
        SequenceClassifier(4, epochs=1).fit(X, y, validation_data=(Xb, y))
    with pytest.raises(ValueError, match=rf"X contains {what} at index \(3, 2, 1\)"):
        SequenceTagger(4, epochs=1).fit(Xb, np.zeros(X.shape[:2], np.int64))
    with pytest.raises(ValueError, match=rf"X contains {what} at index \(3, 1\)"):
        SequenceGenerator(4, epochs=1).fit(Xb[:, 2], np.ones((24, 2), np.int64))


def test_predict_refuses_nan():
    for model, args in _fitted_models():
        if isinstance(model, CharLanguageModel):
            continue
        X = args[0].copy()
        X.reshape(-1)[4] = np.nan
        pos = np.unravel_index(4, X.shape)
        with pytest.raises(ValueError, match=rf"^X contains NaN at index \({pos[0]}, {pos[1]}"):
            model.predict(X)


def test_overflow_in_the_conversion_is_named():
    X, y = _data()
    X64 = X.astype(np.float64)
    X64[1, 0, 0] = 1e300  # finite in float64, inf in the float32 model
    with pytest.raises(ValueError, match=r"X converted to float32 contains infinity at index"):
        SequenceClassifier(4, epochs=1).fit(X64, y)


def test_other_input_kinds_are_converted_once():
    """Models accept X as scikit-learn estimators do: lists, other numeric dtypes,
    read-only, byte-swapped and memory-mapped arrays, all predicting the same."""
    model, (X,) = next(_fitted_models())
    ref = model.predict_proba(X)
    ro = X.copy()
    ro.flags.writeable = False
    for variant in (X.tolist(), X.astype(np.float64), ro, X.astype(X.dtype.newbyteorder())):
        np.testing.assert_allclose(model.predict_proba(variant), ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match="X must be an array of numbers, got dtype <U1"):
        model.predict(np.full(X.shape, "a"))


def test_hyper_parameter_types_follow_the_policy():
    with pytest.raises(TypeError, match="hidden_size must be an int, got a float"):
        SequenceClassifier(2.5)
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        SequenceClassifier(0)
    with pytest.raises(TypeError, match="lr must be a number, got a str"):
        SequenceClassifier(lr="0.1")
    with pytest.raises(ValueError, match=r"lr must be finite and > 0, got nan"):
        SequenceClassifier(lr=float("nan"))
    with pytest.raises(TypeError, match="seed must be an int"):
        SequenceClassifier(seed=1.5)
