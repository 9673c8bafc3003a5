"""The data sets: shapes, contents, and the stated baselines checked empirically."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastrnn import datasets as ds


def test_one_hot_and_padding():
    out = ds.one_hot(np.array([[0, 2, ds.PAD]]), 3)
    np.testing.assert_array_equal(out[0], [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="depth = 3"):
        ds.one_hot(np.array([3]), 3)
    with pytest.raises(TypeError, match="integer"):
        ds.one_hot(np.array([0.5]), 3)


def test_toy_sentiment_is_the_documented_set():
    d = ds.toy_sentiment()
    assert d.X.shape == (3, 3, 3) and d.y.tolist() == [1, 1, 0]
    words = [" ".join(d.vocab[i] for i in x.argmax(-1)) for x in d.X]
    assert words == ["cat mat rat", "mat cat rat", "rat cat mat"]
    # every sentence holds the same bag of words: only the order separates the labels
    np.testing.assert_array_equal(d.X.sum(1), np.ones((3, 3)))


def test_deep_autocomplete():
    d = ds.deep_autocomplete()
    assert d.vocab == ("d", "e", "p", "<stop>")
    assert [d.vocab[i] for i in d.X[0].argmax(-1)] == ["d", "e", "e", "p"]
    assert [d.target_vocab[i] for i in d.y[0]] == ["e", "e", "p", "<stop>"]


def test_char_corpus_round_trip_and_windows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world, hello rnn", encoding="utf-8")
    c = ds.char_corpus(path)
    assert c.decode(c.encode(c.text)) == c.text
    assert c.vocab == tuple(sorted(set(c.text)))
    w = c.windows(5, step=2)
    assert w.X.shape == (len(range(0, len(c.text) - 5, 2)), 5, c.vocab_size)
    # y is X shifted by one character
    np.testing.assert_array_equal(w.X[:, 1:].argmax(-1), w.y[:, :-1])
    assert c.decode(w.y[0]) == c.text[1:6]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        c.encode("xyz")
    with pytest.raises(ValueError, match="either path or text"):
        ds.char_corpus(path, text="ab")


def test_shipped_text_loads():
    assert "rhymes" in ds.shipped_texts()
    text = ds.load_text()
    assert "Twinkle" in text and len(text) > 1000
    assert ds.char_corpus().text == text
    with pytest.raises(ValueError, match="rhymes"):
        ds.load_text("nope")


def test_adding_problem_structure_and_baseline():
    d = ds.adding_problem(20000, T=30, seed=0)
    assert d.X.shape == (20000, 30, 2) and d.y.shape == (20000,)
    marker = d.X[..., 1]
    np.testing.assert_array_equal(marker.sum(1), 2)
    assert marker[:, :15].sum(1).min() == 1  # one marker in each half
    np.testing.assert_allclose(d.y, (d.X[..., 0] * marker).sum(1), rtol=1e-6)
    # predicting 1 always: MSE 1/6, checked on the data
    mse = float(np.mean((d.y - 1.0) ** 2))
    assert abs(mse - 1 / 6) < 0.005
    assert d.baseline == pytest.approx(1 / 6)
    # the seed makes the draw reproducible
    np.testing.assert_array_equal(
        ds.adding_problem(5, 10, seed=3).X, ds.adding_problem(5, 10, seed=3).X
    )


def test_copy_memory_structure_and_baseline():
    T = 20
    d = ds.copy_memory(5000, T=T, seed=1)
    assert d.X.shape == (5000, T + 20, 10) and d.y.shape == (5000, T + 20)
    x = d.X.argmax(-1)
    np.testing.assert_array_equal(d.y[:, -10:], x[:, :10])
    assert (x[:, T + 9] == 9).all() and (d.y[:, : T + 10] == 0).all()
    # the best memoryless predictor (class frequencies per position, estimated on the
    # data) scores 10 ln 8 / (T + 20)
    freq = np.stack([(d.y == k).mean(0) for k in range(10)], axis=-1)  # (T+20, 10)
    p = freq[np.arange(T + 20)[None, :], d.y]
    ce = float(-np.log(p).mean())
    assert d.baseline == pytest.approx(10 * math.log(8) / (T + 20))
    assert abs(ce - d.baseline) < 0.01 * d.baseline


def test_number_words():
    d = ds.number_words()
    assert len(d) == 1000 and d.X.shape == (1000, 4, 29)
    words = lambda i: " ".join(d.vocab[j] for j in d.X[i, : d.lengths[i]].argmax(-1))  # noqa: E731
    assert words(342) == "three hundred forty two"
    assert words(705) == "seven hundred five"
    assert words(0) == "zero" and words(19) == "nineteen"
    assert d.decode_targets(d.y[705]) == "705"
    assert d.y_lengths[[0, 42, 705]].tolist() == [1, 2, 3]
    assert (d.y[0, 1:] == ds.PAD).all()


def test_reverse_strings_and_split():
    d = ds.reverse_strings(50, seed=0)
    for i in range(50):
        n = d.lengths[i]
        np.testing.assert_array_equal(d.y[i, :n], d.X[i, :n].argmax(-1)[::-1])
        assert (d.X[i, n:] == 0).all()
    train, test = d.split(0.2, seed=0)
    assert len(train) == 40 and len(test) == 10
    with pytest.raises(ValueError, match="test_fraction"):
        d.split(1.5)


def test_counting_sequences():
    d = ds.counting_sequences()
    assert d.X.shape == (30, 13) and d.X.ndim == 2
    i = 3 * 3 + 1  # start 3, step 2
    assert d.decode_targets(d.y[i]) == "3579"
    assert d.y_lengths[i] == 4


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ds.adding_problem(0), "n_samples"),
        (lambda: ds.adding_problem(10, T=1), "T must"),
        (lambda: ds.copy_memory(10, n_symbols=1), "n_symbols"),
        (lambda: ds.number_words(1000), "max_number"),
        (lambda: ds.reverse_strings(5, min_length=4, max_length=2), "max_length"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ds.adding_problem(10.0), r"n_samples must be an int, got a float \(10\.0\)"),
        (lambda: ds.one_hot(np.array([0.0, 1.0]), 2), "ids must be an integer array"),
        (lambda: ds.reverse_strings(5, alphabet=list("ab")), "alphabet must be a str, got list"),
        (lambda: ds.counting_sequences(steps=3), "steps must be a tuple of positive ints"),
        (lambda: ds.toy_sentiment().split("half"), "test_fraction must be a number"),
    ],
)
def test_wrong_types_are_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call()
