"""Small data sets for the course's examples, generated on the fly or shipped with the package.

Nothing is downloaded. Every generator takes a ``seed`` and returns samples-first arrays
(``X`` of shape (n_samples, T, D), the way the models of :mod:`fastrnn.models` take them):

- :func:`toy_sentiment`: three 3-word sentences over the one-hot vocabulary cat, mat, rat;
- :func:`deep_autocomplete`: next-character prediction on "deep" (vocabulary d, e, p, <stop>);
- :func:`char_corpus` / :func:`load_text`: a character corpus from any text (a shipped one
  by default) with ``encode``/``decode`` and next-character windows;
- :func:`adding_problem`: the long-term-dependency regression task (baseline MSE 1/6);
- :func:`copy_memory`: the copy-memory task (baseline cross-entropy 10 ln 8 / (T + 20));
- :func:`number_words` and :func:`reverse_strings`: tiny translation sets for seq2seq;
- :func:`counting_sequences`: a one-to-many set (a code vector in, a token sequence out).

Token sequences of different lengths are padded to a common length; ``lengths`` (inputs)
and ``y_lengths`` (targets) hold the real lengths, and padded target entries are ``-1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from os import PathLike
from typing import Any

import numpy as np

from . import _validation as V

__all__ = [
    "PAD",
    "CharCorpus",
    "SequenceDataset",
    "adding_problem",
    "char_corpus",
    "copy_memory",
    "counting_sequences",
    "deep_autocomplete",
    "load_text",
    "number_words",
    "one_hot",
    "reverse_strings",
    "shipped_texts",
    "toy_sentiment",
]

PAD: int = -1
"""The value of padded entries in integer target arrays."""


@dataclass(frozen=True)
class SequenceDataset:
    """A data set: inputs ``X``, targets ``y`` and what is needed to read them.

    ``lengths`` (n,): real length of each input sequence (``None``: all have length T);
    ``y_lengths`` (n,): real length of each target sequence, for sequence targets whose
    length differs from the input's; ``vocab``/``target_vocab``: the token behind each
    one-hot input column / each integer target; ``baseline``: the loss of the trivial
    predictor described in ``description``.
    """

    X: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None
    y_lengths: np.ndarray | None = None
    vocab: tuple[str, ...] | None = None
    target_vocab: tuple[str, ...] | None = None
    baseline: float | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.X)

    def subset(self, index: np.ndarray) -> SequenceDataset:
        """The samples at ``index`` (an int array or a boolean mask)."""
        idx = np.asarray(index)
        return replace(
            self,
            X=self.X[idx],
            y=self.y[idx],
            lengths=None if self.lengths is None else self.lengths[idx],
            y_lengths=None if self.y_lengths is None else self.y_lengths[idx],
        )

    def split(
        self, test_fraction: float = 0.2, *, seed: int | None = 0
    ) -> tuple[SequenceDataset, SequenceDataset]:
        """A random (train, test) split with ``test_fraction`` of the samples held out."""
        V.check_float(
            "test_fraction",
            test_fraction,
            minimum=0.0,
            maximum=1.0,
            min_inclusive=False,
            max_inclusive=False,
        )
        n = len(self)
        n_test = max(1, round(n * test_fraction))
        if n_test >= n:
            raise ValueError(f"cannot hold out {n_test} of {n} samples and keep any for training")
        perm = np.random.default_rng(seed).permutation(n)
        return self.subset(np.sort(perm[n_test:])), self.subset(np.sort(perm[:n_test]))

    def decode_targets(self, ids: np.ndarray) -> str:
        """The target tokens ``ids`` (padding dropped) as a string, joined per vocabulary."""
        if self.target_vocab is None:
            raise ValueError("this data set has no target vocabulary")
        sep = "" if all(len(t) == 1 for t in self.target_vocab) else " "
        return sep.join(self.target_vocab[int(i)] for i in np.asarray(ids).ravel() if i >= 0)


# --- helpers -------------------------------------------------------------------------------


def one_hot(ids: np.ndarray, depth: int, *, dtype: Any = np.float32) -> np.ndarray:
    """One-hot rows for integer ``ids`` of any shape: shape ``ids.shape + (depth,)``.

    Negative ids (padding, :data:`PAD`) give all-zero rows.
    """
    ids = V.as_int_array("ids", ids)
    depth = V.check_positive_int("depth", depth)
    if ids.size and ids.max() >= depth:
        raise ValueError(f"ids must be < depth = {depth}, got a maximum of {ids.max()}")
    out = np.zeros((*ids.shape, depth), dtype=dtype)
    valid = ids >= 0
    out[valid, ids[valid]] = 1
    return out


def _pad(seqs: list[list[int]], fill: int = PAD) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    out = np.full((len(seqs), int(lengths.max())), fill, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


# --- the course's toy sets ---------------------------------------------------------------

SENTIMENT_VOCAB: tuple[str, ...] = ("cat", "mat", "rat")
SENTIMENT_SENTENCES: tuple[tuple[str, str, str], ...] = (
    ("cat", "mat", "rat"),
    ("mat", "cat", "rat"),
    ("rat", "cat", "mat"),
)
SENTIMENT_LABELS: tuple[int, ...] = (1, 1, 0)


def toy_sentiment(*, dtype: Any = np.float32) -> SequenceDataset:
    """The course's toy sentiment set: three 3-word sentences, labels 1, 1, 0.

    The sentences (one-hot over the vocabulary cat, mat, rat) are

    ====================  =====
    sentence              label
    ====================  =====
    ``cat mat rat``       1
    ``mat cat rat``       1
    ``rat cat mat``       0
    ====================  =====

    Every sentence holds the same three words, so a bag-of-words model cannot separate
    them: only the order does (the negative one starts with "rat"). ``X`` is (3, 3, 3),
    ``y`` is (3,).
    """
    ids = np.array([[SENTIMENT_VOCAB.index(w) for w in s] for s in SENTIMENT_SENTENCES])
    return SequenceDataset(
        X=one_hot(ids, len(SENTIMENT_VOCAB), dtype=dtype),
        y=np.array(SENTIMENT_LABELS, dtype=np.int64),
        vocab=SENTIMENT_VOCAB,
        target_vocab=("negative", "positive"),
        baseline=math.log(2),
        description="toy sentiment: cat mat rat -> 1, mat cat rat -> 1, rat cat mat -> 0",
        extra={"sentences": [" ".join(s) for s in SENTIMENT_SENTENCES]},
    )


DEEP_VOCAB: tuple[str, ...] = ("d", "e", "p", "<stop>")


def deep_autocomplete(*, dtype: Any = np.float32) -> SequenceDataset:
    """Next-character autocomplete on "deep" over the vocabulary d, e, p, <stop>.

    One sequence: inputs d, e, e, p (one-hot, ``X`` of shape (1, 4, 4)); targets the next
    character at every step, e, e, p, <stop> (``y`` of shape (1, 4), indices into
    ``vocab``). The input "e" is followed once by "e" and once by "p", so the model must
    remember what came before.
    """
    word = ["d", "e", "e", "p", "<stop>"]
    ids = np.array([[DEEP_VOCAB.index(c) for c in word]])
    return SequenceDataset(
        X=one_hot(ids[:, :-1], len(DEEP_VOCAB), dtype=dtype),
        y=ids[:, 1:].astype(np.int64),
        vocab=DEEP_VOCAB,
        target_vocab=DEEP_VOCAB,
        baseline=math.log(len(DEEP_VOCAB)),
        description='"deep" autocomplete: d e e p -> e e p <stop>',
    )


# --- character corpora ---------------------------------------------------------------------


@dataclass(frozen=True)
class CharCorpus:
    """A text and its character vocabulary (sorted unique characters)."""

    text: str
    vocab: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def ids(self) -> np.ndarray:
        """The whole text as vocabulary indices."""
        return self.encode(self.text)

    def encode(self, s: str) -> np.ndarray:
        """The characters of ``s`` as vocabulary indices (int64)."""
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = sorted({c for c in s if c not in index})
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]!r}")
        return np.fromiter((index[c] for c in s), dtype=np.int64, count=len(s))

    def decode(self, ids: np.ndarray) -> str:
        """Vocabulary indices back to a string (negative ids, i.e. padding, are skipped)."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel() if i >= 0)

    def windows(
        self, seq_len: int, *, step: int | None = None, dtype: Any = np.float32
    ) -> SequenceDataset:
        """Next-character windows: ``X`` (n, seq_len, V) one-hot, ``y`` (n, seq_len) ids.

        ``y[i, t]`` is the character after ``X[i, t]``; windows start every ``step``
        characters (default ``seq_len``, i.e. non-overlapping).
        """
        seq_len = V.check_positive_int("seq_len", seq_len)
        step = seq_len if step is None else V.check_positive_int("step", step)
        ids = self.ids
        if len(ids) < seq_len + 1:
            raise ValueError(
                f"the text has {len(ids)} characters; seq_len={seq_len} needs at least "
                f"{seq_len + 1}"
            )
        starts = np.arange(0, len(ids) - seq_len, step)
        idx = starts[:, None] + np.arange(seq_len)[None, :]
        return SequenceDataset(
            X=one_hot(ids[idx], self.vocab_size, dtype=dtype),
            y=ids[idx + 1],
            vocab=self.vocab,
            target_vocab=self.vocab,
            baseline=math.log(self.vocab_size),
            description=f"next-character windows of {seq_len} over {len(ids)} characters",
        )


def shipped_texts() -> list[str]:
    """Names of the texts shipped inside the package (for :func:`load_text`)."""
    folder = resources.files("fastrnn").joinpath("data")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_text(name: str = "rhymes") -> str:
    """A text shipped with the package; ``"rhymes"`` is a page of public-domain nursery
    rhymes (about 2 KB)."""
    names = shipped_texts()
    if name not in names:
        raise ValueError(f"name must be one of {names}, got {name!r}")
    # one name per joinpath: Traversable.joinpath takes several only from Python 3.11 on
    return resources.files("fastrnn").joinpath("data").joinpath(f"{name}.txt").read_text("utf-8")


def char_corpus(
    path: str | PathLike[str] | None = None,
    *,
    text: str | None = None,
    lowercase: bool = False,
) -> CharCorpus:
    """A character corpus from the UTF-8 text file ``path``, from ``text``, or (neither
    given) from the shipped nursery rhymes; ``lowercase`` folds case to shrink the
    vocabulary."""
    if path is not None and text is not None:
        raise ValueError("give either path or text, not both")
    if path is not None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif text is None:
        text = load_text("rhymes")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if lowercase:
        text = text.lower()
    if len(text) < 2:
        raise ValueError(f"the text must have at least 2 characters, got {len(text)}")
    return CharCorpus(text=text, vocab=tuple(sorted(set(text))))


# --- long-term dependency tasks ------------------------------------------------------------


def adding_problem(
    n_samples: int = 1000, T: int = 100, *, seed: int | None = None, dtype: Any = np.float32
) -> SequenceDataset:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    ``X`` (n, T, 2): channel 0 holds values uniform in [0, 1], channel 1 a marker that is 1
    at exactly two steps, one in the first half and one in the second half of the sequence
    (T >= 2). ``y`` (n,): the sum of the two marked values. Always predicting 1 (the
    mean) scores MSE = Var(U1 + U2) = 2/12 = 1/6 ≈ 0.167, the ``baseline``.
    """
    n = V.check_positive_int("n_samples", n_samples)
    T = V.check_int("T", T, 2)
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(n, T))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    marker = np.zeros((n, T))
    rows = np.arange(n)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    X = np.stack([values, marker], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second]).astype(dtype)
    return SequenceDataset(
        X=X,
        y=y,
        baseline=1.0 / 6.0,
        description=f"adding problem, T={T}: predicting 1 always gives MSE 1/6",
    )


COPY_BLANK, COPY_DELIMITER = 0, 9


def copy_memory(
    n_samples: int = 1000,
    T: int = 100,
    *,
    n_symbols: int = 8,
    copy_length: int = 10,
    seed: int | None = None,
    dtype: Any = np.float32,
) -> SequenceDataset:
    """The copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    Tokens: 0 blank, 1..``n_symbols`` data symbols, ``n_symbols + 1`` the delimiter
    (V = n_symbols + 2 = 10 by default). Input (length T + 2 * copy_length): ``copy_length``
    random data symbols, T - 1 blanks, the delimiter, ``copy_length`` blanks. Target: T +
    ``copy_length`` blanks, then the data symbols. ``X`` (n, T + 20, 10) one-hot, ``y``
    (n, T + 20) token ids. A memoryless model that outputs blank and then a uniform guess
    scores cross-entropy ``copy_length * ln(n_symbols) / (T + 2 * copy_length)``
    (10 ln 8 / (T + 20) with the defaults), the ``baseline``.
    """
    n = V.check_positive_int("n_samples", n_samples)
    T = V.check_positive_int("T", T)
    K = V.check_int("n_symbols", n_symbols, 2)
    L = V.check_positive_int("copy_length", copy_length)
    rng = np.random.default_rng(seed)
    total = T + 2 * L
    data = rng.integers(1, K + 1, size=(n, L))
    x = np.zeros((n, total), dtype=np.int64)
    x[:, :L] = data
    x[:, T + L - 1] = K + 1
    y = np.zeros((n, total), dtype=np.int64)
    y[:, -L:] = data
    vocab = ("_", *(str(i) for i in range(1, K + 1)), ":")
    return SequenceDataset(
        X=one_hot(x, len(vocab), dtype=dtype),
        y=y,
        vocab=vocab,
        target_vocab=vocab,
        baseline=L * math.log(K) / total,
        description=f"copy memory, T={T}: memoryless cross-entropy {L} ln {K} / {total}",
    )


# --- tiny translation sets (seq2seq) and a one-to-many set -----------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS: tuple[str, ...] = (*_ONES, *_TENS, "hundred")
DIGITS: tuple[str, ...] = tuple("0123456789")


def _words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10 - 2]] + ([_ONES[n % 10]] if n % 10 else [])
    rest = n % 100
    return [_ONES[n // 100], "hundred"] + (_words(rest) if rest else [])


def number_words(max_number: int = 999, *, dtype: Any = np.float32) -> SequenceDataset:
    """English number words to digits, for every number 0..``max_number`` (<= 999).

    ``X`` (n, 4, 29): the words one-hot over ``vocab`` (zero .. nineteen, twenty ..
    ninety, hundred), ``lengths`` 1..4 words; ``y`` (n, 3): the digits as ids 0..9 into
    ``target_vocab``, ``y_lengths`` 1..3, padding :data:`PAD`. E.g. "three hundred
    forty two" -> 3 4 2, "seven hundred five" -> 7 0 5. Both sides vary in length.
    """
    m = V.check_positive_int("max_number", max_number)
    if m > 999:
        raise ValueError(f"max_number must be <= 999, got {max_number}")
    src, tgt = _pad([[NUMBER_WORDS.index(w) for w in _words(k)] for k in range(m + 1)])
    out, out_len = _pad([[int(d) for d in str(k)] for k in range(m + 1)])
    return SequenceDataset(
        X=one_hot(src, len(NUMBER_WORDS), dtype=dtype),
        y=out,
        lengths=tgt,
        y_lengths=out_len,
        vocab=NUMBER_WORDS,
        target_vocab=DIGITS,
        description=f"number words to digits, 0..{m}",
        extra={"numbers": np.arange(m + 1)},
    )


def reverse_strings(
    n_samples: int = 1000,
    *,
    min_length: int = 2,
    max_length: int = 6,
    alphabet: str = "abcdef",
    seed: int | None = None,
    dtype: Any = np.float32,
) -> SequenceDataset:
    """Random strings and their reversals: ``X`` (n, max_length, len(alphabet)) one-hot
    with ``lengths``; ``y`` (n, max_length) ids with ``y_lengths`` (equal to ``lengths``)."""
    n = V.check_positive_int("n_samples", n_samples)
    lo = V.check_positive_int("min_length", min_length)
    hi = V.check_int("max_length", max_length, lo)
    if not isinstance(alphabet, str):
        raise TypeError(f"alphabet must be a str, got {type(alphabet).__name__}")
    if len(set(alphabet)) != len(alphabet) or not alphabet:
        raise ValueError(f"alphabet must be a non-empty str of distinct characters: {alphabet!r}")
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi + 1, size=n)
    seqs = [rng.integers(0, len(alphabet), size=k).tolist() for k in lens]
    src, src_len = _pad(seqs)
    out, out_len = _pad([s[::-1] for s in seqs])
    vocab = tuple(alphabet)
    return SequenceDataset(
        X=one_hot(src, len(vocab), dtype=dtype),
        y=out,
        lengths=src_len,
        y_lengths=out_len,
        vocab=vocab,
        target_vocab=vocab,
        description=f"string reversal over {alphabet!r}, lengths {lo}..{hi}",
    )


def counting_sequences(
    *, n_digits: int = 10, steps: tuple[int, ...] = (1, 2, 3), dtype: Any = np.float32
) -> SequenceDataset:
    """A one-to-many set: a code vector in, a token sequence out.

    For every start digit s in 0..n_digits-1 and step k in ``steps``: ``X`` is the code
    one-hot(s) ++ one-hot(k's index) (shape (n, n_digits + len(steps)), one vector per
    sample, no time axis) and ``y`` is the count s, s+k, s+2k, ... up to n_digits - 1 (ids
    into ``target_vocab``, padded with :data:`PAD`, real lengths in ``y_lengths``), e.g.
    start 3 step 2 -> 3 5 7 9.
    """
    nd = V.check_int("n_digits", n_digits, 2)
    if not isinstance(steps, (tuple, list)):
        raise TypeError(f"steps must be a tuple of positive ints, got {type(steps).__name__}")
    if not steps:
        raise ValueError("steps must be a non-empty tuple of positive ints, got ()")
    steps = tuple(V.check_positive_int(f"steps[{i}]", k) for i, k in enumerate(steps))
    codes, seqs = [], []
    for s in range(nd):
        for j, k in enumerate(steps):
            code = np.zeros(nd + len(steps))
            code[s] = 1
            code[nd + j] = 1
            codes.append(code)
            seqs.append(list(range(s, nd, k)))
    y, y_len = _pad(seqs)
    return SequenceDataset(
        X=np.array(codes, dtype=dtype),
        y=y,
        y_lengths=y_len,
        vocab=tuple(f"start={s}" for s in range(nd)) + tuple(f"step={k}" for k in steps),
        target_vocab=tuple(str(i) for i in range(nd)),
        description="counting: (start, step) code -> start, start+step, ... < n_digits",
    )
